"""`stsguard tlsrpt show|send` on a state file, with the lab DNS and the HTTPS collector."""

from __future__ import annotations

import asyncio
import datetime
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from lab.collector import ReportCollector
from lab.dns import LabDns
from lab.pki import LabCA
from lab.world import LabWorld, free_port, to_toml, wait_until
from relay.app import Relay
from relay.cli import main
from relay.cli.tlsrpt import check_day_ended, parse_day
from relay.config import config_from_dict, load_config
from relay.errors import UsageError
from relay.queue.spool import REPORT_MAIL_FLAGS, Spool
from relay.reports import report_settings
from relay.running import relay_running
from relay.state.database import SqliteDatabase
from relay.state.report_store import SqlReportStore
from tests.tlsrpt_emit.sessions import DAY, NOON, day_results
from tlsrpt_emit.schedule import build_day_reports
from tlsrpt_emit.sink import CountingSink


@pytest.fixture(autouse=True)
def _structlog_back_to_defaults() -> Iterator[None]:
    """`tlsrpt send` points structlog at this test's captured stderr; undo that afterwards."""
    yield
    structlog.reset_defaults()


def write_config(tmp_path: Path, extra: str = "") -> Path:
    state = tmp_path / "state"
    seed_sessions(state)
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
    assert capsys.readouterr().out == (
        "no reports for 2020-01-01 (UTC): no sessions recorded that day (--json prints [])\n"
    )
    assert main([*args, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert main(["tlsrpt", "show", "--json", "--config", str(config)]) == 0
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
    captured = capsys.readouterr()
    out = captured.out.splitlines()
    # Per report its id, per destination what happened: https sent, mailto only queued, and no
    # relay runs on this state directory to deliver it.
    (ex_id,) = [line for line in out if line.startswith("example.org: delivered, report ")]
    assert f"  {collector.url('/in')}: sent" in out
    assert any(
        line.startswith("plain.example: queued, report 2026-11-28T00:00:00Z_plain.example_")
        for line in out
    )
    (queued_line,) = [line for line in out if line.startswith("  mailto:r@plain.example: ")]
    assert queued_line.startswith("  mailto:r@plain.example: queued (no relay is running on ")
    assert "delivered to" not in captured.out
    # Log lines go to stderr, never among the results.
    assert all(not line.startswith("{") and "tlsrpt." not in line for line in out)
    assert status == 0
    (queued,) = Spool(tmp_path / "state" / "queue").list()
    assert queued.flags == REPORT_MAIL_FLAGS
    assert [r.address for r in queued.recipients] == ["r@plain.example"]
    (got,) = collector.received
    assert got.headers["content-type"] == "application/tlsrpt+gzip"
    body = got.report()
    assert body["policies"][0]["policy"]["policy-domain"] == "example.org"
    # `show` before and after gives the id that was sent.
    assert ex_id.endswith(body["report-id"])
    assert (
        main(
            [
                "tlsrpt",
                "show",
                "--date",
                DAY.isoformat(),
                "--domain",
                "example.org",
                "--config",
                str(config),
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["report-id"] == body["report-id"]
    # A second run sends nothing again and says so.
    assert await asyncio.to_thread(main, argv) == 0
    again = capsys.readouterr().out.splitlines()
    assert f"  {collector.url('/in')}: done in an earlier run" in again
    assert len(collector.received) == 1


def test_show_gives_the_id_send_will_send(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path)
    args = ["tlsrpt", "show", "--date", DAY.isoformat(), "--config", str(config)]
    assert main(args) == 0
    first = [r["report-id"] for r in json.loads(capsys.readouterr().out)]
    assert main(args) == 0
    assert [r["report-id"] for r in json.loads(capsys.readouterr().out)] == first
    store = SqlReportStore(SqliteDatabase(tmp_path / "state" / "state.sqlite3"))
    settings = report_settings(load_config(config))
    assert [r.report_id for r in build_day_reports(store, DAY, settings)] == first


def test_send_refuses_a_day_that_has_not_ended(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path)
    today = datetime.datetime.now(datetime.UTC).date()
    for day in (today, today + datetime.timedelta(days=3)):
        argv = ["tlsrpt", "send", "--date", day.isoformat(), "--config", str(config)]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1
        assert f"{day} (UTC) has not ended" in err
        assert "--force" in err
    store = SqlReportStore(SqliteDatabase(tmp_path / "state" / "state.sqlite3"))
    assert store.get_sent(today, "example.org") is None  # nothing marked done


def test_send_force_says_what_it_does(
    tmp_path: Path, lab_dns: LabDns, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, f'[dns]\nnameservers = ["{lab_dns.address}"]\ntimeout = 2\n')
    today = datetime.datetime.now(datetime.UTC).date()
    argv = ["tlsrpt", "send", "--force", "--date", today.isoformat(), "--config", str(config)]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert f"--force: sending {today} before it has ended" in captured.err
    assert "sessions after now are never reported" in captured.err
    assert captured.out.strip() == f"no sessions recorded on {today}"


def test_check_day_ended() -> None:
    midnight = datetime.datetime(2026, 11, 29, tzinfo=datetime.UTC).timestamp()
    check_day_ended(DAY, midnight, force=False)  # 2026-11-28 ended at 2026-11-29 00:00Z
    with pytest.raises(UsageError, match="has not ended"):
        check_day_ended(DAY, midnight - 1, force=False)


async def test_relay_holds_the_running_marker(tmp_path: Path) -> None:
    config = config_from_dict(
        {
            "relay": {"state_dir": str(tmp_path / "s"), "listen": f"127.0.0.1:{free_port()}"},
            "tlsrpt": {"enabled": False},
        }
    )
    assert not relay_running(config.relay.state_dir)
    async with Relay(config).running():
        assert relay_running(config.relay.state_dir)
    assert not relay_running(config.relay.state_dir)


def seed_sessions(state: Path) -> None:
    """The day's sessions (DAY) in the state database under `state`."""
    store = SqlReportStore(SqliteDatabase(state / "state.sqlite3"))
    sink = CountingSink(store, clock=lambda: 0.0)
    for result in day_results():
        sink.record(result)
    sink.flush()
    store.close()


async def test_a_mailto_report_sent_while_the_relay_runs_is_delivered_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The command queues the report mail in the spool and tells the running relay through its
    control socket; the relay never rescans the spool, so without that it waited for a
    restart. The first line says `queued`: the relay has yet to deliver it."""
    async with LabWorld(tmp_path / "world").running() as world:
        mx = await world.add_mx("mx.reports.test", "127.0.0.31")
        world.publish_mx("reports.test", [(10, "mx.reports.test")])
        world.publish_tlsrpt("plain.example", "mailto:r@reports.test")
        seed_sessions(tmp_path / "state")
        settings = world.relay_settings(tmp_path / "state", relay={"stop_timeout": "2s"})
        settings["tlsrpt"]["enabled"] = False  # the relay's own sender stays out of the way
        path = tmp_path / "stsguard.toml"
        path.write_text(to_toml(settings))
        relay = Relay(config_from_dict(settings))
        async with relay.running():
            await asyncio.wait_for(relay.runner.loaded.wait(), 30)
            argv = ["tlsrpt", "send", "--date", DAY.isoformat(), "--domain", "plain.example"]
            status = await asyncio.to_thread(main, [*argv, "--config", str(path)])
            await wait_until(lambda: len(mx.messages) == 1, 30)
    # The in-process relay logs to the same stdout: the command's lines are these two.
    out = capsys.readouterr().out.splitlines()
    first = out.index(next(line for line in out if line.startswith("plain.example: ")))
    assert status == 0
    assert out[first].startswith("plain.example: queued, report 2026-11-28T00:00:00Z_plain.example")
    assert out[first + 1] == "  mailto:r@reports.test: queued (the relay delivers it)"
    (mail,) = mx.messages
    assert b"application/tlsrpt+gzip" in mail.data
