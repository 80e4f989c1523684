"""STS-04: the HTTPS fetch against the real lab policy host, lab DNS and lab CA."""

from __future__ import annotations

import asyncio
import ssl

import pytest

from lab.policy_host import Failure
from mtasts.errors import (
    FETCH_ERROR,
    POLICY_INVALID,
    WEBPKI_INVALID,
    PolicyError,
    PolicyFetchError,
    PolicyInvalidError,
    PolicyWebPkiError,
    StsLookupError,
    StsRecordError,
)
from mtasts.fetch import MAX_POLICY_SIZE, fetch_policy, lookup_sts_record
from mtasts.model import Mode, Policy, StsRecord
from tests.mtasts.conftest import Lab


async def fetch(lab: Lab, domain: str, limit: float = 5.0) -> Policy:
    return await fetch_policy(
        domain,
        resolver=lab.resolver,
        ssl_context=lab.ssl_context,
        port=lab.host.port,
        timeout=limit,
    )


async def test_sts04_fetch_ok_with_sni_and_host(lab: Lab) -> None:
    text = lab.publish("example.org")
    policy = await fetch_policy(
        "Example.ORG.", resolver=lab.resolver, ssl_context=lab.ssl_context, port=lab.host.port
    )
    assert policy.mode is Mode.ENFORCE
    assert policy.mx == ("mx.example.org", "*.backup.example.org")
    assert policy.text == text
    assert lab.host.requests["example.org"] == 1
    assert lab.dns.count("mta-sts.example.org", "A") == 1


async def test_sts04_sni_selects_per_domain_certificate(lab: Lab) -> None:
    one_text = "version: STSv1\nmode: testing\nmx: a.one.example\nmax_age: 60\n"
    lab.publish("one.example", text=one_text)
    lab.publish("two.example", text="version: STSv1\nmode: none\nmax_age: 60\n")
    one, two = await asyncio.gather(fetch(lab, "one.example"), fetch(lab, "two.example"))
    assert one.mode is Mode.TESTING
    assert two.mode is Mode.NONE


@pytest.mark.parametrize(
    ("failure", "result_type", "words"),
    [
        (Failure.REDIRECT, FETCH_ERROR, "HTTP status 301"),
        (Failure.STATUS_404, FETCH_ERROR, "HTTP status 404"),
        (Failure.STATUS_500, FETCH_ERROR, "HTTP status 500"),
        (Failure.HTML, FETCH_ERROR, "text/html"),
        (Failure.OVERSIZE, FETCH_ERROR, f"over {MAX_POLICY_SIZE}"),
        (Failure.DOWN, FETCH_ERROR, "mta-sts.txt"),
        (Failure.EXPIRED_CERT, WEBPKI_INVALID, "expired"),
        (Failure.WRONG_NAME_CERT, WEBPKI_INVALID, "mta-sts.bad.example"),
        (Failure.UNTRUSTED_CERT, WEBPKI_INVALID, "certificate"),
    ],
)
async def test_sts04_fetch_failures_have_their_result_type(
    lab: Lab, failure: Failure, result_type: str, words: str
) -> None:
    lab.publish("bad.example")
    lab.host.set_failure("bad.example", failure)
    with pytest.raises(PolicyError) as caught:
        await fetch(lab, "bad.example")
    assert caught.value.result_type == result_type
    assert words in caught.value.message
    if result_type == WEBPKI_INVALID:
        assert isinstance(caught.value, PolicyWebPkiError)
    else:
        assert isinstance(caught.value, PolicyFetchError)


async def test_sts04_stalling_host_times_out(lab: Lab) -> None:
    lab.publish("slow.example")
    lab.host.set_failure("slow.example", Failure.STALL)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(PolicyFetchError) as caught:
        await fetch(lab, "slow.example", limit=0.3)
    assert caught.value.result_type == FETCH_ERROR
    assert loop.time() - started < 2
    assert lab.host.requests["slow.example"] == 1


