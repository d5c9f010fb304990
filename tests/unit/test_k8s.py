"""The Kubernetes package (deploy/k8s): every variant renders with kustomize, and every object validates against
the Kubernetes API schemas (kubernetes-validate, strict) or its CRD's schema (tests/k8s_schemas, vendored with
their versions); the Serve app inside builds from the mounted config; the operational rules a platform team
checks (drain time, token auth, no inline secrets, bounded scratch space, alerts on real metrics) hold.

Rendering needs ``kubectl`` with kustomize v5 (or ``kustomize``); without it these tests skip, unless
RMN_REQUIRE_KUBECTL=1 (CI) makes that a failure.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
SCHEMAS = ROOT / "tests" / "k8s_schemas"
KUBERNETES_VERSION = "1.32"  # the oldest Kubernetes the package is validated for
CRD_SCHEMAS = {
    ("ray.io/v1", "RayService"): "rayservice_v1.json",
    ("monitoring.coreos.com/v1", "PodMonitor"): "podmonitor_v1.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheusrule_v1.json",
}
# the variants a user applies, and one that composes every optional component
VARIANTS = {
    "cpu": "resources: [{root}/cpu]",
    "gpu": "resources: [{root}/gpu]",
    "gpu-ha-inplace": "resources: [{root}/gpu]\ncomponents: [{root}/components/gcs-ft, {root}/components/in-place-upgrades]",
}


def kustomize_command() -> list[str] | None:
    """``kubectl kustomize`` when kubectl embeds kustomize v5, else a ``kustomize`` binary, else None."""
    if shutil.which("kubectl"):
        out = subprocess.run(["kubectl", "version", "--client"], capture_output=True, text=True, check=False)
        if re.search(r"Kustomize Version: v[5-9]", out.stdout):
            return ["kubectl", "kustomize"]
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    return None


def need_kustomize() -> list[str]:
    cmd = kustomize_command()
    if cmd is None:
        if os.environ.get("RMN_REQUIRE_KUBECTL") == "1":
            pytest.fail("kubectl with kustomize v5 (or kustomize) is required here (RMN_REQUIRE_KUBECTL=1)")
        pytest.skip("no kubectl with kustomize v5 and no kustomize: the Kubernetes package is not rendered")
    return cmd


@cache
def render(variant: str) -> tuple[dict[str, Any], ...]:
    """The objects ``variant`` renders to (a kustomization in a temporary directory for composed ones)."""
    cmd = need_kustomize()
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        text = VARIANTS[variant].format(root=os.path.relpath(K8S, tmp))
        (Path(tmp) / "kustomization.yaml").write_text(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n" + text + "\n"
        )
        out = subprocess.run([*cmd, tmp], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    return tuple(o for o in yaml.safe_load_all(out.stdout) if o)


def validate(obj: dict[str, Any]) -> None:
    """Raise jsonschema's (or kubernetes-validate's) ValidationError when ``obj`` is not a valid object."""
    import jsonschema
    import kubernetes_validate
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT202012

    name = CRD_SCHEMAS.get((obj["apiVersion"], obj["kind"]))
    if name is None:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        return
    schema = json.loads((SCHEMAS / name).read_text())
    defs = kubernetes_validate.utils.schema_contents(
        f"kubernetes-json-schema/v{KUBERNETES_VERSION}.0-local-strict/_definitions.json", KUBERNETES_VERSION
    )
    registry = Registry().with_resources(
        [
            (defs["$id"], Resource.from_contents(defs)),
            ("rmn:crd", Resource.from_contents(schema, default_specification=DRAFT202012)),
        ]
    )
    jsonschema.Draft202012Validator(schema, registry=registry).validate(obj)


def only(objs: tuple[dict[str, Any], ...], kind: str) -> dict[str, Any]:
    (found,) = [o for o in objs if o["kind"] == kind]
    return found


def pod_specs(rs: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Group name ('head' for the head) -> its pod spec."""
    cluster = rs["spec"]["rayClusterConfig"]
    out = {"head": cluster["headGroupSpec"]["template"]["spec"]}
    out.update({g["groupName"]: g["template"]["spec"] for g in cluster["workerGroupSpecs"]})
    return out


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_rendered_object_validates(variant: str) -> None:
    objs = render(variant)
    kinds = sorted(o["kind"] for o in objs)
    assert {"RayService", "NetworkPolicy", "PodMonitor", "PrometheusRule", "PersistentVolumeClaim"} <= set(
        kinds
    )
    assert kinds.count("ConfigMap") == 2  # the rmn config and the Grafana dashboard
    for obj in objs:
        validate(obj)


