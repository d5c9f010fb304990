"""The layout is the architecture: imports flow serving -> (federation, planning) -> (adapters, cleanroom),
never sideways between packages of one layer, without cycles; only serving/ imports Ray; only the engines and the model/adapter builders import vLLM or torch."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("serving", "adapters", "federation", "planning", "cleanroom")
# files that may import torch / transformers / peft (the adapter maths and the model builders)
TORCH_OK = {
    "adapters/compose.py",
    "adapters/cache.py",
    "adapters/training.py",
    "adapters/synthetic.py",
    "serving/modelprep/smollm2.py",
    "serving/modelprep/tiny.py",
}
LAYER = {"cleanroom": 0, "adapters": 0, "federation": 1, "planning": 1, "serving": 2}


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            rel = path.relative_to(ROOT).with_suffix("")
            name = ".".join(rel.parts).removesuffix(".__init__")
            out[name] = path
    return out


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


MODULES = _modules()


@pytest.mark.parametrize("module", sorted(MODULES))
def test_import_rules(module: str) -> None:
    path = MODULES[module]
    rel = str(path.relative_to(ROOT))
    top = module.split(".")[0]
    for name in _imports(path):
        root = name.split(".")[0]
        if root == "ray":
            assert top == "serving", f"{rel} imports Ray: only serving/ may"
        if root == "vllm":
            assert rel.startswith("serving/engines/"), f"{rel} imports vLLM: only serving/engines/ may"
        if root in ("torch", "transformers", "peft"):
            assert rel.startswith("serving/engines/") or rel in TORCH_OK, f"{rel} imports {root}"
        if root in LAYER and root != top:
            assert LAYER[root] < LAYER[top], (
                f"{rel} imports {name}: imports flow serving -> (federation, planning) -> (adapters, cleanroom)"
            )


def test_no_import_cycles() -> None:
    """Imports between our modules (module level and inside functions alike) form no cycle."""
    graph = {m: {n for n in _imports(p) if n in MODULES and n != m} for m, p in MODULES.items()}
    state: dict[str, int] = {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for n in graph[m]:
            if state.get(n) == 1:
                raise AssertionError(" -> ".join([*stack[stack.index(n) :], n]))
            if n not in state:
                visit(n, [*stack, n])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [m])
