"""The fault tests' verdicts, without I/O: what counts as completed, lost, duplicated or garbled."""

from __future__ import annotations

from brigade.reliability.load import Submission
from brigade.reliability.outcome import judge, log_ends, tally
from schemas.events import DoneEvent, ErrorCode, ErrorEvent, FinishReason, TokenEvent

AnyEvent = TokenEvent | DoneEvent | ErrorEvent


def tok(seq: int, attempt: int = 1, rid: str = "r") -> TokenEvent:
    return TokenEvent(request_id=rid, seq=seq, attempt=attempt, text=f"t{seq}")


def done(seq: int, attempt: int = 1, rid: str = "r") -> DoneEvent:
    return DoneEvent(
        request_id=rid,
        seq=seq,
        attempt=attempt,
        finish_reason=FinishReason.LENGTH,
        prompt_tokens=1,
        completion_tokens=seq,
    )


def test_a_cut_off_attempt_then_a_full_one_is_clean() -> None:
    v = judge("r", [tok(0), tok(1), tok(0, attempt=2), tok(1, attempt=2), done(2, attempt=2)])
    assert (v.answer, v.clean, v.finals, v.attempts, v.repeats) == ("done", True, 1, 2, 0)


def test_a_repeated_write_is_dropped_and_counted() -> None:
    v = judge("r", [tok(0), tok(1), tok(0), tok(1), done(2)])
    assert (v.answer, v.clean, v.repeats) == ("done", True, 2)


def test_a_gap_is_garbled_and_other_requests_are_ignored() -> None:
    v = judge("r", [tok(0), tok(0, rid="other"), tok(2), done(3)])
    assert (v.answer, v.clean) == ("done", False)


def test_two_finals_count_as_duplicated_even_though_readers_keep_one() -> None:
    v = judge("r", [tok(0), done(1), done(1)])
    assert (v.answer, v.finals) == ("done", 2)


def test_the_tally_separates_lost_failed_duplicated_and_unacknowledged() -> None:
    subs = [
        Submission("a", "s", 202, 0, 0),
        Submission("b", "s", 202, 0, 1),
        Submission("c", "s", 202, 1, 0),
        Submission("d", "s", 202, 1, 1),
        Submission("e", "s", 503),  # not acknowledged, yet the broker took it late
        Submission("f", "s", 503),
    ]
    error = ErrorEvent(request_id="c", seq=0, code=ErrorCode.INTERNAL, message="boom")
    verdicts = {
        "a": judge("a", [tok(0, rid="a"), done(1, rid="a")]),
        "c": judge("c", [error]),
        "d": judge("d", [done(0, rid="d"), done(0, rid="d")]),
        "e": judge("e", [done(0, rid="e")]),
    }
    t = tally(subs, verdicts, wall_s=1.234)
    assert (t.sent, t.acknowledged, t.completed, t.lost, t.failed, t.duplicated) == (6, 4, 1, 1, 1, 1)
    assert (t.unacknowledged_answered, t.wall_s, t.ok) == (1, 1.2, False)
    assert log_ends(subs) == {0: 2, 1: 2}
