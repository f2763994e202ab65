"""The ONNX Runtime engine: KV-cache generation over a static batch of prompts of different lengths.

Prompts are left-padded so every row's newest token sits in the last column; the attention mask hides
the padding and per-row position ids keep each sequence's positions as if it ran alone. A sequence that
finishes leaves the batch at once (its KV rows are dropped, and padding columns no row needs any more are
cut), so the remaining rows pay nothing for it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from tokenizers import Tokenizer

from brigade.models.registry import model_file, resolve_model
from consumer.engine.interface import GenerationInput, TokenDelta
from consumer.engine.model_files import ChatRenderer, ModelFiles, read_model_files
from consumer.engine.sampling import choose_tokens
from consumer.engine.sequence import SequenceState
from schemas.requests import ChatMessage, SamplingParams
from schemas.settings import Settings

_PAST = re.compile(r"^past_key_values\.(\d+)\.(key|value)$")
_DTYPES: dict[str, type[np.generic]] = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
_LOGITS_TO_KEEP = ("logits_to_keep", "num_logits_to_keep")
_MAX_LOGITS = 64 * 2**20  # floats of full-sequence logits one prefill run may return (256 MB in fp32)
I64 = npt.NDArray[np.int64]


def execution_providers(device: str) -> list[str]:
    """The one place that maps ``BRIGADE_DEVICE`` to ONNX Runtime providers."""
    if device in ("cpu", "auto"):
        return ["CPUExecutionProvider"]
    raise ValueError(f"BRIGADE_DEVICE={device!r} is not supported yet; use 'cpu' or 'auto'")


def session_options() -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    opts.intra_op_num_threads = cores
    opts.inter_op_num_threads = 1
    # ERROR and up: the built-in models' optional logits_to_keep input (an overridable initializer) makes
    # every session print a WARNING that reads like a fault but is the intended design.
    opts.log_severity_level = 3
    return opts


@dataclass(frozen=True, slots=True)
class KvLayout:
    """The cache tensors as the graph declares them: [batch, kv_heads, past, head_dim] each."""

    past_names: tuple[str, ...]
    present_names: tuple[str, ...]
    kv_heads: int
    head_dim: int
    dtype: type[np.generic]
    has_position_ids: bool
    has_cache_branch: bool  # Optimum's older merged decoder switches prefill/decode with use_cache_branch
    logits_to_keep: str | None  # transformers' logits_to_keep as an optional input: LM head on the last position only

    @property
    def batch_inputs(self) -> frozenset[str]:
        return frozenset(("input_ids", "attention_mask", "position_ids", *self.past_names))


def _dim(declared: object, config: dict[str, Any], keys: tuple[str, ...]) -> int:
    if isinstance(declared, int):
        return declared
    for key in keys:
        if isinstance(config.get(key), int):
            return int(config[key])
    raise ValueError(f"the KV cache shape is symbolic and config.json has none of {keys}")


def kv_layout(session: ort.InferenceSession, config: dict[str, Any]) -> KvLayout:
    inputs = {i.name: i for i in session.get_inputs()}
    optional = {i.name for i in session.get_overridable_initializers()} | set(inputs)
    past = sorted((n for n in inputs if _PAST.match(n)), key=lambda n: (int(n.split(".")[1]), n.endswith("value")))
    if not past or "input_ids" not in inputs or "attention_mask" not in inputs:
        raise ValueError(
            "the model is not a decoder with past: export it with "
            "`optimum-cli export onnx --task text-generation-with-past`"
        )
    first = inputs[past[0]]
    heads_cfg = config.copy()
    if "hidden_size" in config and "num_attention_heads" in config:
        heads_cfg.setdefault("head_dim", config["hidden_size"] // config["num_attention_heads"])
    if "n_embd" in config and "n_head" in config:
        heads_cfg.setdefault("head_dim", config["n_embd"] // config["n_head"])
    return KvLayout(
        past_names=tuple(past),
        present_names=tuple(n.replace("past_key_values", "present") for n in past),
        kv_heads=_dim(first.shape[1], heads_cfg, ("num_key_value_heads", "num_attention_heads", "n_head")),
        head_dim=_dim(first.shape[3], heads_cfg, ("head_dim",)),
        dtype=_DTYPES.get(first.type, np.float32),
        has_position_ids="position_ids" in inputs,
        has_cache_branch="use_cache_branch" in inputs,
        logits_to_keep=next((n for n in _LOGITS_TO_KEEP if n in optional), None),
    )


class OnnxBatchRun:
    """A batch in flight; ``step`` is called from one executor thread at a time."""

    def __init__(self, engine: OnnxEngine, seqs: list[SequenceState]) -> None:
        self._engine = engine
        self._by_id = {s.request_id: s for s in seqs}
        self._pending = [s for s in seqs if s.done]  # no room for even one token: reported on the first step
        self._active = [s for s in seqs if not s.done]
        self._started = False
        self._past: list[npt.NDArray[Any]] = []
        self._mask: I64 = np.zeros((0, 0), dtype=np.int64)
        self._next_pos: I64 = np.zeros(0, dtype=np.int64)
        self._next_ids: I64 = np.zeros(0, dtype=np.int64)

    @property
    def finished(self) -> bool:
        return self._started and not self._active

    def token_ids(self, request_id: str) -> list[int]:
        """The ids generated so far for one sequence (the deltas carry only text)."""
        return list(self._by_id[request_id].token_ids)

    def step(self) -> list[TokenDelta]:
        deltas = [s.delta() for s in self._pending]
        self._pending = []
        if not self._active:
            self._started = True
            return deltas
        feeds = self._decode_feeds() if self._started else self._prefill_feeds()
        self._started = True
        logits = self._run(feeds)
        logits[:, self._engine.suppress_ids] = -np.inf
        tokens = choose_tokens(logits, [s.sampling for s in self._active], [s.rng for s in self._active])
        deltas.extend(s.advance(int(t)) for s, t in zip(self._active, tokens, strict=True))
        self._next_ids = tokens
        self._compact()
        return deltas

    def _run(self, feeds: dict[str, npt.NDArray[Any]]) -> npt.NDArray[Any]:
        """Last-position logits [batch, sampled_vocab]; the new cache goes to ``self._past``.

        A model without logits_to_keep returns logits for every prompt position: [32, 2048, 50k] floats
        would be 13 GB, so such a prefill runs in groups of rows sized to stay under a bound.
        """
        layout, engine = self._engine.layout, self._engine
        names = ["logits", *layout.present_names]
        batch, width = feeds["input_ids"].shape
        rows = batch if layout.logits_to_keep else max(1, _MAX_LOGITS // (width * engine.model_vocab))
        parts, batched = [], layout.batch_inputs
        for start in range(0, batch, rows):
            part = {k: v[start : start + rows] if k in batched else v for k, v in feeds.items()}
            parts.append(engine.session.run(names, part))
        if len(parts) == 1:
            self._past = parts[0][1:]
            logits: npt.NDArray[Any] = parts[0][0][:, -1, : engine.sampled_vocab]
            return logits
        self._past = [np.concatenate([p[i] for p in parts]) for i in range(1, len(names))]
        return np.concatenate([p[0][:, -1, : engine.sampled_vocab] for p in parts])

    def _feeds(self, ids: I64, positions: I64) -> dict[str, npt.NDArray[Any]]:
        layout = self._engine.layout
        feeds: dict[str, npt.NDArray[Any]] = {"input_ids": ids, "attention_mask": self._mask}
        if layout.has_position_ids:
            feeds["position_ids"] = positions
        if layout.has_cache_branch:
            feeds["use_cache_branch"] = np.array([self._started], dtype=np.bool_)
        if layout.logits_to_keep is not None:
            feeds[layout.logits_to_keep] = np.array(1, dtype=np.int64)
        feeds.update(zip(layout.past_names, self._past, strict=True))
        return feeds

    def _prefill_feeds(self) -> dict[str, npt.NDArray[Any]]:
        layout = self._engine.layout
        lengths = [len(s.prompt_ids) for s in self._active]
        batch, width = len(lengths), max(lengths)
        ids = np.full((batch, width), self._engine.pad_id, dtype=np.int64)
        self._mask = np.zeros((batch, width), dtype=np.int64)
        for row, (s, n) in enumerate(zip(self._active, lengths, strict=True)):
            ids[row, width - n :] = s.prompt_ids
            self._mask[row, width - n :] = 1
        positions = np.maximum(np.cumsum(self._mask, axis=1) - 1, 0)
        self._next_pos = np.array(lengths, dtype=np.int64)
        empty = np.zeros((batch, layout.kv_heads, 0, layout.head_dim), dtype=layout.dtype)
        self._past = [empty] * len(layout.past_names)
        return self._feeds(ids, positions)

    def _decode_feeds(self) -> dict[str, npt.NDArray[Any]]:
        self._mask = np.concatenate([self._mask, np.ones((len(self._active), 1), dtype=np.int64)], axis=1)
        positions = self._next_pos[:, None]
        self._next_pos = self._next_pos + 1
        return self._feeds(self._next_ids[:, None], positions)

    def _compact(self) -> None:
        """Drop finished rows, then the padding columns that no remaining row attends to."""
        keep = [row for row, s in enumerate(self._active) if not s.done]
        if len(keep) == len(self._active):
            return
        self._active = [self._active[row] for row in keep]
        if not keep:
            self._past = []
            return
        index = np.array(keep, dtype=np.int64)
        self._mask, self._next_pos, self._next_ids = self._mask[index], self._next_pos[index], self._next_ids[index]
        first = int(np.argmax(self._mask.any(axis=0)))
        self._mask = self._mask[:, first:]
        self._past = [np.ascontiguousarray(p[index, :, first:]) for p in self._past]


class OnnxEngine:
    def __init__(self, model_dir: Path, *, model_name: str, device: str = "cpu") -> None:
        self._name = model_name
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.files: ModelFiles = read_model_files(model_dir, self.tokenizer)
        self._chat = ChatRenderer(self.files)
        providers = execution_providers(device)
        self._session: ort.InferenceSession | None = ort.InferenceSession(
            str(model_file(model_dir)), sess_options=session_options(), providers=providers
        )
        self.layout = kv_layout(self._session, self.files.config)
        model_vocab = self._session.get_outputs()[0].shape[-1]
        tok_vocab = self.tokenizer.get_vocab_size(with_added_tokens=True)
        # Padded-vocab models: ids the tokenizer cannot decode are never sampled.
        self.model_vocab = model_vocab if isinstance(model_vocab, int) else tok_vocab
        self.sampled_vocab = min(tok_vocab, self.model_vocab)
        self.pad_id = self.files.bos_id if self.files.bos_id is not None else 0
        self.suppress_ids = np.array([i for i in self.files.suppress_ids if i < self.sampled_vocab], dtype=np.int64)

    @property
    def session(self) -> ort.InferenceSession:
        if self._session is None:
            raise RuntimeError("the engine is closed")
        return self._session

    @property
    def model_name(self) -> str:
        return self._name

    @property
    def max_context(self) -> int:
        return self.files.max_context

    def encode(self, text: str) -> list[int]:
        # A rendered chat template already starts with the BOS text; adding BOS again would double it.
        special = not (self.files.bos_token and text.startswith(self.files.bos_token))
        return list(self.tokenizer.encode(text, add_special_tokens=special).ids)

    def render_chat(self, messages: Sequence[ChatMessage]) -> str:
        return self._chat(messages)

    def start(self, inputs: Sequence[GenerationInput]) -> OnnxBatchRun:
        seqs = [
            SequenceState(
                item,
                prompt_ids=list(item.prompt_ids) or [self.pad_id],  # an empty prompt starts from BOS, as HF
                decoder=self.tokenizer,
                eos_ids=self.files.eos_ids,
                max_context=self.max_context,
            )
            for item in inputs
        ]
        if self._session is None:
            raise RuntimeError("the engine is closed")
        return OnnxBatchRun(self, seqs)

    def warmup(self, *, batch_size: int) -> None:
        prompt = self.encode("warm up the kitchen before service begins")
        greedy = SamplingParams(temperature=0.0, ignore_eos=True)
        run = self.start([GenerationInput(f"warmup-{i}", prompt, 4, greedy) for i in range(batch_size)])
        while not run.finished:
            run.step()

    def close(self) -> None:
        self._session = None


def load_engine(settings: Settings) -> OnnxEngine:
    """Resolve (and on first use generate) the configured model, then open its session."""
    model_dir = resolve_model(settings.model, cache_dir=settings.model_cache_dir)
    return OnnxEngine(model_dir, model_name=settings.model, device=settings.device)
