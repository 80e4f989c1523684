"""The `stsguard` command line as a whole: version, help, errors, default config, shipped files,
`check`, and the start-up checks of `stsguard relay`. Every command runs as a subprocess."""

from __future__ import annotations

import os
import re
import socket
import subprocess
from importlib.metadata import version
from pathlib import Path

import pytest

from lab.dns import LabDns
from relay.cli import COMMANDS
from relay.config_values import hosts_file_fqdn, machine_fqdn
from relay.intake.auth import hash_password
from relay.preflight import is_real_domain
from tests.cli import ROOT, run_cli, run_cli_async
from tests.tlsrpt_emit.test_report import make_dkim_key

GOOD = (
    '[relay]\nhostname = "relay.example.net"\nlisten = "127.0.0.1:{port}"\nstate_dir = "{state}"\n'
    '[tlsrpt]\ncontact_info = "mailto:tlsrpt@example.net"\n[dns]\nnameservers = ["127.0.0.1:9"]\n'
    'timeout = "1s"\n'
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def write(tmp_path: Path, text: str, name: str = "stsguard.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def good_config(tmp_path: Path, extra: str = "", relay_extra: str = "") -> Path:
    text = GOOD.format(port=free_port(), state=tmp_path / "state")
    text = text.replace("[tlsrpt]", f"{relay_extra}[tlsrpt]") + extra
    return write(tmp_path, text)


def test_version() -> None:
    run = run_cli("--version")
    assert (run.returncode, run.stdout.strip()) == (0, f"stsguard {version('stsguard')}")


def test_top_level_help_lists_every_command_and_the_exit_codes() -> None:
    run = run_cli("--help")
    assert run.returncode == 0
    for name in COMMANDS:
        assert re.search(rf"^    {name}\s", run.stdout, re.MULTILINE), name
    assert "exit status: 0 ok, 1 problems found" in run.stdout
    assert "Each subcommand lives" not in run.stdout  # not the module's developer docstring


def test_bare_stsguard_shows_the_commands_and_exits_2() -> None:
    run = run_cli()
    assert run.returncode == 2
    assert run.stdout == ""
    assert "    check " in run.stderr
    assert "exit status:" in run.stderr


def test_usage_error_is_printed_once_naming_the_command() -> None:
    run = run_cli("policy")
    assert run.returncode == 2
    assert run.stderr == ("stsguard: error: policy: the following arguments are required: domain\n")
    run = run_cli("nope")
    assert run.returncode == 2
    assert run.stderr.count("stsguard") == 1
    assert run.stderr.startswith("stsguard: error: argument COMMAND: invalid choice: 'nope'")


def test_config_from_environment_for_every_command(tmp_path: Path) -> None:
    state = tmp_path / "relay-state"
    config = write(tmp_path, f'[relay]\nstate_dir = "{state}"\n')
    (state / "queue").mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run = run_cli("queue", "list", env={"STSGUARD_CONFIG": str(config)}, cwd=elsewhere)
    assert (run.returncode, run.stdout.strip(), run.stderr) == (0, "queue is empty", "")
    # Without it (and without /etc/stsguard/stsguard.toml), the defaults: ./stsguard-state,
    # relative, which no relay used from here: an error, not a bare "queue is empty" about a
    # queue that is not the relay's.
    env = {k: v for k, v in os.environ.items() if k != "STSGUARD_CONFIG"}
    run = subprocess.run(
        [os.sys.executable, "-m", "relay.cli", "queue", "list"],  # type: ignore[attr-defined]
        capture_output=True,
        text=True,
        cwd=elsewhere,
        env={**env, "PYTHONPATH": str(ROOT)},
        timeout=30,
        check=False,
    )
    assert (run.returncode, run.stdout) == (2, "")
    assert run.stderr == (
        "stsguard: error: [relay].state_dir 'stsguard-state' (built-in defaults (no --config, no "
        f"$STSGUARD_CONFIG)) is relative and no relay has used it from {elsewhere}; give the "
        "relay's config with --config or $STSGUARD_CONFIG, or set an absolute state_dir "
        '(state_dir = "/var/lib/stsguard")\n'
    )
    bad = run_cli("queue", "list", env={"STSGUARD_CONFIG": str(tmp_path / "missing.toml")})
    assert bad.returncode == 2
    assert "missing.toml: cannot read config file" in bad.stderr


@pytest.mark.parametrize(
    ("command", "shipped"),
    [
        ("example-config", ROOT / "stsguard.example.toml"),
        ("example-unit", ROOT / "relay" / "deploy" / "stsguard.service"),
    ],
)
def test_shipped_files_are_printed(command: str, shipped: Path) -> None:
    run = run_cli(command)
    assert (run.returncode, run.stdout) == (0, shipped.read_text())


def test_check_clean_config_exits_0(tmp_path: Path) -> None:
    run = run_cli("check", "--config", str(good_config(tmp_path)))
    assert run.returncode == 0, run.stderr
    assert run.stderr == ""
    assert run.stdout.strip().endswith(": 0 error(s), 0 warning(s)")
    assert not (tmp_path / "state").exists()  # checking starts nothing and creates nothing


def test_check_warnings_exit_0_errors_exit_1_bad_file_exit_2(tmp_path: Path) -> None:
    warn = write(
        tmp_path, f'[relay]\nhostname = "localhost"\nstate_dir = "{tmp_path}/s"\n', "w.toml"
    )
    run = run_cli("check", "--config", str(warn))
    assert run.returncode == 0
    assert "warning: [relay].hostname is 'localhost'" in run.stderr
    assert "TLS-RPT reports are counted but not sent" in run.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        errors = write(
            tmp_path,
            f'[relay]\nlisten = "127.0.0.1:{port}"\naccept_networks = ["0.0.0.0/0"]\n'
            f'tls_cert_file = "{tmp_path}/none.pem"\ntls_key_file = "{tmp_path}/none.key"\n'
            f'state_dir = "{tmp_path}/s"\n',
            "e.toml",
        )
        run = run_cli("check", "--config", str(errors))
    assert run.returncode == 1
    lines = run.stderr.splitlines()
    assert any(
        line.startswith("error: [relay].accept_networks contains 0.0.0.0/0") for line in lines
    )
    assert any(line.startswith("error: [relay].tls_cert_file: cannot load") for line in lines)
    assert any(
        line.startswith(f"error: [relay].listen: cannot listen on 127.0.0.1:{port}")
        for line in lines
    )
    run = run_cli("check", "--config", str(write(tmp_path, "[relay\n", "bad.toml")))
    assert run.returncode == 2
    assert run.stderr.count("\n") == 1


def test_check_says_auth_needs_tls_as_the_relay_does(tmp_path: Path) -> None:
    users = write(tmp_path, f"alice:{hash_password('x', iterations=1000)}\n", "users")
    config = good_config(tmp_path, relay_extra=f'auth_file = "{users}"\n')
    run = run_cli("check", "--config", str(config))
    assert run.returncode == 1
    assert "error: [relay].auth_file: AUTH is offered only over TLS" in run.stderr
    run = run_cli("relay", "--config", str(config))
    assert run.returncode == 2
    assert "[relay].auth_file: AUTH is offered only over TLS" in run.stderr


def test_relay_refuses_an_open_relay_unless_told(tmp_path: Path) -> None:
    config = good_config(tmp_path, relay_extra='accept_networks = ["10.0.0.0/8", "::/0"]\n')
    run = run_cli("relay", "--config", str(config))
    assert run.returncode == 2
    assert run.stderr == (
        "stsguard: error: [relay].accept_networks contains ::/0, which makes an open relay for "
        "the whole internet; narrow it, or set [relay].open_relay = true if you mean it\n"
    )
    run = run_cli("check", "--config", str(config))
    assert run.returncode == 1
    allowed = good_config(
        tmp_path, relay_extra='accept_networks = ["0.0.0.0/0"]\nopen_relay = true\n'
    )
    run = run_cli("check", "--config", str(allowed))
    assert run.returncode == 0
    assert "an open relay (open_relay = true)" in run.stderr


@pytest.mark.parametrize(
    ("name", "real"),
    [
        ("relay.example.net", True),
        ("mx.lab.test", True),
        ("localhost", False),
        ("vm", False),
        ("box.localdomain", False),
        ("a.localhost", False),
        ("127.0.0.1", False),
        ("", False),
    ],
)
def test_real_domain(name: str, real: bool) -> None:
    assert is_real_domain(name) is real


def test_fqdn_from_hosts_file() -> None:
    hosts = "127.0.0.1 localhost\n# 10.0.0.5 vm.old.example vm\n10.0.0.5 vm.example.net vm\n"
    assert hosts_file_fqdn("vm", hosts) == "vm.example.net"
    assert hosts_file_fqdn("other", hosts) == "other"


def test_the_readmes_first_command_would_start_on_a_fresh_machine(tmp_path: Path) -> None:
    """`stsguard relay --config stsguard.example.toml` with every default: no error, only the
    warnings a fresh machine deserves (its name, TLS-RPT held back)."""
    run = run_cli("check", "--config", str(ROOT / "stsguard.example.toml"), cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "error:" not in run.stderr
    held_back = "TLS-RPT reports are counted but not sent" in run.stderr
    assert held_back is not is_real_domain(machine_fqdn())


async def test_check_compares_the_dkim_key_with_dns(tmp_path: Path, lab_dns: LabDns) -> None:
    pem, public = make_dkim_key()
    _, other = make_dkim_key()
    key_file = tmp_path / "dkim.pem"
    key_file.write_bytes(pem)
    text = f"v=DKIM1; k=rsa; s=tlsrpt; p={public}"
    chunks = tuple(text[i : i + 255] for i in range(0, len(text), 255))
    lab_dns.add("good._domainkey.example.net", "TXT", chunks)
    stale = f"v=DKIM1; k=rsa; s=tlsrpt; p={other}"
    lab_dns.add(
        "stale._domainkey.example.net",
        "TXT",
        tuple(stale[i : i + 255] for i in range(0, len(stale), 255)),
    )
    email_only = text.replace("s=tlsrpt", "s=email")
    lab_dns.add(
        "email._domainkey.example.net",
        "TXT",
        tuple(email_only[i : i + 255] for i in range(0, len(email_only), 255)),
    )

    ns = lab_dns.address
    results = {}
    cases = (
        ("good", ns),
        ("stale", ns),
        ("missing", ns),
        ("email", ns),
        ("good", "127.0.0.1:9"),
    )
    for n, (selector, nameserver) in enumerate(cases):
        text = GOOD.format(port=free_port(), state=tmp_path / "state")
        text = text.replace('["127.0.0.1:9"]', f'["{nameserver}"]').replace(
            "[tlsrpt]\n",
            f'[tlsrpt]\ndkim_domain = "example.net"\ndkim_selector = "{selector}"\n'
            f'dkim_key_file = "{key_file}"\n',
        )
        path = write(tmp_path, text, f"dkim-{n}.toml")
        code, _, err = await run_cli_async("check", "--config", str(path))
        results[(selector, nameserver == ns)] = (code, err)
    assert results[("good", True)] == (0, "")
    code, err = results[("stale", True)]
    assert code == 1
    assert "does not match the private key file" in err
    code, err = results[("missing", True)]
    assert code == 1
    assert "no DKIM record at missing._domainkey.example.net." in err
    code, err = results[("email", True)]  # the right key, for mail only: said, not an error
    assert code == 0
    assert "warning: [tlsrpt].dkim_key_file: email._domainkey.example.net. lacks s=tlsrpt" in err
    code, err = results[("good", False)]  # DNS does not answer: said, not an error
    assert code == 0
    assert "warning: [tlsrpt].dkim_key_file: could not look up good._domainkey" in err
