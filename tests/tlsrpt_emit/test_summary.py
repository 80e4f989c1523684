"""`stsguard tlsrpt summary`: the readable view as an aligned table, JSON, and one self-contained
HTML page checked by its DOM after headless Chromium (Debian `chromium`) rendered it."""

from __future__ import annotations

import datetime
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest
import structlog

from relay.cli import main
from relay.cli.tlsrpt import summary_days
from relay.config import load_config
from relay.state.stores import open_state
from tests.tlsrpt_emit.sessions import DAY, NOON, day_results, sts
from tlsrpt_emit.model import ResultType
from tlsrpt_emit.sink import CountingSink
from tlsrpt_emit.store import MemoryReportStore
from tlsrpt_emit.summary import (
    NO_MX,
    render_html,
    render_text,
    summarize_counts,
    summary_to_json,
)

NEXT = DAY + datetime.timedelta(days=1)
PEERS = Path(__file__).parent / "peer_reports"


@pytest.fixture(autouse=True)
def _structlog_back_to_defaults() -> Iterator[None]:
    yield
    structlog.reset_defaults()


def two_days() -> MemoryReportStore:
    """`day_results()` on DAY; on the next day 1 success and 1 expired certificate."""
    store = MemoryReportStore()
    sink = CountingSink(store, clock=lambda: 0.0)
    for result in [
        *day_results(),
        sts(when=NOON + 86400),
        sts(ResultType.CERTIFICATE_EXPIRED, when=NOON + 86400),
    ]:
        sink.record(result)
    sink.flush()
    return store


def summary_of(store: MemoryReportStore):  # type: ignore[no-untyped-def]
    days = [DAY, NEXT]
    rows = [(d, row) for d in days for row in store.counts(d)]
    return summarize_counts(rows, days)


def test_summary_counts_per_domain_result_type_mx_and_reason() -> None:
    summary = summary_of(two_days())
    by_name = {g.name: g for g in summary.groups}
    assert [g.name for g in summary.groups] == ["example.org", "plain.example"]  # failures first
    ex = by_name["example.org"]
    assert (ex.ok, ex.failed, ex.sessions) == (4, 4, 8)
    assert ex.by_result_type == {
        "certificate-not-trusted": 2,
        "sts-policy-fetch-error": 1,
        "certificate-expired": 1,
    }
    assert ex.by_mx_host == {"mx1.mail.example.org": 3, NO_MX: 1}
    assert ex.reasons["X509_V_ERR_UNTRUSTED"] == 2
    assert ex.by_day == {DAY: [3, 3], NEXT: [1, 1]}
    assert (by_name["plain.example"].ok, by_name["plain.example"].failed) == (2, 0)


def test_text_table_is_aligned() -> None:
    text = render_text(summary_of(two_days()))
    lines = text.splitlines()
    assert lines[0] == "TLS-RPT summary per policy domain, 2026-11-28 to 2026-11-29 (UTC, 2 days)"
    start = lines.index("sessions:")
    header, *rows = lines[start + 1 : start + 4]
    assert header.split() == ["policy", "domain", "sessions", "ok", "failed", "failed", "%"]
    assert rows[0].split() == ["example.org", "8", "4", "4", "50.0%"]
    assert rows[1].split() == ["plain.example", "2", "2", "0", "0.0%"]
    # numbers right-aligned under their headers: each number column ends where its header ends
    for column in ("sessions", "ok", "failed"):
        end = re.search(rf"\b{column}\b", header).end()  # type: ignore[union-attr]
        assert all(row[end - 1].isdigit() and row[end : end + 1] in (" ", "") for row in rows)
    assert len({len(line) for line in (header, *rows)}) == 1
    assert "X509_V_ERR_UNTRUSTED" in text
    assert "top reasons" in text


def test_summary_days() -> None:
    noon = NOON + 3 * 86400  # 2026-12-01
    assert summary_days(None, None, noon)[0] == DAY - datetime.timedelta(days=3)
    assert summary_days(None, 2, noon) == [
        NEXT + datetime.timedelta(days=1),
        NEXT + datetime.timedelta(days=2),
    ]
    assert summary_days("2026-11-28", None, noon) == [DAY]


def test_empty_summary_says_so() -> None:
    text = render_text(summarize_counts([], [DAY]))
    assert "no sessions recorded" in text


# --- the CLI -----------------------------------------------------------------------------------


def write_config(tmp_path: Path) -> Path:
    """A config whose state holds `day_results()` and one failure the next day, written through
    the relay's own store layer."""
    state = tmp_path / "state"
    config = tmp_path / "stsguard.toml"
    config.write_text(f'[relay]\nstate_dir = "{state}"\n[tlsrpt]\ncontact_info = "t@r.example"\n')
    stores = open_state(load_config(config).state_url, front=False)
    sink = CountingSink(stores.reports, clock=lambda: 0.0)
    for result in [*day_results(), sts(ResultType.CERTIFICATE_EXPIRED, when=NOON + 86400)]:
        sink.record(result)
    sink.flush()
    stores.close()
    return config


