"""vLLM's log lines without vLLM's logging setup, so the host process's log handlers keep working.

On import vLLM configures logging with :func:`logging.config.dictConfig`, which CLOSES every handler of the
process, not just its own. In a Ray Serve replica that includes the replica log's ``MemoryHandler``: closed, it
forgets its target and from then on keeps every record it is given — one access-log record per request, ~3 KB,
forever (the engine replica grew ~10 MB/min under load, ``bench/scale.py``; the replica's log file also stopped).

Contract: :func:`keep_host_handlers` runs before vLLM's first import in a process and, unless the operator chose
vLLM's logging setup (``VLLM_CONFIGURE_LOGGING`` or ``VLLM_LOGGING_CONFIG_PATH`` set), turns it off for this
process and the vLLM processes it starts (they inherit the environment); :func:`install_vllm_handler` then gives the
``vllm`` logger the handler vLLM's own default config would (its format, level and stream), touching no other
handler. It runs in the engine replica after the import and, through the LoRA plugin, in every vLLM process.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys

MARK = "RMN_VLLM_LOG_HANDLER"  # set where keep_host_handlers turned vLLM's own setup off


def keep_host_handlers() -> bool:
    """Turn vLLM's logging setup off for this process and its children when that is still possible and the
    operator has not chosen it; True when it did."""
    if "vllm.logger" in sys.modules:  # too late for this process (vLLM configured itself already)
        return False
    if "VLLM_CONFIGURE_LOGGING" in os.environ or os.environ.get("VLLM_LOGGING_CONFIG_PATH"):
        return False  # the operator's explicit choice
    os.environ["VLLM_CONFIGURE_LOGGING"] = "0"
    os.environ[MARK] = "1"
    return True


def install_vllm_handler() -> bool:
    """Give the ``vllm`` logger vLLM's default handler where :func:`keep_host_handlers` turned vLLM's setup off
    and the logger has none yet (idempotent); True when a handler was added."""
    if os.environ.get(MARK) != "1":
        return False
    logger = logging.getLogger("vllm")
    if logger.handlers:
        return False
    import vllm.envs as envs
    from vllm.logger import _DATE_FORMAT, _FORMAT
    from vllm.logging_utils import NewLineFormatter

    stream = sys.stderr if envs.VLLM_LOGGING_STREAM == "ext://sys.stderr" else sys.stdout
    handler = logging.StreamHandler(stream)
    handler.setFormatter(NewLineFormatter(_FORMAT, datefmt=_DATE_FORMAT))
    handler.setLevel(envs.VLLM_LOGGING_LEVEL)
    logger.addHandler(handler)
    logger.setLevel(envs.VLLM_LOGGING_LEVEL)
    logger.propagate = False
    return True


def records_held() -> int:
    """Log records the process's ``MemoryHandler`` s hold now (Serve's replica log buffers up to its capacity,
    1 by default): what grows without bound when a closed one keeps every record."""
    held = 0
    loggers = [logging.getLogger()] + [
        lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)
    ]
    for lg in loggers:
        for handler in lg.handlers:
            if isinstance(handler, logging.handlers.MemoryHandler):
                held += len(handler.buffer)
    return held
