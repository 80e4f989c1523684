"""Downgrade prevalence, pure: the facts of one session from its findings, the counting per
(day, host, address), and the shares per host, network and day, worst first."""

from __future__ import annotations

import pytest

from detect.ehlo import judge_ehlo
from detect.model import Finding, FindingKind
from detect.prevalence import (
    Measure,
    MemoryPrevalenceStore,
    SessionKind,
    SessionSeen,
    count_session,
    first_day,
    injected_length,
    rows_of,
    session_seen,
)
from detect.prevalence_view import by_day, by_host, by_network, format_table, network_of
from detect.starttls import judge_pre_handshake_bytes, judge_starttls_reply

NOON = 1_800_000_000.0  # 2027-01-15 08:00 UTC
DAY = 86400.0


def seen(host: str = "mx.a.example", address: str = "192.0.2.7", **kw: object) -> SessionSeen:
    facts: dict[str, object] = {"when": NOON, "offered_starttls": True, **kw}
    return SessionSeen(host, address, **facts)  # type: ignore[arg-type]


def test_a_garbled_keyword_gives_its_token() -> None:
    judged = judge_ehlo(250, ["mx.a.example", "PIPELINING", "XXXXXXXA"], expect_starttls=False)
    facts = session_seen(
        "MX.A.example.", "192.0.2.7", when=NOON, offered_starttls=False, findings=judged.findings
    )
    assert facts.host == "mx.a.example"
    assert facts.garbled_token == "XXXXXXXA"
    assert facts.kind is SessionKind.STARTTLS_GARBLED
    assert facts.downgraded


@pytest.mark.parametrize(
    ("code", "text"), [(454, "TLS not available"), (501, "syntax"), (554, "no")]
)
def test_a_refused_starttls_gives_its_code(code: int, text: str) -> None:
    refusal = judge_starttls_reply(code, text)
    assert refusal is not None
    facts = session_seen("mx", "192.0.2.7", when=NOON, offered_starttls=True, findings=[refusal])
    assert facts.refused_code == code
    assert facts.kind is SessionKind.STARTTLS_REFUSED


@pytest.mark.parametrize("size", [1, 20, 64, 65, 5000])
def test_injected_bytes_are_counted_from_the_finding(size: int) -> None:
    finding = judge_pre_handshake_bytes(b"250 fake\r\n" * 600)
    assert finding is not None
    assert injected_length(finding.evidence) == 6000
    finding = judge_pre_handshake_bytes(b"x" * size)
    assert finding is not None
    facts = session_seen("mx", "192.0.2.7", when=NOON, offered_starttls=True, findings=[finding])
    assert facts.injected_bytes == size
    assert facts.kind is SessionKind.PLAINTEXT_INJECTION


def test_a_remembered_starttls_lost_is_counted_but_not_a_certificate_one() -> None:
    lost = Finding(FindingKind.DOWNGRADE, "x", reason_code="remembered-starttls")
    cert = Finding(FindingKind.DOWNGRADE, "x", reason_code="remembered-valid-certificate")
    assert session_seen("mx", "a", when=NOON, offered_starttls=False, findings=[lost]).starttls_lost
    assert not session_seen("mx", "a", when=NOON, offered_starttls=True, findings=[cert]).downgraded


def test_kinds_of_clean_and_absent_sessions() -> None:
    assert seen().kind is SessionKind.CLEAN
    assert not seen().downgraded
    assert seen(offered_starttls=False).kind is SessionKind.STARTTLS_ABSENT
    failed = seen(handshake_failure="certificate-expired")
    assert failed.kind is SessionKind.HANDSHAKE_FAILURE
    assert not failed.downgraded


def test_counting_per_day_host_and_address() -> None:
    batch: dict = {}  # type: ignore[type-arg]
    count_session(batch, seen())
    count_session(batch, seen(offered_starttls=False, garbled_token="XXXXXXXA", plaintext=True))
    count_session(batch, seen(refused_code=454))
    count_session(batch, seen(handshake_failure="certificate-expired", when=NOON + DAY))
    count_session(batch, seen(offered_starttls=False))
    rows = {(r.day, r.measure, r.detail): r.count for r in rows_of(batch)}
    assert rows[("2027-01-15", Measure.SESSIONS, "")] == 4
    assert rows[("2027-01-15", Measure.STARTTLS_OFFERED, "")] == 2
    assert rows[("2027-01-15", Measure.STARTTLS_ABSENT, "")] == 1  # garbled is not absent
    assert rows[("2027-01-15", Measure.GARBLED, "XXXXXXXA")] == 1
    assert rows[("2027-01-15", Measure.REFUSED, "454")] == 1
    assert rows[("2027-01-15", Measure.PLAINTEXT, "")] == 1
    assert rows[("2027-01-15", Measure.DOWNGRADED, "")] == 2
    assert rows[("2027-01-16", Measure.HANDSHAKE_FAILURE, "certificate-expired")] == 1


