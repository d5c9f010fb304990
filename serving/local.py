"""Run the app on a local Ray cluster that this process starts and, on exit, stops (only that one)."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

from serving.config import AppConfig

APP_NAME = "rmn"


def stop_on_signals() -> None:
    """Make Ctrl-C raise KeyboardInterrupt (drain and stop), also in a shell's background job (where SIGINT
    starts ignored). SIGTERM is mapped too, but Ray's C++ failure-signal handler in the driver may see it
    first and end the process without draining: stop `rmn serve` with SIGINT (README, Limits)."""
    import signal

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)


@contextlib.contextmanager
def local_app(config: AppConfig, num_cpus: int | None = None) -> Iterator[str]:
    """Start Ray (unless ``RAY_ADDRESS`` names a cluster) and the app; yield the base URL.

    On exit: with a cluster we started, shut Serve and Ray down (in-flight requests drain first,
    within ``graceful_shutdown_timeout_s``); with an existing cluster, delete only our app.
    """
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray
    from ray import serve

    from serving.app import build_app

    own_cluster = not os.environ.get("RAY_ADDRESS")
    if own_cluster:
        try:
            ray.init(
                _metrics_export_port=config.http.metrics_port,
                num_cpus=num_cpus or max(4, os.cpu_count() or 2),
                include_dashboard=False,
                log_to_driver=False,
                logging_level=logging.WARNING,
            )
        except Exception as e:  # Ray raises bare Exception when the node does not come up
            raise RuntimeError(
                f"could not start a local Ray cluster: {e} (a previous one may still be "
                "shutting down, or http.metrics_port may be taken; retry, or change the port)"
            ) from e
    else:
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False)
    try:
        serve.start(
            http_options={
                "host": config.http.host,
                "port": config.http.port,
                "request_timeout_s": config.http.request_timeout_s + 5,
            }
        )
        serve.run(build_app(config), name=APP_NAME, route_prefix="/")
        host = "127.0.0.1" if config.http.host in ("0.0.0.0", "::") else config.http.host
        yield f"http://{host}:{config.http.port}"
    finally:
        # Deleting the app first lets every replica finish its in-flight requests (within
        # graceful_shutdown_timeout_s) while the proxy still relays their responses;
        # serve.shutdown() alone would drop them with the proxy.
        with contextlib.suppress(Exception):
            serve.delete(APP_NAME, _blocking=True)
        if own_cluster:
            serve.shutdown()
            ray.shutdown()
