"""Runs the figures side by side in one process and writes JSON, a PNG and a table.

Needs the ``dev`` extra: the broker and redis-server are started on free ports for the run.
"""

from __future__ import annotations

import asyncio
import json
import platform
import statistics
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from brigade import eventloop
from brigade.bench.engine_loop import LoopResult, engine_loop
from brigade.bench.ingress import IngressConfig, IngressResult, run_ingress_figure
from brigade.bench.latency import LatencyConfig, LatencyResult, latency_prompts, measure_prefill, run_latency
from brigade.bench.mixed import MixedConfig, MixedResult, run_mixed
from brigade.bench.pipeline import run_through_fleet
from brigade.bench.rounds import median_run
from brigade.bench.scaleout import (
    ColdStartConfig,
    ColdStartResult,
    ScaleoutConfig,
    ScaleoutResult,
    cold_start_json,
    cold_start_lines,
    run_cold_starts,
    run_scaleout,
    scaleout_json,
    scaleout_lines,
)
from brigade.devtools.process import free_port
from brigade.devtools.servers import kafka_service, redis_service
from consumer.engine.interface import InferenceEngine
from schemas.settings import Settings

console = Console()

FIGURES = ("batching", "pipeline", "latency", "ingress", "continuous", "scaleout", "coldstart")


def parse_figures(values: list[str] | None) -> tuple[str, ...]:
    """``--figure`` values (repeatable, each may be a comma list) → the figures in their run order; none: all."""
    names = [n.strip() for v in values or [] for n in v.split(",") if n.strip()]
    unknown = sorted(set(names) - set(FIGURES))
    if unknown:
        raise ValueError(f"unknown figure(s) {', '.join(unknown)}; pick from {', '.join(FIGURES)}")
    return tuple(f for f in FIGURES if f in names) if names else FIGURES


@dataclass(frozen=True, slots=True)
class BenchConfig:
    model: str
    batch_sizes: tuple[int, int] = (1, 32)  # the figure compares the second with the first
    requests: int = 64
    prompt_words: int = 24
    new_tokens: int = 32
    figures: tuple[str, ...] = FIGURES
    repeats: int = 5  # rounds at the large batch size (one run on this shared VM varies ±15 %): the median is kept
    latency: LatencyConfig = field(default_factory=LatencyConfig)
    ingress: IngressConfig = field(default_factory=IngressConfig)
    mixed: MixedConfig = field(default_factory=MixedConfig)
    scaleout: ScaleoutConfig = field(default_factory=ScaleoutConfig)
    coldstart: ColdStartConfig = field(default_factory=ColdStartConfig)

    @classmethod
    def quick(cls, model: str) -> BenchConfig:
        return cls(
            model=model,
            requests=32,
            prompt_words=16,
            new_tokens=8,
            repeats=1,
            latency=LatencyConfig.quick(),
            ingress=IngressConfig.quick(),
            mixed=MixedConfig.quick(),
            scaleout=ScaleoutConfig.quick(),
            coldstart=ColdStartConfig.quick(),
        )


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


def machine_facts() -> dict[str, Any]:
    import os

    import onnxruntime

    return {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "providers": onnxruntime.get_available_providers(),
    }


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    )


def _advance(progress: Progress, task: TaskID) -> Callable[..., None]:
    def advance(n: int = 1) -> None:
        progress.advance(task, n)

    return advance


