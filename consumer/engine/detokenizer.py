"""Incremental detokenizing that never sends part of a character.

A byte-level token can end in the middle of a multi-byte UTF-8 character (é is two bytes, 漢 three, most
emoji four); decoding it alone yields U+FFFD. The decoder is also context dependent (SentencePiece drops
a word's leading space at the start of a decode). So, as Hugging Face's text-generation-inference does,
decode a short window that starts a few tokens back and send only what the newest tokens added, once it
no longer ends in a replacement character.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

REPLACEMENT = "\ufffd"
_CONTEXT_TOKENS = 5  # prompt tokens decoded for context before the first generated one
# A UTF-8 character has at most 4 bytes, so once this many tokens wait and the text still ends in U+FFFD,
# the bytes are invalid rather than incomplete and waiting longer would only grow the window.
_MAX_PENDING = 4


class Decoder(Protocol):
    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str: ...


class IncrementalDetokenizer:
    def __init__(self, tokenizer: Decoder, *, prompt_ids: Sequence[int] = (), skip_special_tokens: bool = True) -> None:
        self._tok = tokenizer
        self._skip_special = skip_special_tokens
        self._ids = list(prompt_ids[-_CONTEXT_TOKENS:])
        self._prefix = 0  # start of the window decoded for context
        self._read = len(self._ids)  # tokens before this are already sent

    def _decode(self, start: int, end: int | None = None) -> str:
        return self._tok.decode(self._ids[start:end], skip_special_tokens=self._skip_special)

    def push(self, token_id: int) -> str:
        """New complete text since the last call; "" while a character's bytes are still arriving."""
        self._ids.append(token_id)
        prefix_text = self._decode(self._prefix, self._read)
        text = self._decode(self._prefix)
        pending = len(self._ids) - self._read
        if len(text) > len(prefix_text) and (not text.endswith(REPLACEMENT) or pending >= _MAX_PENDING):
            self._prefix, self._read = self._read, len(self._ids)
            return text[len(prefix_text) :]
        return ""

    def flush(self) -> str:
        """Whatever is still held at the end of the sequence, invalid bytes shown as U+FFFD."""
        prefix_text = self._decode(self._prefix, self._read)
        text = self._decode(self._prefix)
        self._prefix = self._read = len(self._ids)
        return text[len(prefix_text) :] if len(text) > len(prefix_text) else ""
