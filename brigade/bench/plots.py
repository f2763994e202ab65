"""One figure per benchmark: a person compares bars and curves faster than table rows.

``matplotlib.figure.Figure`` directly, as ``deploy/scaling/plot.py`` does: no pyplot state, no display backend.
This module is imported only where a missing matplotlib (the dev extra) is caught.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from brigade.bench.chunked import ChunkedResult
from brigade.bench.latency import LatencyResult
from brigade.bench.mixed import MixedResult
from brigade.bench.multiturn import MultiturnResult
from brigade.bench.report import BenchReport
from brigade.bench.scaleout import ScaleoutResult
from brigade.bench.sharedprefix import SharedPrefixResult


def plot_report(report: BenchReport, path: Path) -> Path:
    labels: list[str] = []
    values: list[float] = []
    for b, r in report.engine.items():
        labels.append(f"engine loop\nbatch {b}")
        values.append(r.tokens_per_s)
    for b, r in report.consumer.items():
        labels.append(f"consumer via Kafka\nbatch {b}")
        values.append(r.tokens_per_s)
    if report.pipeline is not None:
        labels.append(f"HTTP→Kafka→worker→Redis\nbatch {report.pipeline.batch_size}")
        values.append(report.pipeline.tokens_per_s)
    fig = Figure(figsize=(12.5, 4.8))
    ax = fig.subplots()
    bars = ax.bar(
        labels, values, color=["#4c72b0"] * len(report.engine) + ["#dd8452"] * (len(values) - len(report.engine))
    )
    ax.bar_label(bars, fmt="%.0f")
    ax.set_ylabel("tokens/s")
    ratios = report.ratios()
    subtitle = ", ".join(f"{k.replace('_', ' ')} {v:.2f}" for k, v in ratios.items())
    ax.set_title(f"brigade bench — {report.config.model} ({subtitle})")
    return _save(fig, path)


def plot_latency(result: LatencyResult, path: Path) -> Path:
    """CDF of the per-request hop latency (TTFT through the whole path minus the engine's prefill)."""
    samples = result.hop_samples_ms
    fig = Figure(figsize=(8, 4.8))
    ax = fig.subplots()
    if samples:
        _cdf(ax, samples, color="#4c72b0")
        for q, style in (("p50", "--"), ("p99", ":")):
            v = result.hop_ms[q]
            ax.axvline(v, color="#dd8452", linestyle=style, label=f"{q} {v:.1f} ms")
        ax.legend(loc="lower right")
    ax.set_xlabel("hop latency, ms (TTFT through HTTP → Kafka → worker → Redis − engine prefill)")
    ax.set_ylabel("fraction of requests")
    ax.set_ylim(0, 1.02)
    ax.set_title(
        f"queue hop latency — {result.model}, {result.offered_rps:.1f} req/s "
        f"({result.offered_rps / result.capacity_rps:.0%} of {result.capacity_rps:.1f} req/s), n={len(samples)}"
    )
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_mixed(result: MixedResult, path: Path) -> Path:
    """Figure 5: tokens/s per scheduler, and the time-to-first-token CDF that shows what each costs the queue."""
    fig = Figure(figsize=(12.5, 4.8))
    bars_ax, cdf_ax = fig.subplots(1, 2)
    modes = (result.static, result.continuous)
    colors = ("#dd8452", "#4c72b0")
    bars = bars_ax.bar([m.mode for m in modes], [m.tokens_per_s for m in modes], color=colors)
    bars_ax.bar_label(bars, fmt="%.0f")
    bars_ax.set_ylabel("tokens/s")
    bars_ax.set_title(f"throughput: continuous {result.speedup:.2f}× static")
    for m, color in zip(modes, colors, strict=True):
        if m.ttft_samples_ms:
            label = f"{m.mode}, p50 {m.ttft_ms['p50'] / 1000:.1f} s"
            _cdf(cdf_ax, [v / 1000 for v in m.ttft_samples_ms], color=color, label=label)
    cdf_ax.set_xlabel("time to first token from the burst, s")
    cdf_ax.set_ylabel("fraction of requests")
    cdf_ax.legend(loc="lower right")
    cdf_ax.grid(alpha=0.3)
    c = result.config
    fig.suptitle(
        f"continuous vs static batching — {result.model}, {c.requests} requests, "
        f"{c.min_new_tokens}–{c.max_new_tokens} new tokens, batch {c.batch_size}"
    )
    return _save(fig, path)


def plot_multiturn(result: MultiturnResult, path: Path) -> Path:
    """Time to first token per turn number: a session's turns (its KV cache kept) and the conversation sent whole
    with a prompt_cache_key, against it sent whole without; the prompt grows with every turn, and only the last
    side's prefill grows with it."""
    fig = Figure(figsize=(12.5, 4.8))
    ax = fig.subplots()
    turns = list(range(1, result.config.turns + 1))
    for side, label, color in (
        (result.whole_ttft_ms, "conversation sent whole (no cache)", "#dd8452"),
        (result.keyed_ttft_ms, "sent whole with a prompt_cache_key (the last call's KV cache kept)", "#55a868"),
        (result.session_ttft_ms, "brigade session (last turn's KV cache kept)", "#4c72b0"),
    ):
        ax.plot(turns, result.medians(side), marker="o", color=color, label=label)
    notes = [f"{tokens:.0f} tok" for tokens in result.prompt_tokens]
    _ttft_axes(ax, turns, notes, "turn (prompt tokens at the bottom)", legend="upper left")
    ax.set_title(
        f"multi-turn chat — {result.model}: last turn {result.last_turn_speedup:.1f}× sooner as a session, "
        f"{result.keyed_last_turn_speedup:.1f}× with a prompt_cache_key"
    )
    return _save(fig, path)


def _ttft_axes(ax: Any, ticks: list[int], notes: list[str], xlabel: str, *, legend: str) -> None:
    """A time-to-first-token chart's axes, with a note under each tick (what the prompt held)."""
    for x, note in zip(ticks, notes, strict=True):
        ax.annotate(note, (x, 0), textcoords="offset points", xytext=(0, 4), ha="center", fontsize=8)
    ax.set_xticks(ticks)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("time to first token, ms")
    ax.set_ylim(bottom=0)
    ax.legend(loc=legend)
    ax.grid(alpha=0.3)


def plot_shared_prefix(result: SharedPrefixResult, path: Path) -> Path:
    """Time to first token per new conversation, in arrival order, with the shared-prefix cache on and off: from
    the third conversation on, the first side reads the system prompt's keys and values instead of computing them."""
    fig = Figure(figsize=(10, 4.8))
    ax = fig.subplots()
    order = list(range(1, len(result.shared_ttft_ms) + 1))
    ax.plot(order, result.computed_ttft_ms, marker="o", color="#dd8452", label="shared-prefix cache off")
    ax.plot(order, result.shared_ttft_ms, marker="o", color="#4c72b0", label="shared-prefix cache on")
    notes = [f"{cached} cached" for cached in result.cached_tokens]
    _ttft_axes(ax, order, notes, "new conversation, in arrival order (each its own session)", legend="center right")
    ax.set_title(
        f"one system prompt — {result.model}, {statistics.median(result.prompt_tokens):.0f}-token prompts: "
        f"{result.speedup:.1f}× sooner from the third conversation on"
    )
    return _save(fig, path)


def plot_chunked(result: ChunkedResult, path: Path) -> Path:
    """Per side (the long prompt prefilled at once, or in chunks): the running streams' longest wait for a token
    beside the long prompt's own first token, medians of the rounds."""
    sides = list(result.trials)
    labels = ["at once" if c == 0 else f"chunks of {c}" for c in sides]
    waits = [1000 * result.median(c, lambda t: t.longest_wait_s) for c in sides]
    firsts = [1000 * result.median(c, lambda t: t.long_ttft_s) for c in sides]
    fig = Figure(figsize=(10, 4.8))
    ax = fig.subplots()
    x = list(range(len(sides)))
    for offset, values, color, label in (
        (-0.2, waits, "#4c72b0", "running streams: longest wait for a token"),
        (0.2, firsts, "#dd8452", "the long prompt: its first token"),
    ):
        bars = ax.bar([i + offset for i in x], values, width=0.4, color=color, label=label)
        ax.bar_label(bars, labels=[f"{v:.0f}" for v in values])
    ax.set_xticks(x, labels)
    ax.set_ylabel("ms, from the join")
    ax.legend(loc="upper right")
    ax.grid(axis="y", alpha=0.3)
    cfg = result.config
    ax.set_title(
        f"chunked prefill — {result.model}: a {result.long_prompt_tokens}-token prompt joins {cfg.running} streams; "
        f"their wait {result.wait_cut:.1f}× shorter"
    )
    return _save(fig, path)


def plot_scaleout(result: ScaleoutResult, path: Path) -> Path:
    """Tokens/s against consumer count, with the linear ideal for comparison."""
    counts = [r.consumers for r in result.runs]
    values = [r.tokens_per_s for r in result.runs]
    fig = Figure(figsize=(8, 4.8))
    ax = fig.subplots()
    bars = ax.bar([str(c) for c in counts], values, color="#4c72b0", label="measured")
    ratios = result.ratios()
    ax.bar_label(bars, labels=[f"{v:.0f} ({ratios[c]:.2f}×)" for c, v in zip(counts, values, strict=True)])
    if values:
        ideal = [values[0] * c / counts[0] for c in counts]
        ax.plot([str(c) for c in counts], ideal, color="#dd8452", linestyle="--", marker="o", label="linear")
    ax.set_xlabel("consumers (brigade worker processes, one group)")
    ax.set_ylabel("tokens/s")
    ax.legend(loc="upper left")
    cfg = result.config
    ax.set_title(
        f"scale-out — {cfg.model}, {cfg.partitions} partitions, {cfg.requests} requests × {cfg.new_tokens} tokens"
    )
    return _save(fig, path)


def _cdf(ax: Any, values: Sequence[float], **style: Any) -> None:
    """The empirical CDF of ``values`` as a step line."""
    ordered = sorted(values)
    ax.step(ordered, [(i + 1) / len(ordered) for i in range(len(ordered))], where="post", **style)


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def plot_all(report: BenchReport, out_dir: Path) -> list[Path]:
    """A PNG for each figure the report holds."""
    out: list[Path] = []
    if report.engine or report.consumer or report.pipeline is not None:
        out.append(plot_report(report, out_dir / "bench.png"))
    if report.latency is not None:
        out.append(plot_latency(report.latency, out_dir / "bench-latency.png"))
    if report.mixed is not None:
        out.append(plot_mixed(report.mixed, out_dir / "bench-continuous.png"))
    if report.scaleout is not None:
        out.append(plot_scaleout(report.scaleout, out_dir / "bench-scaleout.png"))
    if report.multiturn is not None:
        out.append(plot_multiturn(report.multiturn, out_dir / "bench-multiturn.png"))
    if report.sharedprefix is not None:
        out.append(plot_shared_prefix(report.sharedprefix, out_dir / "bench-sharedprefix.png"))
    if report.chunked is not None:
        out.append(plot_chunked(report.chunked, out_dir / "bench-chunked.png"))
    return out
