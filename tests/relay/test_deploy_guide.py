"""README's "Deploy in ten minutes", every command run on a temporary root.

The commands are read from the README's section, so the guide cannot drift from what works. They
run as written, with these changes only (each says why):
- absolute paths (/opt, /etc/stsguard, /var/lib/stsguard, /etc/systemd/system, /usr/local) move
  under a temporary root, and port 2525 becomes a free one;
- the `stsguard` user is `nobody` (a test must not add users to the machine), and the commands find
  `/etc/stsguard/stsguard.toml` through $STSGUARD_CONFIG (the default path is the real /etc);
- the venv takes its dependencies from this test's environment (a .pth file) and pip installs the
  package alone, offline;
- the config gets `[dns] nameservers` on loopback (no look-up may reach the system resolver);
- systemd is not running here: `systemctl enable --now` starts the installed unit's ExecStart as
  its User in its WorkingDirectory, `status` checks that it runs, `journalctl` reads its log;
- Postfix is an instance of its own under the temporary root (`lab.postfix`), which `postconf`,
  `postfix` and `sendmail` reach through $MAIL_CONFIG, as Postfix's tools do.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import site
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from lab.postfix import PostfixInstance
from lab.world import free_port
from tests.cli import ROOT, interpreter_for

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("postfix") is None or os.geteuid() != 0 or shutil.which("runuser") is None,
        reason="needs root, runuser and Debian's postfix (.ci/run installs it)",
    ),
]

MOVED = ("/opt/stsguard", "/etc/stsguard", "/var/lib/stsguard", "/etc/systemd/system", "/usr/local")


def guide_commands() -> list[str]:
    """Every command of the README's deployment guide, a heredoc kept with its command."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Deploy in ten minutes", 1)[1].split("\n## ", 1)[0]
    commands: list[str] = []
    for block in re.findall(r"```sh\n(.*?)```", section, re.DOTALL):
        lines = iter(block.splitlines())
        for line in lines:
            if "<<'EOF'" in line:
                body = []
                for more in lines:
                    body.append(more)
                    if more == "EOF":
                        break
                line = "\n".join([line, *body])
            commands.append(line)
    return commands


@dataclass
class TempRoot:
    """The machine the guide is run on: paths under `root`, its own Postfix and relay port."""

    root: Path
    postfix: PostfixInstance
    port: int = field(default_factory=free_port)
    relay: subprocess.Popen[bytes] | None = None
    python: str = ""
    env: dict[str, str] = field(default_factory=dict)

    def moved(self, text: str) -> str:
        for path in MOVED:
            text = text.replace(path, f"{self.root}{path}")
        text = text.replace(":2525", f":{self.port}")
        text = re.sub(r"-o stsguard -g stsguard", "-o nobody -g nogroup", text)
        return text.replace("\nEOF", '\n[dns]\nnameservers = ["127.0.0.1:9"]\ntimeout = "1s"\nEOF')

    @property
    def log(self) -> Path:
        return self.root / "journal.log"


