"""`stsguard check` as an administrator runs it: beside a running relay, on a bad config, as a
user who may not read the state directory. Every command runs as a subprocess."""

from __future__ import annotations

import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.pki import LabCA
from relay.queue.spool import Spool
from tests.cli import run_cli, run_cli_as
from tests.relay.test_cli_main import free_port, good_config


def wait_listening(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=5) as client:
                client.noop()
            return
        except OSError:
            assert proc.poll() is None, "relay exited"
            assert time.monotonic() < deadline, "relay did not start listening"
            time.sleep(0.1)


def test_check_beside_the_running_relay_checks_the_file_only(tmp_path: Path) -> None:
    """`stsguard check && systemctl reload stsguard`: the running relay's own addresses are no
    error (it holds state_dir/relay.lock); another program on them still is."""
    config = good_config(tmp_path, relay_extra=f'metrics_listen = "127.0.0.1:{free_port()}"\n')
    port = int(config.read_text().split('listen = "127.0.0.1:')[1].split('"')[0])
    relay = subprocess.Popen(
        [sys.executable, "-m", "relay.cli", "relay", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_listening(port, relay)
        deadline = time.monotonic() + 30
        while not (tmp_path / "state" / "relay.lock").exists():
            assert time.monotonic() < deadline
            time.sleep(0.1)
        run = run_cli("check", "--config", str(config))
        assert run.returncode == 0, run.stderr
        assert "cannot listen" not in run.stderr
        assert f"relay: running on {tmp_path / 'state'}" in run.stdout
    finally:
        relay.send_signal(signal.SIGTERM)
        relay.wait(timeout=30)
    # The relay gone, someone else on its port is an error again.
    other = good_config(tmp_path, relay_extra="")
    text = other.read_text()
    busy_port = int(text.split('listen = "127.0.0.1:')[1].split('"')[0])
    with socket.socket() as busy:
        busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        busy.bind(("127.0.0.1", busy_port))
        busy.listen()
        run = run_cli("check", "--config", str(other))
    assert run.returncode == 1
    assert f"error: [relay].listen: cannot listen on 127.0.0.1:{busy_port}" in run.stderr


def test_check_rejects_settings_that_cannot_mean_what_they_say(tmp_path: Path) -> None:
    cases = {
        '[delivery]\nretry_initial = "2h"\nretry_max = "1h"\n': (
            "error: [delivery].retry_initial (7200s) is longer than retry_max (3600s)"
        ),
        '[delivery]\nqueue_lifetime = "0s"\n': "error: [delivery].queue_lifetime is 0",
        '[domains."not a domain"]\ntls = "verify"\n': (
            'error: [domains."not a domain"]: not a domain name'
        ),
        'dnssec = "off"\n[domains."example.org"]\ntls = "dane-only"\n': (
            'error: [domains]: example.org set tls = "dane-only" but DANE is off'
        ),
    }
    for extra, line in cases.items():
        run = run_cli("check", "--config", str(good_config(tmp_path, extra=extra)))
        assert run.returncode == 1, (extra, run.stderr)
        assert line in run.stderr, run.stderr
    # A resolver off loopback: DANE is silently off under dnssec = "auto"; check says so.
    config = good_config(tmp_path)
    config.write_text(config.read_text().replace('"127.0.0.1:9"', '"192.0.2.53"'))
    run = run_cli("check", "--config", str(config))
    assert run.returncode == 0, run.stderr
    assert "warning: [dns]: DANE is off: [dns].nameservers 192.0.2.53 is not all on loopback" in (
        run.stderr
    )
    assert "dns: 192.0.2.53; DANE off (no validating resolver on loopback named)\n" in run.stdout
    fine = good_config(tmp_path, extra='[domains."bücher.example"]\ntls = "dane"\n')
    run = run_cli("check", "--config", str(fine))
    assert (run.returncode, run.stderr) == (0, "")
    assert "dns: 127.0.0.1:9; DNSSEC answers believed, DANE on\n" in run.stdout


@pytest.fixture
def private_state(tmp_path: Path) -> Iterator[Path]:
    """A config anyone may read whose state directory is the unit's 0750, owned by root (as the
    relay's user), holding a queue and a state database; outside pytest's 0700 tmp_path."""
    base = Path(tempfile.mkdtemp(prefix="stsguard-perm-"))
    base.chmod(0o755)
    state = base / "state"
    config = base / "stsguard.toml"
    config.write_text(
        good_config(tmp_path).read_text().replace(str(tmp_path / "state"), str(state))
    )
    config.chmod(0o644)
    state.mkdir()
    Spool(state / "queue")  # as the relay leaves it
    (state / "state.sqlite3").write_bytes(b"")
    state.chmod(0o750)
    yield config
    shutil.rmtree(base)


@pytest.mark.parametrize(
    "command",
    [
        ("queue", "list"),
        ("queue", "flush"),
        ("detect", "list"),
        ("tlsrpt", "summary"),
        ("check",),
    ],
)
def test_a_user_without_access_gets_one_line_naming_path_and_user(
    private_state: Path, command: tuple[str, ...]
) -> None:
    run = run_cli_as("nobody", *command, "--config", str(private_state))
    state = private_state.parent / "state"
    assert run.returncode == 2, run.stderr
    assert run.stderr.count("\n") == 1, run.stderr
    assert run.stderr.startswith(
        f"stsguard: error: permission denied: {state} (owner root:root, mode 0750) is not open "
        "to user nobody; run it as root (members of group root may read it): "
        "sudo -u root stsguard "
    ), run.stderr


def test_certificate_problems_name_the_file(tmp_path: Path, lab_ca: LabCA) -> None:
    """Not OpenSSL's ``[SSL] PEM lib (_ssl.c:3905)``: which file, and what is wrong with it."""
    good = lab_ca.issue("relay.example.net")
    other = lab_ca.issue("other.example.net")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    cases = [
        (garbage, good.key_file, f"{garbage} holds no PEM certificate"),
        (good.key_file, good.cert_file, f"{good.key_file} holds a private key, not a certificate"),
        (good.cert_file, garbage, f"{garbage} holds no PEM private key"),
        (
            good.cert_file,
            other.key_file,
            f"the key in {other.key_file} is not the key of the certificate in {good.cert_file}",
        ),
        (tmp_path / "none.pem", good.key_file, f"cannot read {tmp_path / 'none.pem'}: No such"),
    ]
    for cert, key, said in cases:
        extra = f'tls_cert_file = "{cert}"\ntls_key_file = "{key}"\n'
        run = run_cli("check", "--config", str(good_config(tmp_path, relay_extra=extra)))
        assert run.returncode == 1
        assert "PEM lib" not in run.stderr
        assert f"error: [relay].tls_cert_file: cannot load certificate and key: {said}" in (
            run.stderr
        )


def test_a_bad_dkim_key_file_is_named_once(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    extra = f'dkim_domain = "example.net"\ndkim_selector = "s"\ndkim_key_file = "{missing}"\n'
    config = good_config(tmp_path)
    config.write_text(config.read_text().replace("[tlsrpt]\n", f"[tlsrpt]\n{extra}"))
    run = run_cli("check", "--config", str(config))
    assert run.returncode == 1
    assert run.stderr.count("[tlsrpt].dkim_key_file") == 1, run.stderr
    assert f"error: [tlsrpt].dkim_key_file: {missing}: cannot read DKIM key" in run.stderr


def test_an_unreadable_config_names_its_owner(private_state: Path) -> None:
    private_state.chmod(0o640)
    run = run_cli_as("nobody", "queue", "list", "--config", str(private_state))
    assert run.returncode == 2
    assert run.stderr.startswith(
        f"stsguard: error: permission denied: {private_state} (owner root:root, mode 0640)"
    ), run.stderr
    shipped = run_cli_as("nobody", "man", "queue", "--config", str(private_state))
    assert (shipped.returncode, shipped.stderr) == (0, "")  # reads no config


def test_the_control_socket_refusing_names_itself(private_state: Path) -> None:
    """A group member may read the queue but not steer the relay (its socket is 0600)."""
    state = private_state.parent / "state"
    state.chmod(0o755)
    run = run_cli_as("nobody", "queue", "list", "--config", str(private_state))
    assert run.returncode == 2
    assert run.stderr.startswith(  # opening the spool recovers from a crash: it writes
        f"stsguard: error: permission denied: {state / 'queue' / 'lock'} (owner root:root"
    ), run.stderr
    (state / "queue" / "lock").chmod(0o666)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as control:
        control.bind(str(state / "control.sock"))
        control.listen()
        (state / "control.sock").chmod(0o600)
        run = run_cli_as("nobody", "queue", "flush", "--config", str(private_state))
    assert run.returncode == 2
    assert run.stderr.startswith(
        f"stsguard: error: permission denied: {state / 'control.sock'} (owner root:root, mode "
    ), run.stderr


def test_the_report_endpoint_certificate_and_maildir_are_checked(
    tmp_path: Path, lab_ca: LabCA
) -> None:
    good = lab_ca.issue("reports.example.net")
    inbound = (
        f'\n[tlsrpt_inbound]\nlisten = "127.0.0.1:{free_port()}"\n'
        f'tls_cert_file = "{good.key_file}"\ntls_key_file = "{good.key_file}"\n'
        f'domains = ["example.net"]\nmaildir = "{tmp_path / "Maildir"}"\n'
    )
    run = run_cli("check", "--config", str(good_config(tmp_path, extra=inbound)))
    assert run.returncode == 1
    assert (
        f"error: [tlsrpt_inbound].tls_cert_file: cannot load certificate and key: "
        f"{good.key_file} holds a private key, not a certificate"
    ) in run.stderr
    assert f"warning: [tlsrpt_inbound].maildir: no {tmp_path / 'Maildir' / 'new'} yet" in run.stderr
