"""The event loop every brigade process runs on: uvloop where it installs (Linux, macOS), else asyncio's.

uvloop's loop costs less CPU per wake-up and per socket read than asyncio's; on a worker that matters
because the loop shares the cores with the model's threads, and on the ingress because every request is
a few wake-ups. Tests keep pytest-asyncio's default loop, so both loops stay exercised.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` on the process's loop (Python 3.11's ``asyncio.run`` takes no loop factory)."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)