BROKEN = [
    ("RayService", lambda o: o["spec"]["rayClusterConfig"]["workerGroupSpecs"][0].update(maxReplica=4)),
    (
        "RayService",
        lambda o: o["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"].update(
            terminationGracePeriod=120
        ),
    ),
    ("RayService", lambda o: o["spec"]["rayClusterConfig"]["authOptions"].update(mode="tokens")),
    ("NetworkPolicy", lambda o: o["spec"]["ingress"][1]["ports"][0].update(endPort="9000")),
    ("PrometheusRule", lambda o: o["spec"]["groups"][0]["rules"][0].pop("expr")),
    ("PodMonitor", lambda o: o["spec"]["podMetricsEndpoints"][0].update(interval="15 seconds")),
    ("PersistentVolumeClaim", lambda o: o["spec"].update(accessModes="ReadWriteMany")),
]


@pytest.mark.parametrize(("kind", "breaks"), BROKEN, ids=[f"{k}-{i}" for i, (k, _) in enumerate(BROKEN)])
def test_a_deliberately_broken_object_fails_validation(kind: str, breaks: Any) -> None:
    import jsonschema
    import kubernetes_validate

    obj = copy.deepcopy(next(o for o in render("gpu") if o["kind"] == kind))
    validate(obj)
    breaks(obj)
    with pytest.raises((jsonschema.ValidationError, kubernetes_validate.ValidationError)):
        validate(obj)


@pytest.mark.parametrize("variant", ["cpu", "gpu"])
def test_the_serve_app_builds_from_the_mounted_config(variant: str, tmp_path: Path) -> None:
    """serveConfigV2 validates against Ray Serve's schema; its builder reads the config the ConfigMap mounts
    (the overlay's rmn.yaml, byte for byte) and builds the whole card; the worker groups can hold it."""
    from ray.serve._private.build_app import build_app
    from ray.serve.schema import ServeDeploySchema

    from serving.app import app_builder

    objs = render(variant)
    rs = only(objs, "RayService")
    serve_cfg = ServeDeploySchema.model_validate(yaml.safe_load(rs["spec"]["serveConfigV2"]))
    (app,) = serve_cfg.applications
    assert app.import_path == "serving.app:app_builder"
    config_map = next(o for o in objs if o["kind"] == "ConfigMap" and "rmn.yaml" in o.get("data", {}))
    assert config_map["data"]["rmn.yaml"] == (K8S / variant / "rmn.yaml").read_text()
    mounted = Path(app.args["config"])
    head = pod_specs(rs)["head"]
    volume = next(
        v for v in head["volumes"] if v.get("configMap", {}).get("name") == config_map["metadata"]["name"]
    )
    mount = next(m for m in head["containers"][0]["volumeMounts"] if m["name"] == volume["name"])
    assert (
        mounted.parent == Path(mount["mountPath"]) and "subPath" not in mount
    )  # subPath mounts never update
    (tmp_path / mounted.name).write_text(config_map["data"]["rmn.yaml"])
    deployments = {
        d.name: d
        for d in build_app(app_builder({"config": str(tmp_path / mounted.name)}), name="rmn").deployments
    }
    assert set(deployments) == {"router", "engine", "cleanroom", "planner", "comparison"}
    check_capacity(rs, deployments)


