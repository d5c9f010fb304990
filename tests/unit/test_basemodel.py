"""Bring your own model: sharded checkpoints of several architectures, checked from their own weight names.

Each architecture is a tiny random model saved by transformers with a small ``max_shard_size`` (4 shards),
so the index + shards path is the one exercised; adapters are made by PEFT against each model.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from adapters import AdapterRegistry, InvalidAdapter
from adapters.basemodel import INDEX, base_revision, layout, register_model
from adapters.compose import Component, compose_to_dir
from adapters.synthetic import make_random_adapter
from adapters.validate import check_against_base

SHARD = "1500KB"  # the tiny models are ~5 MB in bf16: 4 shards
# architecture -> (modules an adapter targets, the leaf names the model offers)
CASES = {
    "llama": (
        ["q_proj", "v_proj", "down_proj"],
        ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"],
    ),
    "qwen2": (
        ["q_proj", "k_proj", "v_proj", "o_proj"],
        ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"],
    ),
    "mistral": (
        ["q_proj", "v_proj"],
        ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"],
    ),
    "gemma": (
        ["q_proj", "o_proj", "up_proj"],
        ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"],
    ),
    "phi3": (["qkv_proj", "gate_up_proj", "o_proj"], ["down_proj", "gate_up_proj", "o_proj", "qkv_proj"]),
}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from serving.modelprep.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("archs")
    return {
        arch: build_tiny_model(root / arch, seed=1, architecture=arch, max_shard_size=SHARD) for arch in CASES
    }


@pytest.fixture(scope="module")
def adapters_for(models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    root = tmp_path_factory.mktemp("arch-adapters")
    return {
        arch: [
            make_random_adapter(
                models[arch], root / f"{arch}-{seed}", seed=seed, rank=2 + seed, target_modules=CASES[arch][0]
            )
            for seed in (1, 2)
        ]
        for arch in CASES
    }


@pytest.mark.parametrize("arch", sorted(CASES))
def test_layout_comes_from_the_checkpoint_itself(arch: str, models: dict[str, Path]) -> None:
    found = layout(models[arch])
    assert len(found.weight_files) == 4 and (models[arch] / INDEX).is_file()
    assert found.num_layers == 4 and found.targetable == CASES[arch][1]
    config = json.loads((models[arch] / "config.json").read_text())
    assert found.architecture == config["architectures"][0]
    hidden = config["hidden_size"]
    if arch == "gemma":  # head_dim 32 x 4 heads = 128 != hidden 256: shapes are read, not derived
        assert found.modules["model.layers.0.self_attn.q_proj"] == (hidden, 128)
    if arch == "phi3":  # fused: q + k + v rows, gate + up rows
        heads, kv = config["num_attention_heads"], config["num_key_value_heads"]
        head_dim = hidden // heads
        assert found.modules["model.layers.3.self_attn.qkv_proj"] == (hidden, (heads + 2 * kv) * head_dim)
        assert found.modules["model.layers.3.mlp.gate_up_proj"] == (hidden, 2 * config["intermediate_size"])


@pytest.mark.parametrize("arch", sorted(CASES))
def test_adapters_validate_compose_and_register_against_each_architecture(
    arch: str, models: dict[str, Path], adapters_for: dict[str, list[Path]], tmp_path: Path
) -> None:
    model = models[arch]
    for adapter in adapters_for[arch]:
        check_against_base(adapter, model)
    composite = tmp_path / "composite"
    rank = compose_to_dir([Component(a, 0.5) for a in adapters_for[arch]], composite)
    assert rank == 3 + 4
    check_against_base(composite, model)  # the stack fits the model as any adapter does
    reg = AdapterRegistry(tmp_path / "registry", max_rank=16)
    m = reg.register(
        adapters_for[arch][0],
        base_model_dir=model,
        base_model=arch,
        id=f"{arch}-brand",
        kind="manufacturer",
        owner="b",
    )
    assert m.base_model_revision == base_revision(model) and sorted(m.target_modules) == sorted(
        CASES[arch][0]
    )


@pytest.mark.parametrize(
    ("adapter_arch", "model_arch", "message"),
    [
        ("llama", "phi3", "unknown target modules ['q_proj', 'v_proj']"),  # Phi-3 fuses q/k/v
        ("phi3", "llama", "unknown target modules ['gate_up_proj', 'qkv_proj']"),
        ("gemma", "llama", "has shape"),  # same names, another head layout
    ],
)
def test_an_adapter_for_another_architecture_is_refused_with_the_reason(
    adapter_arch: str,
    model_arch: str,
    message: str,
    models: dict[str, Path],
    adapters_for: dict[str, list[Path]],
) -> None:
    with pytest.raises(InvalidAdapter, match=re.escape(message)):
        check_against_base(adapters_for[adapter_arch][0], models[model_arch])


def test_a_missing_shard_or_a_non_model_directory_is_a_clear_error(
    models: dict[str, Path], tmp_path: Path
) -> None:
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(models["qwen2"], broken)
    (broken / "model-00002-of-00004.safetensors").unlink()
    with pytest.raises(
        InvalidAdapter, match=re.escape("shards named by model.safetensors.index.json are missing")
    ):
        layout(broken)
    with pytest.raises(InvalidAdapter, match=re.escape("has no config.json")):
        layout(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(InvalidAdapter, match="not a Hugging Face model directory with safetensors weights"):
        layout(tmp_path)


def test_uploads_against_a_registered_sharded_model_do_not_rehash_shards(
    models: dict[str, Path],
    adapters_for: dict[str, list[Path]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import shutil

    from adapters import hashing

    model = tmp_path / "model"
    shutil.copytree(models["mistral"], model)
    hashed: list[str] = []
    real = hashing.sha256_file

    def counting(path: Path) -> str:
        hashed.append(Path(path).name)
        return real(path)

    monkeypatch.setattr(hashing, "sha256_file", counting)
    record = register_model(model)  # `rmn model register`: hashes every shard once
    assert sorted(hashed) == sorted([*layout(model).weight_files, INDEX])
    assert record["revision"] == base_revision(model) and len(record["files"]) == 5
    hashed.clear()
    reg = AdapterRegistry(tmp_path / "registry", max_rank=16)
    for i, adapter in enumerate(adapters_for["mistral"]):
        reg.register(adapter, base_model_dir=model, base_model="m", id=f"a{i}", kind="task", owner="o")
    assert not [name for name in hashed if name.startswith("model-")], hashed  # only the adapters' own files


def test_an_unregistered_model_is_hashed_once_per_process(
    models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    from adapters import hashing

    model = tmp_path / "model"
    shutil.copytree(models["gemma"], model)
    calls: list[Any] = []
    real = hashing.sha256_file
    monkeypatch.setattr(hashing, "sha256_file", lambda p: calls.append(p) or real(p))
    first = base_revision(model)
    assert len(calls) == 5
    assert base_revision(model) == first and len(calls) == 5  # cached: no second pass over the shards
    # a changed shard is a new revision (the cache key is the files' size and mtime)
    shard = model / "model-00004-of-00004.safetensors"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    assert base_revision(model) != first


def test_rmn_model_register_cli(
    models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    from serving.cli.main import main

    model = tmp_path / "phi3"
    shutil.copytree(models["phi3"], model)
    assert main(["model", "register", str(model), "--revision", "hf-commit-abc123"]) == 0
    out = capsys.readouterr().out
    assert "Phi3ForCausalLM, 4 layers, 4 weight files, revision hf-commit-ab" in out and "qkv_proj" in out
    assert json.loads((model / "rmn-model.json").read_text())["revision"] == "hf-commit-abc123"
    assert base_revision(model) == "hf-commit-abc123"
    assert main(["model", "register", str(tmp_path / "nothing-here")]) == 1
    assert "has no config.json" in capsys.readouterr().err
