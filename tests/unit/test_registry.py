import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from adapters import AdapterNotFound, AdapterRegistry, InvalidAdapter

META = {"kind": "retailer", "owner": "acme", "base_model": "tiny", "base_model_revision": "abc"}


def peft_dir(
    path: Path,
    rank: int = 4,
    value: float = 0.1,
    modules: tuple[str, ...] = ("q_proj", "v_proj"),
    layer: int = 0,
) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for m in modules:
        tensors[f"base_model.model.model.layers.{layer}.self_attn.{m}.lora_A.weight"] = torch.full(
            (rank, 8), value
        )
        tensors[f"base_model.model.model.layers.{layer}.self_attn.{m}.lora_B.weight"] = torch.full(
            (8, rank), value
        )
    save_file(tensors, str(path / "adapter_model.safetensors"))
    (path / "adapter_config.json").write_text(
        json.dumps({"r": rank, "lora_alpha": 2 * rank, "target_modules": list(modules), "peft_type": "LORA"})
    )
    return path


def test_register_reads_rank_alpha_modules_and_hash(tmp_path: Path) -> None:
    reg = AdapterRegistry(tmp_path / "reg")
    m = reg.register(peft_dir(tmp_path / "a"), id="acme", **META)
    assert (m.rank, m.alpha, m.target_modules) == (4, 8.0, ["q_proj", "v_proj"])
    assert len(m.sha256) == 64
    assert reg.get("acme") == m
    assert reg.path("acme") == tmp_path / "reg" / "acme" / "1"
    assert [x.id for x in reg.list()] == ["acme"]


def test_versions_never_overwrite_and_latest_wins(tmp_path: Path) -> None:
    reg = AdapterRegistry(tmp_path / "reg")
    v1 = reg.register(peft_dir(tmp_path / "a", value=0.1), id="acme", **META)
    v2 = reg.register(peft_dir(tmp_path / "b", value=0.2), id="acme", version="2", **META)
    v10 = reg.register(peft_dir(tmp_path / "c", value=0.3), id="acme", version="10", **META)
    assert reg.versions("acme") == ["1", "2", "10"]
    assert reg.get("acme") == v10
    assert reg.get("acme", "1") == v1 and v1.sha256 != v2.sha256
    with pytest.raises(InvalidAdapter, match="already exists"):
        reg.register(peft_dir(tmp_path / "d"), id="acme", version="2", **META)
    assert reg.get("acme", "2") == v2


def test_remove_and_not_found(tmp_path: Path) -> None:
    reg = AdapterRegistry(tmp_path / "reg")
    reg.register(peft_dir(tmp_path / "a"), id="acme", **META)
    reg.remove("acme", "1")
    with pytest.raises(AdapterNotFound):
        reg.get("acme")
    with pytest.raises(AdapterNotFound, match="no version"):
        reg.register(peft_dir(tmp_path / "b"), id="acme", **META) and reg.get("acme", "7")


def _bin(p: Path) -> Path:
    d = peft_dir(p)
    (d / "adapter_model.bin").write_bytes(b"pickle")
    return d


def _nan(p: Path) -> Path:
    return peft_dir(p, value=float("nan"))


def _inf(p: Path) -> Path:
    return peft_dir(p, value=float("inf"))


def _no_weights(p: Path) -> Path:
    d = peft_dir(p)
    (d / "adapter_model.safetensors").unlink()
    return d


def _regex_modules(p: Path) -> Path:
    d = peft_dir(p)
    cfg = json.loads((d / "adapter_config.json").read_text())
    cfg["target_modules"] = ".*proj"
    (d / "adapter_config.json").write_text(json.dumps(cfg))
    return d


def _bad_json(p: Path) -> Path:
    d = peft_dir(p)
    (d / "adapter_config.json").write_text("{not json")
    return d


