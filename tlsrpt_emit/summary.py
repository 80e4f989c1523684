"""The readable view of TLS-RPT: per policy domain (or per sending organisation, for reports we
receive) sessions ok and failed, failures per result type and per MX host, the top reasons, and
the days. Pure: counts in, a `Summary` out, rendered as an aligned text table, JSON, or one
self-contained HTML page with a small inline SVG bar chart per group (no external assets).
"""

from __future__ import annotations

import datetime
import html
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tlsrpt_emit.model import PolicyCounts, Report, ReportPolicy

TOP_REASONS = 5
NO_MX = "(no MX: policy look-up)"


@dataclass(slots=True)
class GroupSummary:
    """One policy domain (ours) or one sending organisation (received reports)."""

    name: str
    ok: int = 0
    failed: int = 0
    by_result_type: Counter[str] = field(default_factory=Counter)
    by_mx_host: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    by_day: dict[datetime.date, list[int]] = field(default_factory=dict)  # day -> [ok, failed]
    policy_domains: set[str] = field(default_factory=set)

    @property
    def sessions(self) -> int:
        return self.ok + self.failed

    def add(self, day: datetime.date, policy: ReportPolicy | PolicyCounts) -> None:
        failures = policy.failures
        failed = policy.failure_total
        self.ok += policy.successes
        self.failed += failed
        counts = self.by_day.setdefault(day, [0, 0])
        counts[0] += policy.successes
        counts[1] += failed
        for detail, n in failures:
            self.by_result_type[str(detail.result_type)] += n
            self.by_mx_host[detail.receiving_mx_hostname or NO_MX] += n
            reason = detail.failure_reason_code or str(detail.result_type)
            self.reasons[reason] += n


@dataclass(frozen=True, slots=True)
class Summary:
    """What `stsguard tlsrpt summary` shows: the groups over `days` (oldest first)."""

    group_kind: str  # "policy domain" | "sending organisation"
    days: tuple[datetime.date, ...]
    groups: tuple[GroupSummary, ...]
    partial_day: datetime.date | None = None  # a day in `days` that has not ended


def summarize_counts(
    rows: Iterable[tuple[datetime.date, PolicyCounts]],
    days: Sequence[datetime.date],
    *,
    partial_day: datetime.date | None = None,
) -> Summary:
    """Our own counts (per day and policy) grouped by policy domain."""
    groups: dict[str, GroupSummary] = {}
    for day, row in rows:
        group = groups.setdefault(row.key.policy_domain, GroupSummary(row.key.policy_domain))
        group.policy_domains.add(row.key.policy_domain)
        group.add(day, row)
    return Summary("policy domain", tuple(days), _ordered(groups), partial_day)


def summarize_received(reports: Iterable[Report]) -> Summary:
    """Reports received from other senders, grouped by sending organisation; each report's day
    is the UTC day its range starts on."""
    groups: dict[str, GroupSummary] = {}
    days: set[datetime.date] = set()
    for report in reports:
        day = report.start.astimezone(datetime.UTC).date()
        days.add(day)
        name = report.organization_name or "(unnamed)"
        group = groups.setdefault(name, GroupSummary(name))
        for policy in report.policies:
            group.policy_domains.add(policy.policy_domain)
            group.add(day, policy)
    return Summary("sending organisation", tuple(sorted(days)), _ordered(groups))


def _ordered(groups: dict[str, GroupSummary]) -> tuple[GroupSummary, ...]:
    """Most failed sessions first, then the name: what needs a look comes first."""
    return tuple(sorted(groups.values(), key=lambda g: (-g.failed, g.name)))


def _percent(part: int, whole: int) -> str:
    return f"{100.0 * part / whole:.1f}%" if whole else "-"


def _range_text(summary: Summary) -> str:
    if not summary.days:
        return "no days"
    first, last = summary.days[0], summary.days[-1]
    span = f"{first}" if first == last else f"{first} to {last}"
    count = len(summary.days)
    text = f"{span} (UTC, {count} day{'s' if count != 1 else ''})"
    if summary.partial_day is not None:
        text += f"; {summary.partial_day} so far"
    return text


# --- tables (shared by text and HTML) ----------------------------------------------------------


