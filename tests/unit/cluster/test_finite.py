"""Constraints that admit no finite output are told apart from those that do, on the grammars xgrammar (vLLM's
structured-output backend) really makes of them."""

from __future__ import annotations

from typing import Any

import pytest

from bitinglip.cluster.vllm.finite import admits_finite_output, constraint_grammar

NODE = {"type": "object", "properties": {"next": {"$ref": "#/$defs/n"}}, "required": ["next"]}
HEAD = {"head": {"$ref": "#/$defs/n"}}


@pytest.mark.parametrize(
    ("kind", "value", "finite"),
    [
        ("grammar", "root ::= root root", False),
        ("grammar", 'root ::= "a" | root root', True),
        ("grammar", '?start: "a"+', True),  # Lark, as vLLM takes it too
        ("regex", "a[bc]+d", True),
        ("json", {"type": "object", "properties": {"a": {"$ref": "#"}}, "required": ["a"]}, False),
        ("json", {"type": "object", "properties": {"a": {"$ref": "#"}}}, True),
        ("json", {"type": "array", "items": {"$ref": "#"}, "minItems": 1}, False),
        ("json", {"anyOf": [{"type": "integer"}, {"$ref": "#"}]}, True),
        ("json", {"$defs": {"n": NODE}, "type": "object", "properties": {"head": {"$ref": "#/$defs/n"}}}, True),
        (
            "json",
            {
                "$defs": {"n": NODE},
                "type": "object",
                "properties": {"head": {"$ref": "#/$defs/n"}},
                "required": ["head"],
            },
            False,
        ),
        ("json", '{"type": "string", "pattern": "^[a-z]{3}$"}', True),
        ("json", {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 4}, True),
        (
            "json",
            {
                "type": "object",
                "properties": {"name": {"type": "string"}, "tags": {"type": "array", "items": {"type": "string"}}},
                "required": ["name"],
            },
            True,
        ),
    ],
)
def test_a_constraint_admits_a_finite_output_or_not(kind: str, value: Any, finite: bool) -> None:
    grammar = constraint_grammar(kind, value)
    assert grammar is not None and admits_finite_output(grammar) is finite


def test_what_it_cannot_read_is_never_refused() -> None:
    assert admits_finite_output("root ::= something @ odd") is True
    assert admits_finite_output("root ::= missing_rule") is True
    assert constraint_grammar("choice", ["a", "b"]) is None
