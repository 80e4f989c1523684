"""The relay's TLS-RPT reporting identity: `[tlsrpt]` as the `ReportSettings` the daily sender
and `stsguard tlsrpt` share."""

from __future__ import annotations

from typing import Any

from relay.config import Config, default_contact_info
from relay.errors import UsageError
from relay.metrics import Metrics
from tlsrpt_emit.errors import TlsRptError
from tlsrpt_emit.render import DkimKey
from tlsrpt_emit.schedule import ReportSettings
from tlsrpt_emit.store import ReportStore, SentReport


def report_settings(config: Config) -> ReportSettings:
    """`[tlsrpt]` as `ReportSettings` (the relay's daily sender uses the same)."""
    cfg = config.tlsrpt
    key = None
    if cfg.dkim_key_file:
        if not (cfg.dkim_domain and cfg.dkim_selector):
            raise UsageError("[tlsrpt].dkim_key_file needs dkim_domain and dkim_selector")
        try:
            key = DkimKey.from_file(cfg.dkim_domain, cfg.dkim_selector, cfg.dkim_key_file)
        except TlsRptError as exc:
            raise UsageError(f"[tlsrpt].dkim_key_file: {exc}") from None
    return ReportSettings(
        organization_name=cfg.organization_name,
        contact_info=cfg.contact_info or default_contact_info(config),
        dkim_key=key,
    )


class CountedReportStore:
    """The daily sender's store, counting each report outcome it records in the metrics:
    delivered (a destination took it) or a failed attempt (to be retried, or given up)."""

    def __init__(self, store: ReportStore, metrics: Metrics) -> None:
        self._store = store
        self._metrics = metrics

    def put_sent(self, sent: SentReport) -> None:
        self._store.put_sent(sent)
        if sent.status == "delivered":
            self._metrics.tlsrpt_sent.inc()
        elif sent.status in ("pending", "failed") and sent.last_error:
            self._metrics.tlsrpt_failed.inc()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)
