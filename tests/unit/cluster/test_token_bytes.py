"""The real tiny tokenizer (byte-level BPE): raw token bytes join back into the exact text; the fast prompt encoder
agrees with transformers."""

from __future__ import annotations

from pathlib import Path

from transformers import AutoTokenizer

from bitinglip.cluster.vllm import token_bytes
from bitinglip.cluster.vllm.tokens import fast_encoder


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


TEXTS = [
    "",
    " ",
    "Hello, world!",
    "  leading and trailing spaces  ",
    "naïve café — 日本語 ✓ 🙂 def f(x):\n\treturn x\r\n",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    '<tool_call>{"name": "f"}</tool_call> 1234567890 3.14159',
    "a" * 500,
]


def test_the_fast_encoder_is_the_rust_tokenizer_and_agrees_with_transformers(tiny_model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    encode = fast_encoder(tokenizer)
    assert encode.__name__ == "fast"  # the tiny model's tokenizer overrides nothing: the Rust path is taken
    for text in TEXTS:
        assert encode(text) == tokenizer.encode(text, add_special_tokens=False), text
    # Special tokens written in the text are one token each, as transformers makes them.
    assert len(encode("<|im_end|>")) == 1


def test_the_fast_encoder_follows_split_special_tokens(tiny_model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir, split_special_tokens=True)
    encode = fast_encoder(tokenizer)
    assert len(encode("<|im_end|>")) > 1
    for text in TEXTS:
        assert encode(text) == tokenizer.encode(text, add_special_tokens=False), text


def test_a_tokenizer_that_overrides_encode_keeps_its_own(tiny_model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)

    class Shouting(type(tokenizer)):  # type: ignore[misc]
        def encode(self, text: str, *args: object, **kwargs: object) -> list[int]:
            return list(super().encode(text.upper(), *args, **kwargs))

    tokenizer.__class__ = Shouting
    encode = fast_encoder(tokenizer)
    assert encode("hello") == tokenizer.encode("hello", add_special_tokens=False)
    assert encode("hello") != AutoTokenizer.from_pretrained(tiny_model_dir).encode("hello", add_special_tokens=False)
