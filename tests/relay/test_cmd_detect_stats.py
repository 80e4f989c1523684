"""`stsguard detect stats` as a user runs it: the stored prevalence as shares, worst first."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from detect.prevalence import Batch, SessionSeen, count_session
from relay.state.database import SqliteDatabase
from relay.state.prevalence_store import SqlPrevalenceStore
from tests.cli import run_cli

DAY = 86400.0


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "stsguard.toml"
    path.write_text(f'[relay]\nstate_dir = "{tmp_path / "state"}"\n')
    return path


def stats(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("detect", "stats", *args, "--config", str(config))


def seed(tmp_path: Path) -> None:
    now = time.time()
    batch: Batch = {}
    for token in ("XXXXXXXA", "XXXXXXXA", "XXXXXXXA", ""):
        count_session(
            batch,
            SessionSeen(
                "mx.bad.example",
                "203.0.113.9",
                now,
                not token,
                garbled_token=token,
                plaintext=bool(token),
                domain="bad.example",
            ),
        )
    count_session(batch, SessionSeen("mx.good.example", "198.51.100.1", now, True))
    count_session(batch, SessionSeen("mx.old.example", "192.0.2.1", now - 30 * DAY, False))
    store = SqlPrevalenceStore(SqliteDatabase(tmp_path / "state" / "state.sqlite3"))
    store.add(batch)
    store.db.close()


def test_stats_without_state_creates_nothing(config_file: Path, tmp_path: Path) -> None:
    shown = stats(config_file)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("no sessions counted since ")
    assert json.loads(stats(config_file, "--json").stdout)["hosts"] == []
    assert not (tmp_path / "state").exists()


def test_stats_text_and_json(config_file: Path, tmp_path: Path) -> None:
    seed(tmp_path)
    shown = stats(config_file)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    header = lines.index(next(line for line in lines if line.startswith("mx host")))
    assert lines[header + 1].split()[:2] == ["mx.bad.example", "4"]
    assert "75%" in lines[header + 1]
    assert lines[header + 2].strip() == "garbled: XXXXXXXA x3"
    assert "mx.old.example" not in shown.stdout  # older than the 7 days shown
    assert "203.0.113.0/24" in shown.stdout

    doc = json.loads(stats(config_file, "--json", "--days", "60").stdout)
    assert [h["name"] for h in doc["hosts"]] == [
        "mx.bad.example",
        "mx.old.example",
        "mx.good.example",
    ]
    bad = doc["hosts"][0]
    assert bad["shares"]["garbled"] == 0.75
    assert bad["shares"]["plaintext"] == 0.75
    assert bad["details"]["garbled"] == {"XXXXXXXA": 3}
    assert doc["networks"][0]["name"] == "203.0.113.0/24"
    assert len(doc["daily"]) == 2

    one = json.loads(stats(config_file, "--json", "--mx", "MX.Good.Example.").stdout)
    assert [h["name"] for h in one["hosts"]] == ["mx.good.example"]
    assert [d["name"] for d in doc["domains"]] == ["bad.example"]
    assert doc["domains"][0]["shares"]["garbled"] == 0.75
    to_domain = stats(config_file, "--domain", "Bad.Example")
    assert to_domain.returncode == 0, to_domain.stderr
    assert "bad.example" in to_domain.stdout
    assert "mx.bad.example" not in to_domain.stdout  # hosts are another view


@pytest.mark.parametrize(
    "args", [["--days", "0"], ["mx.example.org"], ["--days", "x"], ["--mx", "a", "--domain", "b"]]
)
def test_bad_arguments_are_one_line(config_file: Path, args: list[str]) -> None:
    bad = stats(config_file, *args)
    assert bad.returncode == 2
    assert "Traceback" not in bad.stderr


def test_the_html_summary_shows_prevalence_beside_tlsrpt(config_file: Path, tmp_path: Path) -> None:
    """The page `stsguard tlsrpt summary --html` writes has the prevalence section: a chart per
    day and the worst host first, as headless Chromium renders it."""
    from tests.tlsrpt_emit.test_summary import rendered_dom

    seed(tmp_path)
    page = tmp_path / "summary.html"
    made = run_cli("tlsrpt", "summary", "--html", str(page), "--config", str(config_file))
    assert made.returncode == 0, made.stderr
    dom = rendered_dom(page, tmp_path)
    assert 'data-name="downgrade prevalence"' in dom
    today = time.strftime("%Y-%m-%d", time.gmtime())
    assert f'data-kind="sessions" data-day="{today}" data-count="5"' in dom
    assert f'data-kind="downgraded" data-day="{today}" data-count="3"' in dom
    hosts = dom.index("per MX host")
    assert dom.index("mx.bad.example", hosts) < dom.index("mx.good.example", hosts)
