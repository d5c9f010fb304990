"""Exact composition, proved numerically on the tiny model (float64, PEFT/transformers) + cache behaviour.

Why float64: in fp32 the composite and the hand-merged reference differ by accumulation order alone
(threads, load) by up to ~1e-5 on logits of ~3, so an absolute fp32 bound flakes. In float64 that noise
is ~1e-13, and the bound below (1e-9 relative to the logits) still fails a wrong composite (a dropped
scale or weight moves the logits by > 1e-2) by seven orders of magnitude."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import torch

from adapters import AdapterRegistry, InvalidAdapter
from adapters.cache import CompositeCache, resolve
from adapters.compose import Component, compose_to_dir, load_lora
from adapters.stack import StackPart, parse_stack, stack_text

SPECS = {  # name: (seed, rank, alpha, modules) — mixed ranks, partial module overlap
    "qv4": (11, 4, 8, ("q_proj", "v_proj")),
    "ko8": (12, 8, 8, ("k_proj", "o_proj")),
    "qup16": (13, 16, 32, ("q_proj", "up_proj", "gate_proj")),
    "rs16": (14, 16, 8, ("q_proj", "v_proj")),  # rsLoRA: scaled alpha / sqrt(r) = 2, not alpha / r = 0.5
}
RSLORA = {"rs16"}
META = {"kind": "task", "owner": "t", "base_model": "tiny", "base_model_revision": "rev"}


@pytest.fixture(scope="module")
def comps(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from adapters.synthetic import make_random_adapter

    root = tmp_path_factory.mktemp("compose-src")
    return {
        n: make_random_adapter(
            tiny_model, root / n, seed=s, rank=r, alpha=a, target_modules=m, scale=0.1, rslora=n in RSLORA
        )
        for n, (s, r, a, m) in SPECS.items()
    }


def _logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


def _reference_model(tiny_model: Path, parts: list[tuple[Path, float]]) -> torch.nn.Module:
    """Base weights + sum_i w_i * s_i * B_i @ A_i, merged by hand; s_i = alpha_i / r_i, or alpha_i / sqrt(r_i)
    where the adapter's own config says use_rslora (read here, not through load_lora's scale)."""
    import json
    import math

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model), dtype=torch.float64)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for path, weight in parts:
            cfg = json.loads((path / "adapter_config.json").read_text())
            s = cfg["lora_alpha"] / (math.sqrt(cfg["r"]) if cfg.get("use_rslora") else cfg["r"])
            for module, (a, b) in load_lora(path).modules.items():
                name = module.removeprefix("base_model.model.") + ".weight"
                params[name] += weight * s * (b.double() @ a.double())
    return model


@pytest.mark.parametrize(
    "stack",
    [
        [("qv4", 1.0)],
        [("qv4", 1.0), ("ko8", 1.0)],
        [("qv4", 0.5), ("ko8", 2.0), ("qup16", 0.25)],
        [("qup16", 1.0), ("qv4", 1.0)],
        [("rs16", 1.0)],
        [("qv4", 0.5), ("rs16", 0.25), ("ko8", 1.0)],  # weights whose scales are exact in fp32 (storage)
    ],
    ids=[
        "single",
        "disjoint-modules",
        "weighted-mixed-ranks",
        "overlapping-q",
        "rslora",
        "rslora-in-a-stack",
    ],
)
def test_composite_equals_base_plus_sum_of_deltas(
    tiny_model: Path, comps: dict[str, Path], tmp_path: Path, stack: list[tuple[str, float]]
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    parts = [(comps[n], w) for n, w in stack]
    rank = compose_to_dir([Component(p, w) for p, w in parts], tmp_path / "composite")
    assert rank == sum(SPECS[n][1] for n, _ in stack)
    ids = torch.tensor([[1, 5, 42, 77, 100, 200, 300, 17]])
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model), dtype=torch.float64)
    composed = PeftModel.from_pretrained(base, str(tmp_path / "composite")).double()
    got = _logits(composed, ids)
    want = _logits(_reference_model(tiny_model, parts), ids)
    plain = _logits(AutoModelForCausalLM.from_pretrained(str(tiny_model), dtype=torch.float64), ids)
    assert got.dtype == want.dtype == torch.float64
    assert (want - plain).abs().max() > 1e-2, (
        "the adapters must move the logits for the test to mean anything"
    )
    scale = want.abs().max().item()
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9 * scale)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("a+a", "once"),
        ("a*0", "weight"),
        ("a*11", "weight"),
        ("a@x", "malformed"),
        ("A", "malformed"),
        ("a+" * 8 + "z", "at most"),
        ("a*nan", "malformed"),
        ("", "malformed"),
    ],
)
def test_stack_grammar_rejects(text: str, reason: str) -> None:
    with pytest.raises(InvalidAdapter, match=reason):
        parse_stack(text)


def test_stack_text_round_trip() -> None:
    parts = parse_stack("acme@1+brand_x*0.5+planning@2*1")
    assert parts[1] == StackPart("brand_x", None, 0.5)
    assert stack_text(parts) == "acme@1+brand_x*0.5+planning@2"


@pytest.fixture
def registry(tmp_path: Path, comps: dict[str, Path]) -> AdapterRegistry:
    reg = AdapterRegistry(tmp_path / "reg", max_rank=64)
    for name, path in comps.items():
        reg.register(path, id=name, **META)
    return reg


def test_composite_id_is_content_addressed(registry: AdapterRegistry, comps: dict[str, Path]) -> None:
    a = resolve(registry, parse_stack("qv4+ko8"))
    assert a == resolve(registry, parse_stack("qv4@1+ko8@1"))
    # a stack is a sum: the order it is written in is not part of it
    swapped = resolve(registry, parse_stack("ko8+qv4"))
    assert swapped.composite_id == a.composite_id and swapped.parts == a.parts and swapped.text == a.text
    assert a.composite_id != resolve(registry, parse_stack("qv4+ko8*0.5")).composite_id
    registry.register(comps["qup16"], id="qv4", version="2", **META)  # changed component -> new composite
    b = resolve(registry, parse_stack("qv4+ko8"))
    assert b.composite_id != a.composite_id and {p.id: p.version for p in b.parts}["qv4"] == "2"


def test_components_on_different_base_revisions_are_refused(
    registry: AdapterRegistry, comps: dict[str, Path]
) -> None:
    registry.register(comps["qv4"], id="other", **{**META, "base_model_revision": "different"})
    with pytest.raises(InvalidAdapter, match="different base model revisions"):
        resolve(registry, parse_stack("qv4+other"))


def test_cache_builds_once_under_concurrency(registry: AdapterRegistry, tmp_path: Path) -> None:
    events: list[str] = []
    cache = CompositeCache(tmp_path / "cache", registry, on_event=lambda event, _s: events.append(event))
    stack = resolve(registry, parse_stack("qv4+ko8+qup16"))
    paths: list[Path] = []
    threads = [threading.Thread(target=lambda: paths.append(cache.get_or_build(stack))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(paths)) == 1 and cache.stats.misses == 1 and cache.stats.hits == 7
    assert sorted(events) == ["build"] + ["hit"] * 7
    assert cache.info(stack.composite_id)["rank"] == 28


def test_a_composite_in_the_engines_dtype_is_what_vllm_would_load_from_float32(
    registry: AdapterRegistry, tmp_path: Path
) -> None:
    """vLLM casts a LoRA file's tensors to the model's dtype on load (``Tensor.to``) and, at scale 1, multiplies
    nothing after: a composite written in bfloat16 gives it the very bits the float32 one would, at half the
    bytes, under its own directory (the composite id is unchanged)."""
    from safetensors.torch import load_file

    stack = resolve(registry, parse_stack("qv4*0.7+ko8+qup16*0.3"))
    wide = CompositeCache(tmp_path / "cache", registry).get_or_build(stack)
    cache = CompositeCache(tmp_path / "cache", registry, dtype="bfloat16")
    narrow = cache.get_or_build(stack)
    assert narrow != wide and narrow.name == f"{stack.composite_id}-bfloat16"
    f32, b16 = (load_file(str(p / "adapter_model.safetensors")) for p in (wide, narrow))
    assert f32.keys() == b16.keys()
    for k, v in f32.items():
        assert b16[k].dtype == torch.bfloat16 and torch.equal(v.to(torch.bfloat16), b16[k]), k
    assert (
        json.loads((narrow / "adapter_config.json").read_text())["lora_alpha"]
        == cache.info(stack.composite_id)["rank"]
    )  # scale 1
    assert cache.info(stack.composite_id)["dtype"] == "bfloat16"
    size = lambda p: (p / "adapter_model.safetensors").stat().st_size  # noqa: E731
    assert size(narrow) < 0.55 * size(wide)
    with pytest.raises(ValueError, match="dtype"):
        CompositeCache(tmp_path / "x", registry, dtype="int8")


def test_crash_mid_build_leaves_no_entry(
    registry: AdapterRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = CompositeCache(tmp_path / "cache", registry)
    stack = resolve(registry, parse_stack("qv4+ko8"))
    real_build = cache._build

    def crashing(s, out):  # type: ignore[no-untyped-def]
        real_build(s, out)
        raise RuntimeError("power cut")

    monkeypatch.setattr(cache, "_build", crashing)
    with pytest.raises(RuntimeError):
        cache.get_or_build(stack)
    assert not cache.path(stack.composite_id).exists()
    assert not list((tmp_path / "cache").glob(".tmp-*"))
    monkeypatch.undo()
    assert (cache.get_or_build(stack) / "adapter_model.safetensors").is_file()


def test_lru_gc_keeps_the_cache_under_its_size(registry: AdapterRegistry, tmp_path: Path) -> None:
    cache = CompositeCache(tmp_path / "cache", registry, max_bytes=1)  # every older entry must go
    first = cache.get_or_build(resolve(registry, parse_stack("qv4+ko8")))
    assert cache.get_or_build(resolve(registry, parse_stack("ko8+qv4"))) == first  # one entry for both orders
    second = cache.get_or_build(resolve(registry, parse_stack("qv4+ko8*0.5")))
    assert second.exists() and not first.exists()


def test_rank_overflow_is_an_error_unless_compression_is_opted_in(
    registry: AdapterRegistry, tmp_path: Path
) -> None:
    stack = resolve(registry, parse_stack("qv4+ko8+qup16"))  # rank 28
    with pytest.raises(InvalidAdapter, match="above max_lora_rank 16"):
        CompositeCache(tmp_path / "strict", registry, max_rank=16).get_or_build(stack)
    cache = CompositeCache(tmp_path / "svd", registry, max_rank=16, compress=True)
    info = cache.info(cache.get_or_build(stack).name)
    assert info["rank"] == 16 and info["method"] == "cat+svd16"
    assert 0 < info["relative_error"] < 1
    exact = CompositeCache(tmp_path / "svd-wide", registry, max_rank=64, compress=True)
    assert exact.info(exact.get_or_build(stack).name)["relative_error"] == 0.0


def test_gc_spares_builds_in_progress(registry: AdapterRegistry, tmp_path: Path) -> None:
    """A build finishing in one thread must not delete another thread's (or process's) build directory
    (seen in the session app: two composites built at once on one replica, one failed with ENOENT)."""
    import os
    import subprocess

    cache = CompositeCache(tmp_path / "cache", registry)
    live = tmp_path / "cache" / f".tmp-{os.getpid()}-inprogress"
    live.mkdir()
    dead_pid = subprocess.Popen(["true"])  # a process that has exited
    dead_pid.wait()
    dead = tmp_path / "cache" / f".tmp-{dead_pid.pid}-crashed"
    dead.mkdir()
    legacy = tmp_path / "cache" / ".tmp-crashed"
    legacy.mkdir()
    cache.get_or_build(resolve(registry, parse_stack("qv4+ko8")))  # builds, then collects garbage
    assert live.is_dir() and not dead.exists() and not legacy.exists()


_BUILDER = """
import sys, time
from adapters import AdapterRegistry
from adapters.cache import CompositeCache, resolve
from adapters.stack import parse_stack
root, cache_dir, max_bytes, tag = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
reg = AdapterRegistry(root, max_rank=64)
cache = CompositeCache(cache_dir, reg, max_bytes=max_bytes)
stacks = ["qv4*0.5+ko8"] + [f"qv4*0.{i}{tag}+ko8" for i in range(1, 9)]
for text in stacks:
    cache.get_or_build(resolve(reg, parse_stack(text)))
