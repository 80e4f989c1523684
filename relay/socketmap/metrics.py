"""The socketmap's metrics, on the registry of the process that serves it.

Counted in plain integers and read at scrape time (a custom collector): a query answered from
memory costs a dictionary update, not prometheus_client's locks.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

# Seconds per query: from memory in microseconds, a cold look-up in up to the budget.
LATENCY_BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10)


class SocketmapMetrics(Collector):
    """`stsguard_socketmap_queries_total{answer}` and `stsguard_socketmap_query_seconds`."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.queries: dict[str, int] = {}
        self._buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self._sum = 0.0
        if registry is not None:
            registry.register(self)

    def observe(self, kind: str, seconds: float) -> None:
        self.queries[kind] = self.queries.get(kind, 0) + 1
        self._buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self._sum += seconds

    def observe_fast(self, kind: str) -> None:
        """A query answered in under the lowest bucket's bound (from memory)."""
        queries = self.queries
        queries[kind] = queries.get(kind, 0) + 1
        self._buckets[0] += 1

    def collect(self) -> Iterator[CounterMetricFamily | HistogramMetricFamily]:
        queries = CounterMetricFamily(
            "stsguard_socketmap_queries",
            "Socketmap queries by the kind of answer (secure, testing, no-policy, dane, ...)",
            labels=["answer"],
        )
        for kind, count in sorted(self.queries.items()):
            queries.add_metric([kind], count)
        yield queries
        cumulative, buckets = 0, []
        for bound, count in zip((*LATENCY_BUCKETS, float("inf")), self._buckets, strict=True):
            cumulative += count
            buckets.append((str(bound) if bound != float("inf") else "+Inf", cumulative))
        yield HistogramMetricFamily(
            "stsguard_socketmap_query_seconds",
            "Seconds from a socketmap query to its reply",
            buckets=buckets,
            sum_value=self._sum,
        )
