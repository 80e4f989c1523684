"""`stsguard tlsrpt show|send` on a state file, with the lab DNS and the HTTPS collector."""

from __future__ import annotations

import asyncio
import datetime
import json
from pathlib import Path

import pytest

from lab.collector import ReportCollector
from lab.dns import LabDns
from lab.pki import LabCA
from relay.cli import main
from relay.cli.tlsrpt import parse_day
from relay.queue.spool import REPORT_MAIL_FLAGS, Spool
from tests.tlsrpt_emit.sessions import DAY, NOON, day_results
from tlsrpt_emit.sink import CountingSink
from tlsrpt_emit.store import SqliteReportStore


def write_config(tmp_path: Path, extra: str = "") -> Path:
    state = tmp_path / "state"
    store = SqliteReportStore(state / "state.sqlite3")
    sink = CountingSink(store, clock=lambda: 0.0)
    for result in day_results():
        sink.record(result)
    sink.flush()
    store.close()
    path = tmp_path / "stsguard.toml"
    path.write_text(
        f'[relay]\nstate_dir = "{state}"\n'
        '[tlsrpt]\norganization_name = "Reporter Org"\n'
        'contact_info = "mailto:tlsrpt@reporter.example"\n' + extra
    )
    return path


def test_show_prints_the_reports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path)
    assert main(["tlsrpt", "show", "--date", DAY.isoformat(), "--config", str(config)]) == 0
    reports = json.loads(capsys.readouterr().out)
    assert [r["policies"][0]["policy"]["policy-domain"] for r in reports] == [
        "example.org",
        "plain.example",
    ]
    args = ["tlsrpt", "show", "--date", DAY.isoformat(), "--domain", "Example.ORG."]
    assert main([*args, "--config", str(config)]) == 0
    one = json.loads(capsys.readouterr().out)
    assert one["organization-name"] == "Reporter Org"
    assert one["date-range"]["start-datetime"] == "2026-11-28T00:00:00Z"


def test_show_empty_day_and_default_date(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path)
    args = ["tlsrpt", "show", "--date", "2020-01-01", "--config", str(config)]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert main(["tlsrpt", "show", "--config", str(config)]) == 0
    yesterday = datetime.datetime.now(datetime.UTC).date() - datetime.timedelta(days=1)
    reports = json.loads(capsys.readouterr().out)
    if yesterday == DAY:
        assert len(reports) == 2
    for report in reports:
        assert report["date-range"]["start-datetime"] == f"{yesterday}T00:00:00Z"
    assert parse_day(None, NOON + 86400) == DAY


@pytest.mark.parametrize("bad", ["2026-13-01", "yesterday", "28.11.2026"])
def test_bad_date_is_one_line_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], bad: str
) -> None:
    config = write_config(tmp_path)
    assert main(["tlsrpt", "show", "--date", bad, "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "--date" in err


async def test_send_posts_to_https_rua(
    tmp_path: Path, lab_dns: LabDns, lab_ca: LabCA, capsys: pytest.CaptureFixture[str]
) -> None:
    collector = ReportCollector(lab_ca.issue("127.0.0.1").server_context(), statuses=[202])
    async with collector.running():
        lab_dns.add("_smtp._tls.example.org", "TXT", f"v=TLSRPTv1; rua={collector.url('/in')}")
        lab_dns.add("_smtp._tls.plain.example", "TXT", "v=TLSRPTv1; rua=mailto:r@plain.example")
        config = write_config(
            tmp_path,
            f'[dns]\nnameservers = ["{lab_dns.address}"]\ntimeout = 2\n'
            f'[tls]\nca_file = "{lab_ca.ca_file}"\n',
        )
        argv = ["tlsrpt", "send", "--date", DAY.isoformat(), "--config", str(config)]
        status = await asyncio.to_thread(main, argv)
    out = capsys.readouterr().out
    assert "example.org: delivered to https://127.0.0.1:" in out
    # The mailto report went into the relay's queue, flagged as report mail (RPT-10).
    assert "plain.example: delivered to mailto:r@plain.example" in out
    assert status == 0
    (queued,) = Spool(tmp_path / "state" / "queue").list()
    assert queued.flags == REPORT_MAIL_FLAGS
    assert [r.address for r in queued.recipients] == ["r@plain.example"]
    (got,) = collector.received
    assert got.headers["content-type"] == "application/tlsrpt+gzip"
    assert got.report()["policies"][0]["policy"]["policy-domain"] == "example.org"
