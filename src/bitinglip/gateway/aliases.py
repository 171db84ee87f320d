"""Other names for served models (`gateway.model_aliases`): a coding agent's built-in model names (`claude-*`,
`gpt-*`) reach a local model without configuring the agent model by model."""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping

PATTERN_CHARS = frozenset("*?[")


class ModelAliases:
    """Names to the served models they stand for: an exact name first, then the first pattern that matches."""

    def __init__(self, aliases: Mapping[str, str] | None = None) -> None:
        aliases = aliases or {}
        self.exact = {name: target for name, target in aliases.items() if not PATTERN_CHARS & set(name)}
        self.patterns = [(name, target) for name, target in aliases.items() if PATTERN_CHARS & set(name)]

    def resolve(self, name: str | None) -> str | None:
        """The model ``name`` stands for (``name`` itself when it is no alias)."""
        if not name or not (self.exact or self.patterns):
            return name
        if (target := self.exact.get(name)) is not None:
            return target
        for pattern, target in self.patterns:
            if fnmatch.fnmatchcase(name, pattern):
                return target
        return name
