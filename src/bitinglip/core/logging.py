"""structlog set-up: one event per line, readable in development, JSON elsewhere.

Standard-library loggers (uvicorn, vLLM, SQLAlchemy) go through the same renderer, so every line of the
process has one shape. Our own events skip the standard library's records, handlers and caller lookup: they
are rendered by structlog and written as one line (the access line is logged once per request, on the hot
path). The request id lives in a context variable bound by the gateway's middleware, so every line logged
while serving a request carries it.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

from bitinglip.core.settings import ServerSettings


def configure_logging(server: ServerSettings, env: str) -> None:
    fmt = server.log_format
    if fmt == "auto":
        fmt = "console" if env == "development" and sys.stderr.isatty() else "json"
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        if fmt == "console"
        else structlog.processors.JSONRenderer()
    )
    level = getattr(logging, server.log_level.upper())
    structlog.configure(
        # The console renderer formats exceptions itself (and warns when they come formatted already).
        processors=[*shared, *([] if fmt == "console" else [structlog.processors.format_exc_info]), renderer],
        logger_factory=_LineLogger,
        wrapper_class=structlog.make_filtering_bound_logger(level),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.processors.format_exc_info],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "vllm"):
        lib = logging.getLogger(name)
        lib.handlers[:] = []
        lib.propagate = True
    # Our middleware writes one access line per request with its id; uvicorn's would be a second, bare one.
    logging.getLogger("uvicorn.access").disabled = True


class _LineLogger:
    """structlog's final logger: writes the rendered event as one line to the current standard error.

    One ``write`` call per line, as the standard library's handler does, so lines from threads do not interleave.
    """

    __slots__ = ("name",)

    def __init__(self, name: str = "", *_: Any) -> None:
        self.name = name  # structlog's add_logger_name reads it

    def msg(self, line: str) -> None:
        stream = sys.stderr
        stream.write(line + "\n")
        stream.flush()

    debug = info = warning = warn = error = critical = fatal = exception = log = msg


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