def check_capacity(rs: dict[str, Any], deployments: dict[str, Any]) -> None:
    """Each deployment's resources exist in some worker group, enough for its maximum scale."""
    groups = rs["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    for name, d in deployments.items():
        opts = d.ray_actor_options
        gpus = opts.get("num_gpus") or 0
        custom = opts.get("resources") or {}
        fits = []
        for g in groups:
            limits = g["template"]["spec"]["containers"][0]["resources"]["limits"]
            pod_gpus = int(limits.get("nvidia.com/gpu", 0))
            start = json.loads(json.loads(g["rayStartParams"].get("resources", '"{}"')))
            if pod_gpus >= gpus and all(start.get(k, 0) >= v for k, v in custom.items()):
                fits.append((g, pod_gpus))
        assert fits, f"deployment {name} fits no worker group"
        auto = d._deployment_config.autoscaling_config
        replicas = auto.max_replicas if auto else d.num_replicas
        if gpus:
            assert sum(g["maxReplicas"] * (n // gpus) for g, n in fits) >= replicas, name


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_pods_drain_before_they_are_killed_and_run_unprivileged(variant: str) -> None:
    from serving.config import load_config

    rs = only(render(variant), "RayService")
    cfg = load_config(K8S / variant.split("-")[0] / "rmn.yaml")
    drains = [cfg.engine_deployment, cfg.router_deployment]
    drain = max(d.graceful_shutdown_timeout_s for d in drains)
    for group, spec in pod_specs(rs).items():
        (c,) = spec["containers"]
        stop = " ".join(c["lifecycle"]["preStop"]["exec"]["command"])
        grace = int(re.search(r"--grace-period (\d+)", stop).group(1))  # type: ignore[union-attr]
        assert spec["terminationGracePeriodSeconds"] >= max(drain, grace) + 15, group
        assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] != 0
        assert c["securityContext"]["allowPrivilegeEscalation"] is False


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_cluster_is_authenticated_and_safe_by_default(variant: str) -> None:
    objs = render(variant)
    rs = only(objs, "RayService")
    cluster = rs["spec"]["rayClusterConfig"]
    assert cluster["authOptions"] == {"mode": "token"}
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"  # no workload on the head
    assert rs["spec"]["upgradeStrategy"]["type"] in ("NewCluster", "None")
    assert not [o for o in objs if o["kind"] == "Secret"], "no Secret is rendered: the user creates them"
    for group, spec in pod_specs(rs).items():
        (c,) = spec["containers"]
        env = {e["name"]: e.get("value") for e in c.get("env", [])}
        assert "RAY_AUTH_MODE" not in env, group  # KubeRay sets token mode from authOptions
        image = c["image"]
        assert re.search(r"@sha256:[0-9a-f]{64}$|:\d+\.\d+\.\d+[-\w.]*$", image), f"mutable image {image!r}"
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert {m["name"] for m in c["volumeMounts"]} <= set(volumes), group
        for v in volumes.values():
            if "emptyDir" in v:
                assert v["emptyDir"].get("sizeLimit"), (group, v["name"])
        assert volumes["dshm"]["emptyDir"]["medium"] == "Memory"
        assert {"/dev/shm", "/tmp"} <= {m["mountPath"] for m in c["volumeMounts"]}
        assert c["resources"]["requests"].get("ephemeral-storage"), group
        claims = {
            v["persistentVolumeClaim"]["claimName"] for v in volumes.values() if "persistentVolumeClaim" in v
        }
        rendered = {o["metadata"]["name"] for o in objs if o["kind"] == "PersistentVolumeClaim"}
        assert claims <= rendered, group


@pytest.mark.parametrize("variant", ["cpu", "gpu"])
def test_secrets_are_mounted_not_written(variant: str) -> None:
    """The config names its keys file under the Secret's mount; no key hash or credential sits in deploy/."""
    from serving.config import load_config

    cfg = load_config(K8S / variant / "rmn.yaml")
    assert cfg.federation is not None and cfg.federation.keys_file is not None
    assert all(t.api_key_sha256 is None for t in cfg.federation.tenants)
    head = pod_specs(only(render(variant), "RayService"))["head"]
    secret_volumes = {v["name"] for v in head["volumes"] if "secret" in v}
    mounts = [m for m in head["containers"][0]["volumeMounts"] if m["name"] in secret_volumes]
    assert any(cfg.federation.keys_file.parent == Path(m["mountPath"]) and "subPath" not in m for m in mounts)


def test_no_inline_secret_or_disabled_auth_under_deploy() -> None:
    for path in (ROOT / "deploy").rglob("*"):
        if not path.is_file():
            continue
        text = path.read_text()
        assert "RAY_AUTH_MODE=disabled" not in text and "value: disabled" not in text, path
        assert not re.search(r"(?m)^kind:\s*Secret\b", text), path
        assert not re.search(r"api_key_sha256:\s*[0-9a-f]{64}", text), path
        assert not re.search(r"demo-(admin|brewmax|acme|agency)-key", text), path
        assert not re.search(r"aws_secret_access_key|AWS_SECRET_ACCESS_KEY:\s*\S", text), path


def code_metrics() -> set[str]:
    """Every metric name the code exports, as Prometheus sees it (Ray's ``ray_`` prefix)."""
    text = (ROOT / "serving" / "metrics.py").read_text()
    return {f"ray_{n}" for n in re.findall(r'"(rmn_[a-z_]+)"', text)}


def metric_names(expr: str) -> list[str]:
    """The ``ray_*`` metric names a PromQL expression reads (label names in ``{...}`` and ``by (...)`` are not)."""
    bare = re.sub(r"\{[^}]*\}", "", re.sub(r"\b(by|without)\s*\([^)]*\)", "", expr))
    return re.findall(r"\b(ray_[a-z_]+)", bare)


def test_alerts_and_panels_query_metrics_that_exist() -> None:
    from tests.unit.test_deploy import dashboard_metrics

    objs = render("gpu")
    exprs = [r["expr"] for g in only(objs, "PrometheusRule")["spec"]["groups"] for r in g["rules"]]
    alert_names = {re.sub(r"_(bucket|count|sum)$", "", n) for e in exprs for n in metric_names(e)}
    ours = {n for n in alert_names | dashboard_metrics() if n.startswith("ray_rmn_")}
    assert ours <= code_metrics(), ours - code_metrics()
    # vLLM's and Serve's names: the Serve and integration tiers find every dashboard name in a live scrape
    assert alert_names - ours <= dashboard_metrics(), alert_names - ours - dashboard_metrics()
    assert {"RmnHigh5xxRate", "RmnShedding", "RmnKvCacheNearlyFull", "RmnUnhealthyReplicas"} <= {
        r["alert"] for g in only(objs, "PrometheusRule")["spec"]["groups"] for r in g["rules"]
    }
    dashboard = json.loads(only_dashboard(objs)["data"]["rmn-dashboard.json"])
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"namespace", "cluster"} <= variables
    for panel in dashboard["panels"]:
        for t in panel["targets"]:
            for m in re.finditer(r"\bray_[a-z_]+(\{[^}]*\})?", t["expr"]):
                assert m.group(1) and "$namespace" in m.group(1) and "$cluster" in m.group(1), t["expr"]


def only_dashboard(objs: tuple[dict[str, Any], ...]) -> dict[str, Any]:
    (found,) = [o for o in objs if o["kind"] == "ConfigMap" and "rmn-dashboard.json" in o.get("data", {})]
    assert found["metadata"]["labels"]["grafana_dashboard"] == "1"
    return found


def test_network_policy_and_pod_monitor_select_the_pods() -> None:
    objs = render("gpu")
    rs, policy, monitor = only(objs, "RayService"), only(objs, "NetworkPolicy"), only(objs, "PodMonitor")
    for group, tmpl in [("head", rs["spec"]["rayClusterConfig"]["headGroupSpec"]["template"])] + [
        (g["groupName"], g["template"]) for g in rs["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    ]:
        labels = {**tmpl["metadata"]["labels"], "ray.io/is-ray-node": "yes"}  # KubeRay adds the latter
        assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items(), group
        assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items(), group
        ports = {p["name"]: p["containerPort"] for p in tmpl["spec"]["containers"][0]["ports"]}
        assert ports["metrics"] == 8080 and ports["serve"] == 8000, group
    rules = policy["spec"]["ingress"]
    assert rules[0] == {
        "from": [{"podSelector": policy["spec"]["podSelector"]}]
    }  # Ray's ports: in-cluster only
    for rule in rules[1:]:  # everyone else: named ports only
        assert rule["ports"] and {p["port"] for p in rule["ports"]} <= {8000, 8080, 8265}
