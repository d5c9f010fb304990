from pathlib import Path

import pytest

from serving.config import AppConfig, ConfigError, load_config

GOOD = "model: {path: /m}\nadapters: {root: /r}\n"


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "rmn.yaml"
    p.write_text(text)
    return p


def test_minimal_config_fills_defaults(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD))
    assert cfg.model.served_name == "base"
    assert cfg.engine.kv_cache_memory_bytes == 256 << 20
    assert cfg.http.host == "127.0.0.1" and cfg.http.port == 8000


def test_relative_paths_become_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = load_config(write(tmp_path, "model: {path: m}\nadapters: {root: r}\n"))
    assert cfg.model.path == tmp_path / "m" and cfg.adapters.root == str(tmp_path / "r")


@pytest.mark.parametrize(
    ("root", "kept"),
    [
        ("s3://bucket/adapters/", "s3://bucket/adapters"),
        ("gs://b/p", "gs://b/p"),
        ("file:///srv/a", "/srv/a"),
    ],
)
def test_registry_urls_are_kept_as_urls(tmp_path: Path, root: str, kept: str) -> None:
    cfg = load_config(write(tmp_path, f"model: {{path: m}}\nadapters: {{root: '{root}'}}\n"))
    assert cfg.adapters.root == kept


def test_node_placeholder_names_a_cache_per_node(tmp_path: Path) -> None:
    text = "model: {path: m}\nadapters: {root: s3://b/a, download_root: '/c/{node}/dl', cache_root: '/c/{node}'}\n"
    cfg = load_config(write(tmp_path, text))
    assert cfg.adapters.download_dir("n1") == Path("/c/n1/dl") and cfg.adapters.cache_dir("n2") == Path(
        "/c/n2"
    )


@pytest.mark.parametrize(
    ("text", "field"),
    [
        (GOOD + "engine: {max_lora_rank: 0}\n", "engine.max_lora_rank"),
        (GOOD + "engine: {max_lora_rank: 24}\n", "the smallest that covers 24 is 32"),
        (GOOD + "engine: {dtype: int3}\n", "engine.dtype"),
        (GOOD + "engine: {max_loras: 8, max_cpu_loras: 2}\n", "engine"),
        (GOOD + "engine: {unknown_knob: 1}\n", "engine.unknown_knob"),
        (GOOD + "http: {port: 70000}\n", "http.port"),
        (GOOD + "engine_deployment: {num_replicas: 0}\n", "engine_deployment.num_replicas"),
        ("adapters: {root: /r}\n", "model"),
        ("model: {path: /m, served_name: 'a:b'}\nadapters: {root: /r}\n", "model.served_name"),
        # the device and the GPUs a replica reserves must agree (0 GPUs on CUDA: every replica on GPU 0)
        (GOOD + "engine: {device: cuda}\n", "engine_deployment.num_gpus is 0 but engine.device is cuda"),
        (
            GOOD
            + "engine: {device: cuda, extra: {tensor_parallel_size: 2}}\nengine_deployment: {num_gpus: 1}\n",
            "engine_deployment.num_gpus is 1 but engine.gpu_placement is bundles with tensor x pipeline parallel "
            "size 2: set it to 2",
        ),
        (
            GOOD
            + "engine: {device: cuda, gpu_placement: actor, extra: {tensor_parallel_size: 2}}\n"
            + "engine_deployment: {num_gpus: 1}\n",
            "reserve at least 2",
        ),
        (
            GOOD
            + "engine: {device: cuda, extra: {tensor_parallel_size: 2, distributed_executor_backend: mp}}\n"
            + "engine_deployment: {num_gpus: 2}\n",
            "extra.distributed_executor_backend is 'mp' but gpu_placement is bundles",
        ),
        (
            GOOD + "engine_deployment: {num_gpus: 1}\n",
            "engine_deployment.num_gpus is 1 but engine.device is cpu",
        ),
    ],
)
def test_invalid_config_names_field_and_file(tmp_path: Path, text: str, field: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(path) in str(e.value)
    assert field in str(e.value)


def test_engine_defaults_follow_the_device(tmp_path: Path) -> None:
    cpu = load_config(write(tmp_path, GOOD)).engine
    assert cpu.enforce_eager is True and cpu.kv_cache_memory_bytes == 256 << 20
    gpu = load_config(
        write(tmp_path, GOOD + "engine: {device: cuda}\nengine_deployment: {num_gpus: 1}\n")
    ).engine
    assert (
        gpu.enforce_eager is False and gpu.kv_cache_memory_bytes is None
    )  # CUDA graphs; vLLM sizes the cache
    text = (
        GOOD
        + "engine: {device: cuda, enforce_eager: true, kv_cache_memory_bytes: 1000000}\nengine_deployment: {num_gpus: 1}\n"
    )
    chosen = load_config(write(tmp_path, text)).engine
    assert (
        chosen.enforce_eager is True and chosen.kv_cache_memory_bytes == 1_000_000
    )  # what a config says wins


@pytest.mark.parametrize("text", ["model: [unclosed\n", "- a list\n"])
def test_unparseable_config(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError, match=r"rmn\.yaml"):
        load_config(write(tmp_path, text))


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_serve_options_autoscaling_replaces_num_replicas() -> None:
    cfg = AppConfig.model_validate(
        {
            "model": {"path": "/m"},
            "adapters": {"root": "/r"},
            "engine_deployment": {"autoscaling": {"min_replicas": 1, "max_replicas": 3}},
        }
    )
    opts = cfg.engine_deployment.serve_options()
    assert "num_replicas" not in opts
    assert opts["autoscaling_config"]["max_replicas"] == 3
    assert opts["max_queued_requests"] == 64
    assert (opts["health_check_period_s"], opts["health_check_timeout_s"]) == (10, 30)  # Serve's defaults
    quick = AppConfig.model_validate(
        {
            "model": {"path": "/m"},
            "adapters": {"root": "/r"},
            "engine_deployment": {"health_check_period_s": 2, "health_check_timeout_s": 5},
        }
    )
    assert quick.engine_deployment.serve_options()["health_check_period_s"] == 2
    assert quick.engine_deployment.serve_options()["health_check_timeout_s"] == 5


def test_deploy_examples_validate() -> None:
    root = Path(__file__).resolve().parents[2] / "deploy"
    files = sorted(root.glob("rmn-*.yaml"))
    assert files, "deploy/ has no rmn-*.yaml examples"
    for f in files:
        load_config(f)
