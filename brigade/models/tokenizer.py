"""The built-in models' tokenizer, trained in code so nothing is downloaded.

A byte-level BPE (GPT-2's scheme) so any text, é or 漢字 or emoji, encodes; trained on a short embedded
corpus. The tokenizers trainer is deterministic for a fixed corpus, so every pod (ingress and workers)
that generates it gets the same ids without sharing files.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

EOS_TOKEN = "<|endoftext|>"
VOCAB_TARGET = 2048

# The plain fallback the engine uses when a tokenizer_config has no template, written as a template.
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)

_CORPUS = """\
The chef calls the order and the pass sends each plate out the moment it is ready.
Tickets pile up on the rail; the manager calls in more chefs when the kitchen is busy.
Every station has its own fire: the grill, the sauce, the fish, the roast and the pastry.
A waiter writes the order, puts the ticket on the rail, and the expeditor reads it aloud.
When the dining room is full, the line moves fast and nobody talks more than they must.
The sauce chef reduces stock for hours; the pastry chef weighs sugar and butter to the gram.
Fish goes on the plate skin side up, with lemon, salt and a little oil, then out to the table.
In the morning the kitchen is quiet: deliveries arrive, vegetables are washed, knives are sharpened.
By noon the first tickets come in, and by evening the rail holds twenty orders at a time.
Good service is a rhythm: fire, cook, plate, call, expedite, and start again with the next order.
The restaurant opens at six, closes at eleven, and the cleaning takes another hour after that.
Bread is baked before dawn, soup is made at ten, and the roast rests while the guests order.
She tasted the soup, added pepper, and sent it to the pass with a nod to the waiter.
He cut the onions, the carrots and the celery, then started a new pot of stock for tomorrow.
They worked together for years, and each knew what the other needed before a word was said.
Questions are welcome: what is the special today, where does the fish come from, how is it cooked?
Numbers matter too: table 12 wants 3 steaks, table 7 waits for 2 desserts, table 4 is paying.
A model reads a prompt, predicts the next token, and streams it back while the batch keeps running.
Workers read requests from a queue, group them into batches, and write every token to a stream.
The system scales with the queue: more messages waiting means more workers, fewer means less cost.
Hello, how are you today? I am fine, thank you. Please tell me a story about the kitchen.
Once upon a time a young cook came to the city with a knife, a pan and a great deal of hope.
"""


def _train() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_TARGET,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS.splitlines(), trainer=trainer)
    return tok


def write_tokenizer_files(directory: Path, *, model_max_length: int) -> Tokenizer:
    """Write ``tokenizer.json`` and ``tokenizer_config.json`` as Hugging Face exports lay them out."""
    tok = _train()
    tok.save(str(directory / "tokenizer.json"))
    config = {
        "tokenizer_class": "GPT2TokenizerFast",
        "bos_token": EOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "unk_token": EOS_TOKEN,
        "model_max_length": model_max_length,
        "add_prefix_space": False,
        "chat_template": CHAT_TEMPLATE,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return tok


def printable_mask(tok: Tokenizer, vocab_size: int) -> list[bool]:
    """Which ids decode, on their own, to complete printable characters.

    Random weights would otherwise emit lone UTF-8 continuation bytes and control characters; the
    built-in models put a large negative bias on every other id so demo output stays readable.
    """
    mask = [False] * vocab_size
    for i in range(min(vocab_size, tok.get_vocab_size())):
        text = tok.decode([i], skip_special_tokens=True)
        mask[i] = bool(text) and "\ufffd" not in text and text.isprintable()
    return mask