def run_bench(config: BenchConfig, *, out_dir: Path, settings: Settings) -> BenchReport:
    report = BenchReport(config=config, machine=machine_facts())
    settings = settings.model_copy(update={"model": config.model, "kafka_idempotence": False, "metrics_port": 0})
    figures = config.figures
    console.print(
        f"[bold]brigade bench[/] figures={','.join(figures)} model={config.model} requests={config.requests} "
        f"prompt≈{config.prompt_words} words new_tokens={config.new_tokens}"
    )
    engine = _engine_loops(config, report, settings) if "batching" in figures or "pipeline" in figures else None
    prefill: dict[str, float] = {}
    if "latency" in figures:
        prefill = _prefill(config.latency, settings)

    logs = Path(tempfile.mkdtemp(prefix="brigade-bench-"))
    kafka = kafka_service(port=free_port(), log_dir=logs).start()
    redis = redis_service(port=free_port(), log_dir=logs).start()
    try:
        settings = settings.model_copy(
            update={"kafka_bootstrap": f"127.0.0.1:{kafka.port}", "redis_url": f"redis://127.0.0.1:{redis.port}/0"}
        )
        if engine is not None:
            _rounds(config, report, settings, engine)
        _fleet_figures(config, report, settings, prefill)
    finally:
        if engine is not None:
            engine.close()
        kafka.stop()
        redis.stop()

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "bench.json").write_text(json.dumps(report.to_json(), indent=2) + "\n")
    print_report(report)
    written = [str(out_dir / "bench.json")]
    try:
        from brigade.bench.plots import plot_latency, plot_mixed, plot_report, plot_scaleout

        if report.engine or report.consumer or report.pipeline is not None:
            written.append(str(plot_report(report, out_dir / "bench.png")))
        if report.latency is not None:
            written.append(str(plot_latency(report.latency, out_dir / "bench-latency.png")))
        if report.mixed is not None:
            written.append(str(plot_mixed(report.mixed, out_dir / "bench-continuous.png")))
        if report.scaleout is not None:
            written.append(str(plot_scaleout(report.scaleout, out_dir / "bench-scaleout.png")))
    except ImportError:
        written.append("(install matplotlib for the PNGs)")
    console.print(f"wrote {', '.join(written)}")
    return report


def _engine_loops(config: BenchConfig, report: BenchReport, settings: Settings) -> InferenceEngine:
    """Load and warm the model, and run the engine loop at the small batch size (long enough to be steady)."""
    from consumer.engine.onnx_engine import load_engine

    with console.status("loading model (built-in models are generated on first use) and warming up…"):
        engine = load_engine(settings)
        engine.warmup(batch_size=max(config.batch_sizes))
        # One untimed batch per size with the benchmark's own shapes: each worker below gets the same
        # (a warm-up batch), so neither side pays ONNX Runtime's first-shape cost in the timed window.
        words, new_tokens = config.prompt_words, config.new_tokens
        for b in config.batch_sizes:
            engine_loop(engine, batch_size=b, requests=b, prompt_words=words, new_tokens=new_tokens)
    lo = config.batch_sizes[0]
    with _progress() as progress:
        task = progress.add_task(f"engine loop, batch {lo}", total=config.requests)
        report.engine[lo] = engine_loop(
            engine,
            batch_size=lo,
            requests=config.requests,
            prompt_words=config.prompt_words,
            new_tokens=config.new_tokens,
            on_batch=_advance(progress, task),
        )
    return engine


FLEET_RUNS = (("consumer", False, "batching"), ("pipeline", True, "pipeline"))  # (run, via HTTP, its figure)


def _rounds(config: BenchConfig, report: BenchReport, settings: Settings, engine: InferenceEngine) -> None:
    """The large batch size in rounds: engine loop, consumer via Kafka, HTTP path, back to back each round.

    Each run lasts seconds, and on a shared machine the neighbours' load changes over minutes; ratios taken
    within a round compare runs that saw the same machine, and the median round is reported.
    """
    hi, n, figures = config.batch_sizes[-1], config.repeats, config.figures
    names = {
        "engine": f"engine loop, batch {hi}",
        "consumer": f"consumer via Kafka, batch {hi}",
        "pipeline": f"HTTP → Kafka → worker → Redis, batch {hi}",
    }
    runs: dict[str, list[LoopResult]] = {k: [] for k in names}
    fleet_runs = [(key, via_http) for key, via_http, figure in FLEET_RUNS if figure in figures]
    requests, words, new_tokens = config.requests, config.prompt_words, config.new_tokens
    with _progress() as progress:
        total = n * (1 + len(fleet_runs))
        task = progress.add_task(f"batch {hi}: {n} round(s) of {len(fleet_runs) + 1} runs", total=total)
        for _ in range(n):
            runs["engine"].append(
                engine_loop(engine, batch_size=hi, requests=requests, prompt_words=words, new_tokens=new_tokens)
            )
            progress.advance(task)
            for key, via_http in fleet_runs:
                run = run_through_fleet(
                    settings,
                    via_http=via_http,
                    batch_size=hi,
                    requests=requests,
                    prompt_words=words,
                    new_tokens=new_tokens,
                )
                runs[key].append(eventloop.run(run, loop=settings.event_loop, role="worker"))
                progress.advance(task)
    report.engine[hi] = _keep(report, names["engine"], runs["engine"])
    if runs["consumer"]:
        report.consumer[hi] = _keep(report, names["consumer"], runs["consumer"])
    if runs["pipeline"]:
        report.pipeline = _keep(report, names["pipeline"], runs["pipeline"])
        report.paired["pipeline_efficiency"] = [
            round(p.tokens_per_s / e.tokens_per_s, 3) for p, e in zip(runs["pipeline"], runs["engine"], strict=True)
        ]


