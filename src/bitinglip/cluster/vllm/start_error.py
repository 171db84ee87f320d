"""Why an engine failed to start, in its deployment's `reason` and not only in the log.

vLLM's engine core runs in a process of its own; when it fails to start it logs the exception there and the
server is told only "Engine core initialization failed. See root cause above." So each engine start names a file
(`ERROR_FILE_ENV`, set for the engine processes alone), and in the engine processes a logging handler on vLLM's
own loggers of a failed start writes the exception to it: its type, message and the file and line it was raised
at. The server reads the first one back into the error it raises (`VllmEngine.start`).

Loaded in every vLLM process as one of vLLM's "general plugins" (pyproject.toml), as `spin.py` is; it does
nothing where the variable is not set (a `vllm serve` in the same environment). Only vLLM's logger names are
relied on (public logging API, no private state); tests/e2e/test_ray.py reads a real engine's failure through it.
"""

from __future__ import annotations

import logging
import os
import traceback
from pathlib import Path

ERROR_FILE_ENV = "_BITINGLIP_ENGINE_ERROR_FILE"  # not BITINGLIP_*: those are settings
# Where vLLM 0.32 logs a start that failed: the engine core's own, and its workers' (multiprocessing executor).
LOGGERS = ("vllm.v1.engine.core", "vllm.v1.executor.multiproc_executor")


class _StartError(logging.Handler):
    def __init__(self, path: str) -> None:
        super().__init__(logging.ERROR)
        self.path = path

    def emit(self, record: logging.LogRecord) -> None:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is None or not os.path.exists(self.path):  # the file is gone once the start has ended
            return
        frames = traceback.extract_tb(exc.__traceback__)
        where = f" ({_short(frames[-1].filename)}:{frames[-1].lineno})" if frames else ""
        message = " ".join(f"{type(exc).__name__}: {exc}".split())
        with open(self.path, "a", encoding="utf-8") as out:
            out.write(f"{message}{where}\n")


def _short(filename: str) -> str:
    """A source file's path from its package (vllm/v1/...), not the machine's site-packages."""
    parts = Path(filename).parts
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] in ("site-packages", "dist-packages"):
            return "/".join(parts[i + 1 :])
    return filename


def register() -> bool:
    """Record failed starts in the file the environment names, if it names one (may run more than once)."""
    path = os.environ.get(ERROR_FILE_ENV)
    if not path:
        return False
    for name in LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(h, _StartError) for h in logger.handlers):
            logger.addHandler(_StartError(path))
    return True


def first_error(path: Path) -> str | None:
    """The first failure an engine process recorded, if any."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    return lines[0] if lines else None