def _tables(summary: Summary) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of each table; numbers as text, right-aligned by `format_table`."""
    kind = summary.group_kind
    overview = [
        [g.name, str(g.sessions), str(g.ok), str(g.failed), _percent(g.failed, g.sessions)]
        for g in summary.groups
    ]
    result_types = [
        [g.name, rtype, str(n)]
        for g in summary.groups
        for rtype, n in sorted(g.by_result_type.items(), key=lambda i: (-i[1], i[0]))
    ]
    mx_hosts = [
        [g.name, mx, str(n)]
        for g in summary.groups
        for mx, n in sorted(g.by_mx_host.items(), key=lambda i: (-i[1], i[0]))
    ]
    reasons = [
        [g.name, str(n), reason]
        for g in summary.groups
        for reason, n in sorted(g.reasons.items(), key=lambda i: (-i[1], i[0]))[:TOP_REASONS]
    ]
    return [
        ("sessions", [kind, "sessions", "ok", "failed", "failed %"], overview),
        ("failures by result type", [kind, "result type", "failed"], result_types),
        ("failures by MX host", [kind, "MX host", "failed"], mx_hosts),
        (f"top reasons (up to {TOP_REASONS} each)", [kind, "failed", "reason"], reasons),
    ]


def _numeric(header: str) -> bool:
    return header in ("sessions", "ok", "failed", "failed %")


def format_table(header: list[str], rows: list[list[str]]) -> str:
    """Columns padded to their widest cell; number columns right-aligned."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = [
            cell.rjust(w) if _numeric(h) else cell.ljust(w)
            for cell, w, h in zip(row, widths, header, strict=True)
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def render_text(summary: Summary) -> str:
    """The summary as aligned tables for a terminal."""
    title = f"TLS-RPT summary per {summary.group_kind}, {_range_text(summary)}"
    if not summary.groups:
        return f"{title}\n\nno sessions recorded\n"
    parts = [title]
    for name, header, rows in _tables(summary):
        parts.append(f"{name}:\n" + (format_table(header, rows) if rows else "  none"))
    return "\n\n".join(parts) + "\n"


def summary_to_json(summary: Summary) -> dict[str, Any]:
    """The summary as one JSON object (`--json`)."""
    return {
        "group_kind": summary.group_kind,
        "days": [d.isoformat() for d in summary.days],
        "partial_day": summary.partial_day.isoformat() if summary.partial_day else None,
        "groups": [
            {
                "name": g.name,
                "policy_domains": sorted(g.policy_domains),
                "sessions": g.sessions,
                "ok": g.ok,
                "failed": g.failed,
                "by_result_type": dict(sorted(g.by_result_type.items())),
                "by_mx_host": dict(sorted(g.by_mx_host.items())),
                "top_reasons": [
                    {"reason": r, "failed": n}
                    for r, n in sorted(g.reasons.items(), key=lambda i: (-i[1], i[0]))[:TOP_REASONS]
                ],
                "by_day": [
                    {
                        "day": d.isoformat(),
                        "ok": g.by_day.get(d, [0, 0])[0],
                        "failed": g.by_day.get(d, [0, 0])[1],
                    }
                    for d in summary.days
                ],
            }
            for g in summary.groups
        ],
    }


# --- HTML --------------------------------------------------------------------------------------

_CSS = """
body { font: 15px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto;
       max-width: 60em; padding: 0 1em; color: #1d2430; background: #fff; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; }
h2 { font-size: 1.2em; margin: 1.6em 0 0.4em; border-bottom: 1px solid #d8dde6; }
h3 { font-size: 1em; margin: 1em 0 0.3em; color: #4a5568; }
p.range { color: #4a5568; margin-top: 0; }
table { border-collapse: collapse; margin: 0.3em 0 0.8em; }
th, td { padding: 0.25em 0.8em; border-bottom: 1px solid #e6e9ef; text-align: left; }
th { background: #f3f5f9; font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.bad td.failed { color: #b42318; font-weight: 600; }
.legend span { display: inline-block; width: 0.9em; height: 0.9em; margin: 0 0.3em 0 0.8em;
               vertical-align: -0.1em; }
.legend .ok, rect.ok { background: #2f9e66; fill: #2f9e66; }
.legend .failed, rect.failed { background: #d64545; fill: #d64545; }
svg.chart text { font: 11px system-ui, sans-serif; fill: #4a5568; }
.none { color: #718096; }
.tables { display: flex; flex-wrap: wrap; gap: 0 2.5em; align-items: flex-start; }
.tables td { overflow-wrap: anywhere; max-width: 40em; }
"""


