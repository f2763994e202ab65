"""The Grafana dashboard JSON read as data: panels, their PromQL, Grafana's variables, the grid and the units.

Pure on purpose: the snapshot (``snapshot.py``) must evaluate *the dashboard's own* expressions, not a copy of
them, so everything that interprets the JSON lives here and is tested without Prometheus, Grafana or a plot.
The rules follow Grafana's documented behaviour: ``$__interval`` is the time range over the panel's data points,
rounded and never below the datasource's scrape interval; ``$__rate_interval`` is
``max($__interval + scrape interval, 4 × scrape interval)``; the grid has 24 columns of 30 px rows.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

GRID_COLUMNS = 24  # Grafana's dashboard grid width
# Grafana's roundInterval keeps $__interval to values like these (seconds).
_NICE_INTERVALS = (1, 2, 5, 10, 15, 20, 30, 60, 120, 300, 600, 900, 1200, 1800, 3600)


@dataclass(frozen=True)
class Target:
    """One query of a panel, exactly as the dashboard states it."""

    ref_id: str
    expr: str  # PromQL with Grafana variables still in it
    legend_format: str  # e.g. "p50 {{class}}"; "" lets the series' labels speak


@dataclass(frozen=True)
class Grid:
    """A panel's place on Grafana's 24-column grid (``gridPos``), in grid units."""

    x: int
    y: int
    w: int
    h: int


@dataclass(frozen=True)
class Panel:
    """What a drawing needs from one dashboard panel."""

    title: str
    description: str
    unit: str  # fieldConfig.defaults.unit: "s", "bytes", "short", …
    grid: Grid
    targets: tuple[Target, ...]


def parse_dashboard(dashboard: Mapping[str, Any]) -> list[Panel]:
    """Panels in reading order (top to bottom, left to right); rows and panels without queries are left out."""
    panels: list[Panel] = []
    for raw in _flatten(dashboard.get("panels", [])):
        targets = tuple(
            Target(ref_id=str(t.get("refId", "")), expr=str(t["expr"]), legend_format=str(t.get("legendFormat", "")))
            for t in raw.get("targets", [])
            if t.get("expr")
        )
        if raw.get("type") == "row" or not targets:
            continue
        pos = raw.get("gridPos", {})
        panels.append(
            Panel(
                title=str(raw.get("title", "")),
                description=str(raw.get("description", "")),
                unit=str(raw.get("fieldConfig", {}).get("defaults", {}).get("unit", "short")),
                grid=Grid(
                    x=int(pos.get("x", 0)), y=int(pos.get("y", 0)), w=int(pos.get("w", 12)), h=int(pos.get("h", 8))
                ),
                targets=targets,
            )
        )
    return sorted(panels, key=lambda p: (p.grid.y, p.grid.x))


def _flatten(raw_panels: Iterable[Mapping[str, Any]]) -> Iterable[Mapping[str, Any]]:
    """Collapsed rows keep their panels inside the row; open them up."""
    for panel in raw_panels:
        yield panel
        yield from _flatten(panel.get("panels", []))


def template_values(dashboard: Mapping[str, Any]) -> dict[str, str]:
    """Dashboard variables (``templating.list``) → what to put in a query: the current value, or ``.*`` for All.

    A snapshot shows every class at once, so "All" (or no current value) becomes the regex Grafana sends
    for All on a Prometheus datasource; a multi-value selection becomes an alternation.
    """
    values: dict[str, str] = {}
    for var in dashboard.get("templating", {}).get("list", []):
        current = var.get("current", {}).get("value")
        if isinstance(current, list):
            picked = [str(v) for v in current if v != "$__all"]
            values[var["name"]] = "(" + "|".join(picked) + ")" if picked and len(picked) == len(current) else ".*"
        elif current in (None, "", "$__all"):
            values[var["name"]] = ".*"
        else:
            values[var["name"]] = str(current)
    return values


@dataclass(frozen=True)
class Intervals:
    """Grafana's time variables for one panel over one time range."""

    interval_s: int  # $__interval, also the query_range step
    rate_interval_s: int  # $__rate_interval
    range_s: int  # $__range


def grafana_intervals(*, range_s: float, scrape_interval_s: float, max_data_points: int) -> Intervals:
    """``$__interval`` = range / data points, rounded to a nice value, at least the scrape interval; see module doc."""
    raw = range_s / max(1, max_data_points)
    nice = min(_NICE_INTERVALS, key=lambda n: abs(n - raw))
    interval = max(nice, math.ceil(scrape_interval_s))
    rate = max(interval + math.ceil(scrape_interval_s), 4 * math.ceil(scrape_interval_s))
    return Intervals(interval_s=interval, rate_interval_s=rate, range_s=max(1, round(range_s)))