print(cache.lock_count, cache.stats.misses, cache.stats.hits)
"""


def test_two_processes_keep_the_cache_within_its_bound_and_leave_no_locks(
    registry: AdapterRegistry, tmp_path: Path
) -> None:
    """Two processes build the same composite and 8 different ones each into one cache bounded to about
    3 composites: afterwards the cache is within its bound, no lock file, build dir or lock object is
    left, and every build succeeded (a racing publish of the same composite is a hit, not an error)."""
    import subprocess
    import sys

    probe = CompositeCache(tmp_path / "probe", registry)
    one = sum(
        f.stat().st_size for f in probe.get_or_build(resolve(registry, parse_stack("qv4+ko8"))).iterdir()
    )
    bound = 3 * one + one // 2
    cache_dir = tmp_path / "shared-cache"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _BUILDER, str(registry.root), str(cache_dir), str(bound), tag],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for tag in ("1", "2")
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    for out, _ in outs:
        locks, misses, hits = map(int, out.split())
        assert locks == 0 and misses + hits == 9
    entries = [d for d in cache_dir.iterdir() if d.is_dir() and not d.name.startswith(".")]
    total = sum(f.stat().st_size for d in entries for f in d.iterdir())
    assert total <= bound and 1 <= len(entries) <= 3, (total, bound, len(entries))
    assert not list(cache_dir.glob(".tmp-*")) and not list((cache_dir / ".locks").glob("*.lock"))


def test_rslora_composite_matches_peft_applying_rslora_itself(
    tiny_model: Path, comps: dict[str, Path], tmp_path: Path
) -> None:
    """Independent of our maths: PEFT loading the rsLoRA adapter as it is (scaling alpha / sqrt(r) itself)
    gives the same logits as the composite (r = alpha = 16, plain LoRA) of that one adapter."""
    import json

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    assert json.loads((comps["rs16"] / "adapter_config.json").read_text())["use_rslora"] is True
    compose_to_dir([Component(comps["rs16"], 1.0)], tmp_path / "composite")
    ids = torch.tensor([[3, 9, 27, 81, 243]])

    def logits(path: Path) -> torch.Tensor:
        base = AutoModelForCausalLM.from_pretrained(str(tiny_model), dtype=torch.float64)
        return _logits(PeftModel.from_pretrained(base, str(path)).double(), ids)

    from transformers import AutoModelForCausalLM as Auto

    got, want = logits(tmp_path / "composite"), logits(comps["rs16"])
    plain = _logits(Auto.from_pretrained(str(tiny_model), dtype=torch.float64), ids)
    # PEFT's own rsLoRA path agrees at fp32 level (~1e-6 here; its adapter arithmetic is not all float64);
    # scaling by alpha / r instead would move the logits by > 1e-2 (asserted), 3 orders above the bound
    assert (want - plain).abs().max() > 1e-2
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())
