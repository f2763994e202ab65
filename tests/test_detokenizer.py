"""Incremental detokenizing never sends part of a UTF-8 character, whatever the token boundaries."""

from __future__ import annotations

from pathlib import Path

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from brigade.models.registry import load_tokenizer
from consumer.engine.detokenizer import REPLACEMENT, IncrementalDetokenizer

TEXTS = ["café au lait", "漢字かな交じり文", "pizza 🍕 and 👩‍🍳 chef", "mixed: é漢🙂!"]


def bytes_only() -> Tokenizer:
    """Byte-level with no merges: every byte its own token, so every multi-byte character is split."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    tok = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(sorted(alphabet))}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok


@pytest.fixture(scope="module")
def builtin_tokenizer(model_cache_dir: Path) -> Tokenizer:
    return load_tokenizer("builtin:tiny", cache_dir=model_cache_dir)


def stream(tok: Tokenizer, ids: list[int], prompt_ids: list[int] | None = None) -> list[str]:
    detok = IncrementalDetokenizer(tok, prompt_ids=prompt_ids or [])
    return [detok.push(i) for i in ids] + [detok.flush()]


@pytest.mark.parametrize("text", TEXTS)
def test_pieces_are_whole_characters_and_join_to_the_text(text: str, builtin_tokenizer: Tokenizer) -> None:
    for tok in (bytes_only(), builtin_tokenizer):
        ids = tok.encode(text).ids
        pieces = stream(tok, ids)
        assert "".join(pieces) == text
        assert all(REPLACEMENT not in p for p in pieces)
        assert pieces[-1] == "", "nothing left to flush after complete characters"
    assert "" in stream(bytes_only(), bytes_only().encode(text).ids)[:-1], "split characters were held back"


def test_each_character_goes_out_as_soon_as_its_last_byte_arrives() -> None:
    tok = bytes_only()
    pieces = stream(tok, tok.encode("é漢").ids)
    assert pieces == ["", "é", "", "", "漢", ""]


def test_prompt_context_does_not_leak_into_the_output(builtin_tokenizer: Tokenizer) -> None:
    prompt = builtin_tokenizer.encode("The chef said ").ids
    generated = builtin_tokenizer.encode("The chef said café 🙂").ids[len(prompt) :]
    assert "".join(stream(builtin_tokenizer, generated, prompt)) == builtin_tokenizer.decode(
        prompt + generated
    ).removeprefix("The chef said ")


def test_invalid_bytes_do_not_stall_the_stream() -> None:
    tok = bytes_only()
    lone = tok.token_to_id(bytes_to_unicode_char(0x80))  # a continuation byte with no lead byte
    assert lone is not None
    pieces = stream(tok, [lone, *tok.encode("abcd").ids])
    assert "".join(pieces) == REPLACEMENT + "abcd"
    assert pieces[-1] == "", "sent before the end, once it could no longer become a character"


def test_flush_shows_an_unfinished_character_as_replacement() -> None:
    tok = bytes_only()
    ids = tok.encode("é").ids
    assert stream(tok, ids[:1]) == ["", REPLACEMENT]


def bytes_to_unicode_char(byte: int) -> str:
    """GPT-2's printable stand-in for a raw byte, as the byte-level vocabulary spells it."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    if byte in printable:
        return chr(byte)
    return chr(256 + [b for b in range(256) if b not in printable].index(byte))
