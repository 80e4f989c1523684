"""`stsguard state migrate --to URL`: a relay's SQLite state moved into PostgreSQL, once."""

from __future__ import annotations

from pathlib import Path

from detect.prevalence import Batch, SessionSeen, count_session
from mtasts.model import Mode, Policy
from mtasts.state import CacheEntry, FetchFailure
from relay.state.stores import open_state
from relay.state_url import parse_state_url
from tests.cli import run_cli
from tests.tlsrpt_emit.sessions import DAY, day_results
from tlsrpt_emit.inbound import accept_report
from tlsrpt_emit.sink import CountingSink
from tlsrpt_emit.store import SentReport

POLICY = Policy(Mode.ENFORCE, 86400, ("mx.example.org",), "version: STSv1\n")
NOW = 1_800_000_000.0
PEERS = Path(__file__).parent.parent.parent / "tlsrpt_emit" / "peer_reports"


def relay_with_state(tmp_path: Path) -> Path:
    """A config whose SQLite state holds a bit of everything; the config file."""
    state_dir = tmp_path / "state"
    state = open_state(parse_state_url("", state_dir / "state.sqlite3"))
    state.policies.put(CacheEntry.fetched("example.org", POLICY, "1", NOW))
    state.policies.record_failure("bad.example", FetchFailure("9", NOW, "sts-webpki-invalid", "x"))
    state.history.record("mx.example.org", offered_starttls=True, valid_cert=True, now=NOW)
    sink = CountingSink(state.reports, clock=lambda: NOW)
    for result in day_results():
        sink.record(result)
    sink.flush()
    state.reports.put_sent(SentReport(day=DAY, domain="example.org", report_id="r1", attempts=1))
    assert state.prevalence is not None
    batch: Batch = {}
    count_session(batch, SessionSeen("mx.example.org", "192.0.2.1", NOW, False, garbled_token="X"))
    state.prevalence.add(batch)
    assert state.received is not None
    mail_ru = PEERS / "parsedmarc-mail.ru.json"
    state.received.add(accept_report(mail_ru.read_bytes(), ["example.com"], via="https", now=NOW))
    state.close()
    config = tmp_path / "stsguard.toml"
    config.write_text(f'[relay]\nstate_dir = "{state_dir}"\n')
    return config


def test_migrate_moves_everything_once(tmp_path: Path, pg_url: str) -> None:
    config = relay_with_state(tmp_path)
    source = open_state(parse_state_url("", tmp_path / "state" / "state.sqlite3"))
    expected = (
        source.policies.list(),
        source.history.all(),
        source.reports.counts(DAY),
        source.reports.get_sent(DAY, "example.org"),
        source.prevalence.rows("2000-01-01"),  # type: ignore[union-attr]
        source.received.documents(0.0),  # type: ignore[union-attr]
    )
    source.close()

    moved = run_cli("state", "migrate", "--to", pg_url, "--config", str(config))
    assert moved.returncode == 0, moved.stderr
    assert "moved 1 policies, 1 failed fetches, 1 remembered hosts, 8 counted sessions" in (
        moved.stdout
    )
    target = open_state(parse_state_url(pg_url, Path()), front=False)
    try:
        got = (
            target.policies.list(),
            target.history.all(),
            target.reports.counts(DAY),
            target.reports.get_sent(DAY, "example.org"),
            target.prevalence.rows("2000-01-01"),  # type: ignore[union-attr]
            target.received.documents(0.0),  # type: ignore[union-attr]
        )
        assert got == expected
        assert len(got[-2]) == 3  # sessions, garbled, downgraded
        assert len(got[-1]) == 1  # the received report
        assert target.policies.last_failure("bad.example", "9") is not None
    finally:
        target.close()

    again = run_cli("state", "migrate", "--to", pg_url, "--config", str(config))
    assert again.returncode == 2
    assert "already moved" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1


def test_migrate_bad_input_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "stsguard.toml"
    config.write_text(f'[relay]\nstate_dir = "{tmp_path / "nothing"}"\n')
    for to, words in (
        ("mysql://x/y", "expected sqlite:///path or postgresql://"),
        (f"sqlite://{tmp_path / 'new.sqlite3'}", "no state file here"),
    ):
        result = run_cli("state", "migrate", "--to", to, "--config", str(config))
        assert result.returncode == 2, result
        assert words in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    missing = run_cli("state", "migrate", "--config", str(config))
    assert missing.returncode == 2
