"""An upper bound on a prompt's token count that costs a UTF-8 length instead of a tokenization.

Tokenizing is the largest part of the ingress's own work per request, yet for most requests the count
decides nothing: a prompt far under the cheapest class's bound and the prompt limit lands in the same class
whatever its exact count. For a byte-level BPE tokenizer (GPT-2, Llama 3 and their kin) every token
covers at least one byte of the text, so the text's UTF-8 length, plus what the tokenizer adds around it,
bounds the count from above. The router counts exactly only when that bound is not enough to decide.

The bound is offered only where it provably holds: no normalizer (one could lengthen the text), a BPE
model, and pre-tokenizers that only split the text before the byte-level step maps each byte to one
symbol. Anything else answers ``None``: always count.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from tokenizers import Tokenizer

# Pre-tokenizers that cut the text into pieces without adding or replacing characters.
_SPLITTING = frozenset({"Split", "Digits", "Punctuation", "Whitespace", "WhitespaceSplit"})

TokenBound = Callable[[Sequence[str]], int]


def byte_bound(tokenizer: Tokenizer) -> TokenBound | None:
    """``texts -> an upper bound on the tokens of encoding each one``, or ``None`` if none is provable."""
    return _bound_from_config(json.loads(tokenizer.to_str()), special=_special_tokens(tokenizer))


def _special_tokens(tokenizer: Tokenizer) -> int:
    processor = tokenizer.post_processor
    return 0 if processor is None else int(processor.num_special_tokens_to_add(False))


def _bound_from_config(config: dict[str, Any], *, special: int) -> TokenBound | None:
    if config.get("normalizer") is not None or (config.get("model") or {}).get("type") != "BPE":
        return None
    pre = config.get("pre_tokenizer") or {}
    steps: list[dict[str, Any]] = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    kinds = [step.get("type") for step in steps]
    if kinds.count("ByteLevel") != 1 or kinds[-1] != "ByteLevel" or not set(kinds[:-1]) <= _SPLITTING:
        return None
    per_text = special + (1 if steps[-1].get("add_prefix_space") else 0)

    def bound(texts: Sequence[str]) -> int:
        return sum(len(text.encode()) for text in texts) + per_text * len(texts)

    return bound
