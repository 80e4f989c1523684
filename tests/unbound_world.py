"""A lab DNS behind a real validating unbound for the DANE tests (skipped, saying why, without)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from lab.dns import LabDns
from lab.unbound import MISSING, LabUnbound, unbound_path


def need_unbound() -> None:
    if unbound_path() is None:
        pytest.skip(MISSING)


@asynccontextmanager
async def validating(
    lab_dns: LabDns, directory: Path, insecure: Sequence[str] = (), max_ttl: int = 0
) -> AsyncIterator[LabUnbound]:
    """unbound on loopback validating `lab_dns` (which must be running)."""
    need_unbound()
    server = LabUnbound(lab_dns, directory, insecure=insecure, max_ttl=max_ttl)
    async with server.running() as unbound:
        yield unbound
