"""``brigade deploy`` and ``brigade scale``: Kubernetes manifests and the KEDA/HPA simulator.

Needs the ``deploy`` extra (the kubernetes client and PyYAML).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from deploy.keda.config import DeployConfig

deploy_app = typer.Typer(
    help="Kubernetes manifests: a Deployment + KEDA ScaledObject per cost class.", no_args_is_help=True
)
scale_app = typer.Typer(help="Replay KEDA's kafka scaler and the HPA over load traces.", no_args_is_help=True)

TRACES = ("burst", "steady", "ramp", "diurnal")

ThroughputOpt = Annotated[
    str | None,
    typer.Option(
        help="Measured requests/s per replica, per class (small=40,medium=12): replaces the CPU-measured defaults, "
        "e.g. with `brigade bench --figure scaleout --consumers 1` run on the target GPU."
    ),
]
ColdStartOpt = Annotated[
    str | None,
    typer.Option(help="Measured seconds from pod start to /readyz 200, per class (small=45,large=90)."),
]


def measured_config(classes: tuple[str, ...], throughput: str | None, cold_start: str | None) -> DeployConfig:
    """``DeployConfig()`` with the figures given on the command line; a bad value names the flag and the class."""
    from deploy.keda.config import DeployConfig
    from deploy.keda.measured import parse_class_values

    try:
        rps = parse_class_values(throughput or "", flag="--throughput", classes=classes)
        cold = parse_class_values(cold_start or "", flag="--cold-start", classes=classes)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    return DeployConfig().with_measured(throughput_rps=rps, cold_start_s=cold)


@deploy_app.command("render")
def render(
    out: Annotated[Path, typer.Option(help="Directory for the YAML files.")] = Path("rendered"),
    reference: Annotated[
        bool, typer.Option(help="Rewrite the checked-in deploy/keda/rendered from the pinned reference settings.")
    ] = False,
    check: Annotated[
        bool, typer.Option(help="Only report whether the checked-in YAML drifted (exit 1 if so).")
    ] = False,
    throughput: ThroughputOpt = None,
    cold_start: ColdStartOpt = None,
) -> None:
    """Render manifests from the BRIGADE_* environment (or the pinned reference settings)."""
    from brigade.cli import load_settings
    from deploy.keda.render import drift, render_all, render_reference

    if (reference or check) and (throughput or cold_start):
        raise typer.BadParameter("--throughput/--cold-start change the output; use them with --out, not --reference")

    if check:
        drifted = drift()
        for name in drifted:
            typer.echo(f"drifted: deploy/keda/rendered/{name}")
        raise typer.Exit(1 if drifted else 0)
    if reference:
        paths = render_reference()
    else:
        settings = load_settings()
        paths = render_all(settings, out, config=measured_config(settings.classes, throughput, cold_start))
    for path in paths:
        typer.echo(str(path))


@deploy_app.command("apply")
def apply_cmd(
    paths: Annotated[list[Path], typer.Argument(help="Rendered YAML files to apply.")],
    dry_run: Annotated[bool, typer.Option(help="Server-side dry run: validate without changing the cluster.")] = False,
) -> None:
    """Server-side apply through the Kubernetes API (kubeconfig or in-cluster credentials)."""
    from deploy.keda.apply import apply

    for applied in apply(paths, dry_run=dry_run):
        typer.echo(str(applied))


@scale_app.command("simulate")
def simulate_cmd(
    cost_class: Annotated[str, typer.Option("--class", help="Cost class whose ScaledObject to replay.")] = "large",
    trace: Annotated[str, typer.Option(help=f"Load shape: {', '.join(TRACES)}.")] = "burst",
    rate: Annotated[float, typer.Option(help="Peak (burst/ramp/diurnal) or steady requests/s.")] = 0.5,
    hours: Annotated[float, typer.Option(help="Length of the trace.")] = 1.0,
    activation: Annotated[int, typer.Option(help="activationLagThreshold for the third strategy.")] = 10,
    out: Annotated[Path, typer.Option(help="Directory for one PNG per strategy.")] = Path("scale-out"),
    throughput: ThroughputOpt = None,
    cold_start: ColdStartOpt = None,
) -> None:
    """Compare scale-to-zero, a warm minimum and an activation threshold on queue wait and GPU-hours."""
    from rich.console import Console
    from rich.table import Table

    from brigade.cli import load_settings
    from deploy.scaling import compare, params_for_class, plot, simulate, traces

    if trace not in TRACES:
        raise typer.BadParameter(f"--trace must be one of {', '.join(TRACES)}")
    settings = load_settings()
    if cost_class not in settings.classes:
        raise typer.BadParameter(f"--class must be one of {', '.join(settings.classes)}")
    duration = int(hours * 3600)
    load = {
        "burst": lambda: traces.burst(base=0.0, peak=rate, start_s=duration // 4, length_s=300, duration_s=duration),
        "steady": lambda: traces.steady(rate=rate, duration_s=duration),
        "ramp": lambda: traces.ramp(start=0.0, end=rate, duration_s=duration),
        "diurnal": lambda: traces.diurnal(mean=rate / 2, amplitude=rate / 2, duration_s=duration),
    }[trace]()
    base = params_for_class(settings, measured_config(settings.classes, throughput, cold_start), cost_class)
    strategies = {
        "scale to zero": dataclasses.replace(base, min_replicas=0, activation_lag=0),
        "one warm replica": dataclasses.replace(base, min_replicas=1),
        f"activation at lag {activation}": dataclasses.replace(base, min_replicas=0, activation_lag=activation),
    }
    table = Table(
        title=f"{cost_class}: {trace} trace, {hours:g} h, peak {rate:g} req/s, cold start {base.cold_start_s:g} s, "
        f"{base.throughput_rps:g} req/s per replica, lagThreshold {base.lag_threshold}"
    )
    for col in ("strategy", "p50 wait", "p95 wait", "max wait", "GPU-hours", "max replicas"):
        table.add_column(col, justify="left" if col == "strategy" else "right")
    for s in compare(load, strategies):
        table.add_row(s.name, f"{s.p50_wait_s:.1f} s", f"{s.p95_wait_s:.1f} s", f"{s.max_wait_s:.1f} s",
                      f"{s.gpu_hours:.2f}", str(s.max_replicas))  # fmt: skip
    Console().print(table)
    out.mkdir(parents=True, exist_ok=True)
    for name, params in strategies.items():
        path = plot(simulate(load, params), out / f"{cost_class}-{trace}-{name.replace(' ', '-')}.png", title=name)
        typer.echo(str(path))
