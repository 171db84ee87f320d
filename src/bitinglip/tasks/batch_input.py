"""Checking a batch input file up front, as OpenAI does: what fails the whole batch, with line numbers.

Only the file's shape is checked here (JSON lines, `custom_id`, `method`, `url`, a known `body.model`,
limits). A line whose request is wrong in itself (a bad parameter) is not a batch error: it runs like any
request through the same checks as the live route, and becomes one line of the error file.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from bitinglip.core import BitingLipError
from bitinglip.tasks.wire import BatchError

MAX_ERRORS = 100  # reported per batch; the count of the rest is said in the last one


class Line(msgspec.Struct, kw_only=True):
    number: int  # 1-based
    custom_id: str
    target: str
    body: dict[str, Any]


def read_lines(
    path: Path,
    *,
    endpoint: str,
    target_of: Callable[[dict[str, Any]], str],
    known: set[str],
    allowed: list[str] | None = None,
    max_lines: int,
    max_bytes: int,
) -> tuple[list[Line], list[BatchError]]:
    """The file's requests, or the errors that fail the batch (then the lines are of no use)."""
    size = path.stat().st_size
    if size > max_bytes:
        return [], [BatchError(code="file_too_large", message=f"the input file is {size} bytes; at most {max_bytes}")]
    lines: list[Line] = []
    errors: list[BatchError] = []
    seen: set[str] = set()

    def fail(number: int, code: str, message: str, param: str | None = None) -> None:
        errors.append(BatchError(code=code, message=message, param=param, line=number))

    with path.open("rb") as source:
        for number, raw in enumerate(source, start=1):
            if not raw.strip():
                continue  # blank lines (a trailing newline, say) are not requests
            if len(lines) + len(errors) >= max_lines:
                return [], [
                    BatchError(
                        code="too_many_lines",
                        message=f"the input file has more than {max_lines} requests (tasks.max_batch_lines)",
                        line=number,
                    )
                ]
            try:
                item = msgspec.json.decode(raw)
            except msgspec.DecodeError as exc:
                fail(number, "invalid_json_line", f"line {number} is not valid JSON: {exc}")
                continue
            if not isinstance(item, dict):
                fail(number, "invalid_json_line", f"line {number} is not a JSON object")
                continue
            custom_id = item.get("custom_id")
            if not isinstance(custom_id, str) or not custom_id:
                fail(number, "missing_required_parameter", f"line {number} has no custom_id (a string)", "custom_id")
                continue
            if custom_id in seen:
                fail(number, "duplicate_custom_id", f"line {number} repeats custom_id {custom_id!r}", "custom_id")
                continue
            seen.add(custom_id)
            if item.get("method") != "POST":
                fail(number, "invalid_method", f"line {number}: method must be POST", "method")
                continue
            if item.get("url") != endpoint:
                fail(
                    number,
                    "mismatched_endpoint",
                    f"line {number}: url {item.get('url')!r} is not the batch's endpoint {endpoint}",
                    "url",
                )
                continue
            body = item.get("body")
            if not isinstance(body, dict):
                fail(number, "missing_required_parameter", f"line {number} has no body (a JSON object)", "body")
                continue
            try:
                target = target_of(body)
            except BitingLipError as exc:
                fail(number, "missing_required_parameter", f"line {number}: {exc.message}", "body.model")
                continue
            if target not in known:
                fail(number, "model_not_found", f"line {number}: the model `{target}` is not served here", "body.model")
                continue
            if allowed is not None and target not in allowed:
                fail(
                    number,
                    "model_not_allowed",
                    f"line {number}: this API key may not use the model `{target}`",
                    "body.model",
                )
                continue
            lines.append(Line(number=number, custom_id=custom_id, target=target, body=body))
    if not lines and not errors:
        errors.append(BatchError(code="empty_file", message="the input file has no requests"))
    if len(errors) > MAX_ERRORS:
        rest = len(errors) - MAX_ERRORS + 1
        errors = [*errors[: MAX_ERRORS - 1], BatchError(code="more_errors", message=f"and {rest} more errors")]
    return lines, errors
