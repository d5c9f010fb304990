"""Free TCP ports for test servers."""

from __future__ import annotations

import random
import socket


def free_port() -> int:
    """A free port BELOW Linux's ephemeral range (32768+): a port the kernel handed out as ephemeral could be
    handed again to one of Ray's own processes starting up before Serve binds it (seen: EADDRINUSE)."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20000, 32000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 20000-32000")
