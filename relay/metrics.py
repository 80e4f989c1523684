"""Prometheus metrics of the relay, on their own registry (tests can make several).

Counters end in ``_total`` and have no ``_created`` series. Values another part owns (policy cache
counters, the queue's state) are read at scrape time from callbacks that part registers:
`follow_policy_cache`, `set_queue`. To add a metric: one field, one line in the `_declare_*`
method of its area.
"""

from __future__ import annotations

import math
import platform
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    make_wsgi_app,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.registry import Collector

from relay.config_values import parse_hostport
from relay.version import stsguard_version

# One series per counter: `*_created` would double the series for nothing.
disable_created_metrics()  # type: ignore[no-untyped-call]

# Seconds from intake to delivery: most mail goes in seconds, deferred mail in hours or days.
DELIVERY_DELAY_BUCKETS = (
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    15,
    60,
    300,
    900,
    3600,
    4 * 3600,
    86400,
    5 * 86400,
)

# Queue states, as Postfix names its queues: `active` (being delivered), `deferred` (waiting for
# its next attempt), `hold` (held by an operator); the queue runner counts them.
QUEUE_STATES = ("active", "deferred", "hold")


class _Callbacks(Collector):
    """Counters and gauges whose values live elsewhere, read at scrape time."""

    def __init__(self) -> None:
        self.policy_hits: Callable[[], float] = lambda: 0.0
        self.policy_misses: Callable[[], float] = lambda: 0.0
        self.queue_by_state: Mapping[str, int] = {}
        self.oldest_received_at: float | None = None
        self.clock: Callable[[], float] = time.time

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        yield CounterMetricFamily(
            "stsguard_policy_cache_hits",
            "MTA-STS policy answers from the cache",
            value=self.policy_hits(),
        )
        yield CounterMetricFamily(
            "stsguard_policy_cache_misses",
            "MTA-STS policy answers not from the cache",
            value=self.policy_misses(),
        )
        by_state = GaugeMetricFamily(
            "stsguard_queue_messages", "Messages in the queue by state", labels=["state"]
        )
        for state in sorted({*QUEUE_STATES, *self.queue_by_state}):
            by_state.add_metric([state], self.queue_by_state.get(state, 0))
        yield by_state
        oldest = self.oldest_received_at
        yield GaugeMetricFamily(
            "stsguard_queue_oldest_message_age_seconds",
            "Age of the oldest message in the queue (0 when empty)",
            value=max(0.0, self.clock() - oldest) if oldest is not None else 0.0,
        )


