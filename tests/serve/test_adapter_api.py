"""Adapters over HTTP on the Serve tier: a brand uploads its private adapter, serves it, publishes a new
version without a restart, retires the old one (pinned requests get 410); every refusal leaves nothing behind.
Registration runs on an engine replica against the base model, with the CLI's checks."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from adapters import AdapterRegistry
from tests.tenants import ADMIN, auth

ID = "brand_x_promo"


def files(src: Path, config: bytes | None = None, weights: bytes | None = None) -> dict[str, Any]:
    return {
        "adapter_config.json": ("adapter_config.json", config or (src / "adapter_config.json").read_bytes()),
        "adapter_model.safetensors": ("w", weights or (src / "adapter_model.safetensors").read_bytes()),
    }


def upload(url: str, headers: dict[str, str], src: Path, **kw: Any) -> httpx.Response:
    data = {"id": ID, "kind": "manufacturer", "description": "summer promo tone", **kw.pop("data", {})}
    return httpx.post(f"{url}/v1/adapters", headers=headers, data=data, files=files(src, **kw), timeout=60)


def chat(url: str, headers: dict[str, str], model: str) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    return httpx.post(f"{url}/v1/chat/completions", headers=headers, json=body, timeout=30)


def stored(registry: AdapterRegistry, adapter_id: str | None = ID) -> list[str]:
    """Everything stored under the adapter (versions, leftovers, retirement records), or in the registry."""
    return registry.store.listing(adapter_id)


def _usage_when(url: str, headers: dict[str, str], done: Any, within_s: float = 10.0) -> dict[str, Any]:
    """``GET /v1/adapters/{ID}`` until its latest version's usage satisfies ``done`` (counts from other router
    replicas arrive within their flush interval), or ``within_s`` passed: the last answer either way."""
    deadline = time.monotonic() + within_s
    while True:
        show: dict[str, Any] = httpx.get(f"{url}/v1/adapters/{ID}", headers=headers).json()
        if done(show["versions"][0]["usage"]) or time.monotonic() > deadline:
            return show
        time.sleep(0.25)


def test_upload_serve_new_version_retire(
    serve_url: str, adapter_dirs: dict[str, Path], registry: AdapterRegistry, app_config: Any
) -> None:
    r = upload(serve_url, auth("brand_x"), adapter_dirs["alpha"])
    assert r.status_code == 201, r.text
    m = r.json()
    assert (m["id"], m["version"], m["owner"], m["visibility"], m["kind"]) == (
        ID,
        "1",
        "brand_x",
        "private",
        "manufacturer",
    )
    sha1 = m["sha256"]
    # served at once, to its owner only
    r = chat(serve_url, auth("brand_x"), f"base:{ID}")
    assert r.status_code == 200 and r.headers["x-rmn-model"] == f"base:{ID}@1"
    assert chat(serve_url, auth("brand_y"), f"base:{ID}").status_code == 403
    # metadata: the owner and admins see it; another brand does not know it exists
    show = httpx.get(f"{serve_url}/v1/adapters/{ID}", headers=auth("brand_x")).json()
    assert (
        show["latest"] == "1" and show["versions"][0]["sha256"] == sha1 and show["versions"][0]["rank"] == 8
    )
    assert httpx.get(f"{serve_url}/v1/adapters/{ID}", headers=ADMIN).status_code == 200
    # usage counts: cluster-wide per version (the board outlives apps: compare before and after); a router sees
    # its own requests at once and the other routers' within their flush (2 s): read until then
    show = _usage_when(serve_url, auth("brand_x"), lambda usage: usage["requests"] >= 1)
    used = show["versions"][0]["usage"]["requests"]
    assert used >= 1 and show["requests"] >= used
    for _ in range(3):
        assert chat(serve_url, auth("brand_x"), f"base:{ID}@1").status_code == 200
    again = _usage_when(serve_url, ADMIN, lambda usage: usage["requests"] >= used + 3)["versions"][0]["usage"]
    assert again["requests"] == used + 3 and again["last_used"] > time.time() - 60
    assert httpx.get(f"{serve_url}/v1/adapters/{ID}", headers=auth("brand_y")).status_code == 404
    listed = {a["id"] for a in httpx.get(f"{serve_url}/v1/adapters", headers=auth("brand_y")).json()["data"]}
    assert ID not in listed and "brand_y" in listed and "brand_x" not in listed

    # a new version (other weights) is served without a restart; the old one stays reachable pinned
    r = upload(serve_url, auth("brand_x"), adapter_dirs["beta"])
    assert r.status_code == 201 and r.json()["version"] == "2" and r.json()["sha256"] != sha1
    assert chat(serve_url, auth("brand_x"), f"base:{ID}").headers["x-rmn-model"] == f"base:{ID}@2"
    assert chat(serve_url, auth("brand_x"), f"base:{ID}@1").status_code == 200

    # retire v1: another brand cannot (it does not see it), the owner can; pinned requests get 410
    url = f"{serve_url}/v1/adapters/{ID}/versions/1"
    assert httpx.delete(url, headers=auth("brand_y")).status_code == 404
    r = httpx.delete(url, headers=auth("brand_x"))
    assert r.status_code == 200 and r.json()["retired"]["by"] == "brand_x"
    gone = chat(serve_url, auth("brand_x"), f"base:{ID}@1")
    assert gone.status_code == 410 and "retired" in gone.json()["error"]["message"]
    assert chat(serve_url, auth("brand_x"), f"base:{ID}").headers["x-rmn-model"] == f"base:{ID}@2"
    assert httpx.delete(url, headers=auth("brand_x")).status_code == 200  # idempotent
    versions = httpx.get(f"{serve_url}/v1/adapters/{ID}", headers=auth("brand_x")).json()["versions"]
    assert [v["retired"] is not None for v in versions] == [True, False]
    assert registry.files(ID, "1").is_dir()  # files kept
    # the audit log has both the registration and the retirement
    audit = [json.loads(x) for x in Path(app_config.federation.audit_log).read_text().splitlines()]
    events = {(e["event"], e.get("adapter")) for e in audit}
    assert ("adapter_register", f"{ID}@2") in events and ("adapter_retire", f"{ID}@1") in events


def _big_config(src: Path) -> bytes:
    cfg = json.loads((src / "adapter_config.json").read_text())
    cfg["r"] = 32  # above max_lora_rank 16
    return json.dumps(cfg).encode()


@pytest.mark.parametrize(
    ("who", "kw", "status", "needle"),
    [
        ("brand_y", {}, 403, "belongs to another tenant"),
        ("brand_x", {"data": {"kind": "retailer"}}, 403, "only private manufacturer adapters"),
        ("brand_x", {"data": {"visibility": "public"}}, 403, "only private manufacturer adapters"),
        ("brand_x", {"data": {"owner": "brand_y"}}, 403, "only private manufacturer adapters"),
        ("agency", {}, 403, "may not register"),
        (None, {}, 401, "API key"),
        ("brand_x", {"config": b"{not json"}, 400, "not valid JSON"),
        ("brand_x", {"weights": b"\x00" * 64}, 400, "not a readable safetensors file"),
        ("brand_x", {"config": b"[1, 2]"}, 400, "must be a JSON object"),
        ("brand_x", {"config": b'{"r": "x", "lora_alpha": 8}'}, 400, "must be numbers"),
        ("brand_x", {"config_from": "big"}, 400, "rank 32 is above"),
        ("brand_x", {"weights": b"\x00" * (5 << 20)}, 413, "limit"),
        ("brand_x", {"data": {"id": "../etc"}}, 400, "invalid adapter id"),
        ("brand_x", {"data": {"color": "red"}}, 400, "unknown form fields"),
    ],
)
def test_refusals_write_nothing(
    serve_url: str,
    app_config: Any,
    adapter_dirs: dict[str, Path],
    registry: AdapterRegistry,
    who: str | None,
    kw: dict[str, Any],
    status: int,
    needle: str,
) -> None:
    before = stored(registry)
    if kw.pop("config_from", None):
        kw["config"] = _big_config(adapter_dirs["alpha"])
    if status == 403 and who == "brand_y":  # an id that exists and belongs to brand_x
        registry.versions(ID) or pytest.skip("needs the upload test first")
    headers = auth(who) if who else {}
    r = upload(serve_url, headers, adapter_dirs["gamma"], **kw)
    assert r.status_code == status, r.text
    assert needle in r.json()["error"]["message"]
    assert stored(registry) == before
    # audited, with who asked (when the key is known) and why
    rid = r.headers["x-request-id"]
    records = [json.loads(x) for x in Path(app_config.federation.audit_log).read_text().splitlines()]
    mine = [x for x in records if x.get("request_id") == rid]
    assert [(x["event"], x["status"], x["tenant"]) for x in mine] == [("adapter_register", status, who)], mine


def test_unknown_adapter_is_404_and_missing_parts_are_400(serve_url: str) -> None:
    assert httpx.get(f"{serve_url}/v1/adapters/nope", headers=ADMIN).status_code == 404
    assert httpx.delete(f"{serve_url}/v1/adapters/nope/versions/1", headers=ADMIN).status_code == 404
    assert httpx.delete(f"{serve_url}/v1/adapters/rm/versions/9", headers=ADMIN).status_code == 404
    r = httpx.post(
        f"{serve_url}/v1/adapters", headers=auth("brand_x"), data={"id": "x", "kind": "manufacturer"}
    )
    assert r.status_code == 400 and "missing file parts" in r.json()["error"]["message"]


PAIRS = [
    {
        "prompt": f"Write a promo line {i} for brand_x coffee.",
        "response": "Bold roast coffee, deal of the week.",
    }
    for i in range(30)
]


def train(url: str, who: str, data: str | None = None, **fields: str) -> httpx.Response:
    form = {"id": "brand_x_tuned", "kind": "manufacturer", "steps": "12", "rank": "4", "lr": "0.01", **fields}
    body = data if data is not None else "\n".join(json.dumps(p) for p in PAIRS)
    return httpx.post(
        f"{url}/v1/adapters/train",
        headers=auth(who),
        data=form,
        files={"data.jsonl": ("data.jsonl", body.encode())},
        timeout=60,
    )


def test_train_job_registers_a_private_adapter_usable_in_a_stack(
    serve_url: str, adapter_dirs: dict[str, Path], app_config: Any
) -> None:
    import glob
    import tempfile
    import time

    r = train(serve_url, "brand_x")
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["state"] == "queued" and r.headers["location"] == f"/v1/adapters/jobs/{job['id']}"
    deadline = time.monotonic() + 180
    while job["state"] in ("queued", "running") and time.monotonic() < deadline:
        time.sleep(0.5)
        job = httpx.get(f"{serve_url}/v1/adapters/jobs/{job['id']}", headers=auth("brand_x")).json()
    assert job["state"] == "succeeded", job
    assert job["step"] == 12 and job["heldout_loss_after"] < job["heldout_loss_before"], job
    assert job["adapter"] == "brand_x_tuned@1" and job["records"] == 30
    assert httpx.get(f"{serve_url}/v1/adapters/jobs/{job['id']}", headers=auth("brand_y")).status_code == 404
    # the training data's scratch directory is gone
    assert not glob.glob(f"{tempfile.gettempdir()}/rmn-{job['id']}-*")
    # private to brand_x, usable alone and in a stack
    assert httpx.get(f"{serve_url}/v1/adapters/brand_x_tuned", headers=auth("brand_y")).status_code == 404
    view = httpx.get(f"{serve_url}/v1/adapters/brand_x_tuned", headers=auth("brand_x")).json()
    assert (view["owner"], view["visibility"], view["versions"][0]["rank"]) == ("brand_x", "private", 4)
    # a stack with an adapter uploaded over HTTP (the session's fixture adapters carry a made-up base
    # revision, so composing with them is refused, rightly)
    up = upload(serve_url, auth("brand_x"), adapter_dirs["gamma"], data={"id": "brand_x_tone"})
    assert up.status_code == 201, up.text
    r = chat(serve_url, auth("brand_x"), "base:brand_x_tone+brand_x_tuned")
    assert r.status_code == 200 and r.headers["x-rmn-model"] == "base:brand_x_tone@1+brand_x_tuned@1", r.text
    assert chat(serve_url, auth("brand_y"), "base:brand_x_tuned").status_code == 403
    assert_the_records_outlive_the_boards(serve_url, job, app_config)


def assert_the_records_outlive_the_boards(serve_url: str, job: dict[str, Any], app_config: Any) -> None:
    """A new cluster starts without the job and usage boards (Ray actors): kill both, and the job and the
    usage counts read back the same, from the records beside the registry."""
    import time

    import ray

    from serving.records import Records

    def usage() -> dict[str, Any]:
        view = httpx.get(f"{serve_url}/v1/adapters/brand_x_tuned", headers=auth("brand_x")).json()
        return dict(view["versions"][0]["usage"])

    time.sleep(3)  # the router flushes its counts to the board every 2 s
    before = usage()
    assert before["requests"] >= 1, before
    records = Records(app_config.adapters.root, app_config.adapters.storage_options)
    assert records.read(f"jobs/{job['id']}.json") == job  # beside this app's registry
    for name in ("rmn-adapter-jobs", "rmn-adapter-usage"):
        ray.kill(ray.get_actor(f"{name}-{records.key}", namespace="rmn"))
    again = httpx.get(f"{serve_url}/v1/adapters/jobs/{job['id']}", headers=auth("brand_x"))
    assert again.status_code == 200 and again.json() == job, again.text
    assert usage() == before


@pytest.mark.parametrize(
    ("who", "data", "fields", "status", "needle"),
    [
        ("brand_x", "\n".join(json.dumps(p) for p in PAIRS[:5]), {}, 400, "need at least 10 records"),
        ("brand_x", '{"prompt": 1}\n' * 12, {}, 400, "data.jsonl:1: expected"),
        ("brand_x", None, {"steps": "0"}, 400, "training setting steps"),
        ("brand_x", None, {"epochs": "3"}, 400, "training setting epochs"),
        ("brand_x", None, {"rank": "32"}, 400, "above engine.max_lora_rank"),
        ("brand_x", None, {"kind": "retailer"}, 403, "only private manufacturer adapters"),
        ("agency", None, {}, 403, "may not register"),
    ],
)
def test_train_refusals_start_nothing(
    serve_url: str,
    registry: AdapterRegistry,
    who: str,
    data: str | None,
    fields: dict[str, str],
    status: int,
    needle: str,
) -> None:
    before = stored(registry, None)
    r = train(serve_url, who, data, id="never_trained", **fields)
    assert r.status_code == status, r.text
    assert needle in r.json()["error"]["message"]
    assert stored(registry, None) == before
