"""Runs the figures side by side in one process and writes JSON, a PNG and a table.

Needs the ``dev`` extra: the broker and redis-server are started on free ports for the run.
"""

from __future__ import annotations

import asyncio
import json
import platform
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from brigade.bench.engine_loop import LoopResult, engine_loop
from brigade.bench.pipeline import run_through_fleet
from brigade.devtools.process import free_port
from brigade.devtools.servers import kafka_service, redis_service
from schemas.settings import Settings

console = Console()


@dataclass(frozen=True, slots=True)
class BenchConfig:
    model: str
    batch_sizes: tuple[int, int] = (1, 32)  # the figure compares the second with the first
    requests: int = 64
    prompt_words: int = 24
    new_tokens: int = 32

    @classmethod
    def quick(cls, model: str) -> BenchConfig:
        return cls(model=model, requests=32, prompt_words=16, new_tokens=8)


@dataclass
class BenchReport:
    config: BenchConfig
    machine: dict[str, Any]
    engine: dict[int, LoopResult] = field(default_factory=dict)
    consumer: dict[int, LoopResult] = field(default_factory=dict)
    pipeline: LoopResult | None = None

    def ratios(self) -> dict[str, float]:
        lo, hi = self.config.batch_sizes
        out: dict[str, float] = {}
        if lo in self.consumer and hi in self.consumer:
            out["batching_gain"] = self.consumer[hi].tokens_per_s / self.consumer[lo].tokens_per_s
        if self.pipeline is not None and hi in self.engine:
            out["pipeline_efficiency"] = self.pipeline.tokens_per_s / self.engine[hi].tokens_per_s
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
            "ratios": self.ratios(),
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
    from consumer.engine.onnx_engine import load_engine

    report = BenchReport(config=config, machine=machine_facts())
    settings = settings.model_copy(update={"model": config.model, "kafka_idempotence": False, "metrics_port": 0})
    console.print(
        f"[bold]brigade bench[/] model={config.model} requests={config.requests} "
        f"prompt≈{config.prompt_words} words new_tokens={config.new_tokens}"
    )
    with console.status("loading model (built-in models are generated on first use) and warming up…"):
        engine = load_engine(settings)
        engine.warmup(batch_size=max(config.batch_sizes))
        # One untimed batch per size with the benchmark's own shapes: the workers below get the same
        # treatment (warm-up plus a warm-up request), so neither side pays ONNX Runtime's first-shape cost.
        for b in config.batch_sizes:
            engine_loop(engine, batch_size=b, requests=b, prompt_words=config.prompt_words, new_tokens=2)
    kw = {"requests": config.requests, "prompt_words": config.prompt_words, "new_tokens": config.new_tokens}
    with _progress() as progress:
        for b in config.batch_sizes:
            task = progress.add_task(f"engine loop, batch {b}", total=config.requests)
            report.engine[b] = engine_loop(engine, batch_size=b, on_batch=_advance(progress, task), **kw)
    engine.close()

    logs = Path(tempfile.mkdtemp(prefix="brigade-bench-"))
    kafka = kafka_service(port=free_port(), log_dir=logs).start()
    redis = redis_service(port=free_port(), log_dir=logs).start()
    try:
        settings = settings.model_copy(
            update={"kafka_bootstrap": f"127.0.0.1:{kafka.port}", "redis_url": f"redis://127.0.0.1:{redis.port}/0"}
        )
        with _progress() as progress:
            for b in config.batch_sizes:
                task = progress.add_task(f"consumer via Kafka, batch {b}", total=config.requests)
                report.consumer[b] = asyncio.run(
                    run_through_fleet(settings, via_http=False, batch_size=b, on_final=_advance(progress, task), **kw)
                )
            hi = config.batch_sizes[-1]
            task = progress.add_task(f"HTTP → Kafka → worker → Redis, batch {hi}", total=config.requests)
            report.pipeline = asyncio.run(
                run_through_fleet(settings, via_http=True, batch_size=hi, on_final=lambda: progress.advance(task), **kw)
            )
    finally:
        kafka.stop()
        redis.stop()

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "bench.json").write_text(json.dumps(report.to_json(), indent=2) + "\n")
    print_report(report)
    try:
        from brigade.bench.plots import plot_report

        png = plot_report(report, out_dir / "bench.png")
        console.print(f"wrote {out_dir / 'bench.json'} and {png}")
    except ImportError:
        console.print(f"wrote {out_dir / 'bench.json'} (install matplotlib for the PNG)")
    return report


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