def test_cli_summary_table_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path)
    assert main(["tlsrpt", "summary", "--date", DAY.isoformat(), "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "2026-11-28 (UTC, 1 day)" in out
    assert re.search(r"^example\.org +6 +3 +3 +50\.0%$", out, re.M), out
    args = ["tlsrpt", "summary", "--json", "--date", DAY.isoformat(), "--config", str(config)]
    assert main(args) == 0
    doc = json.loads(capsys.readouterr().out)
    (ex,) = [g for g in doc["groups"] if g["name"] == "example.org"]
    assert (ex["ok"], ex["failed"]) == (3, 3)
    assert ex["by_day"] == [{"day": "2026-11-28", "ok": 3, "failed": 3}]
    assert ex["top_reasons"][0] == {"reason": "X509_V_ERR_UNTRUSTED", "failed": 2}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--days", "0"], "--days: expected 1 to 366"),
        (["--date", "2026-11-28", "--days", "3"], "not allowed with argument"),
        (["--input", "/nonexistent/report.json"], "cannot read /nonexistent/report.json"),
        (["--input", str(PEERS / "SOURCE.md")], "not a TLS-RPT report"),
        (["--input", str(PEERS / "parsedmarc-mail.ru.json"), "--days", "2"], "leave out"),
    ],
)
def test_cli_summary_bad_input_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    config = write_config(tmp_path)
    assert main(["tlsrpt", "summary", *extra, "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert message in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["show", "--days", "3"], "--days is for summary"),
        (["send", "--html", "x.html"], "--html is for summary"),
        (["show", "--input", "r.json"], "--input is for summary"),
        (["show", "--force"], "--force is for send"),
    ],
)
def test_summary_options_elsewhere_are_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    config = write_config(tmp_path)
    assert main(["tlsrpt", *argv, "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert message in err


def test_cli_summary_of_received_reports_per_sending_organisation(
    capsys: pytest.CaptureFixture[str],
) -> None:
    files = sorted(str(p) for p in PEERS.glob("parsedmarc-*"))
    assert main(["tlsrpt", "summary", "--json", "--input", *files]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["group_kind"] == "sending organisation"
    by_name = {g["name"]: g for g in doc["groups"]}
    assert set(by_name) == {
        "Google Inc.",
        "Mail.ru",
        "Company-X",
        "Example Inc.",
        "Reporter Example",
    }
    assert (by_name["Company-X"]["ok"], by_name["Company-X"]["failed"]) == (5326, 303)
    assert by_name["Company-X"]["by_result_type"]["starttls-not-supported"] == 200
    assert by_name["Google Inc."]["policy_domains"] == ["cardinalhealth.ca"]
    assert main(["tlsrpt", "summary", "--input", *files]) == 0
    out, err = capsys.readouterr()
    assert err == ""  # no warning about a state directory: --input does not read one
    assert "TLS-RPT summary per sending organisation" in out
    assert re.search(r"^Company-X +5629 +5326 +303 +5\.4%$", out, re.M), out


# --- the HTML page in a real browser ------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class _Dom(HTMLParser):
    """The parts of the rendered DOM the test checks (stdlib parser on Chromium's --dump-dom)."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[tuple[str, dict[str, str]]] = []
        self.sections: list[str] = []
        self.bars: list[tuple[str, str, str, int]] = []  # (section, class, day, count)
        self.overview_rows: list[list[str]] = []
        self.external: list[str] = []
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self.tags: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.tags.add(tag)
        for key in ("src", "href"):
            if key in a:
                self.external.append(f"{tag} {key}={a[key]}")
        if tag == "section":
            self.sections.append(a.get("data-name", ""))
        if tag == "rect":
            self.bars.append((self.sections[-1], a["class"], a["data-day"], int(a["data-count"])))
        in_overview = any(t == "table" and x.get("id") == "overview" for t, x in self.stack)
        if tag == "tr" and in_overview:
            self._row = []
        if tag == "td" and self._row is not None:
            self._cell = []
        self.stack.append((tag, a))

    def handle_endtag(self, tag: str) -> None:
        while self.stack:
            open_tag, _ = self.stack.pop()
            if open_tag == tag:
                break
        if tag == "td" and self._cell is not None and self._row is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        if tag == "tr" and self._row is not None:
            if self._row:
                self.overview_rows.append(self._row)
            self._row = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        if "url(" in data or "@import" in data:
            self.external.append(data.strip()[:80])


def rendered_dom(page: Path, tmp_path: Path) -> str:
    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed here (.ci/run installs it with apt)")
    run = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'chromium-profile'}",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    return run.stdout


def test_html_page_renders_in_chromium_with_tables_and_a_chart_per_domain(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path)
    page = tmp_path / "summary.html"
    args = ["tlsrpt", "summary", "--date", DAY.isoformat(), "--config", str(config)]
    assert main([*args, "--html", str(page)]) == 0
    assert "wrote " in capsys.readouterr().err
    dom = _Dom()
    dom.feed(rendered_dom(page, tmp_path))
    assert {"html", "body", "table", "svg", "rect", "section"} <= dom.tags
    assert dom.external == []  # self-contained: no external scripts, styles, images or fonts
    assert dom.sections == ["example.org", "plain.example"]
    assert dom.overview_rows == [
        ["example.org", "6", "3", "3", "50.0%"],
        ["plain.example", "2", "2", "0", "0.0%"],
    ]
    assert ("example.org", "ok", "2026-11-28", 3) in dom.bars
    assert ("example.org", "failed", "2026-11-28", 3) in dom.bars
    assert ("plain.example", "failed", "2026-11-28", 0) in dom.bars


def test_html_chart_has_one_bar_pair_per_day_scaled_to_the_busiest() -> None:
    page = render_html(summary_of(two_days()), generated="now")
    dom = _Dom()
    dom.feed(page)
    ex = [(c, d, n) for s, c, d, n in dom.bars if s == "example.org"]
    assert ex == [
        ("ok", "2026-11-28", 3),
        ("failed", "2026-11-28", 3),
        ("ok", "2026-11-29", 1),
        ("failed", "2026-11-29", 1),
    ]
    heights = [
        int(h)
        for h in re.findall(r'data-count="\d+" x="[\d.]+" y="\d+" width="\d+" height="(\d+)"', page)
    ]
    assert heights[:4] == [120, 120, 40, 40]
    assert "<script" not in page
    assert summary_to_json(summary_of(two_days()))["days"] == ["2026-11-28", "2026-11-29"]