def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def _html_table(header: list[str], rows: list[list[str]], *, table_id: str = "") -> str:
    if not rows:
        return '<p class="none">none</p>'
    head = "".join(
        f'<th class="num">{_esc(h)}</th>' if _numeric(h) else f"<th>{_esc(h)}</th>" for h in header
    )
    body = []
    for row in rows:
        cells = []
        for h, cell in zip(header, row, strict=True):
            cls = ["num"] if _numeric(h) else []
            if h == "failed":
                cls.append("failed")
            attr = f' class="{" ".join(cls)}"' if cls else ""
            cells.append(f"<td{attr}>{_esc(cell)}</td>")
        bad = ' class="bad"' if "failed" in header and row[header.index("failed")] != "0" else ""
        body.append(f"<tr{bad}>{''.join(cells)}</tr>")
    ident = f' id="{_esc(table_id)}"' if table_id else ""
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _chart(group: GroupSummary, days: Sequence[datetime.date]) -> str:
    """Per day a green bar (ok) and a red bar (failed), scaled to the busiest day."""
    # month-day labels, unless the days span more than one year (received reports may)
    label = "%m-%d" if len({d.year for d in days}) <= 1 else "%y-%m-%d"
    bar, gap, height, top, bottom = 14, 12 if label == "%m-%d" else 26, 120, 14, 30
    peak = max([max(group.by_day.get(d, [0, 0])) for d in days] + [1])
    width = max(len(days), 1) * (2 * bar + gap) + gap
    parts = [
        f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{width}" '
        f'height="{height + top + bottom}" viewBox="0 0 {width} {height + top + bottom}" '
        f'role="img" aria-label="sessions per day for {_esc(group.name)}">',
        f'<line x1="0" y1="{top + height}" x2="{width}" y2="{top + height}" stroke="#cbd2dc"/>',
    ]
    for i, day in enumerate(days):
        ok, failed = group.by_day.get(day, [0, 0])
        x = gap + i * (2 * bar + gap)
        for kind, value, dx in (("ok", ok, 0), ("failed", failed, bar)):
            h = round(height * value / peak) if value else 0
            y = top + height - h
            parts.append(
                f'<rect class="{kind}" data-day="{day.isoformat()}" data-count="{value}" '
                f'x="{x + dx}" y="{y}" width="{bar - 1}" height="{h}">'
                f"<title>{day.isoformat()}: {value} {kind}</title></rect>"
            )
            if value:
                parts.append(
                    f'<text x="{x + dx + bar / 2:.1f}" y="{y - 3}" text-anchor="middle">'
                    f"{value}</text>"
                )
        parts.append(
            f'<text x="{x + bar:.1f}" y="{top + height + 16}" text-anchor="middle">'
            f"{day.strftime(label)}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def render_html(summary: Summary, *, generated: str, appendix: str = "") -> str:
    """One self-contained page: the same tables as the text, and a bar chart per group;
    `appendix` is more HTML for the page (the relay's downgrade prevalence), already escaped."""
    title = f"TLS-RPT summary per {summary.group_kind}"
    tables = _tables(summary)
    sections = []
    for group in summary.groups:
        mine = [
            (name, header, [r for r in rows if r[0] == group.name])
            for name, header, rows in tables[1:]
        ]
        inner = "".join(
            f"<div><h3>{_esc(name)}</h3>{_html_table(header[1:], [r[1:] for r in rows])}</div>"
            for name, header, rows in mine
        )
        sections.append(
            f'<section class="group" data-name="{_esc(group.name)}">'
            f"<h2>{_esc(group.name)}</h2>"
            f'<p class="totals">{group.sessions} session{"" if group.sessions == 1 else "s"}: '
            f"{group.ok} ok, "
            f"{group.failed} failed ({_percent(group.failed, group.sessions)})</p>"
            f'<div class="legend"><span class="ok"></span>ok<span class="failed"></span>failed'
            f'</div>{_chart(group, summary.days)}<div class="tables">{inner}</div></section>'
        )
    _, header, rows = tables[0]
    body = (
        _html_table(header, rows, table_id="overview")
        if summary.groups
        else '<p class="none">no sessions recorded</p>'
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{_esc(title)}</h1>"
        f'<p class="range">{_esc(_range_text(summary))} · made {_esc(generated)} by stsguard</p>'
        f"{body}{''.join(sections)}{appendix}</body></html>\n"
    )
