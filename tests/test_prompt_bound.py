"""The byte bound on a prompt's token count: never under the exact count, and offered only where that holds."""

from __future__ import annotations

from pathlib import Path

import pytest
from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
from tokenizers.models import BPE, WordLevel

from brigade.models.registry import load_tokenizer
from producer.prompt_bound import byte_bound

TEXTS = [
    "",
    "a short order",
    "  leading and trailing  ",
    "mise-en-place " * 50,
    "naïve café — déjà vu",
    "漢字かな交じり文",
    "emoji 👩‍🍳🔥 and flags 🇫🇷",
    "e\u0301\u0301\u0301 combining marks",
    "<|endoftext|> a special token's text",
    "digits 1234567890 and\ttabs\nand newlines\r\n",
]


@pytest.mark.parametrize("model", ["builtin:tiny", "builtin:gpt2-small-shape"])
def test_the_bound_is_never_under_the_count(model: str, model_cache_dir: Path) -> None:
    tok = load_tokenizer(model, cache_dir=model_cache_dir)
    bound = byte_bound(tok)
    assert bound is not None
    for text in TEXTS:
        assert bound([text]) >= len(tok.encode(text).ids), text
    assert bound(TEXTS) == sum(bound([t]) for t in TEXTS)


def test_what_the_tokenizer_adds_around_the_text_is_in_the_bound(model_cache_dir: Path) -> None:
    tok = load_tokenizer("builtin:tiny", cache_dir=model_cache_dir)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.post_processor = processors.TemplateProcessing(
        single="<|endoftext|> $A <|endoftext|>", special_tokens=[("<|endoftext|>", 0)]
    )
    bound = byte_bound(tok)
    assert bound is not None
    assert bound(["a"]) == 1 + 1 + 2  # the byte, the prefix space, the two special tokens
    for text in TEXTS:
        assert bound([text]) >= len(tok.encode(text).ids), text


def _byte_level_bpe() -> Tokenizer:
    tok = Tokenizer(BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel()
    return tok


def test_no_bound_where_the_text_could_grow_or_tokens_are_not_bytes() -> None:
    word_level = Tokenizer(WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    word_level.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    normalized = _byte_level_bpe()
    normalized.normalizer = normalizers.NFKC()  # "ﬁ" becomes "fi": more bytes than were sent
    metaspace_first = _byte_level_bpe()
    metaspace_first.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Metaspace(), pre_tokenizers.ByteLevel()])
    for tok in (word_level, normalized, metaspace_first):
        assert byte_bound(tok) is None
    split_first = _byte_level_bpe()
    split_first.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(), pre_tokenizers.ByteLevel()])
    assert byte_bound(split_first) is not None  # splitting adds nothing