@dataclass(slots=True)
class Metrics:
    """The relay's counters and gauges, registered on `registry`."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    accepted: Counter = field(init=False)
    delivered: Counter = field(init=False)
    deferred: Counter = field(init=False)
    bounced: Counter = field(init=False)
    findings: Counter = field(init=False)
    mx_sessions: Counter = field(init=False)
    prevalence_news: Counter = field(init=False)
    tlsrpt_received: Counter = field(init=False)
    tlsrpt_alerts: Counter = field(init=False)
    delivery_delay: Histogram = field(init=False)
    tlsrpt_sent: Counter = field(init=False)
    tlsrpt_failed: Counter = field(init=False)
    queue_size: Gauge = field(init=False)
    build_info: Gauge = field(init=False)
    _callbacks: _Callbacks = field(init=False)
    delivery_errors: Counter = field(init=False)
    requiretls: Counter = field(init=False)
    state_errors: Counter = field(init=False)
    best_effort_errors: Counter = field(init=False)

    def __post_init__(self) -> None:
        # prometheus_client adds `_total` to a counter's name.
        self._declare_mail(self.registry)
        self._declare_sessions(self.registry)
        self._declare_tlsrpt(self.registry)
        self._declare_relay(self.registry)

    def _declare_mail(self, r: CollectorRegistry) -> None:
        """What happened to mail: accepted, delivered, deferred, bounced, and how long it took."""
        self.accepted = Counter("stsguard_accepted", "Messages accepted from upstream", registry=r)
        self.delivered = Counter("stsguard_delivered", "Recipients delivered", ["tls"], registry=r)
        self.deferred = Counter(
            "stsguard_deferred", "Recipient deliveries deferred", ["reason"], registry=r
        )
        self.bounced = Counter("stsguard_bounced", "Recipients bounced", registry=r)
        self.requiretls = Counter(
            "stsguard_requiretls",
            "Recipients of REQUIRETLS messages: delivered, deferred, bounced_no_support, "
            "bounced_no_auth",
            ["outcome"],
            registry=r,
        )
        self.delivery_delay = Histogram(
            "stsguard_delivery_delay_seconds",
            "Seconds from intake to delivery, per delivered recipient",
            buckets=DELIVERY_DELAY_BUCKETS,
            registry=r,
        )
        self.delivery_errors = Counter(
            "stsguard_delivery_errors",
            "Delivery attempts that failed inside the relay (deferred like a 4xx), by error",
            ["kind"],
            registry=r,
        )

    def _declare_sessions(self, r: CollectorRegistry) -> None:
        """What MX sessions showed: findings, session kinds, downgrade signs new to a host."""
        self.findings = Counter(
            "stsguard_findings", "Downgrade and tampering findings", ["kind"], registry=r
        )
        # Bounded labels only (detect.prevalence.SessionKind x tls|plaintext|none): hosts are
        # in `stsguard detect stats`, never in a label.
        self.mx_sessions = Counter(
            "stsguard_mx_sessions",
            "Sessions opened to MX hosts, by the worst thing each showed and how mail went",
            ["kind", "outcome"],
            registry=r,
        )
        self.prevalence_news = Counter(
            "stsguard_prevalence_news",
            "MX hosts showing a downgrade sign not seen from them in the last days, by sign",
            ["sign"],
            registry=r,
        )

    def _declare_tlsrpt(self, r: CollectorRegistry) -> None:
        """TLS reports: ours sent, and those others send about our domains."""
        self.tlsrpt_sent = Counter(
            "stsguard_tlsrpt_reports_sent", "TLS-RPT reports a destination took", registry=r
        )
        self.tlsrpt_failed = Counter(
            "stsguard_tlsrpt_reports_failed",
            "TLS-RPT report attempts no destination took (retried or given up)",
            registry=r,
        )
        self.tlsrpt_received = Counter(
            "stsguard_tlsrpt_received",
            "TLS reports about our domains that arrived: new, duplicate, or refused (why)",
            ["via", "outcome"],
            registry=r,
        )
        self.tlsrpt_alerts = Counter(
            "stsguard_tlsrpt_alerts",
            "Alerts raised for our own domains: a new result type, or a failure share too high",
            ["kind"],
            registry=r,
        )

    def _declare_relay(self, r: CollectorRegistry) -> None:
        """The relay itself: its queue, its build, and the work around delivery that failed."""
        self.queue_size = Gauge("stsguard_queue_size", "Messages in the queue", registry=r)
        self.build_info = Gauge(
            "stsguard_build_info",
            "Always 1; the labels say which stsguard runs",
            ["version", "python"],
            registry=r,
        )
        self.build_info.labels(version=stsguard_version(), python=platform.python_version()).set(1)
        self._callbacks = _Callbacks()
        r.register(self._callbacks)
        self.state_errors = Counter(
            "stsguard_state_errors",
            "State writes that could not be made (kept to write later where the store can)",
            ["store", "kind"],
            registry=r,
        )
        self.best_effort_errors = Counter(
            "stsguard_best_effort_errors",
            "Failures of reporting, metrics, logging or session reuse around a delivery"
            " (the delivery's outcome stands)",
            ["step", "error"],
            registry=r,
        )

    def count_state_error(self, store: str, kind: str, writes: float = 1) -> None:
        """`writes` state writes to `store` failed (`relay.state.failed_writes.FailedWrites`,
        which declares every (store, kind) with 0 at start)."""
        self.state_errors.labels(store=store, kind=kind).inc(writes)

    def follow_policy_cache(self, hits: Callable[[], float], misses: Callable[[], float]) -> None:
        """Read the cache counters from the policy service at scrape time."""
        self._callbacks.policy_hits = hits
        self._callbacks.policy_misses = misses

    def set_queue(
        self,
        by_state: Mapping[str, int],
        oldest_received_at: float | None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """The queue after a scan: messages per state (`QUEUE_STATES`) and when the oldest was
        received (None: empty); its age is worked out at scrape time with `clock`."""
        self._callbacks.queue_by_state = dict(by_state)
        self._callbacks.oldest_received_at = oldest_received_at
        self._callbacks.clock = clock
        self.queue_size.set(sum(by_state.values()))

    def observe_delivered(self, received_at: float, now: float, count: int = 1) -> None:
        """`count` recipients of a message received at `received_at` were delivered at `now`."""
        for _ in range(count):
            self.delivery_delay.observe(max(0.0, now - received_at))

    def value(self, name: str, labels: dict[str, str] | None = None) -> float:
        """One sample's current value (0 when absent): for tests and `stsguard` status output."""
        sample = self.registry.get_sample_value(name, labels or {})
        return sample if sample is not None and not math.isnan(sample) else 0.0


METRICS_PATH = "/metrics"


def only_metrics_path(app: WSGIApplication) -> WSGIApplication:
    """`app` on ``/metrics`` only; ``404`` on every other path (prometheus_client's own server
    answers everything, so a scanner or a typo got a page of metrics)."""

    def serve(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == METRICS_PATH:
            return app(environ, start_response)
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        return [b"Not found: the metrics are at /metrics\n"]

    return serve


class _QuietHandler(WSGIRequestHandler):
    """No access log on stderr (the relay's log is structlog's alone)."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


def start_metrics_server(listen: str, registry: CollectorRegistry) -> WSGIServer:
    """Serve `registry` over HTTP on `listen` (``host:port``, as `relay.metrics_listen`), on the
    path ``/metrics`` only.

    The server runs in a daemon thread; `server_address` is where it is bound (port 0 picks a
    free one); `shutdown()` then `server_close()` stops it.
    """
    if listen.endswith(":0"):  # any free port (tests)
        host, port = parse_hostport(listen[:-2], "[relay].metrics_listen", default_port=0)
    else:
        host, port = parse_hostport(listen, "[relay].metrics_listen")

    class Server(ThreadingWSGIServer):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

    app = only_metrics_path(make_wsgi_app(registry))
    server = make_server(host, port, app, Server, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server
