"""`stsguard tlsrpt summary --received`: the reports others sent about our domains, as kept, per
sending organisation, result type and MX host, as text, JSON and the HTML page."""

from __future__ import annotations

import datetime
import json
import time
from pathlib import Path

from relay.state.database import SqliteDatabase
from relay.state.received_store import SqlReceivedReportStore
from tests.cli import run_cli
from tlsrpt_emit.inbound import accept_report

PEERS = Path(__file__).parent.parent / "tlsrpt_emit" / "peer_reports"


def dated(name: str, day: datetime.date) -> bytes:
    """A sample report moved to `day` (the view shows the last days only)."""
    doc = json.loads((PEERS / name).read_bytes())
    doc["date-range"] = {
        "start-datetime": f"{day}T00:00:00Z",
        "end-datetime": f"{day}T23:59:59Z",
    }
    return json.dumps(doc).encode()


def test_summary_of_kept_reports(tmp_path: Path) -> None:
    config = tmp_path / "stsguard.toml"
    config.write_text(f'[relay]\nstate_dir = "{tmp_path / "state"}"\n')
    empty = run_cli("tlsrpt", "summary", "--received", "--json", "--config", str(config))
    assert empty.returncode == 0, empty.stderr
    assert json.loads(empty.stdout)["groups"] == []

    yesterday = datetime.datetime.now(datetime.UTC).date() - datetime.timedelta(days=1)
    store = SqlReceivedReportStore(SqliteDatabase(tmp_path / "state" / "state.sqlite3"))
    for name in (
        "shape-microsoft-tlsa.json",
        "parsedmarc-mail.ru.json",
        "shape-no-contact-info.json",
    ):
        received = accept_report(
            dated(name, yesterday), ["example.com"], via="https", now=time.time()
        )
        assert store.add(received)
    old = accept_report(
        dated("parsedmarc-smtp_tls.json", yesterday - datetime.timedelta(days=30)),
        ["example.com"],
        via="https",
        now=time.time(),
    )
    store.add(old)
    store.db.close()

    shown = run_cli("tlsrpt", "summary", "--received", "--json", "--config", str(config))
    assert shown.returncode == 0, shown.stderr
    doc = json.loads(shown.stdout)
    groups = {g["name"]: g for g in doc["groups"]}
    assert set(groups) == {"Microsoft Corporation", "Mail.ru", "mail.example.net"}  # not the old
    text = run_cli("tlsrpt", "summary", "--received", "--config", str(config))
    assert text.returncode == 0, text.stderr
    for word in (
        "Microsoft Corporation",
        "tlsa-invalid",
        "mx1.example.com",
        "sts-policy-fetch-error",
    ):
        assert word in text.stdout
    page = tmp_path / "received.html"
    made = run_cli("tlsrpt", "summary", "--received", "--html", str(page), "--config", str(config))
    assert made.returncode == 0, made.stderr
    assert "Microsoft Corporation" in page.read_text()
    other = run_cli(
        "tlsrpt",
        "summary",
        "--received",
        "--json",
        "--domain",
        "other.example",
        "--config",
        str(config),
    )
    assert json.loads(other.stdout)["groups"] == []
    both = run_cli(
        "tlsrpt",
        "summary",
        "--received",
        "--input",
        str(PEERS / "parsedmarc-mail.ru.json"),
        "--config",
        str(config),
    )
    assert both.returncode == 2
