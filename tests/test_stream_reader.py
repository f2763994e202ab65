"""Dropping partial attempts and the pure admission arithmetic, without I/O."""

from __future__ import annotations

import pytest

from producer.admission import decide, drain_rate, partition_lag
from producer.stream_reader import Answer, AttemptFilter, LiveText, Verdict
from schemas.events import DoneEvent, ErrorEvent, TokenEvent, TokenLogprob


def entries(text: str) -> list[TokenLogprob]:
    return [TokenLogprob(token=c, id=ord(c), logprob=-1.0) for c in text]


def tok(text: str, *, attempt: int = 1, seq: int = 0, rid: str = "r") -> TokenEvent:
    return TokenEvent(request_id=rid, seq=seq, attempt=attempt, text=text, logprobs=entries(text))


def done(*, attempt: int = 1, rid: str = "r", last: str = "") -> DoneEvent:
    return DoneEvent(
        request_id=rid,
        seq=9,
        attempt=attempt,
        finish_reason="length",
        prompt_tokens=1,
        completion_tokens=2,
        logprobs=entries(last) or None,
    )


def test_newer_attempt_restarts_and_stale_events_drop() -> None:
    f = AttemptFilter()
    assert f.judge(tok("a")) is Verdict.KEEP
    assert f.judge(tok("b", seq=1)) is Verdict.KEEP
    assert f.judge(tok("A", attempt=2)) is Verdict.RESTART
    assert f.judge(tok("late", attempt=1)) is Verdict.DROP
    assert f.judge(done(attempt=2)) is Verdict.KEEP
    assert f.judge(tok("after", attempt=2)) is Verdict.DROP


def test_answer_keeps_only_the_last_attempt() -> None:
    f, answer = AttemptFilter(), Answer()
    events: list[TokenEvent | DoneEvent] = [tok("partial "), tok("answer ", seq=1), tok("clean ", attempt=2)]
    events += [tok("one", attempt=2, seq=1), done(attempt=2, last=".")]
    for event in events:
        answer.add(event, f.judge(event))
    assert "".join(answer.text) == "clean one"
    assert "".join(e.token for e in answer.logprobs) == "clean one.", "the done event's entries count too"
    assert isinstance(answer.final, DoneEvent)


def test_a_repeated_write_of_the_same_events_is_dropped() -> None:
    """A token pipeline retried after Redis ran it but the reply was lost lands twice in the stream."""
    f, answer = AttemptFilter(), Answer()
    events: list[TokenEvent | DoneEvent] = [tok("a"), tok("b", seq=1), tok("a"), tok("b", seq=1), tok("c", seq=2)]
    verdicts = [f.judge(e) for e in events]
    assert verdicts == [Verdict.KEEP, Verdict.KEEP, Verdict.DROP, Verdict.DROP, Verdict.KEEP]
    for event, verdict in zip(events, verdicts, strict=True):
        answer.add(event, verdict)
    assert "".join(answer.text) == "abc"
    assert f.judge(tok("x", attempt=2)) is Verdict.RESTART, "a new attempt starts again at seq 0"


def test_requests_are_judged_independently() -> None:
    f = AttemptFilter()
    assert f.judge(tok("x", attempt=3, rid="a")) is Verdict.KEEP
    assert f.judge(tok("y", attempt=1, rid="b")) is Verdict.KEEP
    err = ErrorEvent(request_id="b", seq=1, code="internal", message="boom")
    assert f.judge(err) is Verdict.KEEP


def test_live_text_hides_the_seam_of_a_replayed_attempt() -> None:
    live = LiveText()
    sent = [live.feed("Hel", Verdict.KEEP), live.feed("lo", Verdict.KEEP)]
    sent += [live.feed("He", Verdict.RESTART), live.feed("llo", Verdict.KEEP), live.feed(" world", Verdict.KEEP)]
    assert "".join(sent) == "Hello world"
    assert live.feed("stale", Verdict.DROP) == ""
    live_entries = LiveText[list[TokenLogprob]]()
    fed = [live_entries.feed(entries("ab"), Verdict.KEEP), live_entries.feed(entries("a"), Verdict.RESTART)]
    fed += [live_entries.feed(entries("bc"), Verdict.KEEP), live_entries.feed(entries("x"), Verdict.DROP)]
    assert [[e.token for e in part] for part in fed] == [["a", "b"], [], ["c"], []]


@pytest.mark.parametrize(
    ("log_end", "committed", "expected"),
    [
        ({0: 10, 1: 5}, {0: 10, 1: 5}, {0: 0, 1: 0}),
        ({0: 10, 1: 5}, {0: 3}, {0: 7, 1: 5}),  # no commit yet on partition 1: all of it is lag
        ({0: 4}, {0: 9}, {0: 0}),  # a stale log end never gives negative lag
    ],
)
def test_partition_lag(log_end: dict[int, int], committed: dict[int, int], expected: dict[int, int]) -> None:
    assert partition_lag(log_end, committed) == expected


def test_decide_refuses_over_the_limit_with_a_bounded_retry_after() -> None:
    assert decide(lag=10, limit=10, drain_rate=None).admit
    refused = decide(lag=30, limit=10, drain_rate=4.0)
    assert not refused.admit and refused.retry_after_s == 5
    assert decide(lag=10_000, limit=10, drain_rate=1.0).retry_after_s == 60
    assert decide(lag=11, limit=10, drain_rate=100.0).retry_after_s == 1
    assert drain_rate(10, 30, 2.0) == 10.0 and drain_rate(30, 10, 2.0) is None
