"""``engine.lora_target_modules`` (serving/engine.py ``lora_targets``, serving/adapter_api.py ``check_targets``):
``registry`` resolves to the modules the registered adapters target, so vLLM wraps only those layers; an upload
targeting another module is refused with the reason before anything is written."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters import AdapterRegistry, InvalidAdapter
from adapters.registry import CONFIG, WEIGHTS
from adapters.synthetic import make_random_adapter
from serving.adapter_api import check_targets, register_files
from serving.engine import lora_targets

META = {"kind": "task", "owner": "t", "base_model": "tiny", "base_model_revision": "rev"}
UPLOAD = {"id": "mlp", "kind": "task", "owner": "t"}  # an upload's fields: the base model is the engine's


def test_registry_resolves_to_the_modules_its_adapters_target(tiny_model: Path, tmp_path: Path) -> None:
    reg = AdapterRegistry(tmp_path / "reg", max_rank=64)
    assert lora_targets("registry", reg) is None  # empty: every supported module
    assert lora_targets(None, reg) is None and lora_targets(["q_proj"], reg) == {"q_proj"}
    reg.register(make_random_adapter(tiny_model, tmp_path / "qv", seed=1), id="qv", **META)
    assert lora_targets("registry", reg) == {"q_proj", "v_proj"}
    src = make_random_adapter(tiny_model, tmp_path / "qo", seed=2, target_modules=("q_proj", "o_proj"))
    reg.register(src, id="qo", **META)
    assert lora_targets("registry", reg) == {"q_proj", "v_proj", "o_proj"}


def test_an_upload_targeting_another_module_is_refused_before_anything_is_written(
    tiny_model: Path, tmp_path: Path
) -> None:
    reg = AdapterRegistry(tmp_path / "reg", max_rank=64)
    src = make_random_adapter(tiny_model, tmp_path / "mlp", seed=3, target_modules=("q_proj", "gate_proj"))
    files = {name: (src / name).read_bytes() for name in (CONFIG, WEIGHTS)}
    with pytest.raises(InvalidAdapter, match=r"also targets \['gate_proj'\]"):
        register_files(reg, tiny_model, files, dict(UPLOAD), targets={"q_proj", "v_proj"})
    assert reg.ids() == []
    m = register_files(reg, tiny_model, files, dict(UPLOAD), targets={"q_proj", "gate_proj", "v_proj"})
    assert m.target_modules == ["gate_proj", "q_proj"]
    check_targets({"q_proj"}, {"q_proj", "v_proj"})  # a subset passes
    check_targets({"q_proj", "k_proj", "v_proj"}, {"qkv_proj"})  # vLLM's fused layer stands for its parts
    check_targets({"k_proj"}, {"q_proj"})  # and a part for the fused layer: vLLM wraps qkv_proj for either
    with pytest.raises(InvalidAdapter, match=r"also targets \['down_proj', 'up_proj'\]"):
        check_targets({"q_proj", "up_proj", "down_proj"}, {"qkv_proj", "o_proj"})


def test_a_max_lora_rank_above_what_the_registrys_stacks_need_is_pointed_out(
    tiny_model: Path, tmp_path: Path
) -> None:
    from serving.engine import rank_advice

    reg = AdapterRegistry(tmp_path / "reg", max_rank=64)
    assert rank_advice(reg, 64) is None  # nothing registered: nothing known
    for kind, seed in (("industry", 1), ("retailer", 2), ("task", 3)):  # rank 8 each (the synthetic default)
        src = make_random_adapter(tiny_model, tmp_path / kind, seed=seed)
        reg.register(src, id=kind, **{**META, "kind": kind})
    advice = rank_advice(reg, 64)
    assert advice is not None and "rank 24: 32 would cover it" in advice
    assert rank_advice(reg, 32) is None
