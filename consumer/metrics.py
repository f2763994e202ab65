"""Prometheus metrics with vLLM's names under ``brigade_``, so existing dashboards carry over.

Each worker owns its ``CollectorRegistry`` (not the process-global one): several in-process
workers (tests, ``brigade.inprocess``) then never collide on registration. Every series carries
the cost ``class`` label, so one Prometheus can scrape all classes' pods.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from schemas.events import DoneEvent, ErrorEvent

# Seconds. TTFT spans queue wait + prefill; E2E spans the whole generation (up to minutes on a busy pod).
TTFT_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0)
TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
E2E_BUCKETS = (0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 300.0)
QUEUE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class WorkerMetrics:
    """The worker's instruments, bound to its class label."""

    def __init__(self, *, cost_class: str, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r, c = self.registry, ["class"]
        self.ttft = Histogram(
            "brigade_time_to_first_token_seconds",
            "Seconds from arrival at the worker to the first generated token.",
            c, registry=r, buckets=TTFT_BUCKETS,
        )  # fmt: skip
        self.tpot = Histogram(
            "brigade_time_per_output_token_seconds",
            "Seconds between consecutive output tokens of a request (inter-token latency).",
            c, registry=r, buckets=TPOT_BUCKETS,
        )  # fmt: skip
        self.e2e = Histogram(
            "brigade_e2e_request_latency_seconds",
            "Seconds from arrival at the worker to the final event.",
            c, registry=r, buckets=E2E_BUCKETS,
        )  # fmt: skip
        self.queue_time = Histogram(
            "brigade_request_queue_time_seconds",
            "Seconds a request waited in the local queue before its batch started.",
            c, registry=r, buckets=QUEUE_BUCKETS,
        )  # fmt: skip
        self.batch_size = Histogram(
            "brigade_batch_size",
            "Requests per batch started, or per group joining a running batch.",
            c,
            registry=r,
            buckets=BATCH_BUCKETS,
        )
        self.running = Gauge("brigade_num_requests_running", "Requests in the running batch.", c, registry=r)
        self.waiting = Gauge("brigade_num_requests_waiting", "Requests in the local queue.", c, registry=r)
        self.generation_tokens = Counter(
            "brigade_generation_tokens", "Tokens generated.", c, registry=r
        )  # exported as brigade_generation_tokens_total
        self.prompt_tokens = Counter(
            "brigade_prompt_tokens",
            "Prompt tokens of the requests that got a first token (prefilled or cached).",
            c,
            registry=r,
        )  # exported as brigade_prompt_tokens_total (vLLM's prompt_tokens_total)
        self.kv_cache_usage = Gauge(
            "brigade_kv_cache_usage_ratio",
            "Share of BRIGADE_KV_CACHE_MB the kept KV caches hold (sessions', prompt_cache_keys', shared prefixes'); "
            "near 1, the least recently used are evicted to make room.",
            c,
            registry=r,
        )
        self.batch_limit = Gauge(
            "brigade_batch_limit",
            "Most sequences run at once (BRIGADE_MAX_BATCH_SIZE or, lower, what the device holds at start; "
            "halved on out-of-memory).",
            c,
            registry=r,
        )
        self.oom = Counter(
            "brigade_out_of_memory", "Batches the device could not hold (each halved the batch limit).", c, registry=r
        )  # exported as brigade_out_of_memory_total
        self.dlq = Counter(
            "brigade_dlq_messages", "Messages sent to the dead-letter topic.", c, registry=r
        )  # exported as brigade_dlq_messages_total
        # vLLM's pair, in tokens: hits / queries is the share of prompts not computed again
        self.prefix_queries = Counter(
            "brigade_prefix_cache_queries",
            "Prompt tokens that looked for a KV cache: a session's, a prompt_cache_key's, or a prefix shared "
            "between requests.",
            c,
            registry=r,
        )  # exported as brigade_prefix_cache_queries_total
        self.prefix_hits = Counter(
            "brigade_prefix_cache_hits",
            "Prompt tokens whose keys and values came from a KV cache.",
            c,
            registry=r,
        )  # exported as brigade_prefix_cache_hits_total
        self.finished = Counter(
            "brigade_request_success",
            "Requests ended by a done event, by finish reason: stop, length or cancelled (vLLM's request_success, "
            "whose abort is cancelled here).",
            ["class", "finished_reason"],
            registry=r,
        )  # exported as brigade_request_success_total
        self.errors = Counter(
            "brigade_request_errors",
            "Requests ended by an error event, by code (expired, invalid_request, context_length_exceeded, internal).",
            ["class", "code"],
            registry=r,
        )  # exported as brigade_request_errors_total
        self.lag = Gauge(
            "brigade_consumer_lag",
            "Fetch high watermark minus committed offset, per assigned partition.",
            ["class", "partition"],
            registry=r,
        )
        self._class = cost_class
        # the per-token instruments, bound once: ``labels()`` costs a lock and a dict lookup per call
        self._ttft = self.ttft.labels(cost_class)
        self._tpot = self.tpot.labels(cost_class)
        self._tokens = self.generation_tokens.labels(cost_class)

    def observe_batch(self, size: int) -> None:
        self.batch_size.labels(self._class).observe(size)

    def set_batch_limit(self, n: int) -> None:
        self.batch_limit.labels(self._class).set(n)

    def add_out_of_memory(self) -> None:
        self.oom.labels(self._class).inc()

    def set_running(self, n: int) -> None:
        self.running.labels(self._class).set(n)

    def set_waiting(self, n: int) -> None:
        self.waiting.labels(self._class).set(n)

    def observe_queue(self, seconds: float) -> None:
        self.queue_time.labels(self._class).observe(seconds)

    def observe_first_token(self, seconds: float) -> None:
        self._ttft.observe(seconds)

    def observe_token_gap(self, seconds: float) -> None:
        self._tpot.observe(seconds)

    def observe_e2e(self, seconds: float) -> None:
        self.e2e.labels(self._class).observe(seconds)

    def add_prompt_tokens(self, n: int) -> None:
        self.prompt_tokens.labels(self._class).inc(n)

    def watch_kv_cache(self, usage: Callable[[], float]) -> None:
        """Read the kept KV caches' share of their budget at each scrape (the engine's thread changes it)."""
        self.kv_cache_usage.labels(self._class).set_function(usage)

    def observe_prefix_cache(self, *, queried: int, hit: int) -> None:
        self.prefix_queries.labels(self._class).inc(queried)
        self.prefix_hits.labels(self._class).inc(hit)

    def add_tokens(self, n: int) -> None:
        if n:
            self._tokens.inc(n)

    def count_finals(self, finals: Iterable[DoneEvent | ErrorEvent]) -> None:
        """Requests ended by these final events (written, and not lost to another attempt)."""
        for event in finals:
            if isinstance(event, DoneEvent):
                self.finished.labels(self._class, event.finish_reason.value).inc()
            else:
                self.errors.labels(self._class, event.code.value).inc()

    def add_dlq(self) -> None:
        self.dlq.labels(self._class).inc()

    def set_lag(self, partition: int, lag: int) -> None:
        self.lag.labels(self._class, str(partition)).set(max(0, lag))

    def forget_partition(self, partition: int) -> None:
        """A revoked partition's lag belongs to its new owner now."""
        with contextlib.suppress(KeyError):
            self.lag.remove(self._class, str(partition))
