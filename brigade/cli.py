"""The ``brigade`` command: production entry points, the embedded dev stack and the tools around them.

Production processes (``ingress``, ``worker``) take their configuration only from ``BRIGADE_*``
environment variables; flags here are conveniences for the dev stack and the tools.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from pydantic import ValidationError

from brigade.logs import configure_logging
from schemas.reasons import reason
from schemas.settings import PER_CLASS_FIELDS, Settings, class_env_name

app = typer.Typer(
    help="brigade: a Kafka-fed, KEDA-scaled worker fleet for LLM inference with Redis token streams.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def load_settings(**overrides: Any) -> Settings:
    """Read BRIGADE_* once; on a bad value print which variable is wrong and how to fix it."""
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        lines = [f"{_variable(tuple(str(p) for p in err['loc']))}: {reason(err)}" for err in exc.errors()]
        fail("invalid configuration", lines, code=2)


def fail(headline: str, details: Iterable[str], *, code: int) -> NoReturn:
    """End the command: ``brigade: <headline>`` in red on stderr, each detail indented under it, exit ``code``."""
    typer.secho(f"brigade: {headline}", fg="red", err=True)
    for line in details:
        typer.echo(f"  {line}", err=True)
    raise typer.Exit(code)


@contextlib.contextmanager
def reported_as_configuration(settings: Settings) -> Iterator[None]:
    """A start-up failure that a variable fixes ends the process as a validation error does: message, exit 2."""
    from brigade.config_error import ConfigurationError

    try:
        yield
    except ConfigurationError as exc:
        fail(exc.summary, [f"{exc.variable_in(settings)}: {exc}"], code=2)


def _variable(loc: tuple[str, ...]) -> str:
    """The variable a validation error is about: ``BRIGADE_KAFKA_BOOTSTRAP``, ``BRIGADE_CLASS_SMALL_MODEL``."""
    if not loc:
        return "settings"
    if loc[0] in PER_CLASS_FIELDS:  # (field,) for the whole family, (field, class) for one variable
        return class_env_name(loc[1], loc[0]) if len(loc) > 1 else f"BRIGADE_CLASS_<NAME>_{PER_CLASS_FIELDS[loc[0]]}"
    return f"BRIGADE_{'.'.join(loc).upper()}"


@app.command()
def ingress() -> None:
    """Run the HTTP ingress (native + OpenAI-compatible API). Configured by BRIGADE_* variables."""
    from producer.main import main as ingress_main

    settings = load_settings()
    configure_logging(level=settings.log_level, fmt=settings.log_format, component="ingress")
    with reported_as_configuration(settings):
        ingress_main(settings)


@app.command()
def worker(
    cost_class: Annotated[
        str | None,
        typer.Option("--class", help="Cost class to consume (default: BRIGADE_WORKER_CLASS)."),
    ] = None,
) -> None:
    """Run one consumer: one model session on one device, consuming one cost class's topic."""
    from consumer.main import main as worker_main

    settings = load_settings(worker_class=cost_class)
    configure_logging(level=settings.log_level, fmt=settings.log_format, component="worker")
    with reported_as_configuration(settings):
        worker_main(settings)


@app.command()
def dev(
    port: Annotated[int, typer.Option(help="Ingress HTTP port (0: any free port).")] = 8080,
    kafka_port: Annotated[int, typer.Option(help="Kafka-protocol broker port (0: any free port).")] = 9092,
    redis_port: Annotated[int, typer.Option(help="redis-server port (0: any free port).")] = 6379,
    workers_per_class: Annotated[int, typer.Option(min=0, help="Worker processes per cost class.")] = 1,
    demo: Annotated[bool, typer.Option(help="Send a prompt of each class and print tokens as they stream.")] = False,
    log_dir: Annotated[Path | None, typer.Option(help="Where child process logs go (default: a temp dir).")] = None,
    redis_cluster: Annotated[
        bool,
        typer.Option(
            "--redis-cluster",
            help="Redis as a three-node Redis Cluster, the first node on --redis-port (BRIGADE_REDIS_CLUSTER=true).",
        ),
    ] = False,
) -> None:
    """Run the whole fleet locally in the foreground: broker, Redis, topics, ingress, workers.

    Needs the 'dev' extra (pip install 'brigade\\[dev]'). Ctrl-C or SIGTERM stops everything.
    """
    from brigade.devmain import run_dev

    settings = load_settings(redis_cluster=True if redis_cluster else None)
    configure_logging(level="INFO", fmt="text", component="dev")
    code = run_dev(
        settings,
        port=port,
        kafka_port=kafka_port,
        redis_port=redis_port,
        workers_per_class=workers_per_class,
        demo=demo,
        log_dir=log_dir,
    )
    raise typer.Exit(code)


