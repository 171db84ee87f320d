"""Token helpers: the raw bytes a token stands for (logprobs need them, also for part of a UTF-8 character), and a
fast prompt encoder."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any


@functools.cache
def _byte_level_decoder() -> dict[str, int]:
    """The inverse of byte-level BPE's byte -> printable character table (GPT-2's scheme)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = list(printable)
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


def token_bytes(tokenizer: Any, token_id: int) -> bytes:
    piece = tokenizer.convert_ids_to_tokens(token_id)
    if piece is None:
        return b""
    if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):  # SentencePiece byte fallback
        return bytes([int(piece[3:5], 16)])
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and type(backend.decoder).__name__ == "ByteLevel":
        table = _byte_level_decoder()
        if all(c in table for c in piece):
            return bytes(table[c] for c in piece)
    return str(tokenizer.decode([token_id])).encode()


# Methods a model's tokenizer class may override to change what `encode` returns; if it overrides none, its
# `encode(text, add_special_tokens=False)` is exactly the Rust tokenizer's encode with truncation and padding off.
_ENCODE_HOOKS = ("encode", "_encode_plus", "__call__", "tokenize", "_batch_encode_plus", "prepare_for_tokenization")


def fast_encoder(tokenizer: Any) -> Callable[[str], list[int]]:
    """Prompt text -> token ids, straight through the Rust tokenizer where that is what transformers would do.

    transformers' `encode` spends several times the Rust call's time on argument handling and result conversion,
    once per request on the event loop (docs/performance.md). Our own copy of the Rust tokenizer
    also keeps vLLM's tokenizer pool and any mutation of its shared tokenizer out of the way. A tokenizer class
    that overrides the encode path, or a copy that disagrees on a probe text, keeps transformers' path.
    """

    def slow(text: str) -> list[int]:
        return list(tokenizer.encode(text, add_special_tokens=False))

    try:
        from tokenizers import Tokenizer
        from transformers.tokenization_utils_tokenizers import TokenizersBackend
    except ImportError:  # pragma: no cover - transformers without the Rust backend class
        return slow
    if not isinstance(tokenizer, TokenizersBackend):
        return slow
    for cls in type(tokenizer).__mro__:
        if cls is TokenizersBackend:
            break
        if not cls.__module__.startswith("vllm") and any(hook in vars(cls) for hook in _ENCODE_HOOKS):
            return slow
    rust = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    rust.no_truncation()
    rust.no_padding()
    rust.encode_special_tokens = bool(getattr(tokenizer, "split_special_tokens", False))
    special = " ".join(str(t) for t in getattr(tokenizer, "all_special_tokens", [])[:4])
    probe = f"Hello, world!  {special} naïve café 日本語\n\tdef f(x): return x ✓"

    def fast(text: str) -> list[int]:
        return rust.encode(text, add_special_tokens=False).ids

    return fast if fast(probe) == slow(probe) else slow
