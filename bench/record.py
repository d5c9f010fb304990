"""Where a benchmark number comes from: every ``bench/results/*.json`` carries a ``run`` block with the git
commit (and whether the tree had uncommitted changes), the UTC date, the machine (cores, CPU model, memory)
and the exact command that produced it."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "avx512_vnni", "amx_tile", "amx_bf16")


def cpu_identity(cpuinfo: str | None = None) -> dict[str, Any]:
    """What tells one x86 CPU family from another where the model name does not (a VM may say only "AMD EPYC"):
    vendor, family/model/stepping and the ISA flags oneDNN and MKL choose their kernels by (``cpuinfo``: the
    text of /proc/cpuinfo; read here when None; {} where there is none)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return {}
    first: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        if not line.strip():
            break  # the first processor's block is enough
        key, _, value = line.partition(":")
        first[key.strip()] = value.strip()
    flags = set(first.get("flags", "").split())
    out: dict[str, Any] = {"vendor": first.get("vendor_id")}
    for key, name in (("cpu family", "family"), ("model", "model"), ("stepping", "stepping")):
        out[name] = int(first[key]) if first.get(key, "").isdigit() else first.get(key)
    out["isa"] = [f for f in ISA_FLAGS if f in flags]
    return out


def _mem_gib() -> float | None:
    try:
        kb = int(Path("/proc/meminfo").read_text().split("\n")[0].split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return round(kb / 2**20, 1)


def _module() -> str:
    """The ``-m`` module this process runs (``bench.cpu_lora``), else the script's path."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return spec.name if spec is not None else (sys.argv[0] or "?")


# taken when a benchmark imports this module (its start): the code measured is the code checked out then
_START = {
    "commit": _git("rev-parse", "HEAD"),
    "dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
    "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
}


def run_info() -> dict[str, Any]:
    """The ``run`` block of a results file (commit and date as of the benchmark's start)."""
    return {
        **_START,
        "finished": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {
            "cores": os.cpu_count(),
            "cpu": _cpu_model(),
            "cpu_id": cpu_identity(),
            "memory_gib": _mem_gib(),
            "python": platform.python_version(),
        },
        "command": " ".join(["python", "-m", _module(), *sys.argv[1:]]),
    }


def write_results(path: Path | str, results: dict[str, Any]) -> Path:
    """Write ``results`` with its ``run`` block first; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"run": run_info(), **results}, indent=2))
    return path
