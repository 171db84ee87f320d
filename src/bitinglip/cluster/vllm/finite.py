"""Whether an output constraint admits any finite output at all.

A grammar like `root ::= root root`, or a JSON schema whose required property refers back to the schema itself,
compiles, yet no finite text satisfies it: the engine then stops at once with empty text and a 200. Such a
constraint is refused with a 400 instead. The check works on the grammar xgrammar (vLLM's structured-output
backend) makes of any constraint, printed in its normalized EBNF (`name ::= (alt) | (alt)`, one rule a line):
a rule is productive when one of its alternatives is a sequence of productive elements (a literal, a character
class, a productive rule, a group that is, or anything that may repeat zero times); the constraint admits a
finite output when its `root` is productive. The least fixed point over the rules, computed in linear passes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")


@dataclass(frozen=True, slots=True)
class _Node:
    kind: str  # "lit", "ref", "alt", "seq", "rep" (may be empty), "plus" (at least once), "look"
    name: str = ""
    children: tuple[_Node, ...] = ()


def _tokens(body: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    i, n = 0, len(body)
    while i < n:
        c = body[i]
        if c.isspace():
            i += 1
        elif c in '"[':
            close = '"' if c == '"' else "]"
            j = i + 1
            while j < n and body[j] != close:
                j += 2 if body[j] == "\\" else 1
            out.append(("lit", ""))
            i = j + 1
        elif c == "(" and body.startswith("(=", i):
            out.append(("(=", ""))
            i += 2
        elif c in "()|*+?":
            out.append((c, ""))
            i += 1
        elif c == "{":
            j = body.index("}", i)
            out.append(("{", body[i + 1 : j]))
            i = j + 1
        else:
            m = _NAME.match(body, i)
            if m is None:
                raise ValueError(f"unexpected {c!r} in a grammar rule")
            i = m.end()
            if body.startswith("(", i):  # a built-in terminal, `Regex("...", json_string=true)`: one literal
                i = _after_call(body, i)
                out.append(("lit", ""))
            else:
                out.append(("ref", m.group()))
    return out


def _after_call(body: str, i: int) -> int:
    """The index after the parenthesis that closes the one at ``i`` (strings in between skipped whole)."""
    depth = 0
    while i < len(body):
        c = body[i]
        if c == '"':
            i += 1
            while i < len(body) and body[i] != '"':
                i += 2 if body[i] == "\\" else 1
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    raise ValueError("unbalanced parentheses in a grammar rule")


class _Parser:
    def __init__(self, tokens: list[tuple[str, str]]) -> None:
        self.tokens = tokens
        self.at = 0

    def peek(self) -> str | None:
        return self.tokens[self.at][0] if self.at < len(self.tokens) else None

    def take(self) -> tuple[str, str]:
        token = self.tokens[self.at]
        self.at += 1
        return token

    def alternation(self) -> _Node:
        branches = [self.sequence()]
        while self.peek() == "|":
            self.take()
            branches.append(self.sequence())
        return _Node("alt", children=tuple(branches))

    def sequence(self) -> _Node:
        items: list[_Node] = []
        while self.peek() not in (None, "|", ")"):
            items.append(self.item())
        return _Node("seq", children=tuple(items))

    def item(self) -> _Node:
        kind, value = self.take()
        if kind in ("(", "(="):
            inner = self.alternation()
            self.take()  # ")"
            atom = _Node("look") if kind == "(=" else inner
        elif kind == "lit":
            atom = _Node("lit")
        elif kind == "ref":
            atom = _Node("ref", name=value)
        else:
            raise ValueError(f"unexpected {kind!r} in a grammar rule")
        while self.peek() in ("*", "?", "+", "{"):
            quantifier, bounds = self.take()
            least = int(bounds.split(",")[0]) if quantifier == "{" else 1 if quantifier == "+" else 0
            atom = _Node("plus" if least > 0 else "rep", children=(atom,))
        return atom


def _productive(node: _Node, rules: set[str]) -> bool:
    if node.kind in ("lit", "rep", "look"):
        return True
    if node.kind == "ref":
        return node.name in rules
    if node.kind == "alt":
        return any(_productive(child, rules) for child in node.children)
    return all(_productive(child, rules) for child in node.children)  # "seq", "plus"


def _refs(node: _Node) -> list[str]:
    return [node.name] if node.kind == "ref" else [name for child in node.children for name in _refs(child)]


def admits_finite_output(ebnf: str, root: str = "root") -> bool:
    """Whether the grammar (xgrammar's printed form) derives at least one finite string from ``root``; True too
    where the printed form has something this does not read (only a certain "no" refuses a request)."""
    rules: dict[str, _Node] = {}
    try:
        for line in ebnf.splitlines():
            if "::=" in line:
                name, body = line.split("::=", 1)
                rules[name.strip()] = _Parser(_tokens(body)).alternation()
    except (ValueError, IndexError):
        return True
    if root not in rules or any(name not in rules for node in rules.values() for name in _refs(node)):
        return True
    productive: set[str] = set()
    changed = True
    while changed:
        changed = False
        for name, node in rules.items():
            if name not in productive and _productive(node, productive):
                productive.add(name)
                changed = True
    return root in productive


def constraint_grammar(kind: str, value: Any, any_whitespace: bool = False) -> str | None:
    """xgrammar's printed grammar for one constraint (None for a kind that always admits output)."""
    import json

    import xgrammar as xgr

    if kind == "json" and isinstance(value, dict | str):
        schema = value if isinstance(value, str) else json.dumps(value)
        return str(xgr.Grammar.from_json_schema(schema, any_whitespace=any_whitespace))
    if kind == "grammar" and isinstance(value, str):
        if "::=" in value:
            return str(xgr.Grammar.from_ebnf(value))
        return str(xgr.Grammar.from_lark(value))
    if kind == "regex" and isinstance(value, str):
        return str(xgr.Grammar.from_regex(value))
    return None
