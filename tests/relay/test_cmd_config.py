"""`stsguard config [--non-default]`: the effective config, like `postconf` / `postconf -n`."""

from __future__ import annotations

from pathlib import Path

from relay.config import load_config
from tests.cli import run_cli

CONFIG = """\
[relay]
hostname = "relay.example.net"
state_dir = "/var/lib/stsguard"
idle_timeout = 120
[delivery]
queue_lifetime = "2d"
[state]
url = "postgresql://stsguard:s3cret@db.example.net/stsguard"
[domains."Example.ORG"]
tls = "verify"
"""


def test_non_default_shows_what_the_file_changes_without_secrets(tmp_path: Path) -> None:
    path = tmp_path / "stsguard.toml"
    path.write_text(CONFIG)
    run = run_cli("config", "--non-default", "--config", str(path))
    assert (run.returncode, run.stderr) == (0, "")
    assert run.stdout == (
        f"# stsguard config: {path}, keys that differ from the defaults\n"
        "[relay]\n"
        'hostname = "relay.example.net"\n'
        'state_dir = "/var/lib/stsguard"\n'
        'idle_timeout = "2m"\n'
        "\n"
        "[delivery]\n"
        'queue_lifetime = "2d"\n'
        "\n"
        "[state]\n"
        'url = "postgresql://stsguard:***@db.example.net/stsguard"\n'
        "\n"
        '[domains."example.org"]\n'
        'tls = "verify"\n'
    )


def test_every_key_is_shown_and_reads_back_as_the_same_config(tmp_path: Path) -> None:
    path = tmp_path / "stsguard.toml"
    path.write_text(CONFIG.replace(":s3cret", ""))
    run = run_cli("config", "--config", str(path))
    assert run.returncode == 0
    again = tmp_path / "again.toml"
    again.write_text(run.stdout)
    assert load_config(again) == load_config(path)
    assert "max_recipients = 1000\n" in run.stdout  # defaults too


def test_defaults_ignore_the_file(tmp_path: Path) -> None:
    path = tmp_path / "stsguard.toml"
    path.write_text(CONFIG)
    run = run_cli("config", "--defaults", "--config", str(path))
    assert run.returncode == 0
    assert run.stdout.startswith("# stsguard config: built-in defaults, every key\n")
    assert 'queue_lifetime = "5d"\n' in run.stdout
    assert "[domains." not in run.stdout
