"""`POST /v1/plans/files` on the Serve tier: a brand's own tables uploaded (multipart), planned by the comparison
deployment as `rmn compare --data` plans a directory; a bad row is a 400 naming the file and the row; with
`cleanroom`, the retailer's room answers through the clean-room deployment and both sides are backtested."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.tenants import auth

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "brand-data"


def upload(
    url: str, fields: dict[str, str], tenant: str = "brand_x", media: bytes | None = None, query: str = ""
) -> httpx.Response:
    files = {
        name: (f"{name}.csv", (EXAMPLE / f"{name}.csv").read_bytes(), "text/csv")
        for name in ("products", "sales", "media")
    }
    if media is not None:
        files["media"] = ("media.csv", media, "text/csv")
    return httpx.post(
        f"{url}/v1/plans/files{query}", data=fields, files=files, headers=auth(tenant), timeout=120
    )


def test_a_brands_files_are_planned_and_backtested(serve_url: str) -> None:
    r = upload(serve_url, {"budget": "1000", "holdout_days": "14"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (
        body["data"]["skus"] == 12
        and body["data"]["history_days"] == 56
        and body["data"]["directory"] == "upload"
    )
    assert body["plan"]["scenario"] == "profit_optimal" and 0 <= body["plan"]["spend"] <= 1000
    assert body["plan"]["spend_analysis"]["fitted_on"].startswith("incremental revenue")
    assert body["backtest"]["holdout_days"] == 14 and 0 < body["backtest"]["wape"] < 1
    assert "cleanroom" not in body and "no ground truth" in body["evaluation"]
    # the same plan as a report: straight from the upload, or from the JSON the caller holds
    r = upload(serve_url, {"budget": "1000", "holdout_days": "14"}, query="?format=pdf")
    assert r.status_code == 200 and r.headers["content-type"] == "application/pdf", r.text[:200]
    assert (
        r.content.startswith(b"%PDF-")
        and 'filename="rmn-plan-files-upload.pdf"' in r.headers["content-disposition"]
    )
    h = httpx.post(f"{serve_url}/v1/plans/report?format=html", json=body, headers=auth("brand_x"), timeout=60)
    assert h.status_code == 200 and "Backtest on held-out days" in h.text, h.text[:300]
    assert f"recommended spend {body['plan']['spend_analysis']['plan_spend']:,.2f}" in h.text
    del body["backtest"]["wape"], body["data"]
    h = httpx.post(f"{serve_url}/v1/plans/report?format=html", json=body, headers=auth("brand_x"), timeout=60)
    assert h.status_code == 400 and "'data'" in h.json()["error"]["message"], h.text
    r = upload(serve_url, {"budget": "1000"}, query="?format=docx")
    assert r.status_code == 400 and "format must be one of" in r.json()["error"]["message"], r.text


def test_a_bad_row_unknown_fields_and_another_brand_are_refused_with_reasons(serve_url: str) -> None:
    lines = (EXAMPLE / "media.csv").read_text().splitlines()
    cols = lines[5].split(",")
    cols[3] = "-3"  # spend of data row 5
    bad = "\n".join([*lines[:5], ",".join(cols), *lines[6:]]).encode()
    r = upload(serve_url, {"budget": "1000"}, media=bad)
    assert r.status_code == 400 and "media.csv row 5: spend must be >= 0" in r.json()["error"]["message"], (
        r.text
    )
    r = upload(serve_url, {"budget": "1000", "colour": "blue"})
    assert r.status_code == 400 and "unknown form fields ['colour']" in r.json()["error"]["message"], r.text
    r = upload(serve_url, {"budget": "-5"})
    assert r.status_code == 400 and "budget" in r.json()["error"]["message"], r.text
    # the files are the caller's own; the brand name matters to the clean room, whose policy scopes it
    r = upload(serve_url, {"budget": "1000", "manufacturer": "brand_y", "cleanroom": "acme"})
    assert r.status_code == 403 and "brand_y" in r.json()["error"]["message"], r.text


def test_with_a_retailers_clean_room_its_answers_and_refusals_are_said(serve_url: str) -> None:
    """The admin plans for brewmax against the test app's acme room (exact mode) through the clean-room
    deployment. Exact mode checks every release against all earlier ones, room-wide, and the backtest asks the same
    totals again over fewer days: one of the two askings is refused as differencing (the first too, once other tests
    released overlapping cells) — the room's answer for that side, said in the body and the verdict, while the
    full-data side is planned and judged all the same (200)."""
    r = upload(serve_url, {"budget": "1000", "cleanroom": "acme", "manufacturer": "brewmax"}, tenant="admin")
    assert r.status_code == 200, r.text
    body = r.json()
    side = body["cleanroom"]
    assert side["manufacturer"] == "brewmax"
    refusal = side.get("refused") or side["backtest"]["refused"]
    assert "differencing" in refusal and body["verdict"].startswith("the clean room refused the"), body[
        "verdict"
    ]
    if "refused" not in side:  # the totals were released: their cells are not the files' SKUs
        assert side["view"]["cells_released"] >= 1 and "no cell to plan" in side["plan"]["error"]
    assert body["plan"]["scenario"] == "profit_optimal" and body["backtest"]["wape"] > 0
    r = upload(serve_url, {"budget": "1000", "cleanroom": "nowhere"}, tenant="brand_x")
    assert 400 <= r.status_code < 500 and "nowhere" in r.json()["error"]["message"], r.text
