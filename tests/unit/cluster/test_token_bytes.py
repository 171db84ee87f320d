"""Raw token bytes from the real tiny tokenizer (byte-level BPE): they join back into the exact text."""

from __future__ import annotations

from pathlib import Path

from transformers import AutoTokenizer

from bitinglip.cluster.vllm import token_bytes


def test_token_bytes_join_back_into_the_text(tiny_model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    text = "naïve café — 日本語 ✓ def f(x):\n\treturn x"
    ids = tokenizer.encode(text, add_special_tokens=False)
    pieces = [token_bytes(tokenizer, i) for i in ids]
    assert b"".join(pieces) == text.encode()
    # Some token is only part of a character: its bytes alone are not valid UTF-8.
    assert any(not _valid_utf8(p) for p in pieces)


def _valid_utf8(raw: bytes) -> bool:
    try:
        raw.decode()
    except UnicodeDecodeError:
        return False
    return True
