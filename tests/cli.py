"""Run the `stsguard` command as a user would: a subprocess of this Python, from the repo root."""

from __future__ import annotations

import asyncio
import functools
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUNUSER = "runuser"


def run_cli(
    *args: str, timeout: float = 30, env: dict[str, str] | None = None, cwd: Path = ROOT
) -> subprocess.CompletedProcess[str]:
    """`stsguard ARGS`, waited for; from a test without its own event loop. `env` is added to
    this process's environment."""
    return subprocess.run(
        [sys.executable, "-m", "relay.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
        check=False,
        env={**os.environ, **env} if env is not None else None,
    )


async def run_cli_async(*args: str) -> tuple[int, str, str]:
    """`stsguard ARGS` while the test's loop keeps serving (lab DNS, policy host, MX):
    (exit status, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "relay.cli",
        *args,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@functools.cache
def interpreter_for(user: str) -> tuple[str, dict[str, str]] | None:
    """A Python `user` may execute with this checkout and its packages importable: this one, or
    the system's of the same version (pyenv's lives under root's 0700 home), else None."""
    paths = os.pathsep.join([str(ROOT), *site.getsitepackages()])
    same = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for exe in (sys.executable, shutil.which(same, path="/usr/bin:/usr/local/bin")):
        if exe is None:
            continue
        env = {**os.environ, "PYTHONPATH": paths}
        probe = [RUNUSER, "-u", user, "--", exe, "-c", "import relay.cli"]
        if subprocess.run(probe, env=env, capture_output=True, check=False).returncode == 0:
            return exe, env
    return None


def run_cli_as(user: str, *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """`stsguard ARGS` run by `user` through runuser (the test runs as root); skips the test
    where that cannot be done."""
    if os.geteuid() != 0 or shutil.which(RUNUSER) is None:
        pytest.skip("needs root and runuser")
    found = interpreter_for(user)
    if found is None:
        pytest.skip(f"no Python that {user} may run with this checkout")
    exe, env = found
    return subprocess.run(
        [RUNUSER, "-u", user, "--", exe, "-m", "relay.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=60,
        check=False,
    )
