"""Draw evaluated panels the way Grafana lays them out: its grid, its dark theme, titles, units and legends.

Colour follows the cost class (the label every brigade series carries) and line style the query (A solid,
B dashed), so "p50 small" and "p95 small" read as one class at two quantiles. A query whose metric this
run cannot produce says so inside its panel instead of leaving the panel silently empty.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

# A bare Figure, not pyplot: no global figure registry and no GUI backend, just a PNG.
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from brigade.dashboard.panels import Panel, Rect, axis_scale, figure_size, layout
from brigade.dashboard.prometheus import Series

BACKGROUND, CARD, TEXT, MUTED, GRID = "#111217", "#181b1f", "#ccccdc", "#8e8e9e", "#2c3235"
# Grafana's classic palette, in the order its series get colours.
PALETTE = ("#73bf69", "#f2cc0c", "#8ab8ff", "#ff780a", "#f2495c", "#5794f2", "#b877d9", "#705da0")
LINESTYLES = ("-", "--", ":", "-.")
HEADER_IN = 1.0  # inches above the grid for the snapshot's own title


@dataclass(frozen=True)
class Line:
    """One drawn series: its legend text, which query (index) it came from, and its points."""

    label: str
    target_index: int
    series: Series


@dataclass
class PanelResult:
    """A panel and what its queries returned; ``notes`` explain queries that returned nothing."""

    panel: Panel
    lines: list[Line] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _colour(line: Line, colours: dict[str, str]) -> str:
    key = line.series.labels.get("class") or line.series.labels.get("consumergroup") or line.label
    key = key.removeprefix("brigade-")  # kafka-exporter's group brigade-small is the class small
    if key not in colours:
        colours[key] = PALETTE[len(colours) % len(PALETTE)]
    return colours[key]


def _draw_panel(
    fig: Figure,
    rect: Rect,
    result: PanelResult,
    *,
    colours: dict[str, str],
    size: tuple[float, float],
    window: tuple[float, float],
) -> None:
    card = fig.add_axes((rect.left, rect.bottom, rect.width, rect.height))
    card.set_facecolor(CARD)
    card.set_xticks([])
    card.set_yticks([])
    for spine in card.spines.values():
        spine.set_color(GRID)
    # Fixed margins in inches inside the card: title on top, legend at the bottom, the y axis on the left.
    w_in, h_in = size
    top, bottom, left, right = 0.34 / h_in, 0.62 / h_in, 0.62 / w_in, 0.15 / w_in
    title_y = rect.bottom + rect.height - 0.19 / h_in
    fig.text(
        rect.left + 0.1 / w_in, title_y, result.panel.title, color=TEXT, fontsize=10, fontweight="bold", va="center"
    )
    if not result.lines:
        message = "\n".join(result.notes) or "no data"
        card.text(0.5, 0.5, message, color=MUTED, ha="center", va="center", fontsize=10, transform=card.transAxes)
        return
    plot = fig.add_axes(
        (rect.left + left, rect.bottom + bottom, rect.width - left - right, rect.height - top - bottom),
        facecolor=CARD,
    )
    peak = max((abs(v) for line in result.lines for _, v in line.series.points), default=0.0)
    scale = axis_scale(result.panel.unit, peak)
    order = {c: i for i, c in enumerate(colours)}  # the class order (cheapest first), as the legend reads
    lines = sorted(result.lines, key=lambda ln: (ln.target_index, order.get(ln.series.labels.get("class", ""), 99)))
    for line in lines:
        xs = [t for t, _ in line.series.points]  # unix seconds; ticks show local clock time
        ys = [v / scale.divisor for _, v in line.series.points]
        plot.plot(
            xs,
            ys,
            color=_colour(line, colours),
            linestyle=LINESTYLES[line.target_index % len(LINESTYLES)],
            linewidth=1.4,
            label=line.label,
        )
    plot.set_xlim(*window)  # every panel shows the whole run, as Grafana's shared time range does
    plot.set_ylim(bottom=0)
    plot.set_ylabel(scale.suffix, color=MUTED, fontsize=8)
    plot.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: time.strftime("%H:%M:%S", time.localtime(x))))
    plot.tick_params(colors=MUTED, labelsize=7)
    plot.grid(color=GRID, linewidth=0.6)
    for spine in plot.spines.values():
        spine.set_visible(False)
    plot.legend(
        loc="upper left",
        bbox_to_anchor=(0.0, -0.12),
        ncols=min(6, len(result.lines)),
        frameon=False,
        fontsize=7,
        labelcolor=TEXT,
        handlelength=2.2,
    )
    if result.notes:  # beside the title, clear of the lines
        fig.text(rect.left + rect.width - 0.12 / w_in, title_y, "; ".join(result.notes), color=MUTED, fontsize=8,
                 ha="right", va="center")  # fmt: skip


def draw(
    results: Sequence[PanelResult],
    *,
    window: tuple[float, float],
    classes: Sequence[str],
    title: str,
    subtitle: str,
    out: Path,
    dpi: int = 100,
) -> Path:
    """Render every panel over ``window`` (unix seconds) into one PNG at ``out``; ``classes`` fix the colours."""
    grids = [r.panel.grid for r in results]
    width, grid_height = figure_size(grids)
    height = grid_height + HEADER_IN
    fig = Figure(figsize=(width, height), facecolor=BACKGROUND)
    header = HEADER_IN / height
    fig.text(0.008, 1 - 0.28 / height, title, color=TEXT, fontsize=13, fontweight="bold", va="center")
    fig.text(0.008, 1 - 0.5 / height, subtitle, color=MUTED, fontsize=8.5, va="top", linespacing=1.5)
    colours = {c: PALETTE[i % len(PALETTE)] for i, c in enumerate(classes)}
    for result, rect in zip(results, layout(grids), strict=True):
        squeezed = Rect(rect.left, rect.bottom * (1 - header), rect.width, rect.height * (1 - header))
        _draw_panel(fig, squeezed, result, colours=colours, size=(width, height), window=window)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi, facecolor=BACKGROUND)
    return out
