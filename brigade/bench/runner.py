"""Runs the figures side by side in one process; ``report.py`` writes what they found as JSON and tables.

Needs the ``dev`` extra: the broker and redis-server are started on free ports for the run.
"""

from __future__ import annotations

import asyncio
import json
import platform
import tempfile
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from brigade import eventloop
from brigade.bench.chunked import ChunkedConfig, run_chunked
from brigade.bench.engine_loop import LoopResult, engine_loop
from brigade.bench.engines import KeptEngines
from brigade.bench.hangup import HangupConfig, run_hangup
from brigade.bench.ingress import IngressConfig, run_ingress_figure
from brigade.bench.latency import LatencyConfig, latency_prompts, measure_prefill, run_latency
from brigade.bench.mixed import MixedConfig, run_mixed
from brigade.bench.multiturn import MultiturnConfig, run_multiturn
from brigade.bench.pipeline import run_through_fleet
from brigade.bench.report import BenchReport, console, print_report
from brigade.bench.rounds import median_run
from brigade.bench.scaleout import ColdStartConfig, ScaleoutConfig, run_cold_starts, run_scaleout
from brigade.bench.sharedprefix import SharedPrefixConfig, run_shared_prefix
from brigade.bench.structured import StructuredConfig, run_structured
from brigade.devtools.process import free_port
from brigade.devtools.servers import kafka_service, on_dev_servers, redis_service
from consumer.engine.interface import InferenceEngine
from schemas.settings import Settings

T = TypeVar("T")

FIGURES = (
    "batching",
    "pipeline",
    "structured",
    "latency",
    "ingress",
    "continuous",
    "scaleout",
    "coldstart",
    "hangup",
    "multiturn",
    "sharedprefix",
    "chunked",
)


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
    small_batch_requests: int | None = None  # requests of the small batch size's runs (None: ``requests``)
    # the workers' Kafka session (None: the settings'). Tansu holds each join for about half of it
    # (brigade/devtools/servers.py); no figure times a join, but a quick run's wall time does
    session_timeout_ms: int | None = None
    latency: LatencyConfig = field(default_factory=LatencyConfig)
    ingress: IngressConfig = field(default_factory=IngressConfig)
    mixed: MixedConfig = field(default_factory=MixedConfig)
    scaleout: ScaleoutConfig = field(default_factory=ScaleoutConfig)
    coldstart: ColdStartConfig = field(default_factory=ColdStartConfig)
    structured: StructuredConfig = field(default_factory=StructuredConfig)
    hangup: HangupConfig = field(default_factory=HangupConfig)
    multiturn: MultiturnConfig = field(default_factory=MultiturnConfig)
    sharedprefix: SharedPrefixConfig = field(default_factory=SharedPrefixConfig)
    chunked: ChunkedConfig = field(default_factory=ChunkedConfig)

    @property
    def small_requests(self) -> int:
        """Requests of each run at the small batch size: it is steady after a few, and each costs a whole step."""
        return self.small_batch_requests or self.requests

    @classmethod
    def quick(cls, model: str) -> BenchConfig:
        return cls(
            model=model,
            requests=32,
            prompt_words=16,
            new_tokens=8,
            repeats=1,
            small_batch_requests=4,
            session_timeout_ms=2000,
            latency=LatencyConfig.quick(),
            ingress=IngressConfig.quick(),
            mixed=MixedConfig.quick(),
            scaleout=ScaleoutConfig.quick(),
            coldstart=ColdStartConfig.quick(),
            structured=StructuredConfig.quick(),
            hangup=HangupConfig.quick(),
            multiturn=MultiturnConfig.quick(),
            sharedprefix=SharedPrefixConfig.quick(),
            chunked=ChunkedConfig.quick(),
        )


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


def _as_worker(settings: Settings, figure: Coroutine[Any, Any, T]) -> T:
    """A figure's in-process fleet, run on the event loop its workers would use (``BRIGADE_EVENT_LOOP``)."""
    return eventloop.run(figure, loop=settings.event_loop, role="worker")


