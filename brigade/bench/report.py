"""What a bench run found: the ratios, the JSON written to ``bench.json`` and the tables printed at the end."""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from brigade.bench.chunked import ChunkedResult, chunked_json, chunked_line
from brigade.bench.engine_loop import LoopResult
from brigade.bench.hangup import HangupResult, hangup_json, hangup_line
from brigade.bench.ingress import IngressResult
from brigade.bench.latency import LatencyResult
from brigade.bench.mixed import MixedResult
from brigade.bench.multiturn import MultiturnResult, multiturn_json, multiturn_line
from brigade.bench.scaleout import (
    ColdStartResult,
    ScaleoutResult,
    cold_start_json,
    cold_start_lines,
    scaleout_json,
    scaleout_lines,
)
from brigade.bench.sharedprefix import SharedPrefixResult, shared_prefix_json, shared_prefix_line
from brigade.bench.structured import StructuredResult, structured_json, structured_line

if TYPE_CHECKING:
    from brigade.bench.runner import BenchConfig

console = Console()


@dataclass
class BenchReport:
    config: BenchConfig
    machine: dict[str, Any]
    engine: dict[int, LoopResult] = field(default_factory=dict)
    consumer: dict[int, LoopResult] = field(default_factory=dict)
    pipeline: LoopResult | None = None
    latency: LatencyResult | None = None
    ingress: IngressResult | None = None
    mixed: MixedResult | None = None
    samples: dict[str, list[float]] = field(default_factory=dict)  # tokens/s of every repeat, by run name
    # per round at the large batch: (HTTP path / engine loop, consumer via Kafka / engine loop), run back to back
    paired: dict[str, list[float]] = field(default_factory=dict)
    scaleout: ScaleoutResult | None = None
    coldstart: ColdStartResult | None = None
    structured: StructuredResult | None = None
    hangup: HangupResult | None = None
    multiturn: MultiturnResult | None = None
    sharedprefix: SharedPrefixResult | None = None
    chunked: ChunkedResult | None = None

    def ratios(self) -> dict[str, float]:
        lo, hi = self.config.batch_sizes
        out: dict[str, float] = {}
        if lo in self.consumer and hi in self.consumer:
            out["batching_gain"] = self.consumer[hi].tokens_per_s / self.consumer[lo].tokens_per_s
        if self.paired.get("pipeline_efficiency"):
            out["pipeline_efficiency"] = statistics.median(self.paired["pipeline_efficiency"])
        elif self.pipeline is not None and hi in self.engine:
            out["pipeline_efficiency"] = self.pipeline.tokens_per_s / self.engine[hi].tokens_per_s
        if self.ingress is not None:
            out["ingress_vs_bare_producer"] = self.ingress.ratio
            if self.ingress.batched_ratio is not None:
                out["ingress_batched_vs_bare_producer"] = self.ingress.batched_ratio
        if self.mixed is not None:
            out["continuous_vs_static"] = self.mixed.speedup
        if self.structured is not None:
            out["structured_vs_free"] = self.structured.ratio
        if self.hangup is not None:
            out["abandoned_tokens_generated_share"] = self.hangup.share
        if self.multiturn is not None:
            out["multiturn_last_turn_ttft_speedup"] = self.multiturn.last_turn_speedup
        if self.sharedprefix is not None:
            out["shared_prefix_ttft_speedup"] = self.sharedprefix.speedup
        if self.chunked is not None:
            out["chunked_prefill_wait_cut"] = self.chunked.wait_cut
        return out

    def to_json(self) -> dict[str, Any]:
        def runs(d: dict[int, LoopResult]) -> dict[str, Any]:
            return {str(b): {**asdict(r), "tokens_per_s": r.tokens_per_s} for b, r in d.items()}

        return {
            "config": asdict(self.config),
            "machine": self.machine,
            "engine_loop": runs(self.engine),
            "consumer_via_kafka": runs(self.consumer),
            "pipeline_via_http": None
            if self.pipeline is None
            else {**asdict(self.pipeline), "tokens_per_s": self.pipeline.tokens_per_s},
            "queue_hop_latency": None if self.latency is None else asdict(self.latency),
            "ingress_throughput": None if self.ingress is None else _ingress_json(self.ingress),
            "continuous_vs_static": None if self.mixed is None else _mixed_json(self.mixed),
            "repeats_tokens_per_s": self.samples,
            "paired_ratios": self.paired,
            "scaleout": None if self.scaleout is None else scaleout_json(self.scaleout),
            "cold_start": None if self.coldstart is None else cold_start_json(self.coldstart),
            "structured_output": None if self.structured is None else structured_json(self.structured),
            "abandoned_streams": None if self.hangup is None else hangup_json(self.hangup),
            "multiturn": None if self.multiturn is None else multiturn_json(self.multiturn),
            "shared_prefix": None if self.sharedprefix is None else shared_prefix_json(self.sharedprefix),
            "chunked_prefill": None if self.chunked is None else chunked_json(self.chunked),
            "ratios": self.ratios(),
        }


