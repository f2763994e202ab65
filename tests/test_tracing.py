"""W3C traceparent parsing and generation (pure), and the optional field on final events."""

from __future__ import annotations

import re

import pytest

from schemas.events import DoneEvent, ErrorCode, ErrorEvent, parse_event
from schemas.tracing import TraceContext, from_headers, parse_traceparent

VALID = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
TRACE_ID, SPAN_ID = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
HEADER = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")


def test_a_valid_header_names_its_trace_span_and_flags() -> None:
    ctx = parse_traceparent(VALID)
    assert ctx == TraceContext(trace_id=TRACE_ID, span_id=SPAN_ID, flags=1)
    assert ctx.sampled and ctx.traceparent == VALID
    assert parse_traceparent(VALID.encode()) == ctx  # as a Kafka header value
    assert parse_traceparent(f" {VALID}\t") == ctx  # optional whitespace around an HTTP field value


@pytest.mark.parametrize(
    ("header", "why"),
    [
        (VALID.upper(), "uppercase hex"),
        ("00-00000000000000000000000000000000-00f067aa0ba902b7-01", "all-zero trace id"),
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", "all-zero parent id"),
        ("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "version ff"),
        (VALID + "-extra", "version 00 with more fields"),
        (VALID[:-1], "too short"),
        ("00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01", "fields in the wrong places"),
        ("00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01", "wrong separators"),
        ("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x", "future version, no dash after the flags"),
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g", "flags not hex"),
        (b"\xff" * 55, "not ASCII"),
        ("", "empty"),
        (None, "absent"),
    ],
)
def test_invalid_headers_are_refused(header: str | bytes | None, why: str) -> None:
    assert parse_traceparent(header) is None, why


def test_a_future_version_is_read_for_its_known_fields_and_sent_on_as_version_00() -> None:
    ctx = parse_traceparent(f"cc-{TRACE_ID}-{SPAN_ID}-01-what-comes-next")
    assert ctx is not None and ctx.traceparent == VALID


def test_new_traces_and_child_spans() -> None:
    root = TraceContext.start()
    assert HEADER.fullmatch(root.traceparent) and not root.sampled and root.parent_id is None
    assert parse_traceparent(root.traceparent) == root
    child = parse_traceparent(VALID).child()  # type: ignore[union-attr]
    assert (child.trace_id, child.parent_id, child.flags) == (TRACE_ID, SPAN_ID, 1)
    assert child.span_id != SPAN_ID and HEADER.fullmatch(child.traceparent)
    assert len({TraceContext.start().trace_id for _ in range(100)}) == 100
    assert child.log_fields() == {"trace_id": TRACE_ID, "span_id": child.span_id, "parent_span_id": SPAN_ID}


def test_traces_started_together_are_each_valid_and_distinct() -> None:
    many = TraceContext.start_many(100)
    assert len(many) == 100 and TraceContext.start_many(0) == []
    assert all(parse_traceparent(t.traceparent) == t for t in many)
    assert len({t.trace_id for t in many}) == 100 and len({t.span_id for t in many}) == 100


def test_kafka_headers() -> None:
    assert from_headers([("other", b"x"), ("traceparent", VALID.encode())]) == parse_traceparent(VALID)
    assert from_headers([("traceparent", b"nonsense")]) is None
    assert from_headers(()) is None and from_headers(None) is None


def test_final_events_carry_an_optional_traceparent_and_old_events_still_parse() -> None:
    done = DoneEvent(
        request_id="r", seq=1, finish_reason="stop", prompt_tokens=1, completion_tokens=1, traceparent=VALID
    )
    error = ErrorEvent(request_id="r", seq=0, code=ErrorCode.INTERNAL, message="m", traceparent=VALID)
    for event in (done, error):
        assert event.to_fields()["traceparent"] == VALID
        assert parse_event(event.to_fields()) == event
    old = {"request_id": "r", "seq": "1", "type": "done", "text": "", "finish_reason": "stop"}
    old |= {"prompt_tokens": "1", "completion_tokens": "1", "attempt": "1"}
    assert parse_event(old).traceparent is None  # type: ignore[union-attr]
    assert "traceparent" not in done.model_copy(update={"traceparent": None}).to_fields()
