"""Run a process's main coroutine on the event loop the settings name (``BRIGADE_EVENT_LOOP``).

One place, so the ingress, the worker and the ingress figure (which measures the ingress in process) all
run on the same loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from schemas.settings import EventLoop

T = TypeVar("T")


def loop_factory(name: EventLoop) -> Callable[[], asyncio.AbstractEventLoop]:
    if name == "asyncio":
        return asyncio.new_event_loop
    try:
        import uvloop
    except ImportError:
        raise RuntimeError(
            "BRIGADE_EVENT_LOOP=uvloop but uvloop is not installed (it is a dependency on Linux and macOS); "
            "install it, or set BRIGADE_EVENT_LOOP=asyncio"
        ) from None
    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T], *, loop: EventLoop) -> T:
    """``asyncio.run`` on the named loop."""
    with asyncio.Runner(loop_factory=loop_factory(loop)) as runner:
        return runner.run(main)
