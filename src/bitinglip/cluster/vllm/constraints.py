"""Structured-output constraints checked before a request goes out: a schema or grammar the backend cannot take,
or one that admits no finite output (finite.py), is a 400 before any response (a stream's headers included)."""

from __future__ import annotations

import re
from typing import Any

from bitinglip.cluster.vllm.finite import admits_finite_output, constraint_grammar
from bitinglip.core import InvalidInput

_BACKEND_CHECK = re.compile(r"\[[\d:]+\] \S+:\d+: (Check failed: .*? is false: )?")


def schema_admits_finite_output(schema: dict[str, Any]) -> bool:
    try:
        grammar = constraint_grammar("json", schema)
    except (ValueError, TypeError, RuntimeError):
        return True  # not this check's to refuse: the constraint's own compile says what is wrong
    return grammar is None or admits_finite_output(grammar)


def check_constraint(llm: Any, params: Any, tokenizer: Any) -> None:
    """Compile-check the structured-output constraint of ``params`` (vLLM's `SamplingParams`) as the engine
    ``llm`` will, and refuse one that admits no finite output."""
    from vllm.exceptions import VLLMValidationError

    config = llm.vllm_config
    try:
        params.verify(llm.model_config, config.speculative_config, config.structured_outputs_config, tokenizer)
    except (VLLMValidationError, ValueError, TypeError, RuntimeError) as exc:
        # xgrammar's own checks come as C++ text ("[12:35:15] /project/cpp/x.cc:936: Check failed: (...) is
        # false: Integer exceeds maximum limit"): only what it says is kept.
        message = _BACKEND_CHECK.sub("", str(exc).split(" (parameter=")[0])
        raise InvalidInput(
            f"the structured output constraint was refused: {message}", param="structured_outputs"
        ) from exc
    constraint = params.structured_outputs
    for kind in ("json", "grammar", "regex"):
        value = getattr(constraint, kind, None)
        if value is None:
            continue
        try:
            grammar = constraint_grammar(kind, value, any_whitespace=not constraint.disable_any_whitespace)
        except (ValueError, TypeError, RuntimeError):
            continue  # the engine's own check above took it: nothing more to say
        if grammar is not None and not admits_finite_output(grammar):
            raise InvalidInput(
                "the structured output constraint admits no finite output (a rule, or a required property, "
                "refers back to itself with no way out): the model could never finish an answer",
                param="structured_outputs",
                code="unsatisfiable_constraint",
            )