def _keep(report: BenchReport, name: str, runs: list[LoopResult]) -> LoopResult:
    report.samples[name] = [round(r.tokens_per_s, 2) for r in runs]
    return median_run(runs, lambda r: r.tokens_per_s)


def _prefill(lat: LatencyConfig, settings: Settings) -> dict[str, float]:
    from consumer.engine.onnx_engine import load_engine

    with console.status(f"latency: the engine's own prefill on {lat.model}, batch of one, per prompt…"):
        # the worker's own engine settings: its prefill is what the figure subtracts
        engine = load_engine(
            settings.model_copy(update={"model": lat.model, "ort_allow_spinning": lat.ort_allow_spinning})
        )
        engine.warmup(batch_size=1)
        try:
            return measure_prefill(engine, latency_prompts(lat))
        finally:
            engine.close()


def _fleet_figures(config: BenchConfig, report: BenchReport, settings: Settings, prefill: dict[str, float]) -> None:
    kw = {"requests": config.requests, "prompt_words": config.prompt_words, "new_tokens": config.new_tokens}
    figures = config.figures
    with _progress() as progress:
        if "batching" in figures:
            lo = config.batch_sizes[0]
            task = progress.add_task(f"consumer via Kafka, batch {lo}", total=config.requests)
            report.consumer[lo] = eventloop.run(
                run_through_fleet(settings, via_http=False, batch_size=lo, on_final=_advance(progress, task), **kw),
                loop=settings.event_loop,
                role="worker",
            )
        if "continuous" in figures:
            mix = config.mixed
            task = progress.add_task(
                f"static, then continuous batching: {mix.requests} requests, {mix.min_new_tokens}–{mix.max_new_tokens} "
                "new tokens",
                total=2 * mix.requests,
            )
            report.mixed = eventloop.run(
                run_mixed(settings, mix, on_final=_advance(progress, task)), loop=settings.event_loop, role="worker"
            )
        if "latency" in figures:
            lat = config.latency
            task = progress.add_task(f"latency on {lat.model}: capacity burst, then open loop", total=None)

            def on_capacity(capacity: float, arrivals: int) -> None:
                progress.update(
                    task,
                    total=arrivals,
                    completed=0,
                    description=f"latency: {arrivals} arrivals at {lat.offered(capacity):.1f}/s "
                    f"(capacity {capacity:.1f} req/s)",
                )

            report.latency = asyncio.run(
                run_latency(
                    settings.model_copy(update={"model": lat.model}),
                    lat,
                    prefill_s=prefill,
                    on_capacity=on_capacity,
                    on_done=_advance(progress, task),
                )
            )
        if "scaleout" in figures:
            so = config.scaleout
            task = progress.add_task(f"scale-out on {so.model}: consumers {so.consumers}", total=len(so.consumers))
            report.scaleout = run_scaleout(settings, so, on_run=lambda _run: progress.advance(task))
        if "coldstart" in figures:
            cs = config.coldstart
            task = progress.add_task(f"cold start: {', '.join(cs.models)}", total=len(cs.models) * cs.repeats)
            report.coldstart = run_cold_starts(settings, cs, on_start=lambda _m, _s: progress.advance(task))
        if "ingress" in figures:
            ing = config.ingress
            sides = progress.add_task(
                f"ingress: POST /v1/requests, {ing.batch} per POST /v1/requests/batch, bare producer",
                total=(3 if ing.batch > 1 else 2) * ing.rounds,
            )
            report.ingress = run_ingress_figure(settings, ing, on_side=lambda _side: progress.advance(sides))


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
        *(scaleout_lines(report.scaleout) if report.scaleout is not None else []),
        *(cold_start_lines(report.coldstart) if report.coldstart is not None else []),
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
