"""One bar chart per run: a person compares bars faster than table rows."""

from __future__ import annotations

from pathlib import Path

from brigade.bench.runner import BenchReport


def plot_report(report: BenchReport, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    fig, ax = plt.subplots(figsize=(12.5, 4.8))
    bars = ax.bar(
        labels, values, color=["#4c72b0"] * len(report.engine) + ["#dd8452"] * (len(values) - len(report.engine))
    )
    ax.bar_label(bars, fmt="%.0f")
    ax.set_ylabel("tokens/s")
    ratios = report.ratios()
    subtitle = ", ".join(f"{k.replace('_', ' ')} {v:.2f}" for k, v in ratios.items())
    ax.set_title(f"brigade bench — {report.config.model} ({subtitle})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
