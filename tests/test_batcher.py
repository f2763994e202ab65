"""The scheduler's rules, with request factories and a fake clock; no Kafka, Redis or model."""

from __future__ import annotations

import itertools

import pytest

from consumer.batcher import Batcher, PendingItem, QueueFull
from schemas.requests import InferenceRequest

_ids = itertools.count()


def item(session: str, *, at: float = 0.0, partition: int = 0, priority: int = 0) -> PendingItem:
    n = next(_ids)
    request = InferenceRequest(request_id=f"r{n}", session_id=session, prompt="hi", priority=priority)
    return PendingItem(request=request, tp=("t", partition), offset=n, enqueued_at=at)


def batcher(*, size: int = 4, wait_s: float = 0.01, capacity: int = 16) -> Batcher:
    return Batcher(max_batch_size=size, max_batch_wait_s=wait_s, capacity=capacity)


def sessions(items: tuple[PendingItem, ...]) -> list[str]:
    return [i.session_id for i in items]


def test_empty_queue_plans_nothing_and_sets_no_wake() -> None:
    plan = batcher().plan(0.0)
    assert plan.batch is None and plan.wake_at is None and plan.waiting == 0


def test_partial_batch_waits_until_the_oldest_is_due() -> None:
    b = batcher(size=4, wait_s=0.01)
    b.add(item("a", at=1.0))
    b.add(item("b", at=1.004))
    plan = b.plan(1.005)
    assert plan.batch is None and plan.wake_at == pytest.approx(1.01) and plan.waiting == 2
    plan = b.plan(1.01)
    assert plan.batch is not None and plan.batch.reason == "waited"
    assert sessions(plan.batch.items) == ["a", "b"] and len(b) == 0


def test_full_batch_goes_at_once_and_leaves_the_rest_queued_in_order() -> None:
    b = batcher(size=2, wait_s=10)
    for s in "abc":
        b.add(item(s, at=0.0))
    plan = b.plan(0.0)
    assert plan.batch is not None and plan.batch.reason == "full"
    assert sessions(plan.batch.items) == ["a", "b"] and plan.waiting == 1
    assert plan.batch.planned_at == 0.0 and plan.batch.size == 2


def test_one_request_per_session_per_batch_later_turns_keep_their_order() -> None:
    b = batcher(size=8, wait_s=0)
    first, second, other, third = item("s"), item("s"), item("o"), item("s")
    for i in (first, second, other, third):
        b.add(i)
    plan = b.plan(0.0)
    assert plan.batch is not None and plan.batch.items == (first, other)
    plan = b.plan(0.0)
    assert plan.batch is not None and plan.batch.items == (second,)
    plan = b.plan(0.0)
    assert plan.batch is not None and plan.batch.items == (third,)


def test_running_sessions_are_not_scheduled_until_they_finish() -> None:
    b = batcher(size=8, wait_s=0)
    busy, free = item("busy"), item("free")
    b.add(busy)
    b.add(free)
    plan = b.plan(0.0, running_sessions={"busy"})
    assert plan.batch is not None and plan.batch.items == (free,)
    assert b.plan(0.0, running_sessions={"busy"}).batch is None  # nothing due: no wake either
    assert b.plan(0.0, running_sessions={"busy"}).wake_at is None
    plan = b.plan(0.0, running_sessions=set())
    assert plan.batch is not None and plan.batch.items == (busy,)


def test_a_blocked_session_does_not_hold_up_the_wait_of_others() -> None:
    b = batcher(size=8, wait_s=0.5)
    b.add(item("busy", at=0.0))
    b.add(item("free", at=0.3))
    plan = b.plan(0.4, running_sessions={"busy"})
    assert plan.batch is None and plan.wake_at == pytest.approx(0.8)  # the eligible item's wait counts


def test_full_counts_against_capacity_and_add_refuses_beyond_it() -> None:
    b = batcher(size=8, capacity=2)
    b.add(item("a"))
    assert not b.full and b.free == 1
    b.add(item("b"))
    assert b.full and b.free == 0
    with pytest.raises(QueueFull):
        b.add(item("c"))


def test_holds_full_batch_counts_distinct_sessions_not_items() -> None:
    b = batcher(size=3)
    for s in ("a", "a", "b"):
        b.add(item(s))
    assert not b.holds_full_batch  # three items, but a batch could take only two of them
    b.add(item("c"))
    assert b.holds_full_batch
    plan = b.plan(0.0)
    assert plan.batch is not None and sessions(plan.batch.items) == ["a", "b", "c"]
    assert not b.holds_full_batch  # what is left ("a"'s second turn) is less than a batch: fetch again