def run_bench(config: BenchConfig, *, out_dir: Path, settings: Settings) -> BenchReport:
    report = BenchReport(config=config, machine=machine_facts())
    # Off in every figure but its own: a figure's phases send prompt i again and again (its warm-up, its burst, its
    # timed run), as real traffic does not, and a prefix cache shared between requests would measure that.
    update: dict[str, Any] = {"model": config.model, "metrics_port": 0, "shared_prefix_cache": False}
    if config.session_timeout_ms is not None:
        update["kafka_session_timeout_ms"] = config.session_timeout_ms
    settings = settings.model_copy(update=update)
    figures = config.figures
    console.print(
        f"[bold]brigade bench[/] figures={','.join(figures)} model={config.model} requests={config.requests} "
        f"prompt≈{config.prompt_words} words new_tokens={config.new_tokens}"
    )
    engine = _engine_loops(config, report, settings) if {"batching", "pipeline", "structured"} & set(figures) else None
    if engine is not None and "structured" in figures:
        with _progress() as progress:
            task = progress.add_task("structured output: free, then constrained", total=2 * config.structured.rounds)
            report.structured = run_structured(engine, config.structured, on_run=lambda: progress.advance(task))
    if "chunked" in figures:  # the engine alone, no dev servers
        ch = config.chunked
        with _progress() as progress:
            task = progress.add_task(
                f"chunked prefill: a {ch.long_tokens}-token prompt joining {ch.running} decoding requests",
                total=ch.rounds * len(ch.chunks),
            )
            report.chunked = run_chunked(settings, ch, on_trial=_advance(progress, task))
    prefill: dict[str, float] = {}
    if "latency" in figures:
        prefill = _prefill(config.latency, settings)

    logs = Path(tempfile.mkdtemp(prefix="brigade-bench-"))
    kafka = kafka_service(port=free_port(), log_dir=logs).start()
    redis = redis_service(port=free_port(), log_dir=logs).start()
    engines = KeptEngines()  # the in-process fleets' workers share one loaded model (no figure times its load)
    try:
        settings = settings.model_copy(update=on_dev_servers(kafka, redis))
        if engine is not None:  # the engine loop's, warmed at the largest batch: the fleets' workers take it over
            fleet_worker = settings.model_copy(update={"worker_class": "small"})
            engines.adopt(fleet_worker, engine, warmed=max(config.batch_sizes))
        if engine is not None and {"batching", "pipeline"} & set(figures):
            _rounds(config, report, settings, engine, engines)
        _fleet_figures(config, report, settings, prefill, engines)
    finally:
        if engine is not None:
            engine.close()
        engines.close()
        kafka.stop()
        redis.stop()

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "bench.json").write_text(json.dumps(report.to_json(), indent=2) + "\n")
    print_report(report)
    written = [str(out_dir / "bench.json")]
    try:
        from brigade.bench.plots import plot_all

        written.extend(str(path) for path in plot_all(report, out_dir))
    except ImportError:
        written.append("(install matplotlib for the PNGs)")
    console.print(f"wrote {', '.join(written)}")
    return report


def _engine_loops(config: BenchConfig, report: BenchReport, settings: Settings) -> InferenceEngine:
    """Load and warm the model, and (for figures 1 and 2) run the engine loop at the small batch size, long
    enough to be steady."""
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
    if not {"batching", "pipeline"} & set(config.figures):
        return engine
    with _progress() as progress:
        task = progress.add_task(f"engine loop, batch {lo}", total=config.small_requests)
        report.engine[lo] = engine_loop(
            engine,
            batch_size=lo,
            requests=config.small_requests,
            prompt_words=config.prompt_words,
            new_tokens=config.new_tokens,
            on_batch=_advance(progress, task),
        )
    return engine


FLEET_RUNS = (("consumer", False, "batching"), ("pipeline", True, "pipeline"))  # (run, via HTTP, its figure)


def _rounds(
    config: BenchConfig, report: BenchReport, settings: Settings, engine: InferenceEngine, engines: KeptEngines
) -> None:
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
                    engines=engines,
                )
                runs[key].append(_as_worker(settings, run))
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


def _fleet_figures(
    config: BenchConfig, report: BenchReport, settings: Settings, prefill: dict[str, float], engines: KeptEngines
) -> None:
    kw = {"requests": config.small_requests, "prompt_words": config.prompt_words, "new_tokens": config.new_tokens}
    figures = config.figures
    with _progress() as progress:
        if "batching" in figures:
            lo = config.batch_sizes[0]
            task = progress.add_task(f"consumer via Kafka, batch {lo}", total=config.small_requests)
            report.consumer[lo] = _as_worker(
                settings,
                run_through_fleet(
                    settings, via_http=False, batch_size=lo, on_final=_advance(progress, task), engines=engines, **kw
                ),
            )
        if "continuous" in figures:
            mix = config.mixed
            task = progress.add_task(
                f"static, then continuous batching: {mix.requests} requests, {mix.min_new_tokens}–{mix.max_new_tokens} "
                "new tokens",
                total=2 * mix.requests,
            )
            report.mixed = _as_worker(
                settings, run_mixed(settings, mix, on_final=_advance(progress, task), engines=engines)
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
        if "hangup" in figures:
            hang = config.hangup
            task = progress.add_task(
                f"abandoned streams: {hang.clients} calls of {hang.max_tokens} tokens, each left after {hang.chunks} "
                "chunks",
                total=hang.clients,
            )
            report.hangup = _as_worker(
                settings, run_hangup(settings, hang, on_client=_advance(progress, task), engines=engines)
            )
        if "multiturn" in figures:
            turns = config.multiturn
            task = progress.add_task(
                f"multi-turn chat: {turns.sessions} conversation(s) of {turns.turns} turns, as sessions, then whole "
                "without and with a prompt_cache_key",
                total=3 * turns.sessions * turns.turns,
            )
            report.multiturn = _as_worker(
                settings, run_multiturn(settings, turns, on_turn=_advance(progress, task), engines=engines)
            )
        if "sharedprefix" in figures:
            sp = config.sharedprefix
            task = progress.add_task(
                f"shared system prompt: {sp.requests} new conversations, the prefix cache on, then off",
                total=2 * sp.requests,
            )
            report.sharedprefix = _as_worker(
                settings, run_shared_prefix(settings, sp, on_request=_advance(progress, task))
            )
