"""The ONNX Runtime engine: KV-cache generation over a batch of prompts of different lengths.

Prompts are left-padded so every row's newest token sits in the last column; the attention mask hides
the padding and per-row position ids keep each sequence's positions as if it ran alone. A sequence that
finishes leaves the batch at once (its KV rows are dropped, and padding columns no row needs any more are
cut), so the remaining rows pay nothing for it; a sequence that joins a running batch is prefilled on its
own and its cache rows appended, padded on the left to the batch's width.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from tokenizers import Tokenizer

from brigade.models.chat_template import ChatRenderer
from brigade.models.registry import model_file, resolve_model
from consumer.engine.constraint import Constraints
from consumer.engine.interface import GenerationInput, OutOfMemory, TokenDelta
from consumer.engine.kv_cache import KvEntry, SessionKvCache, SharedPrefixes
from consumer.engine.kv_layout import kv_layout
from consumer.engine.logprobs import TokenText, entry, log_softmax, prompt_entries
from consumer.engine.model_files import ModelFiles, read_model_files
from consumer.engine.rows import EMPTY_IDS, EMPTY_MASK, I64, Partial, Rows, entry_past
from consumer.engine.sampling import choose_tokens
from consumer.engine.sequence import SequenceState
from schemas.events import FinishReason
from schemas.requests import ChatMessage, SamplingParams, StructuredOutput
from schemas.settings import Settings

# How ONNX Runtime words an allocation failure: the CUDA allocator, its BFC arena, and the CPU allocator.
_OOM_MESSAGES = ("out of memory", "failed to allocate memory", "bad_alloc")
_MAX_LOGITS = 64 * 2**20  # floats of full-sequence logits one prefill run may return (256 MB in fp32)


def execution_providers(device: str) -> list[str]:
    """The one place that maps ``BRIGADE_DEVICE`` to ONNX Runtime providers."""
    if device in ("cpu", "auto"):
        return ["CPUExecutionProvider"]
    raise ValueError(f"BRIGADE_DEVICE={device!r} is not supported yet; use 'cpu' or 'auto'")


def session_options(*, allow_spinning: bool = True) -> ort.SessionOptions:
    """``allow_spinning``: intra-op threads busy-wait between operators. That saves their wake-up on every
    operator, but the CPU they burn is taken from whatever shares the cores: on the dev stack it doubled
    the queue hop's p99 (BENCHMARKS.md, figure 3)."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    opts.intra_op_num_threads = cores
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if allow_spinning else "0")
    # ERROR and up: the built-in models' optional logits_to_keep input (an overridable initializer) makes
    # every session print a WARNING that reads like a fault but is the intended design.
    opts.log_severity_level = 3
    return opts


def is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    text = str(exc).lower()
    return any(m in text for m in _OOM_MESSAGES)


