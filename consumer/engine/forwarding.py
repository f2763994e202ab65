"""An engine that hands every call to another: the base of wrappers that change one thing about an engine (the
bench's shared engine that stays open, tests' counting engine) and must still be a whole ``InferenceEngine``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from consumer.engine.interface import BatchRun, GenerationInput, InferenceEngine
from schemas.requests import ChatMessage, StructuredOutput


class ForwardingEngine:
    def __init__(self, inner: InferenceEngine) -> None:
        self.inner = inner

    @property
    def model_name(self) -> str:
        return self.inner.model_name

    @property
    def max_context(self) -> int:
        return self.inner.max_context

    @property
    def vocab_size(self) -> int:
        return self.inner.vocab_size

    def encode(self, text: str) -> list[int]:
        return self.inner.encode(text)

    def render_chat(
        self,
        messages: Sequence[ChatMessage],
        tools: Sequence[dict[str, Any]] | None = None,
        template_kwargs: Mapping[str, Any] | None = None,
    ) -> str:
        return self.inner.render_chat(messages, tools, template_kwargs)

    def constraint_error(self, spec: StructuredOutput) -> str | None:
        return self.inner.constraint_error(spec)

    def start(self, inputs: Sequence[GenerationInput]) -> BatchRun:
        return self.inner.start(inputs)

    def warmup(self, *, batch_size: int) -> None:
        self.inner.warmup(batch_size=batch_size)

    def close(self) -> None:
        self.inner.close()
