"""The store implementations the contract suites run against, by name."""

from __future__ import annotations

from pathlib import Path

import pytest

from detect.history import MemoryTlsHistoryStore, TlsHistoryStore
from detect.prevalence import MemoryPrevalenceStore, PrevalenceStore
from mtasts.cache import MemoryPolicyStore, PolicyStore
from relay.state.stores import State, open_state
from relay.state_url import parse_state_url
from tlsrpt_emit.store import MemoryReportStore, ReportStore

KINDS = ["memory", "sqlite", "postgresql", "postgresql-front"]


def open_kind(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> State | None:
    """None for memory; else an opened state (closed when the test ends)."""
    if kind == "memory":
        return None
    if kind == "sqlite":
        url = parse_state_url("", tmp_path / "state" / "state.sqlite3")
    else:
        url = parse_state_url(request.getfixturevalue("pg_url"), Path())
    state = open_state(url, front=kind == "postgresql-front", clock=lambda: 1_000.0)
    request.addfinalizer(state.close)
    return state


def policy_store(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> PolicyStore:
    state = open_kind(kind, request, tmp_path)
    return MemoryPolicyStore() if state is None else state.policies


def history_store(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> TlsHistoryStore:
    state = open_kind(kind, request, tmp_path)
    return MemoryTlsHistoryStore() if state is None else state.history


def report_store(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> ReportStore:
    state = open_kind(kind, request, tmp_path)
    return MemoryReportStore() if state is None else state.reports


def prevalence_store(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> PrevalenceStore:
    state = open_kind(kind, request, tmp_path)
    if state is None:
        return MemoryPrevalenceStore()
    assert state.prevalence is not None
    return state.prevalence