def test_revoked_partitions_lose_their_queued_items() -> None:
    b = batcher()
    keep, gone = item("a", partition=0), item("b", partition=1)
    b.add(keep)
    b.add(gone)
    assert b.drop_partitions([("t", 1)]) == [gone]
    assert len(b) == 1 and b.drain() == [keep] and len(b) == 0


@pytest.mark.parametrize("kwargs", [{"size": 0}, {"capacity": 0}, {"wait_s": -1.0}])
def test_nonsense_bounds_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        batcher(**kwargs)  # type: ignore[arg-type]


def test_take_fills_free_slots_at_once_without_waiting_for_the_window() -> None:
    b = batcher(size=8, wait_s=10)
    for s in "abcd":
        b.add(item(s, at=5.0))
    joined = b.take(5.0, slots=3)
    assert joined is not None and joined.reason == "joined" and joined.planned_at == 5.0
    assert sessions(joined.items) == ["a", "b", "c"] and len(b) == 1


def test_take_keeps_the_session_rules_and_gives_nothing_without_slots() -> None:
    b = batcher(size=8, wait_s=10)
    for s in ("run", "x", "x", "y"):
        b.add(item(s))
    assert b.take(0.0, slots=0) is None and len(b) == 4
    joined = b.take(0.0, slots=8, running_sessions={"run"})
    assert joined is not None and sessions(joined.items) == ["x", "y"]
    assert b.take(0.0, slots=8, running_sessions={"run", "x"}) is None  # x's second turn waits for the first
    assert len(b) == 2


def test_take_never_exceeds_the_batch_size() -> None:
    b = batcher(size=2, wait_s=0)
    for s in "abc":
        b.add(item(s))
    joined = b.take(0.0, slots=10)
    assert joined is not None and joined.size == 2


def test_min_join_waits_for_enough_free_slots_unless_fewer_are_waiting() -> None:
    b = batcher(size=8, wait_s=0)
    for s in "abcd":
        b.add(item(s))
    assert b.take(0.0, slots=1, min_join=2) is None and len(b) == 4  # four could join: wait for two slots
    joined = b.take(0.0, slots=3, min_join=2)
    assert joined is not None and sessions(joined.items) == ["a", "b", "c"]
    last = b.take(0.0, slots=1, min_join=2)  # only one is eligible: it joins as soon as it fits
    assert last is not None and sessions(last.items) == ["d"]


def test_min_join_above_the_batch_size_still_lets_requests_join() -> None:
    b = batcher(size=4, wait_s=0)
    for s in "abcdef":
        b.add(item(s))
    joined = b.take(0.0, slots=4, min_join=8)
    assert joined is not None and joined.size == 4


def test_lower_priority_goes_first_ties_keep_queue_order() -> None:
    b = batcher(size=2, wait_s=10)
    for s, priority in (("a", 0), ("b", 5), ("c", -1), ("d", 0), ("e", -1)):
        b.add(item(s, priority=priority))
    plan = b.plan(0.0)
    assert plan.batch is not None and sessions(plan.batch.items) == ["c", "e"]
    plan = b.plan(0.0)
    assert plan.batch is not None and sessions(plan.batch.items) == ["a", "d"]
    joined = b.take(0.0, slots=4)
    assert joined is not None and sessions(joined.items) == ["b"] and len(b) == 0


def test_priority_never_lets_a_later_turn_overtake_its_session_or_a_running_one() -> None:
    b = batcher(size=4, wait_s=0)
    first, urgent_second, other, running = (
        item("s", priority=3),
        item("s", priority=-9),
        item("o"),
        item("r", priority=-9),
    )
    for i in (first, urgent_second, other, running):
        b.add(i)
    plan = b.plan(0.0, running_sessions={"r"})
    assert plan.batch is not None and plan.batch.items == (other, first)
    plan = b.plan(0.0)
    assert plan.batch is not None and plan.batch.items == (urgent_second, running)


def test_take_fills_slots_with_the_best_priorities_and_requeue_keeps_counting_them() -> None:
    b = batcher(size=8, wait_s=10)
    for s, priority in (("a", 0), ("b", 2), ("c", 1), ("d", -3)):
        b.add(item(s, priority=priority))
    joined = b.take(0.0, slots=2)
    assert joined is not None and sessions(joined.items) == ["d", "a"]
    b.requeue(joined.items)
    assert b.drop_partitions([("t", 1)]) == []  # nothing of that partition: the queue, and its priorities, stay
    joined = b.take(0.0, slots=3)
    assert joined is not None and sessions(joined.items) == ["d", "a", "c"]
