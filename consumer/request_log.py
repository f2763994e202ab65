"""The fields every worker log line about one request carries, so one query finds all of a request's lines.

``trace_id`` joins them to the caller's trace (W3C, from the record's ``traceparent`` header; see
``schemas/tracing.py``); ``span_id`` is the worker's span for the request, the one its final event names, and
``parent_span_id`` the caller's (absent when the record came without a valid header and the worker started a
new trace). ``partition`` and ``offset`` say where to find the record again (kcat, the DLQ, a replay).
"""

from __future__ import annotations

from collections.abc import Iterable

from consumer.batcher import PendingItem
from schemas.tracing import TraceContext, from_headers


def worker_trace(headers: Iterable[tuple[str, bytes]] | None) -> TraceContext:
    """The worker's span for a record: a child of the publisher's context, or the root of a new trace."""
    parent = from_headers(headers)
    return parent.child() if parent is not None else TraceContext.start()


def request_fields(item: PendingItem, *, cost_class: str) -> dict[str, object]:
    """``extra=`` for a log line about ``item``: ids, class, where it came from, and its trace."""
    topic, partition = item.tp
    fields: dict[str, object] = {
        "request_id": item.request.request_id,
        "session_id": item.session_id,
        "class": cost_class,
        "topic": topic,
        "partition": partition,
        "offset": item.offset,
    }
    if item.trace is not None:
        fields |= item.trace.log_fields()
    return fields