def _mixed_json(r: MixedResult) -> dict[str, Any]:
    def side(m: Any) -> dict[str, Any]:
        return {**asdict(m), "tokens_per_s": m.tokens_per_s}

    return {"model": r.model, "config": asdict(r.config), "static": side(r.static), "continuous": side(r.continuous)}


def _ingress_json(r: IngressResult) -> dict[str, Any]:
    def side(t: Any) -> dict[str, Any]:
        return {**asdict(t), "accepted_per_s": t.accepted_per_s}

    return {
        "concurrency": r.concurrency,
        "linger_ms": r.linger_ms,
        "event_loop": r.event_loop,
        "cpu_affinity": r.cpu_affinity,
        "rounds_accepted_per_s": r.rounds,
        "ingress_http": side(r.ingress),
        "bare_aiokafka_producer": side(r.bare),
        "ratio": r.ratio,
        "batch": r.batch,
        "ingress_http_batched": None if r.batched is None else side(r.batched),
        "batched_ratio": r.batched_ratio,
    }


def print_report(report: BenchReport) -> None:
    table = Table(title="tokens/s")
    for col in ("run", "batch", "requests", "tokens", "seconds", "tokens/s"):
        table.add_column(col, justify="right" if col != "run" else "left")
    rows = [("engine loop", r) for r in report.engine.values()]
    rows += [("consumer via Kafka", r) for r in report.consumer.values()]
    if report.pipeline is not None:
        rows.append(("HTTP → Kafka → worker → Redis", report.pipeline))
    for name, r in rows:
        table.add_row(
            name, str(r.batch_size), str(r.requests), str(r.tokens), f"{r.seconds:.2f}", f"{r.tokens_per_s:.1f}"
        )
    if rows:
        console.print(table)
    lo, hi = report.config.batch_sizes
    ratios = report.ratios()
    if "batching_gain" in ratios:
        console.print(
            f"batching gain (consumer, batch {hi} vs {lo}): [bold]{ratios['batching_gain']:.2f}×[/] "
            f"({report.consumer[hi].tokens_per_s:.1f} vs {report.consumer[lo].tokens_per_s:.1f} tokens/s; target ≥ 6×)"
        )
    if "pipeline_efficiency" in ratios and report.pipeline is not None:
        console.print(
            f"pipeline efficiency (batch {hi}): [bold]{ratios['pipeline_efficiency']:.2f}[/] of the engine loop "
            f"({report.pipeline.tokens_per_s:.1f} vs {report.engine[hi].tokens_per_s:.1f} tokens/s; target ≥ 0.9)"
        )
    if report.latency is not None:
        _print_latency(report.latency)
    if report.ingress is not None:
        _print_ingress(report.ingress)
    if report.mixed is not None:
        _print_mixed(report.mixed)
    for line in [
        *([structured_line(report.structured, report.config.model)] if report.structured is not None else []),
        *(scaleout_lines(report.scaleout) if report.scaleout is not None else []),
        *(cold_start_lines(report.coldstart) if report.coldstart is not None else []),
        *([hangup_line(report.hangup)] if report.hangup is not None else []),
        *([multiturn_line(report.multiturn)] if report.multiturn is not None else []),
        *([shared_prefix_line(report.sharedprefix)] if report.sharedprefix is not None else []),
        *([chunked_line(report.chunked)] if report.chunked is not None else []),
    ]:
        console.print(line)
    if report.samples and any(len(v) > 1 for v in report.samples.values()):
        spread = "; ".join(f"{k}: {min(v):.1f}–{max(v):.1f}" for k, v in report.samples.items() if len(v) > 1)
        console.print(f"medians of {report.config.repeats} runs; tokens/s ranges: {spread}")
    if report.paired.get("pipeline_efficiency"):
        console.print(
            "pipeline efficiency per round (HTTP path / engine loop, run back to back): "
            + ", ".join(f"{r:.2f}" for r in report.paired["pipeline_efficiency"])
            + "; the median is reported"
        )


