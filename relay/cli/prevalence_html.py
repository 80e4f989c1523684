"""Downgrade prevalence as a section of the readable HTML page (`stsguard tlsrpt summary
--html`): a chart per day (sessions, and those with a sign of a downgrade) and the hosts and
networks worst first, beside the TLS-RPT summary."""

from __future__ import annotations

import datetime
import html
from collections.abc import Sequence

from detect.prevalence import Measure, PrevalenceRow
from detect.prevalence_view import SiteStats, by_day, by_domain, by_host, by_network

_SHOWN = (
    ("sessions", None),
    ("tls", Measure.STARTTLS_OFFERED),
    ("absent", Measure.STARTTLS_ABSENT),
    ("garbled", Measure.GARBLED),
    ("refused", Measure.REFUSED),
    ("handshake failed", Measure.HANDSHAKE_FAILURE),
    ("injected", Measure.INJECTED),
    ("lost", Measure.STARTTLS_LOST),
    ("plaintext", Measure.PLAINTEXT),
    ("downgraded", Measure.DOWNGRADED),
)


def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def _cell(site: SiteStats, measure: Measure | None) -> str:
    if measure is None:
        return str(site.sessions)
    return f"{100 * site.share(measure):.0f}%" if site.counts[measure] else "-"


def _table(title: str, sites: Sequence[SiteStats]) -> str:
    head = f"<th>{_esc(title)}</th>" + "".join(f'<th class="num">{n}</th>' for n, _ in _SHOWN)
    rows = []
    for site in sites:
        bad = ' class="bad"' if site.counts[Measure.DOWNGRADED] else ""
        cells = "".join(f'<td class="num">{_esc(_cell(site, m))}</td>' for _, m in _SHOWN)
        rows.append(f"<tr{bad}><td>{_esc(site.name)}</td>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _chart(days: Sequence[datetime.date], rows: Sequence[PrevalenceRow]) -> str:
    per_day = {site.name: site for site in by_day(rows)}
    bar, gap, height, top, bottom = 14, 12, 120, 14, 30
    values = [(day, per_day.get(day.isoformat())) for day in days]
    peak = max([s.sessions for _, s in values if s is not None] + [1])
    width = max(len(days), 1) * (2 * bar + gap) + gap
    parts = [
        f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{width}" '
        f'height="{height + top + bottom}" role="img" aria-label="sessions per day">',
        f'<line x1="0" y1="{top + height}" x2="{width}" y2="{top + height}" stroke="#cbd2dc"/>',
    ]
    for i, (day, site) in enumerate(values):
        x = gap + i * (2 * bar + gap)
        counts = (
            ("ok", "sessions", site.sessions if site else 0),
            ("failed", "downgraded", site.counts[Measure.DOWNGRADED] if site else 0),
        )
        for dx, (style, kind, value) in zip((0, bar), counts, strict=True):
            h = round(height * value / peak) if value else 0
            parts.append(
                f'<rect class="{style}" data-kind="{kind}" data-day="{day.isoformat()}" '
                f'data-count="{value}" x="{x + dx}" y="{top + height - h}" width="{bar - 1}" '
                f'height="{h}"><title>{day.isoformat()}: {value} {kind}</title></rect>'
            )
        parts.append(
            f'<text x="{x + bar:.1f}" y="{top + height + 16}" text-anchor="middle">'
            f"{day.strftime('%m-%d')}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def prevalence_section(rows: Sequence[PrevalenceRow], days: Sequence[datetime.date]) -> str:
    """The section, or "" when no session was counted in `days`."""
    if not [r for r in rows if r.host]:
        return ""
    hosts, networks, domains = by_host(rows), by_network(rows), by_domain(rows)
    return (
        '<section class="group prevalence" data-name="downgrade prevalence">'
        "<h2>Downgrade prevalence (our own sessions)</h2>"
        '<p class="totals">sessions per day and those with a sign of a downgrade (garbled, '
        "refused or lost STARTTLS, injected bytes); hosts and networks worst first</p>"
        '<div class="legend"><span class="ok"></span>sessions'
        '<span class="failed"></span>downgraded</div>'
        f"{_chart(days, rows)}"
        f'<div class="tables"><div><h3>per MX host</h3>{_table("mx host", hosts)}</div>'
        f"<div><h3>per network</h3>{_table('network', networks)}</div>"
        f"<div><h3>per recipient domain</h3>{_table('domain', domains)}</div></div></section>"
    )
