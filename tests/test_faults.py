"""Real processes, real signals: what a reader sees after workers, the broker or Redis fail under load.

Each test runs a scenario of ``brigade.reliability`` (the same code ``brigade reliability`` runs at
full size) with CI-sized load: ``brigade ingress`` and ``brigade worker`` as OS processes, the session's
Tansu broker, and a redis-server. Readers judge the streams with the project's ``AttemptFilter``; every
acknowledged request must end with exactly one ``done``, whose kept events are ``seq`` 0..n once each.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

import pytest

from brigade.devtools.process import Service, free_port
from brigade.devtools.servers import redis_service
from brigade.reliability.handover import conversation_handover, sigterm_mid_batch
from brigade.reliability.scenarios import Report, Stack, broker_freeze, redis_restart, worker_kills
from producer.topics import ensure_topics
from schemas.settings import Settings

pytestmark = [pytest.mark.faults, pytest.mark.timeout(300)]


def fault_settings(settings: Settings) -> Settings:
    """Six partitions for the small class (three workers share them); a dead member expires after 3 s."""
    return settings.model_copy(
        update={"class_partitions": (6, 2, 1), "kafka_session_timeout_ms": 3000, "drain_timeout_s": 10.0}
    )


@pytest.fixture
async def stack(settings: Settings, kafka_server: Service, redis_server: Service, tmp_path: Path) -> Stack:
    s = fault_settings(settings)
    await ensure_topics(s)
    return Stack(settings=s, kafka=kafka_server, redis=redis_server, log_dir=tmp_path)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[Service]:
    """A redis-server of this test's own, append-only on: the test restarts it."""
    service = redis_service(port=free_port(), log_dir=tmp_path / "redis", appendonly=True).start()
    yield service
    service.stop()


def assert_every_acknowledged_request_answered_once(report: Report) -> None:
    t = report.tally
    assert t.acknowledged > 0, report
    assert (t.lost, t.duplicated, t.garbled, t.failed) == (0, 0, 0, 0), report
    assert t.completed == t.acknowledged, report
    assert report.committed, f"the group's commits did not reach every acknowledged offset: {report}"


async def test_workers_killed_repeatedly_lose_and_double_nothing(stack: Stack) -> None:
    """SIGKILL one of three workers every 3 s (a replacement starts each time) while 80 requests flow."""
    report = await worker_kills(stack, requests=80, rate_per_s=5.0, every_s=3.0, workers=3, max_new_tokens=200)
    assert_every_acknowledged_request_answered_once(report)
    assert report.tally.acknowledged == report.tally.sent == 80, report
    assert report.fault["kills"] >= 3, report
    assert report.tally.retried >= 1, f"no kill cut a generation off, so no redelivery was tested: {report}"


async def test_a_frozen_broker_loses_no_acknowledged_request(stack: Stack) -> None:
    """SIGSTOP the broker for 8 s under load, then SIGCONT: over the ingress's 5 s publish deadline and over one
    5 s commit attempt of the worker, whose batch in flight finishes during the freeze."""
    report = await broker_freeze(stack, requests=60, rate_per_s=6.0, freeze_s=8.0, workers=2, max_new_tokens=200)
    assert_every_acknowledged_request_answered_once(report)
    assert report.fault["frozen_s"] >= 8.0 and report.fault["acked_before"] >= 20, report
    assert report.fault["busy_at_freeze"] and report.fault["commit_retries"] >= 1, (
        f"no commit met the frozen broker, so the retry path was not tested: {report}"
    )
    assert stack.kafka.running, "the broker is running again"


async def test_a_redis_restart_under_load_is_ridden_out_by_retries(stack: Stack, own_redis: Service) -> None:
    """Restart an append-only redis-server mid-load, down 2 s: workers retry instead of dying."""
    own = Stack(
        settings=stack.settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{own_redis.port}/0"}),
        kafka=stack.kafka,
        redis=own_redis,
        log_dir=stack.log_dir,
    )
    report = await redis_restart(own, requests=60, rate_per_s=6.0, down_s=2.0, workers=2, max_new_tokens=200)
    assert_every_acknowledged_request_answered_once(report)
    assert report.tally.acknowledged == report.tally.sent, "the ingress publishes without Redis"
    assert report.fault["redis_retries"] >= 1, f"no worker met the restart: the fault missed the load: {report}"
    assert report.fault["workers_died"] == 0, report


@pytest.mark.parametrize("drain_timeout_s", [30.0, 0.0], ids=["drained", "abandoned"])
async def test_sigterm_mid_batch_completes_or_redelivers_the_batch(stack: Stack, drain_timeout_s: float) -> None:
    """Within the drain timeout the running batch finishes (attempt 1); past it, it is regenerated (attempt 2)."""
    requests = 8
    report = await sigterm_mid_batch(stack, requests=requests, max_batch_size=4, drain_timeout_s=drain_timeout_s)
    assert_every_acknowledged_request_answered_once(report)
    fault = report.fault
    assert fault["exit_code"] == 0, report
    streaming = fault["streaming_at_sigterm"]
    assert 1 <= streaming < requests, report
    if drain_timeout_s:
        assert fault["their_answer_attempts"] == [1], "the drain finished the running batch"
        assert fault["answered_by_second"] == requests - streaming, "the queued rest was redelivered"
        assert report.tally.retried == 0, report
    else:
        assert fault["their_answer_attempts"] == [2], "the abandoned batch was regenerated"
        assert fault["answered_by_second"] == requests, report
        assert report.tally.retried == streaming, report


async def test_a_conversation_continues_with_its_history_after_its_worker_is_killed(stack: Stack) -> None:
    """Five chat turns; after each, the worker that answered it is SIGKILLed and replaced."""
    report = await conversation_handover(stack, turns=5, workers=2)
    assert_every_acknowledged_request_answered_once(report)
    fault = report.fault
    served = fault["served_by"]
    assert len(served) == 5 and "?" not in served and all(a != b for a, b in pairwise(served)), served
    assert fault["stored_turns"] == 5
    stored = fault["stored_messages"]
    assert [m["role"] for m in stored] == ["user", "assistant"] * 5
    assert [m["content"] for m in stored[::2]] == [f"Turn {n}: what goes out to table {n}?" for n in range(1, 6)]
    assert [m["content"] for m in stored[1::2]] == [r.strip() for r in fault["replies"]], "every reply kept"
    tokens = fault["prompt_tokens"]
    assert all(later > earlier + 6 for earlier, later in pairwise(tokens)), f"history lost: {tokens}"
