"""Shared fixtures: the lab DNS server and a throwaway CA, both on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from lab.dns import LabDns
from lab.pki import LabCA
from lab.postgres import PgCluster


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


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """One private PostgreSQL for the whole session (skips, saying why, without PostgreSQL)."""
    cluster, why = PgCluster.find()
    if cluster is None:
        pytest.skip(f"no PostgreSQL: {why}")
    try:
        cluster.init()
        cluster.start()
    except BaseException:
        cluster.remove()  # installed but not starting is a failure, not a skip
        raise
    yield cluster
    cluster.remove()


@pytest.fixture
def pg_url(pg_cluster: PgCluster) -> str:
    """The URL of a fresh, empty PostgreSQL database."""
    return pg_cluster.new_database()