@app.command("demo")
def demo_cmd(
    url: Annotated[str, typer.Option(help="Ingress base URL.")] = "http://127.0.0.1:8080",
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 48,
) -> None:
    """Send one prompt per cost class to a running ingress and print tokens as they stream back."""
    from brigade.demo import run_demo

    settings = load_settings()
    ok = asyncio.run(run_demo(url, classes=settings.classes, max_new_tokens=max_new_tokens))
    raise typer.Exit(0 if ok else 1)


@app.command()
def schema(
    out: Annotated[Path | None, typer.Option(help="Write to this file instead of stdout.")] = None,
) -> None:
    """Print the JSON Schema of the request (what to publish) and of the stream events (what to read)."""
    from schemas.jsonschema import all_schemas

    text = json.dumps(all_schemas(), indent=2)
    if out is None:
        typer.echo(text)
    else:
        out.write_text(text + "\n")


topics_app = typer.Typer(help="Kafka topics of the fleet.", no_args_is_help=True)
app.add_typer(topics_app, name="topics")


@topics_app.command("create")
def topics_create(
    replication_factor: Annotated[
        int | None,
        typer.Option(min=1, help="Copies of each partition (default: 3, or the broker count if smaller)."),
    ] = None,
    config: Annotated[
        list[str] | None,
        typer.Option(help="A topic-level setting, KEY=VALUE (repeatable), e.g. --config min.insync.replicas=2."),
    ] = None,
) -> None:
    """Create the request topics (one per cost class, with its partitions) and the DLQ, if missing.

    Existing topics are left as they are. Exits 1, naming each topic and the broker's reason, if any is refused.
    """
    from aiokafka.errors import KafkaConnectionError

    from brigade.kafka_config import check_kafka
    from producer.topics import TopicsNotCreated, desired_topics, ensure_topics

    settings = load_settings()
    configs = _key_values(config or [], option="--config")
    with reported_as_configuration(settings):
        asyncio.run(check_kafka(settings))
    try:
        created = asyncio.run(ensure_topics(settings, replication_factor=replication_factor, configs=configs))
    except KafkaConnectionError as exc:
        hint = "BRIGADE_KAFKA_BOOTSTRAP names the brokers; is the broker up and reachable from here?"
        fail(f"cannot reach Kafka at {settings.kafka_bootstrap} ({exc})", [hint], code=1)
    except TopicsNotCreated as exc:
        fail("the broker refused topics", [f"{name}: {reason}" for name, reason in exc.failures.items()], code=1)
    for name, parts in desired_topics(settings).items():
        state = f"created replication={created.replication_factor}" if name in created.names else "exists"
        typer.echo(f"{name:40s} partitions={parts:<4d} {state}")


def _key_values(pairs: list[str], *, option: str) -> dict[str, str]:
    """``KEY=VALUE`` options as a mapping; a malformed one is a usage error naming the option."""
    result = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"{pair!r} is not KEY=VALUE (e.g. retention.ms=604800000)", param_hint=option)
        result[key.strip()] = value.strip()
    return result


