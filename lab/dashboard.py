"""A self-contained HTML page that plots the Grafana dashboard's panels from scraped metrics.

Grafana is not in Debian's archive nor on PyPI/npm, so the dashboard's picture in
docs/logs-and-metrics.md (`relay/deploy/grafana-dashboard.json`) is this page, rendered by
headless Chromium from the `/metrics` scrapes of a real relay run (`lab/metrics_run.py`). Each
panel's queries are evaluated here by a small subset of PromQL: a selector, `rate(...[w])`,
`sum by (...) (...)` and `histogram_quantile(q, ...)`, the only forms the dashboard uses (a test
holds it to that).
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

Labels = tuple[tuple[str, str], ...]
Vector = dict[Labels, float]

DASHBOARD = Path(__file__).resolve().parents[1] / "relay" / "deploy" / "grafana-dashboard.json"
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
COLORS = ("#3274d9", "#e0752d", "#56a64b", "#a352cc", "#e02f44", "#8ab8ff", "#f2cc0c", "#6e6e6e")


@dataclass(frozen=True, slots=True)
class Scrape:
    """One scrape of `/metrics`: when, and every sample by (name, labels)."""

    at: float
    samples: Mapping[tuple[str, Labels], float]

    @classmethod
    def parse(cls, at: float, text: str) -> Scrape:
        samples: dict[tuple[str, Labels], float] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                samples[(s.name, tuple(sorted(s.labels.items())))] = float(s.value)
        return cls(at, samples)


def _select(scrape: Scrape, selector: str) -> Vector:
    m = re.fullmatch(r"\s*([a-zA-Z_:][\w:]*)\s*(?:\{(.*)\})?\s*", selector)
    if not m:
        raise ValueError(f"not a selector: {selector!r}")
    name, matchers = m.group(1), dict(re.findall(r'(\w+)\s*=\s*"([^"]*)"', m.group(2) or ""))
    return {
        labels: value
        for (sample_name, labels), value in scrape.samples.items()
        if sample_name == name and all(dict(labels).get(k) == v for k, v in matchers.items())
    }


def _split_args(text: str) -> list[str]:
    depth, start, parts = 0, 0, []
    for i, ch in enumerate(text):
        depth += ch in "([{"
        depth -= ch in ")]}"
        if ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    return [*parts, text[start:]]


def evaluate(
    expr: str, scrapes: Sequence[Scrape], index: int, window: float | None = None
) -> Vector:
    """`expr` at `scrapes[index]`; `window` (seconds) overrides every range (a short run)."""
    expr = expr.strip()
    if m := re.fullmatch(r"histogram_quantile\((.*)\)", expr, re.S):
        q_text, inner = _split_args(m.group(1))
        return _quantile(float(q_text), evaluate(inner, scrapes, index, window))
    if m := re.fullmatch(r"sum\s+by\s*\(([^)]*)\)\s*\((.*)\)", expr, re.S):
        keep = [k.strip() for k in m.group(1).split(",") if k.strip()]
        grouped: Vector = {}
        for labels, value in evaluate(m.group(2), scrapes, index, window).items():
            key = tuple((k, v) for k, v in labels if k in keep)
            grouped[key] = grouped.get(key, 0.0) + value
        return grouped
    if m := re.fullmatch(r"rate\((.*)\[(\d+)([smhd])\]\)", expr, re.S):
        span = window if window is not None else int(m.group(2)) * _UNITS[m.group(3)]
        return _rate(m.group(1), scrapes, index, span)
    return _select(scrapes[index], expr)


def _rate(selector: str, scrapes: Sequence[Scrape], index: int, span: float) -> Vector:
    now = scrapes[index]
    first = next(i for i, s in enumerate(scrapes) if s.at >= now.at - span)
    if first >= index:
        return {}
    then = scrapes[first]
    before, after = _select(then, selector), _select(now, selector)
    elapsed = now.at - then.at
    return {k: max(0.0, v - before.get(k, 0.0)) / elapsed for k, v in after.items()}


def _quantile(q: float, buckets: Vector) -> Vector:
    """Prometheus' histogram_quantile: linear interpolation inside the bucket holding rank q."""
    groups: dict[Labels, list[tuple[float, float]]] = {}
    for labels, count in buckets.items():
        le = dict(labels).get("le")
        if le is None:
            continue
        rest = tuple((k, v) for k, v in labels if k != "le")
        groups.setdefault(rest, []).append((float(le), count))
    result: Vector = {}
    for rest, pairs in groups.items():
        pairs.sort()
        total = pairs[-1][1]
        if total <= 0:
            continue
        rank, lower, below = q * total, 0.0, 0.0
        for upper, count in pairs:
            if count >= rank:
                if upper == float("inf"):
                    result[rest] = lower
                else:
                    inside = count - below
                    part = (rank - below) / inside if inside else 0.0
                    result[rest] = lower + (upper - lower) * part
                break
            lower, below = upper, count
    return result


