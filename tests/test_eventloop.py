"""The processes' event loop is the one BRIGADE_EVENT_LOOP names."""

from __future__ import annotations

import asyncio
import sys

import pytest
import uvloop

from brigade import eventloop
from schemas.settings import Settings


async def _loop_type() -> type:
    return type(asyncio.get_running_loop())


def test_the_setting_picks_the_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings(_env_file=None).event_loop == "uvloop"
    monkeypatch.setenv("BRIGADE_EVENT_LOOP", "asyncio")
    assert Settings(_env_file=None).event_loop == "asyncio"
    assert eventloop.run(_loop_type(), loop="uvloop") is uvloop.Loop
    assert not issubclass(eventloop.run(_loop_type(), loop="asyncio"), uvloop.Loop)


def test_a_missing_uvloop_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # what an import of an absent package meets
    with pytest.raises(RuntimeError, match="BRIGADE_EVENT_LOOP=asyncio"):
        eventloop.loop_factory("uvloop")
