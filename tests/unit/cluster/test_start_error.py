"""The engine processes' start failures reach the file the start names: the exception, and where it was raised."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from bitinglip.cluster.vllm.start_error import ERROR_FILE_ENV, LOGGERS, first_error, register


def fail_here() -> None:
    raise ValueError("current platform cpu does not\nsupport ray.")


def test_a_failed_start_logged_by_vllm_is_written_once_per_handler_with_where(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    errors = tmp_path / "errors"
    errors.touch()
    monkeypatch.setenv(ERROR_FILE_ENV, str(errors))
    logger = logging.getLogger(LOGGERS[0])
    before = list(logger.handlers)
    try:
        assert register() and register()  # loaded twice in a process: one handler
        assert len(logger.handlers) == len(before) + 1
        logger.info("not an error")
        try:
            fail_here()
        except ValueError:
            logger.exception("EngineCore failed to start.")
        line = first_error(errors)
        assert line is not None and line.startswith("ValueError: current platform cpu does not support ray.")
        assert line.endswith(f"test_start_error.py:{fail_here.__code__.co_firstlineno + 1})")  # the raise
        errors.unlink()  # the start has ended: later errors of this process go nowhere
        try:
            fail_here()
        except ValueError:
            logger.exception("EngineCore encountered a fatal error.")
        assert not errors.exists() and first_error(errors) is None
    finally:
        for name in LOGGERS:
            handlers = logging.getLogger(name).handlers
            handlers[:] = [h for h in handlers if h in before or type(h).__name__ != "_StartError"]


def test_nothing_is_recorded_without_a_file_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ERROR_FILE_ENV, raising=False)
    assert register() is False
