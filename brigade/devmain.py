"""The foreground loop of ``brigade dev``: start the stack, tell the user how to use it, wait for a signal."""

from __future__ import annotations

import asyncio
import signal
import threading
from pathlib import Path
from types import FrameType

from rich.console import Console

from brigade.devstack import DevStack, plan_stack, running
from brigade.devtools.process import ServiceFailed
from schemas.settings import Settings

console = Console(stderr=True)


def _models(s: Settings) -> str:
    """The banner's model line: one model, or each class's when the classes serve different models."""
    if len(s.served_models) == 1:
        return f"model {s.served_models[0]}"
    return "models " + ", ".join(f"{c} {s.model_for(c)}" for c in s.classes)


def _banner(stack: DevStack) -> None:
    s = stack.settings
    names = s.names
    console.print(f"[bold green]brigade dev is up[/] (logs in {stack.log_dir})")
    console.print(f"  ingress   {stack.ingress_url}   (OpenAI base URL: {stack.ingress_url}/v1)")
    console.print(f"  kafka     {s.kafka_bootstrap}   topics: {', '.join(names.request_topic(c) for c in s.classes)}")
    console.print(f"  redis     {s.redis_url}" + ("   (Redis Cluster, 3 nodes)" if s.redis_cluster else ""))
    console.print(f"  workers   {stack.workers_per_class} per class, {_models(s)}")
    console.print("[bold]Try it:[/]")
    console.print(
        f"  curl -s {stack.ingress_url}/v1/requests -H 'content-type: application/json' \\\n"
        '       -d \'{"session_id": "demo", "prompt": "Once upon a time", "max_new_tokens": 32}\''
    )
    console.print(f"  curl -N {stack.ingress_url}/v1/sessions/demo/events")
    cluster = "-c " if stack.settings.redis_cluster else ""  # follow MOVED to the node that owns the key
    console.print(f"  redis-cli {cluster}-p {stack.redis_port} XRANGE {names.stream_key('demo')} - +")
    console.print("[dim]Ctrl-C stops everything.[/]")


def run_dev(
    settings: Settings,
    *,
    port: int,
    kafka_port: int,
    redis_port: int,
    workers_per_class: int,
    demo: bool,
    log_dir: Path | None,
) -> int:
    """Run until SIGINT/SIGTERM. Returns the process exit code."""
    stop = threading.Event()

    def _on_signal(signum: int, _frame: FrameType | None) -> None:
        if stop.is_set():
            raise SystemExit(130)  # second signal: leave now; children still get SIGTERM in `running`
        stop.set()

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    try:
        stack = plan_stack(
            settings,
            port=port,
            kafka_port=kafka_port,
            redis_port=redis_port,
            workers_per_class=workers_per_class,
            log_dir=log_dir,
        )
        with console.status("starting broker, redis, ingress and workers (models load and warm up)…"):
            ctx = running(stack)
            ready = ctx.__enter__()
        try:
            _banner(ready)
            code = 0
            if demo and not stop.is_set():
                from brigade.demo import run_demo

                ok = asyncio.run(run_demo(ready.ingress_url, classes=settings.classes, max_new_tokens=48))
                code = 0 if ok else 1
                console.print("[dim]The stack keeps running; Ctrl-C stops it.[/]")
            stop.wait()
            console.print("[shutdown] stopping ingress, draining workers, stopping broker and redis", markup=False)
            return code
        finally:
            ctx.__exit__(None, None, None)
    except ServiceFailed as exc:
        console.print(f"[red]brigade dev: {exc}[/]")
        return 1
