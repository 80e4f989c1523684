"""The relay's TLS-RPT reporting identity: `[tlsrpt]` as the `ReportSettings` the daily sender
and `stsguard tlsrpt` share."""

from __future__ import annotations

from relay.config import Config, default_contact_info
from relay.errors import UsageError
from tlsrpt_emit.errors import TlsRptError
from tlsrpt_emit.render import DkimKey
from tlsrpt_emit.schedule import ReportSettings


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