def _legend_text(template: str, labels: Mapping[str, str]) -> str:
    """Grafana's ``{{label}}`` legend templates."""
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), template)


def panel_series(
    panel: Mapping[str, Any], scrapes: Sequence[Scrape], window: float | None = None
) -> dict[str, list[tuple[float, float]]]:
    """Every line a panel draws: legend -> [(seconds since the first scrape, value)]."""
    series: dict[str, list[tuple[float, float]]] = {}
    start = scrapes[0].at
    for target in panel["targets"]:
        for index, scrape in enumerate(scrapes):
            for labels, value in evaluate(target["expr"], scrapes, index, window).items():
                legend = _legend_text(target.get("legendFormat") or target["expr"], dict(labels))
                series.setdefault(legend, []).append((scrape.at - start, value))
    return series


def _fmt(value: float, unit: str) -> str:
    if unit == "s":
        if value >= 3600:
            return f"{value / 3600:.1f} h"
        if value >= 60:
            return f"{value / 60:.1f} min"
        return f"{value:.2g} s"
    if unit == "ops":
        return f"{value:.3g}/s"
    return f"{value:.3g}"


def _svg(series: Mapping[str, list[tuple[float, float]]], unit: str) -> str:
    width, height, left, bottom, top, right = 560, 190, 62, 24, 8, 22
    points = [p for line in series.values() for p in line]
    if not points:
        return f'<svg width="{width}" height="{height}"><text x="220" y="95">no data</text></svg>'
    t_max = max(t for t, _ in points) or 1.0
    v_max = max(v for _, v in points) or 1.0
    v_max *= 1.1

    def xy(t: float, v: float) -> str:
        x = left + (width - left - right) * t / t_max
        y = top + (height - top - bottom) * (1 - v / v_max)
        return f"{x:.1f},{y:.1f}"

    parts = [f'<svg width="{width}" height="{height}" font-size="11" font-family="sans-serif">']
    for i in range(5):
        v = v_max * i / 4
        y = top + (height - top - bottom) * (1 - i / 4)
        parts.append(
            f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>'
        )
        parts.append(
            f'<text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end">{_fmt(v, unit)}</text>'
        )
    for i in range(5):
        t = t_max * i / 4
        x = left + (width - left - right) * i / 4
        parts.append(f'<text x="{x:.1f}" y="{height - 6}" text-anchor="middle">{t:.0f} s</text>')
    for color, (name, line) in zip(COLORS * 4, series.items(), strict=False):
        path = " ".join(xy(t, v) for t, v in line)
        parts.append(
            f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{path}">'
            f"<title>{html.escape(name)}</title></polyline>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _legend(series: Mapping[str, list[tuple[float, float]]], unit: str) -> str:
    items = [
        f'<span><i style="background:{color}"></i>{html.escape(name)} '
        f"<b>{_fmt(line[-1][1], unit)}</b></span>"
        for color, (name, line) in zip(COLORS * 4, series.items(), strict=False)
    ]
    return f'<div class="legend">{"".join(items)}</div>'


def render_page(
    dashboard: Mapping[str, Any], scrapes: Sequence[Scrape], *, note: str, window: float | None
) -> str:
    """The dashboard's panels, two per row as in Grafana, as one HTML page."""
    cells = []
    for panel in dashboard["panels"]:
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "short")
        series = panel_series(panel, scrapes, window)
        if panel["type"] == "stat":
            names = " / ".join(html.escape(n) for n in series) or "no data"
            body = f'<div class="stat">{names}</div>'
        else:
            body = _svg(series, unit) + _legend(series, unit)
        cells.append(f'<div class="panel"><h2>{html.escape(panel["title"])}</h2>{body}</div>')
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(dashboard["title"])}</title><style>
body {{ font-family: sans-serif; background: #f4f5f5; margin: 12px; width: 1180px; }}
h1 {{ font-size: 18px; margin: 0 0 4px; }}
p.note {{ font-size: 12px; color: #555; margin: 0 0 10px; }}
.grid {{ display: grid; grid-template-columns: 580px 580px; gap: 10px; }}
.panel {{ background: #fff; border: 1px solid #ddd; border-radius: 3px; padding: 6px 8px; }}
h2 {{ font-size: 13px; margin: 0 0 4px; }}
.legend {{ font-size: 11px; display: flex; flex-wrap: wrap; gap: 4px 14px; }}
.legend i {{ display: inline-block; width: 12px; height: 3px; margin: 0 4px 3px 0; }}
.stat {{ font-size: 26px; padding: 30px 10px; }}
</style></head><body>
<h1>{html.escape(dashboard["title"])}</h1><p class="note">{html.escape(note)}</p>
<div class="grid">{"".join(cells)}</div></body></html>
"""


def load_dashboard(path: Path = DASHBOARD) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data