def substitute(expr: str, *, intervals: Intervals, variables: Mapping[str, str] | None = None) -> str:
    """Replace Grafana's ``$__…`` and the dashboard's own variables (``$v``, ``${v}``, ``[[v]]``) in a query.

    An unknown variable is an error rather than a silently broken query.
    """
    builtin = {
        "__rate_interval": f"{intervals.rate_interval_s}s",
        "__interval": f"{intervals.interval_s}s",
        "__interval_ms": str(intervals.interval_s * 1000),
        "__range": f"{intervals.range_s}s",
        "__range_s": str(intervals.range_s),
        "__range_ms": str(intervals.range_s * 1000),
    }
    table = {**builtin, **(variables or {})}

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2) or match.group(3)
        if name not in table:
            raise KeyError(f"query uses ${name}, which is neither a Grafana variable nor one of the dashboard's")
        return table[name]

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)", replace, expr)


_PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
                 "offset", "inf", "nan"}  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression reads: identifiers that are not functions, keywords or label names."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range selectors
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)  # label lists
    text = re.sub(r"\$\{?\w+\}?", "", text)  # Grafana variables
    names = set()
    for match in re.finditer(r"(?<![\w.])([a-zA-Z_:][\w:]*)(\s*\()?", text):
        word, call = match.group(1), match.group(2)
        if call or word.lower() in _PROMQL_WORDS:
            continue
        names.add(word)
    return names


# What a panel needs when the metric is not one brigade exports on every machine.
_NEEDS = (
    ("brigade_gpu_", "an NVIDIA GPU (worker bound to it, nvidia-ml-py)"),
    ("kafka_", "kafka-exporter (the docker compose stack)"),
    ("redis_", "redis_exporter (the docker compose stack)"),
)


def requirement(expr: str) -> str | None:
    """What must exist for ``expr`` to have data (``None``: brigade's own CPU processes suffice)."""
    for name in sorted(metric_names(expr)):
        for prefix, need in _NEEDS:
            if name.startswith(prefix):
                return need
    return None


_LEGEND_LABEL = re.compile(r"\{\{\s*([\w]+)\s*\}\}")


def legend(fmt: str, labels: Mapping[str, str]) -> str:
    """Grafana's legendFormat: ``{{label}}`` → the series' value ("" when absent); empty format → the label set."""
    if not fmt:
        shown = ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items()) if k != "__name__")
        return "{" + shown + "}"
    return _LEGEND_LABEL.sub(lambda m: labels.get(m.group(1), ""), fmt).strip()


@dataclass(frozen=True)
class AxisScale:
    """Divide values by ``divisor`` and label the axis ``suffix``: the unit Grafana would pick for the range."""

    divisor: float
    suffix: str


def axis_scale(unit: str, peak: float) -> AxisScale:
    """Scale for Grafana's ``s`` (µs/ms/s/min), ``bytes`` (IEC) and ``short`` (K/Mil) units at a peak value."""
    peak = abs(peak)
    if unit == "s":
        for divisor, suffix in ((60.0, "min"), (1.0, "s"), (1e-3, "ms")):
            if peak >= divisor:
                return AxisScale(divisor, suffix)
        return AxisScale(1e-6, "µs")
    if unit == "bytes":
        for power, suffix in ((4, "TiB"), (3, "GiB"), (2, "MiB"), (1, "KiB")):
            if peak >= 1024**power:
                return AxisScale(float(1024**power), suffix)
        return AxisScale(1.0, "B")
    if unit in ("short", "none", ""):
        for divisor, suffix in ((1e9, "Bil"), (1e6, "Mil"), (1e3, "K")):
            if peak >= divisor:
                return AxisScale(divisor, suffix)
        return AxisScale(1.0, "")
    return AxisScale(1.0, unit)


@dataclass(frozen=True)
class Rect:
    """A panel's box in figure fractions (matplotlib's ``add_axes`` order): left, bottom, width, height."""

    left: float
    bottom: float
    width: float
    height: float


def layout(grids: Sequence[Grid], *, gap: float = 0.006) -> list[Rect]:
    """Grafana's grid → figure fractions, top row at the top, with ``gap`` between neighbouring panels."""
    rows = max((g.y + g.h for g in grids), default=1)
    rects = []
    for g in grids:
        left = g.x / GRID_COLUMNS + gap / 2
        width = g.w / GRID_COLUMNS - gap
        top = 1.0 - g.y / rows - gap / 2
        height = g.h / rows - gap
        rects.append(Rect(left=left, bottom=top - height, width=width, height=height))
    return rects


def figure_size(grids: Sequence[Grid], *, width_in: float = 16.0) -> tuple[float, float]:
    """Inches keeping Grafana's proportions: a column is 1/24 of the width, a row 30 px + 8 px margin of ~1800 px."""
    rows = max((g.y + g.h for g in grids), default=1)
    column_px = 1800 / GRID_COLUMNS
    return width_in, width_in * rows * 38 / (GRID_COLUMNS * column_px)