def make_venv(machine: TempRoot) -> str:
    """`python3 -m venv /opt/stsguard`, its dependencies from this environment."""
    venv = machine.root / "opt" / "stsguard"
    subprocess.run([machine.python, "-m", "venv", "--without-pip", str(venv)], check=True)
    [lib] = (venv / "lib").glob("python3*")
    (lib / "site-packages" / "test-deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return ""


def pip_install(machine: TempRoot, command: str) -> str:
    """`pip install -c requirements-ci.txt .`: the package alone, offline, beside the test's."""
    python = machine.root / "opt" / "stsguard" / "bin" / "python"
    args = shlex.split(command)[2:]  # after ".../pip install"
    run = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps",
         "--no-index", "--no-build-isolation", "--ignore-installed", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    return run.stdout


def start_unit(machine: TempRoot) -> str:
    """`systemctl enable --now stsguard`: ExecStart as User= in WorkingDirectory=."""
    unit = (machine.root / "etc" / "systemd" / "system" / "stsguard.service").read_text()
    keys = dict(re.findall(r"^(\w+)=(.*)$", unit, re.MULTILINE))
    assert keys["User"] == "stsguard"
    argv = shlex.split(machine.moved(keys["ExecStart"]))
    machine.relay = subprocess.Popen(
        ["runuser", "-u", "nobody", "--", *argv],
        cwd=machine.moved(keys["WorkingDirectory"]),
        stdout=subprocess.DEVNULL,
        stderr=machine.log.open("ab"),
        env={k: v for k, v in machine.env.items() if k != "STSGUARD_CONFIG"},
    )
    wait_for(machine, "intake.listening")
    return ""


def wait_for(machine: TempRoot, event: str) -> str:
    deadline = time.monotonic() + 60
    while event not in machine.log.read_text(errors="replace"):
        assert machine.relay is not None
        assert machine.relay.poll() is None, machine.log.read_text()
        assert time.monotonic() < deadline, f"no {event}: {machine.log.read_text()}"
        time.sleep(0.2)
    return "\n".join(machine.log.read_text().splitlines()[-20:])


def unit_status(machine: TempRoot) -> str:
    assert machine.relay is not None
    assert machine.relay.poll() is None
    return "active (running)"


def run_shell(machine: TempRoot, command: str) -> str:
    run = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", machine.moved(command)],
        cwd=ROOT, env=machine.env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert run.returncode == 0, f"{command}\n{run.stdout}{run.stderr}"
    return run.stdout + run.stderr


def run_step(machine: TempRoot, command: str) -> str:
    if command == "python3 -m venv /opt/stsguard":
        return make_venv(machine)
    if command.startswith("/opt/stsguard/bin/pip install "):
        return pip_install(machine, command)
    if command.startswith("useradd ") and command.endswith(" stsguard"):
        return run_shell(machine, "id nobody")
    if command == "systemctl daemon-reload":
        return ""
    if command == "systemctl enable --now stsguard":
        return start_unit(machine)
    if command.startswith("systemctl status stsguard"):
        return unit_status(machine)
    if command.startswith("journalctl -u stsguard"):
        return wait_for(machine, "intake.queued")
    return run_shell(machine, command)


@pytest.fixture
def machine() -> Iterator[TempRoot]:
    found = interpreter_for("nobody")
    if found is None:
        pytest.skip("no Python that nobody may run")
    root = Path(tempfile.mkdtemp(prefix="stsguard-guide-"))
    root.chmod(0o755)
    postfix = PostfixInstance(root / "postfix", f"127.0.0.1:{free_port()}")
    postfix.write("myhostname = postfix.upstream.test\n")
    postfix.start()
    machine = TempRoot(root=root, postfix=postfix, python=found[0])
    for present in ("usr/local/bin", "etc/systemd/system"):  # as on any Debian host
        (root / present).mkdir(parents=True)
    machine.env = {
        **{k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")},
        "PATH": f"{root}/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "STSGUARD_CONFIG": f"{root}/etc/stsguard/stsguard.toml",
        "MAIL_CONFIG": str(postfix.config_dir),
    }
    yield machine
    if machine.relay is not None:
        machine.relay.send_signal(signal.SIGTERM)
        machine.relay.wait(timeout=60)
    postfix.stop()
    shutil.rmtree(root, ignore_errors=True)


def test_the_guide_is_the_section_the_test_reads() -> None:
    commands = guide_commands()
    assert commands[0] == "python3 -m venv /opt/stsguard"
    assert "stsguard check" in commands
    assert any(c.startswith("postconf -e 'relayhost = [127.0.0.1]:2525'") for c in commands)
    config = next(c for c in commands if c.startswith("cat > /etc/stsguard/stsguard.toml"))
    assert 'state_dir = "/var/lib/stsguard"' in config


def test_every_command_of_the_deployment_guide(machine: TempRoot) -> None:
    said = {command: run_step(machine, command) for command in guide_commands()}
    check = said["stsguard check"]
    assert f"{machine.root}/etc/stsguard/stsguard.toml: 0 error(s)" in check, check
    queued = said["stsguard queue list"]
    assert "<you@example.org>" in queued, queued  # deferred: its MX cannot be looked up here
    line = next(x for x in machine.log.read_text().splitlines() if "intake.queued" in x)
    assert "postmaster@example.net" in line, line
    assert re.search(r'"upstream_queue_id": "[0-9A-F]{6,}"', line), line  # Postfix's queue id
    state = machine.root / "var" / "lib" / "stsguard"
    assert oct(state.stat().st_mode & 0o777) == "0o750"
    assert (machine.root / "usr" / "local" / "share" / "man" / "man1" / "stsguard.1").exists()