@pytest.mark.parametrize(
    ("make", "fields", "reason"),
    [
        (_bin, {}, "pickle"),
        (_nan, {}, "NaN or Inf"),
        (_inf, {}, "NaN or Inf"),
        (_no_weights, {}, "lacks adapter_model.safetensors"),
        (_regex_modules, {}, "explicit list"),
        (_bad_json, {}, "not valid JSON"),
        (lambda p: peft_dir(p, rank=32), {}, "above the configured maximum"),
        (peft_dir, {"id": "../evil"}, "invalid adapter id"),
        (peft_dir, {"id": "a/b"}, "invalid adapter id"),
        (peft_dir, {"id": "Ünï"}, "invalid adapter id"),
        (peft_dir, {"id": "x" * 65}, "invalid adapter id"),
        (peft_dir, {"version": "v1"}, "invalid adapter version"),
        (peft_dir, {"sha256": "0" * 64}, "disagrees with the files"),
        (peft_dir, {"rank": 8}, "disagrees with the files"),
    ],
)
def test_invalid_adapters_are_refused_and_nothing_is_left(tmp_path: Path, make, fields, reason) -> None:  # type: ignore[no-untyped-def]
    reg = AdapterRegistry(tmp_path / "reg", max_rank=16)
    src = make(tmp_path / "src")
    with pytest.raises(InvalidAdapter, match=reason):
        reg.register(src, **{"id": "acme", **META, **fields})
    assert reg.list() == []
    assert not any((tmp_path / "reg").rglob("*.safetensors"))


def test_size_limit(tmp_path: Path) -> None:
    reg = AdapterRegistry(tmp_path / "reg", max_bytes=100)
    with pytest.raises(InvalidAdapter, match="over the 100 limit"):
        reg.register(peft_dir(tmp_path / "a"), id="acme", **META)


def test_gc_removes_interrupted_registrations(tmp_path: Path) -> None:
    reg = AdapterRegistry(tmp_path / "reg")
    (tmp_path / "reg" / "acme" / ".tmp-crashed").mkdir(parents=True)
    assert reg.list() == []
    assert reg.gc() == 1
    assert not (tmp_path / "reg" / "acme" / ".tmp-crashed").exists()


def base_dir(tmp_path: Path, **over: int) -> Path:
    d = tmp_path / "base"
    d.mkdir(exist_ok=True)
    cfg = {
        "hidden_size": 8,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "intermediate_size": 16,
        "num_hidden_layers": 2,
        **over,
    }
    (d / "config.json").write_text(json.dumps(cfg))
    (d / "rmn-model.json").write_text(json.dumps({"sha256": "f" * 64}))
    write_llama_weights(d / "model.safetensors", cfg)
    return d


def write_llama_weights(path: Path, cfg: dict[str, int]) -> None:
    """Zero weights in a Llama checkpoint's names and shapes ([out, in]) for the config."""
    import torch
    from safetensors.torch import save_file

    hidden, heads, kv, inter = (
        cfg[k] for k in ("hidden_size", "num_attention_heads", "num_key_value_heads", "intermediate_size")
    )
    head_dim = hidden // heads
    shapes = {
        "self_attn.q_proj": (heads * head_dim, hidden),
        "self_attn.k_proj": (kv * head_dim, hidden),
        "self_attn.v_proj": (kv * head_dim, hidden),
        "self_attn.o_proj": (hidden, heads * head_dim),
        "mlp.gate_proj": (inter, hidden),
        "mlp.up_proj": (inter, hidden),
        "mlp.down_proj": (hidden, inter),
    }
    tensors = {"model.embed_tokens.weight": torch.zeros(4, hidden)}
    for i in range(cfg["num_hidden_layers"]):
        tensors |= {f"model.layers.{i}.{m}.weight": torch.zeros(shape) for m, shape in shapes.items()}
    save_file(tensors, str(path))


def test_base_model_check_accepts_a_fitting_adapter_and_records_revision(tmp_path: Path) -> None:
    reg = AdapterRegistry(tmp_path / "reg")
    fields = {k: v for k, v in META.items() if k != "base_model_revision"}
    m = reg.register(peft_dir(tmp_path / "a"), base_model_dir=base_dir(tmp_path), id="acme", **fields)
    assert m.base_model_revision == "f" * 64


def test_an_adapter_for_a_deeper_model_is_refused(tmp_path: Path) -> None:
    reg = AdapterRegistry(tmp_path / "reg")
    fields = {k: v for k, v in META.items() if k != "base_model_revision"}
    with pytest.raises(InvalidAdapter, match="layer 2 but the base model has 2 layers"):
        reg.register(
            peft_dir(tmp_path / "a", layer=2), base_model_dir=base_dir(tmp_path), id="acme", **fields
        )