def _print_mixed(r: MixedResult) -> None:
    table = Table(
        title=f"continuous vs static batching on {r.model}: {r.config.requests} requests, "
        f"{r.config.min_new_tokens}–{r.config.max_new_tokens} new tokens, batch {r.config.batch_size}"
    )
    for col in ("batching", "tokens", "seconds", "tokens/s", "TTFT p50 ms", "TTFT p99 ms"):
        table.add_column(col, justify="left" if col == "batching" else "right")
    for m in (r.static, r.continuous):
        table.add_row(
            m.mode, str(m.tokens), f"{m.seconds:.2f}", f"{m.tokens_per_s:.1f}",
            f"{m.ttft_ms['p50']:.0f}", f"{m.ttft_ms['p99']:.0f}",
        )  # fmt: skip
    console.print(table)
    console.print(
        f"continuous vs static: [bold]{r.speedup:.2f}×[/] tokens/s ({r.continuous.tokens_per_s:.1f} vs "
        f"{r.static.tokens_per_s:.1f}); TTFT p50 {r.continuous.ttft_ms['p50']:.0f} vs {r.static.ttft_ms['p50']:.0f} ms "
        "(target ≥ 2× at the same p50 TTFT or better)"
    )


def _print_latency(r: LatencyResult) -> None:
    table = Table(title=f"queue hop latency on {r.model} (so the hop, not the model, dominates), ms")
    for col in ("", "n", "p50", "p90", "p99", "max"):
        table.add_column(col, justify="left" if not col else "right")
    rows = (
        ("TTFT, HTTP submit → first event in Redis", r.ttft_ms),
        ("engine prefill, batch of one", r.prefill_ms),
        ("hop = TTFT − prefill", r.hop_ms),
    )
    for name, d in (*rows, *((f"  {stage}", d) for stage, d in r.stages_ms.items())):
        if d.get("n"):
            table.add_row(name, f"{d['n']:.0f}", *(f"{d[k]:.1f}" for k in ("p50", "p90", "p99", "max")))
    console.print(table)
    if r.hop_ms.get("n"):
        console.print(
            f"queue hop latency on {r.model}: [bold]p50 {r.hop_ms['p50']:.1f} ms, p99 {r.hop_ms['p99']:.1f} ms[/] "
            f"(TTFT p50 {r.ttft_ms['p50']:.1f} ms − prefill p50 {r.prefill_ms['p50']:.2f} ms) at {r.offered_rps:.1f} "
            f"req/s offered = {r.offered_rps / r.capacity_rps:.0%} of the {r.capacity_rps:.1f} req/s measured; "
            f"{r.completed}/{r.arrivals} completed; {r.batching} batching"
            + (f" (includes the {r.max_batch_wait_ms:g} ms batch window)" if r.batching == "static" else "")
            + f", fetch max wait {r.fetch_max_wait_ms} ms, linger {r.kafka_linger_ms} ms, ORT spinning "
            + ("on" if r.ort_allow_spinning else "off")
            + f"; ingress and worker in their own processes ({r.event_loop}); target p50 ≤ 5 ms, p99 ≤ 25 ms"
        )


def _print_ingress(r: IngressResult) -> None:
    pinned = f"pinned to CPU {r.cpu_affinity[0]}" if r.cpu_affinity else "not pinned"
    console.print(
        f"ingress throughput: [bold]{r.ratio:.2f}[/] of a bare aiokafka producer "
        f"({r.ingress.accepted_per_s:.0f} vs {r.bare.accepted_per_s:.0f} accepted requests/s; "
        f"{r.ingress.accepted}/{r.ingress.sent} got 202; {r.concurrency} in flight, acks=all, linger {r.linger_ms} ms, "
        f"{r.event_loop} loop, {pinned}; median of {len(r.rounds.get('bare', [])) or 1} rounds; target ≥ 0.5)"
    )
    if r.batched is not None and r.batched_ratio is not None:
        console.print(
            f"ingress throughput, {r.batch} requests per POST /v1/requests/batch: "
            f"[bold]{r.batched_ratio:.2f}[/] of the bare producer ({r.batched.accepted_per_s:.0f} accepted "
            f"requests/s; {r.batched.accepted}/{r.batched.sent} accepted, same requests in flight)"
        )
