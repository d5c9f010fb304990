"""A real S3-compatible server for tests: moto's standalone server on loopback, in its own process (the
registry's s3fs client talks HTTP to it exactly as to AWS; nothing of the client library is mocked)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from tests.ports import free_port


@dataclass
class S3Server:
    """One running server: its endpoint and the storage options a registry needs to reach it."""

    endpoint: str
    proc: subprocess.Popen[bytes]

    def options(self) -> dict[str, Any]:
        """fsspec/s3fs storage options (``adapters.storage_options``) for this endpoint."""
        return {
            "key": "testing",
            "secret": "testing",
            "endpoint_url": self.endpoint,
            "client_kwargs": {"region_name": "us-east-1"},
        }

    def make_bucket(self, name: str) -> str:
        """Create bucket ``name``; its URL."""
        import boto3

        client = boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        client.create_bucket(Bucket=name)
        return f"s3://{name}"

    def stop(self) -> None:
        """Stop the server (the store becomes unreachable: connection refused)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def start_s3(port: int | None = None) -> S3Server:
    """Start moto's server on 127.0.0.1 (a free port unless given); waits until it answers."""
    port = port or free_port()
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"moto server exited with {proc.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(endpoint, timeout=1).status_code < 500:
                return S3Server(endpoint, proc)
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("moto server did not answer within 30 s")


@contextlib.contextmanager
def s3_server() -> Iterator[S3Server]:
    """A server for the duration of the block."""
    server = start_s3()
    try:
        yield server
    finally:
        server.stop()
