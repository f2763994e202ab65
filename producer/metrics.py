"""Ingress metrics, one registry per app so several apps (tests) never collide."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class IngressMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "brigade_ingress_requests",
            "Requests seen by the ingress, by class and outcome (accepted, rejected, throttled, unavailable).",
            ["class", "outcome"],
            registry=self.registry,
        )
        self.publish_seconds = Histogram(
            "brigade_ingress_publish_seconds",
            "Time from a valid request to the broker's acknowledgement.",
            ["class"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=self.registry,
        )
        self.lag = Gauge(
            "brigade_class_lag",
            "Backlog of a class as the ingress sees it: Σ over partitions of log end − committed offset.",
            ["class"],
            registry=self.registry,
        )
        self.cancels = Counter(
            "brigade_ingress_cancels",
            "Cancel marks the ingress set, by reason: requested (the cancel route), hung_up (an OpenAI client left "
            "before its answer was complete), call_refused or call_failed (the other choices of an n>1 call, one of "
            "which was refused or failed).",
            ["reason"],
            registry=self.registry,
        )
        self._counters: dict[tuple[str, str], Counter] = {}
        self._publish: dict[str, Histogram] = {}

    def count(self, cost_class: str, outcome: str) -> None:
        """One request of ``cost_class`` ended in ``outcome``; each labelled child is looked up once."""
        child = self._counters.get((cost_class, outcome))
        if child is None:
            child = self._counters[(cost_class, outcome)] = self.requests.labels(cost_class, outcome)
        child.inc()

    def accepted(self, cost_class: str, publish_seconds: float) -> None:
        """One request of ``cost_class`` acknowledged by the broker ``publish_seconds`` after it was valid."""
        child = self._publish.get(cost_class)
        if child is None:
            child = self._publish[cost_class] = self.publish_seconds.labels(cost_class)
        child.observe(publish_seconds)
        self.count(cost_class, "accepted")
