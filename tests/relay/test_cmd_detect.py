"""`stsguard detect list|forget` as a user runs it: a subprocess on a config file."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from relay.state.database import SqliteDatabase
from relay.state.history_store import SqlTlsHistoryStore
from tests.cli import run_cli


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "stsguard.toml"
    path.write_text(f'[relay]\nstate_dir = "{tmp_path / "state"}"\n[detect]\nhistory_days = 10\n')
    return path


def stsguard(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("detect", *args, "--config", str(config))


def test_list_without_state_dir_creates_nothing(config_file: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    text = stsguard(config_file, "list")
    assert text.returncode == 0, text.stderr
    assert text.stdout.strip() == f"no remembered TLS ({state / 'state.sqlite3'} does not exist)"
    listed = stsguard(config_file, "list", "--json")
    assert (listed.returncode, json.loads(listed.stdout)) == (0, [])
    forgot = stsguard(config_file, "forget", "mx.example.org")
    assert forgot.returncode == 1  # a problem found, as `queue delete` of an unknown id
    assert forgot.stderr.splitlines()[0] == "stsguard: no remembered TLS for 'mx.example.org'"
    # Looking at a state directory no relay has used says so (probably the wrong config).
    assert text.stderr.startswith(
        f"stsguard: warning: no relay has used the state directory {state} (config "
    )
    assert not state.exists()


def test_list_empty_store(config_file: Path, tmp_path: Path) -> None:
    SqlTlsHistoryStore(SqliteDatabase(tmp_path / "state" / "state.sqlite3")).close()
    empty = stsguard(config_file, "list")
    assert (empty.returncode, empty.stdout.strip()) == (0, "no remembered TLS")


def test_list_forget(config_file: Path, tmp_path: Path) -> None:
    store = SqlTlsHistoryStore(SqliteDatabase(tmp_path / "state" / "state.sqlite3"))
    now = 1_800_000_000.0  # 2027-01-15T08:00:00Z
    store.record("MX1.example.org.", offered_starttls=True, valid_cert=True, now=now)
    store.record("mx2.example.org", offered_starttls=False, valid_cert=False, now=now)
    store.close()

    text = stsguard(config_file, "list")
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[0] == (
        "mx1.example.org  starttls=2027-01-15T08:00:00+00:00"
        "  valid-cert=2027-01-15T08:00:00+00:00  seen=2027-01-15T08:00:00+00:00"
        "  remembered-until=2027-01-25T08:00:00+00:00"
    )
    assert "starttls=never" in lines[1]
    assert "remembered-until=-" in lines[1]
    assert lines[-1] == "2 host(s); remembered for 10 day(s)"

    listed = stsguard(config_file, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    hosts = json.loads(listed.stdout)
    assert [h["host"] for h in hosts] == ["mx1.example.org", "mx2.example.org"]
    assert hosts[0] == {
        "host": "mx1.example.org",
        "last_starttls_at": "2027-01-15T08:00:00+00:00",
        "last_valid_cert_at": "2027-01-15T08:00:00+00:00",
        "last_seen_at": "2027-01-15T08:00:00+00:00",
        "remembered_until": "2027-01-25T08:00:00+00:00",
    }
    assert hosts[1]["last_starttls_at"] is None
    assert hosts[1]["remembered_until"] is None

    forgot = stsguard(config_file, "forget", "MX1.Example.org.")
    assert (forgot.returncode, forgot.stdout.strip()) == (0, "forgot mx1.example.org")
    listed = stsguard(config_file, "list", "--json")
    assert [h["host"] for h in json.loads(listed.stdout)] == ["mx2.example.org"]


def test_forget_unknown_host_is_one_line(config_file: Path) -> None:
    result = stsguard(config_file, "forget", "nowhere.example.org")
    assert result.returncode == 1  # as `queue delete` of an unknown id
    lines = result.stderr.strip().splitlines()
    assert lines[0] == "stsguard: no remembered TLS for 'nowhere.example.org'"
    assert lines[1:] == [line for line in lines[1:] if line.startswith("stsguard: warning: ")]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("forget",), "detect forget: give the MX host name to forget"),
        (("list", "mx.example.org"), "detect list: takes no host name"),
        (("forget", "bad host!"), "detect forget: 'bad host!' is not a host name"),
    ],
)
def test_usage_errors(config_file: Path, args: tuple[str, ...], message: str) -> None:
    result = stsguard(config_file, *args)
    assert result.returncode == 2
    assert result.stderr.strip() == f"stsguard: error: {message}"


def test_unusable_state_is_one_line(tmp_path: Path) -> None:
    state = tmp_path / "state"
    (state / "state.sqlite3").mkdir(parents=True)
    config = tmp_path / "c.toml"
    config.write_text(f'[relay]\nstate_dir = "{state}"\n')
    result = stsguard(config, "list")
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "cannot open the state file" in result.stderr
    assert "Traceback" not in result.stderr
