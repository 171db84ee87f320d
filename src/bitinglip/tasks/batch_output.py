"""A batch's output and error files, as OpenAI writes them: one line per input line, in input order, each with
the request's answer or why it has none, and the usage of the lines that succeeded."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from bitinglip.tasks.wire import BatchUsage

ENDED_LINE = {
    "cancelled": ("batch_cancelled", "This request was cancelled with its batch before it ran."),
    "expired": ("batch_expired", "This request could not be executed before the completion window expired."),
}


def output_lines(rows: Sequence[Any]) -> tuple[list[bytes], list[bytes], str]:
    """OpenAI's output and error lines, in input order, and the usage of the lines that succeeded (JSON)."""
    encode = msgspec.json.encode
    output: list[bytes] = []
    errors: list[bytes] = []
    prompt = completion = 0
    for task_id, custom_id, state, result, error in rows:
        line_id = f"batch_req_{task_id.removeprefix('task_')}"
        if state == "succeeded":
            body = msgspec.Raw(result.encode())
            response = {"status_code": 200, "request_id": task_id, "body": body}
            output.append(encode({"id": line_id, "custom_id": custom_id, "response": response, "error": None}))
            used = msgspec.json.decode(result).get("usage") or {}
            prompt += used.get("prompt_tokens", 0)
            completion += used.get("completion_tokens", 0)
        elif state == "failed":
            err = (
                msgspec.json.decode(error)
                if error
                else {"status_code": 500, "message": "failed", "type": "server_error"}
            )
            status = err.pop("status_code", 500)
            envelope = {"error": {k: err.get(k) for k in ("message", "type", "param", "code")}}
            response = {"status_code": status, "request_id": task_id, "body": envelope}
            errors.append(encode({"id": line_id, "custom_id": custom_id, "response": response, "error": None}))
        else:
            code, message = ENDED_LINE.get(state, ("batch_incomplete", f"This request ended {state}."))
            error_body = {"code": code, "message": message}
            errors.append(encode({"id": line_id, "custom_id": custom_id, "response": None, "error": error_body}))
    usage = BatchUsage(input_tokens=prompt, output_tokens=completion, total_tokens=prompt + completion)
    return output, errors, encode(usage).decode()
