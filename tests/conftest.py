"""Shared fixtures: the lab DNS server and a throwaway CA, both on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from lab.dns import LabDns
from lab.pki import LabCA


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
