"""`stsguard relay` as its own process on a lab world, for tests that signal, kill, restart it."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lab.mx import CertKind, LabMx
from lab.world import LabWorld, to_toml


async def enforced_example_org(world: LabWorld) -> LabMx:
    """example.org: one MX with a good certificate, under an enforce policy naming it."""
    mx = await world.add_mx("mx1.example.org", "127.0.0.11", cert=CertKind.GOOD)
    world.publish_mx("example.org", [(10, "mx1.example.org")])
    world.publish_policy("example.org", "enforce", ["mx1.example.org"])
    return mx


def write_config(world: LabWorld, directory: Path, **sections: dict[str, Any]) -> tuple[Path, int]:
    """`directory/relay.toml` for this world (state in `directory/state`, logs as JSON at info);
    returns the file and the port the relay listens on."""
    sections["relay"] = {"log_level": "info", "log_format": "json", **sections.get("relay", {})}
    settings = world.relay_settings(directory / "state", **sections)
    path = directory / "relay.toml"
    path.write_text(to_toml(settings))
    return path, int(settings["relay"]["listen"].rpartition(":")[2])


def start_relay(config_file: Path, *, prefix: Sequence[str] = ()) -> subprocess.Popen[bytes]:
    """`stsguard relay --config FILE`, its output appended to relay.log beside the file;
    `prefix` runs it under another command (``prlimit --nofile=1024:1024``)."""
    log = (config_file.parent / "relay.log").open("ab")
    return subprocess.Popen(
        [*prefix, sys.executable, "-m", "relay.cli", "relay", "--config", str(config_file)],
        stdout=log,
        stderr=log,
    )


@contextmanager
def relay_process(
    config_file: Path, prefix: Sequence[str] = ()
) -> Iterator[subprocess.Popen[bytes]]:
    """`start_relay`, stopped on the way out (SIGTERM; SIGKILL after 20 s)."""
    proc = start_relay(config_file, prefix=prefix)
    try:
        yield proc
    finally:
        stop_relay(proc, 20)


def stop_relay(relay: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """SIGTERM, then SIGKILL when the relay has not stopped within `timeout` seconds."""
    relay.terminate()
    try:
        relay.wait(timeout)
    except subprocess.TimeoutExpired:
        relay.kill()
        relay.wait()
