"""The socketmap's metrics, on the registry of the process that serves it."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

# Seconds per query: from memory in microseconds, a cold look-up in up to the budget.
LATENCY_BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10)


class SocketmapMetrics:
    """`stsguard_socketmap_queries_total{answer}` and the query latency histogram."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.queries = Counter(
            "stsguard_socketmap_queries",
            "Socketmap queries by the kind of answer (secure, testing, no-policy, dane, ...)",
            ["answer"],
            registry=registry,
        )
        self.latency = Histogram(
            "stsguard_socketmap_query_seconds",
            "Seconds from a socketmap query to its reply",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )

    def observe(self, kind: str, seconds: float) -> None:
        self.queries.labels(answer=kind).inc()
        self.latency.observe(seconds)
