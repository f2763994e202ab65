"""Topic, consumer-group and Redis key names: the one place both sides agree on them.

Every name carries a namespace (``BRIGADE_NAMESPACE``, default ``brigade``) so several
fleets — or several test runs — can share one Kafka cluster and one Redis without colliding.

On Redis Cluster (``BRIGADE_REDIS_CLUSTER=true``) a session's keys carry its id as a hash tag —
``brigade:stream:{<session_id>}``, ``brigade:session:{<session_id>}``,
``brigade:request:{<session_id>}:<request_id>`` — so they share a slot: the final event, the request's
status and the session document change in one Lua script, which Redis Cluster allows only within one
slot. Sessions still spread over the nodes. Readers take the stream key from the 202 answer's
``stream`` field rather than building it.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_NAMESPACE = "brigade"
# The request key's field that cancels the request: any publisher may ``HSET <request key> cancel 1``.
CANCEL_FIELD = "cancel"


@dataclass(frozen=True, slots=True)
class Names:
    """Names derived from one namespace. ``Names()`` gives the documented production names."""

    namespace: str = DEFAULT_NAMESPACE
    cluster: bool = False  # hash-tagged keys for Redis Cluster

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

    def _session_part(self, session_id: str) -> str:
        # Identifiers cannot contain braces (schemas/requests.py), so the tag is exactly the session id.
        return f"{{{session_id}}}" if self.cluster else session_id

    def stream_key(self, session_id: str) -> str:
        """``brigade:stream:<session_id>``: every event of every request of a session, in order."""
        return f"{self.namespace}:stream:{self._session_part(session_id)}"

    def session_key(self, session_id: str) -> str:
        """``brigade:session:<session_id>``: conversation state with a sliding TTL."""
        return f"{self.namespace}:session:{self._session_part(session_id)}"

    def request_key(self, request_id: str, session_id: str) -> str:
        """``brigade:request:<request_id>``: attempt counter and final status, for de-duplication, and the
        ``cancel`` mark (``CANCEL_FIELD``) a caller sets to stop the request, queued or running.

        The session id is part of the name only on Redis Cluster, where the key must share its session's slot;
        a request id is then de-duplicated within its session, which is where a redelivery lands anyway.
        """
        if self.cluster:
            return f"{self.namespace}:request:{self._session_part(session_id)}:{request_id}"
        return f"{self.namespace}:request:{request_id}"
