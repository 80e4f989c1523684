"""Shared fixtures: the lab DNS server and a throwaway CA, both on loopback; the wheel."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from lab.dns import LabDns
from lab.pki import LabCA
from lab.postgres import PgCluster
from tests.cli import ROOT


@pytest.fixture
async def lab_dns() -> AsyncIterator[LabDns]:
    """An empty authoritative DNS server on 127.0.0.1 (fill it with `add`)."""
    server = LabDns()
    async with server.running():
        yield server


@pytest.fixture
def lab_ca(tmp_path: Path) -> LabCA:
    """A throwaway CA writing its files under the test's temporary directory."""
    return LabCA(tmp_path / "pki")


def _started_cluster() -> Iterator[PgCluster]:
    """A private PostgreSQL, removed at the end (skips, saying why, without PostgreSQL);
    installed but not starting is a failure, not a skip."""
    cluster, why = PgCluster.find()
    if cluster is None:
        pytest.skip(f"no PostgreSQL: {why}")
    try:
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        cluster.remove()


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """One private PostgreSQL for the whole session."""
    yield from _started_cluster()


@pytest.fixture
def own_pg_cluster() -> Iterator[PgCluster]:
    """A private PostgreSQL for one test, which may stop and start it."""
    yield from _started_cluster()


@pytest.fixture
def pg_url(pg_cluster: PgCluster) -> str:
    """The URL of a fresh, empty PostgreSQL database."""
    return pg_cluster.new_database()


@pytest.fixture(scope="session")
def stsguard_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The stsguard wheel built from this checkout, once per session (as `pip wheel` builds it)."""
    out = tmp_path_factory.mktemp("wheel")
    pip = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
    run = subprocess.run(
        [*pip, "--disable-pip-version-check", "-w", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    [wheel] = out.glob("stsguard-*.whl")
    return wheel