@pytest.mark.parametrize(
    ("over", "modules", "fields", "reason"),
    [
        ({"hidden_size": 16}, ("q_proj",), {}, "shape"),
        ({"num_key_value_heads": 1}, ("v_proj",), {}, "shape"),
        (
            {"num_hidden_layers": 0},
            ("q_proj",),
            {},
            r"unknown target modules \['q_proj'\]; this base model \(unknown\) has \[\]",
        ),
        ({}, ("q_proj", "lm_head"), {}, "unknown target modules"),
        ({}, ("q_proj",), {"base_model_revision": "abc"}, "not the base model's"),
    ],
)
def test_base_model_mismatch_is_refused(tmp_path: Path, over, modules, fields, reason) -> None:  # type: ignore[no-untyped-def]
    reg = AdapterRegistry(tmp_path / "reg")
    base_fields = {k: v for k, v in META.items() if k != "base_model_revision"}
    with pytest.raises(InvalidAdapter, match=reason):
        reg.register(
            peft_dir(tmp_path / "a", modules=modules),
            base_model_dir=base_dir(tmp_path, **over),
            id="acme",
            **base_fields,
            **fields,
        )
    assert reg.list() == []


def test_retired_versions_are_skipped_by_latest_and_refused_when_pinned(tmp_path: Path) -> None:
    from adapters import AdapterRetired

    reg = AdapterRegistry(tmp_path / "reg")
    assert reg.next_version("acme") == "1"
    reg.register(peft_dir(tmp_path / "a", value=0.1), id="acme", **META)
    reg.register(peft_dir(tmp_path / "b", value=0.2), id="acme", version=reg.next_version("acme"), **META)
    assert reg.next_version("acme") == "3" and reg.ids() == ["acme"]
    record = reg.retire("acme", "2", by="ops")
    assert record["by"] == "ops" and reg.retire("acme", "2", by="other") == record  # idempotent
    assert reg.get("acme").version == "1"  # latest skips the retired version
    with pytest.raises(AdapterRetired, match="retired"):
        reg.get("acme", "2")
    assert (
        reg.manifest("acme", "2").version == "2"
        and (tmp_path / "reg/acme/2/adapter_model.safetensors").is_file()
    )
    reg.retire("acme", "1", by="ops")
    with pytest.raises(AdapterRetired, match="every version"):
        reg.get("acme")
    assert reg.list() == [] and reg.next_version("acme") == "3"  # a retired number is never reused
    with pytest.raises(AdapterNotFound):
        reg.retire("acme", "7", by="ops")


def test_upload_rules_per_role(tmp_path: Path) -> None:
    from federation.errors import FederationError
    from federation.tenants import Tenant
    from serving.adapter_api import upload_fields
    from serving.errors import status_of

    reg = AdapterRegistry(tmp_path / "reg")
    brand = Tenant(id="brewmax", role="manufacturer", api_key_sha256="0" * 64)
    other = Tenant(id="other", role="manufacturer", api_key_sha256="1" * 64)
    admin = Tenant(id="admin", role="admin", api_key_sha256="2" * 64)
    retailer = Tenant(id="acme", role="retailer", api_key_sha256="3" * 64)
    fields = upload_fields(brand, {"id": "bm", "kind": "manufacturer"}, reg)
    assert fields == {"id": "bm", "version": "1", "kind": "manufacturer", "visibility": "private",
                      "owner": "brewmax", "description": ""}  # fmt: skip
    reg.register(peft_dir(tmp_path / "a"), **{**fields, "base_model": "tiny", "base_model_revision": "x"})
    assert upload_fields(brand, {"id": "bm", "kind": "manufacturer"}, reg)["version"] == "2"
    for tenant, form, status in [
        (other, {"id": "bm", "kind": "manufacturer"}, 403),  # someone else's id
        (brand, {"id": "x", "kind": "task"}, 403),
        (brand, {"id": "x", "kind": "manufacturer", "visibility": "public"}, 403),
        (retailer, {"id": "x", "kind": "retailer"}, 403),
        (admin, {"id": "bm", "kind": "task"}, 400),  # a new version keeps its kind
        (brand, {"id": "x"}, 400),
        (brand, {"id": "x", "kind": "manufacturer", "description": "d" * 501}, 400),
    ]:
        with pytest.raises(FederationError) as e:
            upload_fields(tenant, form, reg)
        assert status_of(e.value) == status, (tenant.id, form)
    assert upload_fields(admin, {"id": "rm", "kind": "industry"}, reg)["visibility"] == "public"
