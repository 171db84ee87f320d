"""A batch's output file is JSONL that every reader splits into the same lines."""

from __future__ import annotations

import json

import msgspec

from bitinglip.tasks.files import _one_line


def test_line_breaks_json_leaves_raw_are_escaped_so_a_line_stays_one_line() -> None:
    text = "a\u2028b\x85c\u2029d é \n"
    line = _one_line(msgspec.json.encode({"text": text}))
    assert len(line.decode().splitlines()) == 1
    assert json.loads(line) == {"text": text}
    assert "é".encode() in line  # other characters as they were
