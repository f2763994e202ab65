"""Run a process's main coroutine on the event loop the settings name (``BRIGADE_EVENT_LOOP``).

``auto`` picks per role, on measurements (BENCHMARKS.md, figures 2–4): uvloop for the ingress, whose work
is all sockets (16–29 % more accepted requests/s than asyncio's loop), and asyncio's loop for the worker,
the loop its figures were measured on. uvloop is not settled there: the worker alone made the same tokens/s
on it, but the in-process HTTP → Kafka → worker → Redis pipeline (ingress and worker in one process, the
event loop sharing the GIL with the model's thread) made 9 % fewer. One place, so the processes and the
benchmarks that stand for them run on the same loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, Literal, TypeVar

from schemas.settings import EventLoop

T = TypeVar("T")

Role = Literal["ingress", "worker"]
Loop = Literal["uvloop", "asyncio"]
_AUTO: dict[Role, Loop] = {"ingress": "uvloop", "worker": "asyncio"}


def resolve(setting: EventLoop, role: Role) -> Loop:
    """The loop a process of ``role`` runs on under ``setting``."""
    return _AUTO[role] if setting == "auto" else setting


def describe(setting: EventLoop) -> str:
    """Each role's loop under ``setting``, e.g. ``ingress uvloop, worker asyncio``."""
    return f"ingress {resolve(setting, 'ingress')}, worker {resolve(setting, 'worker')}"


def loop_factory(name: Loop) -> Callable[[], asyncio.AbstractEventLoop]:
    if name == "asyncio":
        return asyncio.new_event_loop
    try:
        import uvloop
    except ImportError:
        raise RuntimeError(
            "BRIGADE_EVENT_LOOP asks for uvloop but it is not installed (it is a dependency on Linux and macOS); "
            "install it, or set BRIGADE_EVENT_LOOP=asyncio"
        ) from None
    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T], *, loop: EventLoop, role: Role) -> T:
    """``asyncio.run`` on the loop ``loop`` names for ``role``."""
    with asyncio.Runner(loop_factory=loop_factory(resolve(loop, role))) as runner:
        return runner.run(main)
