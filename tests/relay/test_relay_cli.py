"""`stsguard relay` as a user runs it: starts, serves, stops on SIGTERM; bad set-ups: one line."""

from __future__ import annotations

import json
import os
import signal
import smtplib
import socket
import subprocess
import sys
import time
from pathlib import Path

from lab.pki import LabCA
from lab.world import free_port
from relay.intake.auth import hash_password


def relay_cmd(config: Path) -> list[str]:
    return [sys.executable, "-m", "relay.cli", "relay", "--config", str(config)]


def test_relay_starts_answers_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "relay.toml"
    config.write_text(
        f'[relay]\nlisten = "127.0.0.1:{port}"\nstate_dir = "{tmp_path / "state"}"\n'
        'log_format = "json"\n[tlsrpt]\nenabled = false\n[dns]\nnameservers = ["127.0.0.1:9"]\n'
    )
    proc = subprocess.Popen(relay_cmd(config), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                with smtplib.SMTP("127.0.0.1", port, timeout=5) as client:
                    code, _ = client.ehlo("upstream.test")
                    assert code == 250
                    assert client.has_extn("size")
                    assert client.has_extn("pipelining")
                break
            except OSError:
                assert time.monotonic() < deadline, "relay did not start listening"
                time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err.decode()
    assert b"Traceback" not in err
    assert b'"relay.stopped"' in err


def test_port_in_use_is_one_line_and_exit_2(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config = tmp_path / "relay.toml"
        config.write_text(
            f'[relay]\nlisten = "127.0.0.1:{port}"\nstate_dir = "{tmp_path / "state"}"\n'
            'hostname = "relay.example.net"\n[tlsrpt]\ncontact_info = "mailto:t@example.net"\n'
        )
        run = subprocess.run(relay_cmd(config), capture_output=True, text=True, timeout=30)
    assert run.returncode == 2
    assert run.stderr.startswith("stsguard: error: [relay].listen: cannot listen on")
    assert run.stderr.count("\n") == 1


def test_ready_notification_journal_lines_and_start_line(tmp_path: Path) -> None:
    """Under systemd (`Type=notify`): READY=1 once listening, STOPPING=1 on SIGTERM, over a
    real datagram socket; journal lines with priorities; version and config in relay.started."""
    from importlib.metadata import version

    port = free_port()
    config = tmp_path / "relay.toml"
    config.write_text(
        f'[relay]\nlisten = "127.0.0.1:{port}"\nstate_dir = "{tmp_path / "state"}"\n'
        'hostname = "localhost"\nlog_format = "journal"\n[dns]\nnameservers = ["127.0.0.1:9"]\n'
    )
    sock_path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(sock_path))
        notify.settimeout(60)
        env = {**os.environ, "NOTIFY_SOCKET": str(sock_path)}
        proc = subprocess.Popen(relay_cmd(config), stderr=subprocess.PIPE, env=env)
        try:
            ready = notify.recv(4096).decode().splitlines()
            assert ready[0] == "READY=1"
            assert ready[1] == f"STATUS=listening on 127.0.0.1:{port}"
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:  # listening by now
                assert client.noop()[0] == 250
        finally:
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=30)
        assert notify.recv(4096) == b"STOPPING=1"
    assert proc.returncode == 0
    lines = err.decode().splitlines()
    started = next(line for line in lines if line.startswith("<6>relay.started "))
    assert f"version={version('stsguard')}" in started
    assert f"config={config}" in started
    warnings = [line for line in lines if line.startswith("<4>relay.config_warning ")]
    assert any("[relay].hostname is 'localhost'" in line for line in warnings)
    assert any("TLS-RPT reports are counted but not sent" in line for line in warnings)
    assert all(line[:3] in ("<6>", "<4>") for line in lines), lines


def test_json_log_stays_json_after_an_auth(tmp_path: Path, lab_ca: LabCA) -> None:
    """After an AUTH every line of a JSON log is JSON (aiosmtpd's `Session.login_data is
    deprecated` was plain text; any library line now goes through structlog, tests/relay/
    test_log.py has that line itself)."""
    cert = lab_ca.issue("relay.test", "127.0.0.1")
    users = tmp_path / "users"
    users.write_text(f"alice:{hash_password('s3cret', iterations=1000)}\n")
    port = free_port()
    config = tmp_path / "relay.toml"
    config.write_text(
        f'[relay]\nlisten = "127.0.0.1:{port}"\nstate_dir = "{tmp_path / "state"}"\n'
        f'hostname = "relay.test"\nlog_format = "json"\ntls_cert_file = "{cert.cert_file}"\n'
        f'tls_key_file = "{cert.key_file}"\nauth_file = "{users}"\n'
        '[tlsrpt]\nenabled = false\n[dns]\nnameservers = ["127.0.0.1:9"]\n'
    )
    proc = subprocess.Popen(relay_cmd(config), stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                client = smtplib.SMTP("127.0.0.1", port, timeout=10)
                break
            except OSError:
                assert time.monotonic() < deadline, "relay did not start listening"
                time.sleep(0.1)
        with client:
            client.starttls(context=lab_ca.client_context())
            client.login("alice", "s3cret")
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    events = [json.loads(line) for line in err.decode().splitlines()]  # every line is JSON
    assert any(e["event"] == "intake.auth" and e["success"] for e in events)
