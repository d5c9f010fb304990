"""The plugin's ops against a pure-torch per-token reference (index -1 contributes zero)."""

from pathlib import Path

import pytest
import torch

from serving.engines import lora_plugin as fix


def reference_shrink(x: torch.Tensor, a: torch.Tensor, idx: torch.Tensor, scale: float) -> torch.Tensor:
    out = torch.zeros(x.shape[0], a.shape[-2])
    for t, i in enumerate(idx.tolist()):
        if i >= 0:
            out[t] = scale * (x[t] @ a[i, 0].T)
    return out


def reference_expand(y: torch.Tensor, b: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    out = torch.zeros(y.shape[0], b.shape[-2])
    for t, i in enumerate(idx.tolist()):
        if i >= 0:
            out[t] = y[t] @ b[i, 0].T
    return out


@pytest.fixture
def data() -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 16, generator=g)  # [tokens, in]
    a = torch.randn(3, 1, 4, 16, generator=g)  # [slots, 1, r, in]
    b = torch.randn(3, 1, 12, 4, generator=g)  # [slots, 1, out, r]
    idx = torch.tensor([-1, 0, 2, -1, 1])
    return x, a, b, idx


def test_shrink_masks_no_adapter_rows(data: tuple[torch.Tensor, ...]) -> None:
    x, a, _, idx = data
    out = torch.full((5, 4), 7.0)
    fix.bgmv_shrink(x, a, out, idx, 0.5)
    torch.testing.assert_close(out, reference_shrink(x, a, idx, 0.5))
    assert out[0].abs().sum() == 0 and out[3].abs().sum() == 0


def test_expand_adds_nothing_for_no_adapter_rows(data: tuple[torch.Tensor, ...]) -> None:
    _, _, b, idx = data
    y = torch.randn(5, 4, generator=torch.Generator().manual_seed(1))
    base = torch.randn(5, 12, generator=torch.Generator().manual_seed(2))
    out = base.clone()
    fix.bgmv_expand(y, b, out, idx, add_inputs=True)
    torch.testing.assert_close(out, base + reference_expand(y, b, idx))
    torch.testing.assert_close(out[0], base[0])


def test_expand_slice(data: tuple[torch.Tensor, ...]) -> None:
    _, _, b, idx = data
    y = torch.randn(5, 4, generator=torch.Generator().manual_seed(3))
    out = torch.zeros(5, 30)
    fix.bgmv_expand_slice(y, b, out, idx, slice_offset=10, slice_size=12, add_inputs=True)
    torch.testing.assert_close(out[:, 10:22], reference_expand(y, b, idx))
    assert out[:, :10].abs().sum() == 0 and out[:, 22:].abs().sum() == 0


def test_register_patches_vllm_cpu_punica_and_is_idempotent() -> None:
    pytest.importorskip("vllm")
    fix.register()
    fix.register()
    from vllm.lora.ops.torch_ops import lora_ops
    from vllm.lora.punica_wrapper import punica_cpu

    assert fix.is_patched()
    assert lora_ops.bgmv_shrink is fix.bgmv_shrink and lora_ops.bgmv_expand is fix.bgmv_expand
    assert punica_cpu.bgmv_expand_slice is fix.bgmv_expand_slice
    # sgmv ops route through the patched bgmv ones: index -1 rows stay zero.
    x = torch.randn(3, 16)
    a = torch.randn(2, 1, 4, 16)
    out = torch.full((3, 4), 9.0)
    lora_ops.sgmv_shrink(x, a, out, None, torch.tensor([1, 2]), torch.tensor([-1, 1]), 2, 2, 3, 1.0)
    assert out[0].abs().sum() == 0 and out[1:].abs().sum() > 0


def test_entry_point_is_declared() -> None:
    from importlib.metadata import entry_points

    names = {ep.name: ep.value for ep in entry_points(group="vllm.general_plugins")}
    assert names.get("rmn_cpu_lora_fix") == "serving.engines.lora_plugin:register"


def test_vllm_reads_lora_files_from_bytes_with_the_same_tensors(tmp_path: Path) -> None:
    """After register(), vLLM's LoRA loader opens adapter files with BytesSafeOpen (not the mmap reader, which
    keeps memory per call) and gets the same names and tensors, bit for bit."""
    import safetensors
    import vllm.lora.lora_model as lora_model
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(1)
    tensors = {
        f"base_model.model.layers.{i}.q_proj.lora_A.weight": torch.randn(4, 8, generator=g) for i in range(3)
    }
    path = tmp_path / "adapter_model.safetensors"
    save_file(tensors, str(path))
    fix.register()
    assert lora_model.safetensors.safe_open is fix.BytesSafeOpen
    with (
        lora_model.safetensors.safe_open(str(path), framework="pt") as ours,
        safetensors.safe_open(str(path), framework="pt") as theirs,
    ):
        assert ours.keys() == list(theirs.keys())
        for name in theirs.keys():  # noqa: SIM118 (safe_open has keys(), not iteration)
            assert torch.equal(ours.get_tensor(name), theirs.get_tensor(name))
        with pytest.raises(KeyError):
            ours.get_tensor("nope")
    with pytest.raises(ValueError, match="torch tensors"):
        fix.BytesSafeOpen(path, framework="numpy")