@app.command()
def bench(
    model: Annotated[str, typer.Option(help="Model to measure.")] = "builtin:gpt2-small-shape",
    quick: Annotated[bool, typer.Option(help="A short run (under a minute) instead of the full one.")] = False,
    requests: Annotated[int | None, typer.Option(min=1, help="Requests per run (overrides the preset).")] = None,
    new_tokens: Annotated[int | None, typer.Option(min=1, help="Tokens generated per request.")] = None,
    out: Annotated[Path, typer.Option(help="Directory for bench.json and the PNGs.")] = Path("bench-out"),
    figure: Annotated[
        list[str] | None,
        typer.Option(
            help="Figures (repeatable or comma list): batching, pipeline, structured, latency, ingress, continuous, "
            "scaleout, coldstart, hangup, multiturn, sharedprefix, chunked; default all."
        ),
    ] = None,
    consumers: Annotated[
        str | None, typer.Option(help="scaleout: consumer counts, a comma list (default 1,2,4).")
    ] = None,
    replica_model: Annotated[
        str | None, typer.Option(help="scaleout: model of the consumers (default builtin:tiny).")
    ] = None,
    latency_model: Annotated[
        str | None, typer.Option(help="latency: model of the worker (default builtin:tiny, so the hop dominates).")
    ] = None,
    latency_rate: Annotated[
        float | None,
        typer.Option(
            min=0.1, help="latency: offered requests/s (default half the measured capacity), to compare builds."
        ),
    ] = None,
) -> None:
    """Measure batching gain, pipeline efficiency, structured output's cost, queue hop latency, ingress throughput,
    continuous batching, scale-out, cold start, what abandoned streams still cost, and what the KV cache saves a
    multi-turn chat (a session's, a prompt_cache_key's) and new conversations that share a system prompt, and how
    long a long prompt's prefill holds up the streams it joins, at once and in chunks.

    Starts its own broker and redis-server (the 'dev' extra). Prints ratios with the absolute figures.
    The latency figure runs on builtin:tiny so that the hop, not the model, dominates.
    """
    from dataclasses import replace

    from brigade.bench.runner import BenchConfig, parse_figures, run_bench

    settings = load_settings()
    configure_logging(level="WARNING", fmt="text", component="bench")
    try:
        figures = parse_figures(figure)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--figure") from None
    config = BenchConfig.quick(model) if quick else BenchConfig(model=model)
    config = replace(config, figures=figures)
    if requests is not None:
        config = replace(config, requests=requests, scaleout=replace(config.scaleout, requests=requests))
    if new_tokens is not None:
        config = replace(config, new_tokens=new_tokens, scaleout=replace(config.scaleout, new_tokens=new_tokens))
    if consumers is not None:
        try:
            counts = tuple(sorted({int(c) for c in consumers.split(",") if c.strip()}))
        except ValueError:
            raise typer.BadParameter(f"{consumers!r} is not a comma list of counts", param_hint="--consumers") from None
        config = replace(config, scaleout=replace(config.scaleout, consumers=counts))
    if replica_model is not None:
        config = replace(config, scaleout=replace(config.scaleout, model=replica_model))
    if latency_model is not None:
        config = replace(config, latency=replace(config.latency, model=latency_model))
    if latency_rate is not None:
        config = replace(config, latency=replace(config.latency, rate=latency_rate))
    run_bench(config, out_dir=out, settings=settings)


@app.command()
def reliability(
    scenario: Annotated[
        list[str] | None,
        typer.Option(
            help="Scenarios (repeatable or comma list): kill9, broker-sigstop, redis-restart, sigterm, "
            "conversation; default all."
        ),
    ] = None,
    requests: Annotated[int, typer.Option(min=1, help="kill9: requests sent while workers are killed.")] = 500,
    kill_every: Annotated[float, typer.Option(min=0.5, help="kill9: seconds between two SIGKILLs.")] = 3.0,
    freeze: Annotated[float, typer.Option(min=0.0, help="broker-sigstop: seconds the broker stays stopped.")] = 10.0,
    redis_down: Annotated[float, typer.Option(min=0.0, help="redis-restart: seconds Redis stays down.")] = 5.0,
    outage_requests: Annotated[
        int, typer.Option(min=1, help="broker-sigstop, redis-restart: requests sent around the outage.")
    ] = 200,
    out: Annotated[Path, typer.Option(help="Where the figures go, as JSON.")] = Path("reliability.json"),
    log_dir: Annotated[Path | None, typer.Option(help="Process logs (default: a temp dir).")] = None,
) -> None:
    """Kill, freeze and restart parts of a real fleet under load; count lost, doubled and regenerated answers.

    Starts its own broker and append-only redis-server (the 'dev' extra), and every ingress and worker as a
    process. Prints per scenario: sent, acknowledged, completed, lost, duplicated finals, attempts > 1, wall time.
    """
    from rich.console import Console

    from brigade.reliability.runner import (
        SCENARIOS,
        ReliabilityConfig,
        fault_lines,
        report_table,
        reports_json,
        run_reliability,
    )

    chosen = tuple(part.strip() for item in (scenario or SCENARIOS) for part in item.split(",") if part.strip())
    unknown = sorted(set(chosen) - set(SCENARIOS))
    if unknown:
        raise typer.BadParameter(f"unknown {unknown}; pick from {', '.join(SCENARIOS)}", param_hint="--scenario")
    settings = load_settings()
    configure_logging(level="WARNING", fmt="text", component="reliability")
    config = ReliabilityConfig(
        scenarios=chosen,
        requests=requests,
        kill_every_s=kill_every,
        freeze_s=freeze,
        redis_down_s=redis_down,
        requests_per_outage=outage_requests,
    )
    console = Console()
    if not console.is_terminal:  # piped to a file: keep the table's columns whole
        console = Console(width=120)
    reports = asyncio.run(run_reliability(config, base=settings, log_dir=log_dir, console=console))
    console.print(report_table(reports))
    for line in fault_lines(reports):
        console.print(line, highlight=False, soft_wrap=True)
    out.write_text(reports_json(reports) + "\n")
    console.print(f"figures written to {out}")
    raise typer.Exit(0 if all(r.tally.ok for r in reports) else 1)


