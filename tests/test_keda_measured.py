"""The measured per-replica figures behind the generator's defaults, and the flags that replace them."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from brigade.cli import app
from deploy.keda import measured, params
from deploy.keda.config import DeployConfig
from deploy.keda.measured import ReplicaFigures, parse_class_values, throughput_rps

CLASSES = ("small", "medium", "large")


@pytest.mark.parametrize(
    ("tokens_per_s", "new_tokens", "expected"),
    [(100.0, 32, 3.125), (100.0, 100, 1.0), (4652.0, 32, 145.375), (0.5, 512, 0.0009765625)],
)
def test_throughput_from_tokens_per_second(tokens_per_s: float, new_tokens: int, expected: float) -> None:
    figures = ReplicaFigures("m", tokens_per_s, 0.0, 32, 1.0, 1.0, "")
    assert throughput_rps(figures, new_tokens=new_tokens) == pytest.approx(expected)


def test_defaults_follow_the_measured_figures_and_the_formula() -> None:
    figures = measured.DEFAULT_FIGURES
    assert figures.tokens_per_s > 0 and figures.cold_start_s > 0 and figures.measured
    assert figures.requests_per_s == pytest.approx(figures.tokens_per_s / figures.new_tokens, rel=0.05)
    config = DeployConfig()
    for name in CLASSES:
        cfg = config.for_class(name)
        rps = figures.tokens_per_s / measured.TYPICAL_NEW_TOKENS[name]
        assert cfg.throughput_rps == pytest.approx(rps, abs=1e-3)
        assert cfg.lag_threshold == max(1, math.floor(cfg.throughput_rps * cfg.target_wait_s))
        assert cfg.cold_start_s == figures.cold_start_empty_cache_s  # the rendered pods' model cache is an emptyDir
        assert cfg.cooldown_s == params.cooldown_period_s(cold_start_s=figures.cold_start_empty_cache_s)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("small=40,medium=12.5", {"small": 40.0, "medium": 12.5}),
        (" large=0.25 , ", {"large": 0.25}),
        ("", {}),
    ],
)
def test_parse_class_values(text: str, expected: dict[str, float]) -> None:
    assert parse_class_values(text, flag="--throughput", classes=CLASSES) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("small", "write CLASS=VALUE pairs"),
        ("tiny=3", "unknown class 'tiny'"),
        ("small=fast", "small='fast' is not a number"),
        ("small=0", "must be > 0"),
    ],
)
def test_parse_class_values_names_the_problem(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        parse_class_values(text, flag="--throughput", classes=CLASSES)
    assert "--throughput" in str(info.value)


@pytest.mark.parametrize(
    ("cold", "period", "expected"),
    [(6.6, 5, 12), (0.7, 5, 12), (30.0, 5, 12), (45.0, 5, 18), (120.0, 10, 24), (0.0, 60, 1)],
)
def test_startup_probe_covers_two_cold_starts_and_at_least_a_minute(cold: float, period: int, expected: int) -> None:
    assert params.startup_failure_threshold(cold_start_s=cold, period_s=period) == expected


def test_with_measured_replaces_only_what_it_is_given() -> None:
    base = DeployConfig()
    gpu = base.with_measured(throughput_rps={"small": 40.0}, cold_start_s={"large": 90.0})
    assert gpu.for_class("small").throughput_rps == 40.0 and gpu.for_class("small").lag_threshold == 400
    assert gpu.for_class("small").cold_start_s == base.for_class("small").cold_start_s
    assert gpu.for_class("large").cold_start_s == 90.0 and gpu.for_class("large").cooldown_s == 300
    assert gpu.for_class("medium") == base.for_class("medium")
    assert base.for_class("small").throughput_rps != 40.0  # the original is untouched


def test_render_and_simulate_take_a_gpu_figure(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "gpu"
    result = runner.invoke(app, ["deploy", "render", "--out", str(out), "--throughput", "small=40"])
    assert result.exit_code == 0, result.output
    assert "lagThreshold: '400'" in (out / "worker-small.yaml").read_text()
    result = runner.invoke(app, ["deploy", "render", "--reference", "--throughput", "small=40"])
    assert result.exit_code != 0 and "not --reference" in result.output
    pngs = tmp_path / "sim"
    args = ["scale", "simulate", "--class", "small", "--throughput", "small=40", "--cold-start", "small=45"]
    result = runner.invoke(app, [*args, "--trace", "steady", "--hours", "0.1", "--out", str(pngs)])
    assert result.exit_code == 0, result.output
    assert "cold start 45 s, 40 req/s per replica, lagThreshold 400" in " ".join(result.output.split())
