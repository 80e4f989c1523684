"""Prometheus metrics of the relay, on their own registry (tests can make several)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from relay.config import parse_hostport


@dataclass(slots=True)
class Metrics:
    """The relay's counters and gauges, registered on `registry`."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    accepted: Counter = field(init=False)
    delivered: Counter = field(init=False)
    deferred: Counter = field(init=False)
    bounced: Counter = field(init=False)
    queue_size: Gauge = field(init=False)
    policy_cache_hits: Gauge = field(init=False)
    policy_cache_misses: Gauge = field(init=False)
    findings: Counter = field(init=False)

    def __post_init__(self) -> None:
        r = self.registry
        self.accepted = Counter("stsguard_accepted", "Messages accepted from upstream", registry=r)
        self.delivered = Counter("stsguard_delivered", "Recipients delivered", ["tls"], registry=r)
        self.deferred = Counter(
            "stsguard_deferred", "Recipient deliveries deferred", ["reason"], registry=r
        )
        self.bounced = Counter("stsguard_bounced", "Recipients bounced", registry=r)
        self.queue_size = Gauge("stsguard_queue_size", "Messages in the queue", registry=r)
        self.policy_cache_hits = Gauge(
            "stsguard_policy_cache_hits", "MTA-STS policy answers from the cache", registry=r
        )
        self.policy_cache_misses = Gauge(
            "stsguard_policy_cache_misses", "MTA-STS policy answers not from the cache", registry=r
        )
        self.findings = Counter(
            "stsguard_findings", "Downgrade and tampering findings", ["kind"], registry=r
        )

    def follow_policy_cache(self, hits: Callable[[], float], misses: Callable[[], float]) -> None:
        """Read the cache counters from the policy service at scrape time."""
        self.policy_cache_hits.set_function(hits)
        self.policy_cache_misses.set_function(misses)

    def value(self, name: str, labels: dict[str, str] | None = None) -> float:
        """One sample's current value (0 when absent): for tests and `stsguard` status output."""
        sample = self.registry.get_sample_value(name, labels or {})
        return sample if sample is not None else 0.0


def start_metrics_server(listen: str, registry: CollectorRegistry) -> WSGIServer:
    """Serve `registry` over HTTP on `listen` (``host:port``, as `relay.metrics_listen`).

    The server runs in a daemon thread; `server_address` is where it is bound (port 0 picks a
    free one); `shutdown()` then `server_close()` stops it.
    """
    if listen.endswith(":0"):  # any free port (tests)
        host, port = parse_hostport(listen[:-2], "[relay].metrics_listen", default_port=0)
    else:
        host, port = parse_hostport(listen, "[relay].metrics_listen")
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server