@app.command()
def top(
    ingress: Annotated[
        list[str] | None, typer.Option(help="Ingress base or /metrics URL (class lag); repeatable.")
    ] = None,
    worker: Annotated[list[str] | None, typer.Option(help="Worker base or /metrics URL; repeatable.")] = None,
    interval: Annotated[float, typer.Option(min=0.05, help="Seconds between scrapes (the rate window).")] = 2.0,
    once: Annotated[bool, typer.Option(help="Print one frame (two scrapes an interval apart) and exit.")] = False,
) -> None:
    """A live view of the classes from /metrics: workers, lag, mean batch, tokens/s, requests done and failed per
    second, running and waiting, TTFT p50, and the share of prompt tokens taken from the KV cache."""
    from brigade.top import run_top

    urls = [*(ingress or []), *(worker or [])]
    if not urls:
        raise typer.BadParameter("give at least one --ingress or --worker URL", param_hint="--ingress/--worker")
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C ends the live view
        asyncio.run(run_top(urls, interval_s=interval, once=once))


@app.command()
def batch(
    input_file: Annotated[
        Path, typer.Argument(help="OpenAI Batch API input: JSONL of {custom_id, method, url, body}.")
    ],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Where the answers go (JSONL, appended; a rerun resumes).")
    ],
    ingress_url: Annotated[str, typer.Option("--ingress", help="The ingress's base URL.")] = "http://localhost:8080",
    in_flight: Annotated[int, typer.Option(min=1, max=4096, help="Requests awaiting their answer at once.")] = 64,
    priority: Annotated[
        int | None,
        typer.Option(
            help="Priority for lines whose body sets none (higher runs later: interactive traffic goes first)."
        ),
    ] = None,
) -> None:
    """Run an OpenAI Batch API file through the fleet (as vLLM's run_batch does on one engine); answers are OpenAI's
    batch output lines, in the order they come (match on custom_id). Exit 1 if a request got no answer at all."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from brigade.batch import BatchInputError, read_batch, run_batch, unanswered

    try:
        with input_file.open(encoding="utf-8") as lines:
            requests = read_batch(lines)
    except (OSError, BatchInputError) as exc:
        fail(f"cannot run {input_file}", [str(exc)], code=2)
    todo = unanswered(requests, output)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns) as progress:
        task = progress.add_task(f"batch → {ingress_url}", total=len(requests), completed=len(requests) - len(todo))
        tally = asyncio.run(
            run_batch(
                ingress_url,
                todo,
                output,
                in_flight=in_flight,
                priority=priority,
                on_answer=lambda: progress.advance(task),
            )
        )
        progress.update(task, completed=len(requests))
    typer.echo(
        f"{tally.ok} answered, {tally.refused} refused by the endpoint, {tally.failed} without an answer, "
        f"{len(requests) - len(todo)} already in {output}"
    )
    raise typer.Exit(1 if tally.failed else 0)


@app.command()
def gpus() -> None:
    """List NVIDIA GPUs and MIG slices (UUID, profile, memory) and the device BRIGADE_DEVICE binds to."""
    import os

    from consumer.gpu.binding import DeviceSelectionError, bind_device
    from consumer.gpu.report import gpus_table, inspect_gpus

    settings = load_settings()
    inventory = inspect_gpus()
    try:
        binding = bind_device(settings.device, inventory=inventory, env=os.environ)
    except DeviceSelectionError as exc:
        typer.echo(gpus_table(inventory), nl=False)
        typer.secho(f"\n{exc}", fg="red", err=True)
        raise typer.Exit(2) from None
    typer.echo(gpus_table(inventory, binding=binding), nl=False)


dashboard_app = typer.Typer(help="The Grafana dashboard of deploy/grafana.", no_args_is_help=True)
app.add_typer(dashboard_app, name="dashboard")


@dashboard_app.command("snapshot")
def dashboard_snapshot(
    out: Annotated[Path, typer.Option(help="Where the PNG goes.")] = Path("docs/dashboard.png"),
    dashboard: Annotated[
        Path | None, typer.Option(help="Dashboard JSON (default: the one compose provisions).")
    ] = None,
    duration: Annotated[float, typer.Option(min=10, help="Seconds of load.")] = 90.0,
    clients: Annotated[int, typer.Option(min=1, help="Closed-loop clients over all classes (cheapest most).")] = 12,
    scrape_interval: Annotated[float, typer.Option(min=1, max=15, help="Prometheus scrape interval, s.")] = 1.0,
    ingress: Annotated[str | None, typer.Option(help="A running ingress's base URL (default: start one).")] = None,
    worker: Annotated[list[str] | None, typer.Option(help="With --ingress: a worker's base URL; repeatable.")] = None,
    workers_per_class: Annotated[int, typer.Option(min=1, help="Embedded stack: workers per class.")] = 1,
    model: Annotated[str | None, typer.Option(help="Embedded stack: model (default BRIGADE_MODEL).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the load's lengths and prompts.")] = 0,
    log_dir: Annotated[Path | None, typer.Option(help="Child and Prometheus logs (default: a temp dir).")] = None,
) -> None:
    """Drive real load, let a real Prometheus scrape it, and draw every panel from its own PromQL into a PNG.

    Needs the `prometheus` binary on PATH (dev-time only: `apt-get install prometheus`) and, without
    --ingress, the 'dev' extra for the embedded broker and redis-server.
    """
    from brigade.dashboard.prometheus import PrometheusMissing
    from brigade.dashboard.snapshot import DEFAULT_DASHBOARD, SnapshotConfig, run_snapshot
    from brigade.devtools.process import ServiceFailed

    if worker and ingress is None:
        raise typer.BadParameter("--worker needs --ingress (or neither, to start the stack)", param_hint="--worker")
    settings = load_settings(model=model)
    configure_logging(level="WARNING", fmt="text", component="dashboard")
    config = SnapshotConfig(
        dashboard=dashboard or DEFAULT_DASHBOARD,
        out=out,
        duration_s=duration,
        clients=clients,
        scrape_interval_s=scrape_interval,
        seed=seed,
        workers_per_class=workers_per_class,
        ingress_url=ingress,
        worker_urls=tuple(worker or ()),
        log_dir=log_dir,
    )
    try:
        run_snapshot(settings, config)
    except (PrometheusMissing, ServiceFailed) as exc:
        typer.secho(f"brigade dashboard snapshot: {exc}", fg="red", err=True)
        raise typer.Exit(1) from None


def _add_deploy_commands() -> None:
    from brigade.deploycli import deploy_app, scale_app

    app.add_typer(deploy_app, name="deploy")
    app.add_typer(scale_app, name="scale")


_add_deploy_commands()


def main() -> None:
    try:
        app(prog_name="brigade")
    except BrokenPipeError:
        # A closed pipe (brigade schema | head) is not an error worth a traceback. SIGPIPE itself stays ignored
        # (Python's default): with it at SIG_DFL, any peer hanging up while a worker or the ingress writes to its
        # socket (a probe that timed out) killed the whole process.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit's flush has nowhere to fail
        sys.exit(1)


if __name__ == "__main__":
    main()
