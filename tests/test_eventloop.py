"""The processes' event loop is the one BRIGADE_EVENT_LOOP names; ``auto`` picks per role."""

from __future__ import annotations

import asyncio
import sys

import pytest
import uvloop

from brigade import eventloop
from schemas.settings import Settings


async def _loop_type() -> type:
    return type(asyncio.get_running_loop())


def test_auto_gives_the_ingress_uvloop_and_the_worker_asyncio(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings(_env_file=None).event_loop == "auto"
    assert eventloop.run(_loop_type(), loop="auto", role="ingress") is uvloop.Loop
    assert not issubclass(eventloop.run(_loop_type(), loop="auto", role="worker"), uvloop.Loop)
    assert eventloop.describe("auto") == "ingress uvloop, worker asyncio"
    monkeypatch.setenv("BRIGADE_EVENT_LOOP", "uvloop")
    chosen = Settings(_env_file=None).event_loop
    assert eventloop.run(_loop_type(), loop=chosen, role="worker") is uvloop.Loop  # an explicit choice wins
    assert not issubclass(eventloop.run(_loop_type(), loop="asyncio", role="ingress"), uvloop.Loop)


def test_a_missing_uvloop_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # what an import of an absent package meets
    with pytest.raises(RuntimeError, match="BRIGADE_EVENT_LOOP=asyncio"):
        eventloop.loop_factory("uvloop")