class OnnxBatchRun:
    """Sequences in flight; ``step`` and ``join`` are called from one executor thread at a time.

    A step prefills the rows that joined since the last one (their first token) and appends them to the
    cache, or, when none did, decodes one token for every running row: static batching is a run nobody joins,
    continuous batching joins new requests at each step boundary. A joiner's prefill is a step of its own so
    that its first token is written before the running rows' next decode, not after it: on
    builtin:gpt2-small-shape, 10 requests/s, TTFT p50 95–125 ms against 151–168 (BENCHMARKS.md, figure 3).
    A joiner whose uncached part exceeds the engine's ``prefill_chunk`` while others decode is prefilled a chunk
    per step instead, a decode step between chunks, so the running rows wait for one chunk at a time.
    """

    def __init__(self, engine: OnnxEngine, seqs: list[SequenceState]) -> None:
        self._engine = engine
        self._by_id: dict[str, SequenceState] = {}
        self._pending: list[SequenceState] = []  # no room for even one token: reported on the next step
        self._joining: list[SequenceState] = []  # waiting for their prefill
        self._partial: list[Partial] = []  # long prompts prefilled a chunk per step, between decode steps
        self._chunked = False  # the last step ran a chunk: the next one decodes the running rows
        self._started = False
        self._rows = Rows(seqs=[], past=[], mask=EMPTY_MASK, next_pos=EMPTY_IDS, next_ids=EMPTY_IDS)
        self._add(seqs)

    @property
    def finished(self) -> bool:
        return self._started and not (self._rows.seqs or self._joining or self._pending or self._partial)

    @property
    def running(self) -> int:
        """Sequences that still need steps (decoding, or waiting for their prefill or its next chunk)."""
        return len(self._rows.seqs) + len(self._joining) + len(self._partial)

    def token_ids(self, request_id: str) -> list[int]:
        """The ids generated so far for one sequence (the deltas carry only text)."""
        return list(self._by_id[request_id].token_ids)

    def join(self, inputs: Sequence[GenerationInput]) -> None:
        self._add([self._engine.sequence(item) for item in inputs])

    def drop(self, request_ids: Collection[str]) -> None:
        gone = {rid for rid in request_ids if rid in self._by_id and not self._by_id[rid].done}
        if not gone:
            return
        for rid in gone:
            self._by_id[rid].finish_reason = FinishReason.CANCELLED
        self._joining = [s for s in self._joining if s.request_id not in gone]
        self._partial = [p for p in self._partial if p.seq.request_id not in gone]
        # Their rows and the cache columns only they attended to. Called on the worker's event loop, between steps:
        # no cache kept for them (a copy of megabytes there would hold up the loop, and a cancelled turn's reply
        # is not in its session's next prompt anyway).
        self._rows.compact()

    def _add(self, seqs: list[SequenceState]) -> None:
        for s in seqs:
            self._by_id[s.request_id] = s
            (self._pending if s.done else self._joining).append(s)

    def step(self) -> list[TokenDelta]:
        deltas = [s.delta() for s in self._pending]
        self._pending = []
        self._started = True
        if self._joining and self._join(deltas):
            self._chunked = False
        elif self._partial and not (self._chunked and self._rows.seqs):
            deltas.extend(self._next_chunk())
        elif self._rows.seqs:
            deltas.extend(self._decode())
            self._chunked = False
        return deltas

    def _join(self, deltas: list[TokenDelta]) -> bool:
        """Prefill the joiners (their first tokens go to ``deltas``); False if none ran: every one is a long
        prompt that waits for chunks of its own while the rows decode."""
        joining, self._joining = self._joining, []
        # Scoring a prompt needs the model's output at every position: only those rows pay for it.
        plain = [s for s in joining if s.sampling.prompt_logprobs is None]
        scoring = [s for s in joining if s.sampling.prompt_logprobs is not None]
        fresh = []  # the rest: no cache of their session's last turn, nor a kept prefix, to start from
        keep: dict[str, int] = {}  # how many leading tokens of a prompt another prompt started with too
        shared = self._engine.shared
        wanted: set[tuple[int, ...]] = set()  # prefixes a joiner of this step keeps: once, however many want it
        chunk = self._engine.prefill_chunk if self._rows.seqs else 0  # only where other sequences would wait
        ran = False

        def looked(s: SequenceState) -> bool:  # for a KV cache to start from (cached_tokens 0 if it found none)
            return s.cache_key is not None or shared is not None

        for s in plain:
            hit = self._engine.kv.take(s.cache_key, s.prompt_ids) if s.cache_key is not None else None
            if hit is None and shared is not None:
                hit, want = shared.find(s.prompt_ids)
                if want and (prefix := tuple(s.prompt_ids[:want])) not in wanted:
                    wanted.add(prefix)
                    keep[s.request_id] = want
            reused = hit[1] if hit is not None else 0
            if chunk and len(s.prompt_ids) - reused > chunk:
                past = entry_past(*hit) if hit is not None else self._empty_past()
                cached = reused if hit is not None else 0 if looked(s) else None
                self._partial.append(Partial(s, past, reused, cached, keep.get(s.request_id, 0)))
            elif hit is None:
                fresh.append(s)
            else:
                deltas.append(
                    self._prefill_from(s, entry_past(*hit), reused, cached=reused, keep=keep.get(s.request_id, 0))
                )
                ran = True
        if fresh:
            prefilled = zip(self._prefill(fresh, keep=keep), fresh, strict=True)
            deltas.extend(replace(d, cached_tokens=0) if looked(s) else d for d, s in prefilled)
        if scoring:
            deltas.extend(self._prefill(scoring, every_position=True))
        return ran or bool(fresh or scoring)

    def _next_chunk(self) -> list[TokenDelta]:
        """The next ``prefill_chunk`` tokens of the oldest prompt being prefilled in chunks; its last chunk (or,
        with no row left to wait, all that is left) samples its first token and makes it a row."""
        p = self._partial[0]
        self._chunked = True
        if len(p.seq.prompt_ids) - p.done <= self._engine.prefill_chunk or not self._rows.seqs:
            self._partial.pop(0)
            return [self._prefill_from(p.seq, p.past, p.done, cached=p.cached, keep=p.keep)]
        upto = p.done + self._engine.prefill_chunk
        ids = np.array([p.seq.prompt_ids[p.done : upto]], dtype=np.int64)
        positions = np.arange(p.done, upto, dtype=np.int64)[None, :]
        mask = np.ones((1, upto), dtype=np.int64)
        _, p.past = self._run(self._feeds(ids, positions, mask, p.past, decode=p.done > 0))
        p.done = upto
        return []

    def _empty_past(self) -> list[npt.NDArray[Any]]:
        layout = self._engine.layout
        return [np.zeros((1, layout.kv_heads, 0, layout.head_dim), dtype=layout.dtype) for _ in layout.past_names]

    def _decode(self) -> list[TokenDelta]:
        rows = self._rows
        rows.mask = np.concatenate([rows.mask, np.ones((len(rows.seqs), 1), dtype=np.int64)], axis=1)
        feeds = self._feeds(rows.next_ids[:, None], rows.next_pos[:, None], rows.mask, rows.past, decode=True)
        logits, rows.past = self._run(feeds)
        rows.next_pos = rows.next_pos + 1
        rows.next_ids, deltas = self._sample(logits[:, -1], rows.seqs)
        self._compact(rows)
        return deltas

    def _prefill(
        self, seqs: list[SequenceState], *, every_position: bool = False, keep: Mapping[str, int] | None = None
    ) -> list[TokenDelta]:
        """The joiners' first tokens; ``every_position``: also their prompts' entries (``prompt_logprobs``);
        ``keep``: how many leading tokens of a joiner's prompt to keep as a shared prefix."""
        layout = self._engine.layout
        lengths = [len(s.prompt_ids) for s in seqs]
        batch, width = len(lengths), max(lengths)
        ids = np.full((batch, width), self._engine.pad_id, dtype=np.int64)
        mask = np.zeros((batch, width), dtype=np.int64)
        for row, (s, n) in enumerate(zip(seqs, lengths, strict=True)):
            ids[row, width - n :] = s.prompt_ids
            mask[row, width - n :] = 1
        positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
        empty = np.zeros((batch, layout.kv_heads, 0, layout.head_dim), dtype=layout.dtype)
        feeds = self._feeds(ids, positions, mask, [empty] * len(layout.past_names), decode=False)
        logits, past = self._run(feeds, every_position=every_position)
        if keep:
            for row, (s, n) in enumerate(zip(seqs, lengths, strict=True)):
                self._keep_prefix(s, keep.get(s.request_id, 0), [p[row : row + 1] for p in past], start=width - n)
        next_ids, deltas = self._sample(logits[:, -1], seqs)
        if every_position:
            for row, (s, n) in enumerate(zip(seqs, lengths, strict=True)):
                logits[row, :, self._engine.suppress_ids] = -np.inf
                k = s.sampling.prompt_logprobs or 0
                scored = prompt_entries(logits[row, width - n :], s.prompt_ids, k, self._engine.token_text)
                deltas[row] = replace(deltas[row], prompt_logprobs=scored)
        new = Rows(seqs=seqs, past=past, mask=mask, next_pos=np.array(lengths, dtype=np.int64), next_ids=next_ids)
        self._compact(new)
        self._rows.extend(new)
        return deltas

    def _keep_prefix(
        self, seq: SequenceState, tokens: int, past: Sequence[npt.NDArray[Any]], *, start: int = 0
    ) -> None:
        """Keep the first ``tokens`` of ``seq``'s prompt as a shared prefix, from its row of a run's ``past``
        in which the prompt begins at column ``start`` (after left padding)."""
        if tokens and self._engine.shared is not None:
            prefix = tuple(np.ascontiguousarray(p[:, :, start : start + tokens]) for p in past)
            self._engine.shared.put(KvEntry(tuple(seq.prompt_ids[:tokens]), prefix))

    def _prefill_from(
        self, seq: SequenceState, past: list[npt.NDArray[Any]], reused: int, *, cached: int | None, keep: int = 0
    ) -> TokenDelta:
        """A joiner whose first ``reused`` prompt tokens' keys and values are ``past`` (a KV cache's, ``cached``
        of them, or its own earlier chunks'): only the rest runs, at their own positions, attending to them.
        ``keep``: a longer prefix of its prompt to keep as shared once it has run (one an earlier prompt started
        with too)."""
        ids = np.array([seq.prompt_ids[reused:]], dtype=np.int64)
        total = len(seq.prompt_ids)
        mask = np.ones((1, total), dtype=np.int64)
        positions = np.arange(reused, total, dtype=np.int64)[None, :]
        logits, present = self._run(self._feeds(ids, positions, mask, past, decode=reused > 0))
        self._keep_prefix(seq, keep, present)
        next_ids, (delta,) = self._sample(logits[:, -1], [seq])
        new = Rows(seqs=[seq], past=present, mask=mask, next_pos=np.array([total], dtype=np.int64), next_ids=next_ids)
        self._compact(new)
        self._rows.extend(new)
        return replace(delta, cached_tokens=cached)

    def _compact(self, rows: Rows) -> None:
        """``rows.compact()``, after keeping the cache of each finished sequence with a cache key (a session's
        chat turn, a prompt_cache_key's request) for the next request with that key."""
        kv = self._engine.kv
        if kv.max_bytes:
            for row, s in enumerate(rows.seqs):
                if s.done and s.cache_key is not None and s.error is None:
                    fed = (*s.prompt_ids, *s.token_ids[:-1])  # the last sampled token never ran
                    kept = rows.mask[row].astype(bool)
                    if int(kept.sum()) == len(fed):
                        kv.put(s.cache_key, KvEntry(fed, tuple(p[row : row + 1][:, :, kept] for p in rows.past)))
        rows.compact()

    def _sample(self, logits: npt.NDArray[Any], seqs: list[SequenceState]) -> tuple[I64, list[TokenDelta]]:
        logits[:, self._engine.suppress_ids] = -np.inf
        asking = [row for row, s in enumerate(seqs) if s.sampling.logprobs is not None]
        raw = log_softmax(logits[asking]) if asking else None  # before anything adjusts the logits in place
        for row, s in enumerate(seqs):
            if s.adjusts:
                s.adjust(logits[row])
        tokens = choose_tokens(logits, [s.sampling for s in seqs], [s.rng for s in seqs], [s.seen for s in seqs])
        entries = {}
        if raw is not None:
            for row, row_logprobs in zip(asking, raw, strict=True):
                k = seqs[row].sampling.logprobs or 0
                entries[row] = entry(row_logprobs, int(tokens[row]), k, self._engine.token_text)
        return tokens, [
            s.advance(int(t), entries.get(row)) for row, (s, t) in enumerate(zip(seqs, tokens, strict=True))
        ]

    def _run(
        self, feeds: dict[str, npt.NDArray[Any]], *, every_position: bool = False
    ) -> tuple[npt.NDArray[Any], list[npt.NDArray[Any]]]:
        """Logits [batch, 1, sampled_vocab] of the last position, or of ``every_position`` [batch, width,
        sampled_vocab], and the new cache.

        A model without logits_to_keep returns logits for every prompt position: [32, 2048, 50k] floats
        would be 13 GB, so such a prefill runs in groups of rows sized to stay under a bound.
        """
        layout, engine = self._engine.layout, self._engine
        if layout.logits_to_keep is not None:  # the LM head over every position (0), or the last one only
            feeds[layout.logits_to_keep] = np.array(0 if every_position else 1, dtype=np.int64)
        names = ["logits", *layout.present_names]
        batch, width = feeds["input_ids"].shape
        every = every_position or not layout.logits_to_keep
        rows = max(1, _MAX_LOGITS // (width * engine.model_vocab)) if every else batch
        kept = slice(None) if every_position else slice(-1, None)
        parts, batched = [], layout.batch_inputs
        for start in range(0, batch, rows):
            part = {k: v[start : start + rows] if k in batched else v for k, v in feeds.items()}
            try:
                parts.append(engine.session.run(names, part))
            except Exception as exc:
                if is_out_of_memory(exc):
                    raise OutOfMemory(f"{batch} rows of {width} positions did not fit: {exc}") from exc
                raise
        if len(parts) == 1:
            logits: npt.NDArray[Any] = parts[0][0][:, kept, : engine.sampled_vocab]
            return logits, parts[0][1:]
        past = [np.concatenate([p[i] for p in parts]) for i in range(1, len(names))]
        return np.concatenate([p[0][:, kept, : engine.sampled_vocab] for p in parts]), past

    def _feeds(
        self, ids: I64, positions: I64, mask: I64, past: list[npt.NDArray[Any]], *, decode: bool
    ) -> dict[str, npt.NDArray[Any]]:
        """The graph's inputs but logits_to_keep, which ``_run`` sets from what it is asked to return."""
        layout = self._engine.layout
        feeds: dict[str, npt.NDArray[Any]] = {"input_ids": ids, "attention_mask": mask}
        if layout.has_position_ids:
            feeds["position_ids"] = positions
        if layout.has_cache_branch:
            feeds["use_cache_branch"] = np.array([decode], dtype=np.bool_)
        feeds.update(zip(layout.past_names, past, strict=True))
        return feeds


class OnnxEngine:
    def __init__(
        self,
        model_dir: Path,
        *,
        model_name: str,
        device: str = "cpu",
        allow_spinning: bool = True,
        kv_cache_bytes: int = 0,
        share_prefixes: bool = True,
        prefill_chunk: int = 0,
    ) -> None:
        self._name = model_name
        # a prompt longer than this joining while others decode is prefilled this many tokens a step (0: at once)
        self.prefill_chunk = prefill_chunk
        self.kv = SessionKvCache(kv_cache_bytes)  # finished sequences' caches, by session or prompt_cache_key
        # prompt prefixes that several requests start with, in the same bytes
        self.shared = SharedPrefixes(self.kv) if share_prefixes and kv_cache_bytes else None
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.files: ModelFiles = read_model_files(model_dir, self.tokenizer)
        self._chat = ChatRenderer(
            self.files.chat_template, bos_token=self.files.bos_token, eos_token=self.files.eos_token
        )
        providers = execution_providers(device)
        self._session: ort.InferenceSession | None = ort.InferenceSession(
            str(model_file(model_dir)), sess_options=session_options(allow_spinning=allow_spinning), providers=providers
        )
        self.layout = kv_layout(self._session, self.files.config)
        model_vocab = self._session.get_outputs()[0].shape[-1]
        tok_vocab = self.tokenizer.get_vocab_size(with_added_tokens=True)
        # Padded-vocab models: ids the tokenizer cannot decode are never sampled.
        self.model_vocab = model_vocab if isinstance(model_vocab, int) else tok_vocab
        self.sampled_vocab = min(tok_vocab, self.model_vocab)
        self.pad_id = self.files.bos_id if self.files.bos_id is not None else 0
        self.suppress_ids = np.array([i for i in self.files.suppress_ids if i < self.sampled_vocab], dtype=np.int64)
        # Special tokens by name (an end-of-sequence token reads as itself, not as ""), as vLLM lists them.
        self.token_text = TokenText(lambda i: self.tokenizer.decode([i], skip_special_tokens=False))
        self.constraints = Constraints(self.tokenizer, vocab=self.sampled_vocab, eos_ids=self.files.eos_ids)

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

    @property
    def vocab_size(self) -> int:
        return self.sampled_vocab

    def encode(self, text: str) -> list[int]:
        # A rendered chat template already starts with the BOS text; adding BOS again would double it.
        special = not (self.files.bos_token and text.startswith(self.files.bos_token))
        return list(self.tokenizer.encode(text, add_special_tokens=special).ids)

    def render_chat(
        self,
        messages: Sequence[ChatMessage],
        tools: Sequence[dict[str, Any]] | None = None,
        template_kwargs: Mapping[str, Any] | None = None,
    ) -> str:
        return self._chat(messages, tools, template_kwargs=template_kwargs)

    def constraint_error(self, spec: StructuredOutput) -> str | None:
        return self.constraints.error(spec)

    def sequence(self, item: GenerationInput) -> SequenceState:
        """Raises ValueError for a structured output that does not compile: the worker's intake checks first."""
        spec = item.sampling.structured_output
        return SequenceState(
            item,
            prompt_ids=list(item.prompt_ids) or [self.pad_id],  # an empty prompt starts from BOS, as HF
            decoder=self.tokenizer,
            eos_ids=self.files.eos_ids,
            max_context=self.max_context,
            constraint=self.constraints.for_sequence(spec) if spec is not None else None,
        )

    def start(self, inputs: Sequence[GenerationInput]) -> OnnxBatchRun:
        if self._session is None:
            raise RuntimeError("the engine is closed")
        return OnnxBatchRun(self, [self.sequence(item) for item in inputs])

    def warmup(self, *, batch_size: int) -> None:
        prompt = self.encode("warm up the kitchen before service begins")
        greedy = SamplingParams(temperature=0.0, ignore_eos=True)
        run = self.start([GenerationInput(f"warmup-{i}", prompt, 4, greedy) for i in range(batch_size)])
        while not run.finished:
            run.step()

    def close(self) -> None:
        self._session = None


def load_engine(settings: Settings) -> OnnxEngine:
    """Resolve (and on first use generate) the worker's class's model, then open its session."""
    model = settings.model_for(settings.worker_class)
    model_dir = resolve_model(model, cache_dir=settings.model_cache_dir)
    return OnnxEngine(
        model_dir,
        model_name=model,
        device=settings.device_for(settings.worker_class),
        allow_spinning=settings.ort_allow_spinning,
        kv_cache_bytes=settings.kv_cache_mb * 2**20,
        share_prefixes=settings.shared_prefix_cache,
        prefill_chunk=settings.prefill_chunk_tokens,
    )