def test_a_hostile_token_is_cut() -> None:
    batch: dict = {}  # type: ignore[type-arg]
    count_session(batch, seen(garbled_token="X" * 5000))
    (detail,) = {r.detail for r in rows_of(batch) if r.measure == Measure.GARBLED}
    assert len(detail) == 40


def test_shares_worst_host_first_and_networks() -> None:
    store = MemoryPrevalenceStore()
    batch: dict = {}  # type: ignore[type-arg]
    for _ in range(3):
        count_session(batch, seen("mx.good.example", "198.51.100.1"))
    for token in ("XXXXXXXA", "XXXXXXXA", ""):
        count_session(
            batch,
            seen("mx.bad.example", "203.0.113.9", garbled_token=token, offered_starttls=not token),
        )
    count_session(batch, seen("mx.six.example", "2001:db8:1:2::25"))
    store.add(batch)
    store.add(batch)  # a second relay of the fleet: everything twice
    rows = store.rows(first_day("2027-01-15", 7))
    hosts = by_host(rows)
    assert next(h.name for h in hosts) == "mx.bad.example"
    bad = hosts[0]
    assert bad.sessions == 6
    assert bad.share(Measure.GARBLED) == pytest.approx(2 / 3)
    assert bad.as_json()["details"]["garbled"] == {"XXXXXXXA": 4}
    assert next(n.name for n in by_network(rows)) == "203.0.113.0/24"
    assert "2001:db8:1::/48" in {n.name for n in by_network(rows)}
    assert [d.name for d in by_day(rows)] == ["2027-01-15"]
    table = format_table("mx host", hosts)
    assert table.splitlines()[1].startswith("mx.bad.example")
    assert "garbled: XXXXXXXA x4" in table
    assert store.rows("2027-01-15", "MX.Bad.Example.") == [
        r for r in rows if r.host == "mx.bad.example"
    ]


def test_prune_and_windows() -> None:
    store = MemoryPrevalenceStore()
    batch: dict = {}  # type: ignore[type-arg]
    count_session(batch, seen(when=NOON - 10 * DAY))
    count_session(batch, seen())
    store.add(batch)
    assert first_day("2027-01-15", 1) == "2027-01-15"
    assert first_day("2027-01-15", 10) == "2027-01-06"
    assert {r.day for r in store.rows(first_day("2027-01-15", 10))} == {"2027-01-15"}
    assert store.prune("2027-01-10") == 2  # its sessions and starttls-offered rows
    assert {r.day for r in store.rows("2000-01-01")} == {"2027-01-15"}


def test_network_of() -> None:
    assert network_of("192.0.2.77") == "192.0.2.0/24"
    assert network_of("2001:db8:aa:bb::1") == "2001:db8:aa::/48"
    assert network_of("") == "-"


def test_per_recipient_domain_each_session_once_per_view() -> None:
    from detect.prevalence_view import by_domain

    batch: dict = {}  # type: ignore[type-arg]
    count_session(batch, seen(domain="a.example", garbled_token="XXXXXXXA", offered_starttls=False))
    count_session(batch, seen(domain="a.example"))
    count_session(batch, seen("mx.b.example", domain="b.example"))
    count_session(batch, seen("mx.b.example"))  # domain unknown: per host only
    rows = rows_of(batch)
    (a, b) = by_domain(rows)
    assert (a.name, a.sessions, a.share(Measure.GARBLED)) == ("a.example", 2, 0.5)
    assert (b.name, b.sessions) == ("b.example", 1)
    assert a.hosts == set()  # domain rows name no host
    assert sum(h.sessions for h in by_host(rows)) == 4
    assert [d.sessions for d in by_day(rows)] == [4]
    assert sum(n.sessions for n in by_network(rows)) == 4
    store = MemoryPrevalenceStore()
    store.add(batch)
    assert {r.domain for r in store.rows("2000-01-01", domain="A.Example.")} == {"a.example"}
    assert all(not r.domain for r in store.rows("2000-01-01", host="mx.b.example"))
