"""The Grafana dashboard's queries name real metrics, and the page that pictures it evaluates
them the way Prometheus does."""

from __future__ import annotations

import math
import re

import pytest
from prometheus_client import generate_latest

from lab.dashboard import Scrape, evaluate, load_dashboard, panel_series, render_page
from relay.metrics import Metrics


def exposed_names() -> set[str]:
    text = generate_latest(Metrics().registry).decode()
    return set(re.findall(r"^# TYPE (\S+) \w+$", text, re.MULTILINE))


def test_every_query_names_a_metric_the_relay_exposes() -> None:
    names = exposed_names()
    dashboard = load_dashboard()
    used = set()
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}"
        for target in panel["targets"]:
            for name in re.findall(r"\b(stsguard_\w+?)(?:_bucket)?\b(?!\()", target["expr"]):
                used.add(name)
    missing = used - names
    assert not missing, missing
    assert {"stsguard_queue_messages", "stsguard_delivery_delay_seconds"} <= used


def scrape(at: float, text: str) -> Scrape:
    return Scrape.parse(at, text)


SCRAPES = [
    scrape(
        0,
        "# TYPE stsguard_delivered counter\n"
        'stsguard_delivered_total{tls="yes"} 10\nstsguard_delivered_total{tls="no"} 4\n'
        "# TYPE d histogram\n"
        'd_bucket{le="1.0"} 0\nd_bucket{le="5.0"} 0\nd_bucket{le="+Inf"} 0\nd_count 0\nd_sum 0\n',
    ),
    scrape(
        10,
        "# TYPE stsguard_delivered counter\n"
        'stsguard_delivered_total{tls="yes"} 30\nstsguard_delivered_total{tls="no"} 9\n'
        "# TYPE d histogram\n"
        'd_bucket{le="1.0"} 50\nd_bucket{le="5.0"} 100\nd_bucket{le="+Inf"} 100\nd_count 100\n'
        "d_sum 150\n",
    ),
]


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("stsguard_delivered_total", {(("tls", "yes"),): 30.0, (("tls", "no"),): 9.0}),
        ('stsguard_delivered_total{tls="no"}', {(("tls", "no"),): 9.0}),
        ("rate(stsguard_delivered_total[5m])", {(("tls", "yes"),): 2.0, (("tls", "no"),): 0.5}),
        ("sum by () (rate(stsguard_delivered_total[1m]))", {(): 2.5}),
        (
            "sum by (tls) (rate(stsguard_delivered_total[1m]))",
            {(("tls", "yes"),): 2.0, (("tls", "no"),): 0.5},
        ),
        # 10/s observations, half below 1 s: the median is 1 s, p90 inside (1, 5]: 1 + 4 * 0.8
        ("histogram_quantile(0.5, sum by (le) (rate(d_bucket[5m])))", {(): 1.0}),
        ("histogram_quantile(0.9, sum by (le) (rate(d_bucket[5m])))", {(): 4.2}),
    ],
)
def test_evaluate_like_prometheus(
    expr: str, expected: dict[tuple[tuple[str, str], ...], float]
) -> None:
    got = evaluate(expr, SCRAPES, 1)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert math.isclose(got[key], value), (key, got[key])


def test_rate_needs_two_scrapes_in_the_window() -> None:
    assert evaluate("rate(stsguard_delivered_total[5m])", SCRAPES, 0) == {}
    assert evaluate("rate(stsguard_delivered_total[5m])", SCRAPES, 1, window=5) == {}


def test_page_has_every_panel_with_its_legends() -> None:
    dashboard = load_dashboard()
    page = render_page(dashboard, SCRAPES, note="test", window=None)
    assert page.count('class="panel"') == len(dashboard["panels"])
    flow = next(p for p in dashboard["panels"] if p["title"].startswith("Mail flow"))
    assert set(panel_series(flow, SCRAPES)) == {"delivered tls=yes", "delivered tls=no"}
