"""`stsguard relay` as a user runs it: starts, serves, stops on SIGTERM; bad set-ups: one line."""

from __future__ import annotations

import signal
import smtplib
import socket
import subprocess
import sys
import time
from pathlib import Path

from lab.world import free_port


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
