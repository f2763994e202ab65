"""The built-in models' shapes and seeds, apart from graph building so the ingress never imports onnx."""

from __future__ import annotations

from dataclasses import dataclass

GENERATOR_VERSION = 1  # bump when the graph, the weights or the tokenizer change, so caches regenerate


@dataclass(frozen=True, slots=True)
class BuiltinSpec:
    name: str
    n_layer: int
    n_head: int
    n_embd: int
    n_positions: int
    vocab_size: int | None  # None: exactly the tokenizer's vocabulary
    seed: int

    @property
    def dir_name(self) -> str:
        return f"builtin-{self.name}-v{GENERATOR_VERSION}"

    @property
    def tokenizer_dir_name(self) -> str:
        return f"{self.dir_name}-tokenizer"


BUILTIN_MODELS: dict[str, BuiltinSpec] = {
    "tiny": BuiltinSpec("tiny", n_layer=2, n_head=4, n_embd=64, n_positions=512, vocab_size=None, seed=1),
    # A second small model, so per-class models ("chef A and chef B") are tested with two real, distinct
    # models at tiny's speed: another seed, twice the width, twice the context.
    "tiny-wide": BuiltinSpec("tiny-wide", n_layer=2, n_head=4, n_embd=128, n_positions=1024, vocab_size=None, seed=3),
    "gpt2-small-shape": BuiltinSpec(
        "gpt2-small-shape", n_layer=12, n_head=12, n_embd=768, n_positions=1024, vocab_size=50257, seed=2
    ),
}
