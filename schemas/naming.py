"""Topic, consumer-group and Redis key names: the one place both sides agree on them.

Every name carries a namespace (``BRIGADE_NAMESPACE``, default ``brigade``) so several
fleets — or several test runs — can share one Kafka cluster and one Redis without colliding.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_NAMESPACE = "brigade"


@dataclass(frozen=True, slots=True)
class Names:
    """Names derived from one namespace. ``Names()`` gives the documented production names."""

    namespace: str = DEFAULT_NAMESPACE

    def request_topic(self, cost_class: str) -> str:
        """``brigade.requests.<class>``: one topic per cost class, keyed by session_id."""
        return f"{self.namespace}.requests.{cost_class}"

    def consumer_group(self, cost_class: str) -> str:
        """``brigade-<class>``: the group KEDA watches for lag."""
        return f"{self.namespace}-{cost_class}"

    @property
    def dlq_topic(self) -> str:
        """``brigade.dlq``: messages that could not be parsed or validated, with the reason."""
        return f"{self.namespace}.dlq"

    def stream_key(self, session_id: str) -> str:
        """``brigade:stream:<session_id>``: every event of every request of a session, in order."""
        return f"{self.namespace}:stream:{session_id}"

    def session_key(self, session_id: str) -> str:
        """``brigade:session:<session_id>``: conversation state with a sliding TTL."""
        return f"{self.namespace}:session:{session_id}"

    def request_key(self, request_id: str) -> str:
        """``brigade:request:<request_id>``: attempt counter and final status, for de-duplication."""
        return f"{self.namespace}:request:{request_id}"