async def test_sts04_oversize_aborts_while_streaming(lab: Lab) -> None:
    lab.publish("big.example", text="version: STSv1\nmode: none\nmax_age: 60\nx: " + "a" * 70_000)
    with pytest.raises(PolicyFetchError, match="over 65536"):
        await fetch(lab, "big.example")


async def test_sts04_exactly_64k_is_accepted(lab: Lab) -> None:
    head = "version: STSv1\nmode: none\nmax_age: 60\nfiller: "
    lab.publish("edge.example", text=head + "a" * (MAX_POLICY_SIZE - len(head)))
    policy = await fetch(lab, "edge.example")
    assert policy.mode is Mode.NONE


@pytest.mark.parametrize(
    ("content_type", "ok"),
    [
        ("text/plain; charset=utf-8", True),
        ('TEXT/Plain; charset="US-ASCII"', True),
        ("text/plain; charset=iso-8859-1", False),
        ("application/octet-stream", False),
    ],
)
async def test_sts04_media_type(lab: Lab, content_type: str, ok: bool) -> None:
    lab.publish("mt.example")
    lab.host.set_policy("mt.example", lab.host.served["mt.example"].text, content_type=content_type)
    if ok:
        await fetch(lab, "mt.example")
    else:
        with pytest.raises(PolicyFetchError):
            await fetch(lab, "mt.example")


async def test_sts04_invalid_policy_is_policy_invalid(lab: Lab) -> None:
    lab.publish("inv.example", text="version: STSv1\nmode: sometimes\nmax_age: 60\n")
    with pytest.raises(PolicyError) as caught:
        await fetch(lab, "inv.example")
    assert caught.value.result_type == POLICY_INVALID
    assert "line 2" in caught.value.message
    assert isinstance(caught.value, PolicyInvalidError)
    assert caught.value.line == 2


async def test_sts04_no_policy_host_address_is_fetch_error(lab: Lab) -> None:
    lab.dns.add("_mta-sts.nohost.example", "TXT", "v=STSv1; id=1")
    with pytest.raises(PolicyFetchError, match="no A or AAAA"):
        await fetch(lab, "nohost.example")


async def test_sts04_refused_connection_is_fetch_error(lab: Lab) -> None:
    lab.publish("refused.example", a="127.0.0.1")
    port = lab.host.port
    await lab.host.stop()
    with pytest.raises(PolicyFetchError) as caught:
        await fetch_policy(
            "refused.example", resolver=lab.resolver, ssl_context=lab.ssl_context, port=port
        )
    assert caught.value.result_type == FETCH_ERROR


async def test_sts04_system_trust_alone_rejects_lab_certificate(lab: Lab) -> None:
    lab.publish("example.org")
    with pytest.raises(PolicyWebPkiError):
        await fetch_policy(
            "example.org",
            resolver=lab.resolver,
            ssl_context=ssl.create_default_context(),
            port=lab.host.port,
        )


async def test_sts01_lookup_joins_split_strings(lab: Lab) -> None:
    lab.dns.add("_mta-sts.split.example", "TXT", ("v=STSv1; id=ab", "cd;"))
    lab.dns.add("_mta-sts.split.example", "TXT", "v=spf1 -all")
    assert await lookup_sts_record("split.example", lab.resolver) == StsRecord("abcd")


async def test_sts02_lookup_none_bad_and_failed(lab: Lab) -> None:
    assert await lookup_sts_record("nothing.example", lab.resolver) is None
    lab.dns.add("_mta-sts.two.example", "TXT", "v=STSv1; id=1")
    lab.dns.add("_mta-sts.two.example", "TXT", "v=STSv1; id=2")
    assert await lookup_sts_record("two.example", lab.resolver) is None
    lab.dns.add("_mta-sts.bad.example", "TXT", "v=STSv1; id=no-dashes")
    with pytest.raises(StsRecordError):
        await lookup_sts_record("bad.example", lab.resolver)
    lab.dns.add("_mta-sts.fail.example", "TXT", "v=STSv1; id=1")
    lab.dns.servfail("_mta-sts.fail.example")
    with pytest.raises(StsLookupError) as caught:
        await lookup_sts_record("fail.example", lab.resolver)
    assert caught.value.result_type == FETCH_ERROR
