"""`python -m lab.serve`: each cast member as its own process, queried on loopback, stopped by
SIGTERM; the zone-file parser and the certificate writer."""

from __future__ import annotations

import asyncio
import gzip
import json
import signal
import ssl
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import aiosmtplib
import dns.asyncquery
import dns.asyncresolver
import dns.flags
import dns.message
import dns.nameserver
import dns.rdatatype
import httpx
import pytest
from cryptography import x509
from hypothesis import given, settings
from hypothesis import strategies as st

from lab.mx import LabMx
from lab.pki import LabCA, tlsa_text
from lab.serve import ZoneRecord, attacker_ca, main, parse_zone, run_pki
from lab.unbound import MISSING as UNBOUND_MISSING
from lab.unbound import unbound_path
from relay.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
POLICY = "version: STSv1\nmode: enforce\nmx: mx.example.test\nmax_age: 86400\n"


class Served:
    """A running `lab.serve` subprocess and the JSON lines it printed."""

    def __init__(self, proc: asyncio.subprocess.Process, ready: dict[str, Any]) -> None:
        self.proc = proc
        self.ready = ready

    @property
    def address(self) -> tuple[str, int]:
        host, _, port = str(self.ready["listen"]).rpartition(":")
        return host, int(port)

    async def next_line(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        async with asyncio.timeout(10):
            line = await self.proc.stdout.readline()
        assert line, "the service closed its output"
        event: dict[str, Any] = json.loads(line)
        return event

    async def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(5):
            return await self.proc.wait()


@asynccontextmanager
async def serve(*args: str) -> AsyncIterator[Served]:
    """Start `python -m lab.serve ARGS`, wait for its ready line; kill it if the test fails."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "lab.serve",
        *args,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        assert proc.stderr is not None
        async with asyncio.timeout(20):
            line = await proc.stdout.readline()
        if not line:
            raise AssertionError((await proc.stderr.read()).decode())
        yield Served(proc, json.loads(line))
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def _resolver(host: str, port: int) -> dns.asyncresolver.Resolver:
    resolver = dns.asyncresolver.Resolver(configure=False)
    resolver.nameservers = [dns.nameserver.Do53Nameserver(host, port)]
    resolver.lifetime = 3
    return resolver


ZONE_TOML = """
[[record]]
name = "example.test"
type = "MX"
value = "10 mx.example.test."

[[record]]
name = "mx.example.test"
type = "A"
value = "127.0.0.25"

[[record]]
name = "_mta-sts.example.test"
type = "TXT"
value = ["v=STSv1; ", "id=20240101;"]
"""


async def test_dns_serves_its_zone_file_and_exits_0_on_sigterm(tmp_path: Path) -> None:
    zone = tmp_path / "zone.toml"
    zone.write_text(ZONE_TOML)
    async with serve("dns", "--listen", "127.0.0.71:0", "--zone", str(zone)) as dns_proc:
        assert dns_proc.ready["ready"] == "dns"
        assert dns_proc.ready["records"] == 3
        resolver = _resolver(*dns_proc.address)
        mx = await resolver.resolve("example.test", "MX")
        assert [(r.preference, r.exchange.to_text()) for r in mx] == [(10, "mx.example.test.")]
        a = await resolver.resolve("mx.example.test", "A")
        assert [r.address for r in a] == ["127.0.0.25"]
        txt = await resolver.resolve("_mta-sts.example.test", "TXT")
        assert [b"".join(r.strings) for r in txt] == [b"v=STSv1; id=20240101;"]
        assert await dns_proc.terminate() == 0


async def test_policy_host_serves_each_domain_over_https(tmp_path: Path, lab_ca: LabCA) -> None:
    cert = lab_ca.issue("mta-sts.example.test", "mta-sts.testing.example.test")
    (tmp_path / "a.txt").write_text(POLICY)
    (tmp_path / "b.txt").write_text(POLICY.replace("enforce", "testing"))
    args = ["--cert", str(cert.cert_file), "--key", str(cert.key_file)]
    args += ["--policy", f"example.test={tmp_path / 'a.txt'}"]
    args += ["--policy", f"testing.example.test={tmp_path / 'b.txt'}"]
    async with serve("policy-host", "--listen", "127.0.0.72:0", *args) as host_proc:
        assert host_proc.ready["domains"] == ["example.test", "testing.example.test"]
        host, port = host_proc.address
        async with httpx.AsyncClient(verify=lab_ca.client_context(), timeout=5) as client:
            for domain, mode in (("example.test", "enforce"), ("testing.example.test", "testing")):
                name = f"mta-sts.{domain}"
                response = await client.get(
                    f"https://{host}:{port}/.well-known/mta-sts.txt",
                    headers={"Host": name},
                    extensions={"sni_hostname": name},
                )
                assert response.status_code == 200
                assert response.headers["content-type"].startswith("text/plain")
                assert f"mode: {mode}" in response.text
        assert await host_proc.terminate() == 0


async def test_mx_prints_each_message_as_a_json_line(lab_ca: LabCA) -> None:
    cert = lab_ca.issue("mx.example.test")
    args = ["--cert", str(cert.cert_file), "--key", str(cert.key_file)]
    async with serve("mx", "--listen", "127.0.0.73:0", *args) as mx_proc:
        assert mx_proc.ready["starttls"] is True
        host, port = mx_proc.address
        client = aiosmtplib.SMTP(hostname=host, port=port, start_tls=False, local_hostname="c.test")
        async with client:
            await client.ehlo()
            await client.starttls(
                tls_context=lab_ca.client_context(), server_hostname="mx.example.test"
            )
            await client.sendmail(
                "a@client.test", ["b@example.test"], b"Subject: hello lab\r\n\r\nbody\r\n"
            )
        event = await mx_proc.next_line()
        assert event["received"] == "message"
        assert event["rcpt_tos"] == ["b@example.test"]
        assert event["subject"] == "hello lab"
        assert event["tls"] is True
        assert await mx_proc.terminate() == 0


async def test_collector_prints_the_gist_of_each_report(lab_ca: LabCA) -> None:
    cert = lab_ca.issue("collector.example.test")
    args = ["--cert", str(cert.cert_file), "--key", str(cert.key_file)]
    report = {
        "report-id": "r1",
        "policies": [
            {
                "policy": {"policy-type": "sts", "policy-domain": "example.test"},
                "summary": {"total-successful-session-count": 0, "total-failure-session-count": 2},
                "failure-details": [{"result-type": "starttls-not-supported"}],
            }
        ],
    }
    async with serve("collector", "--listen", "127.0.0.74:0", *args) as proc:
        host, port = proc.address
        async with httpx.AsyncClient(verify=lab_ca.client_context(), timeout=5) as client:
            response = await client.post(
                f"https://{host}:{port}/tlsrpt",
                content=gzip.compress(json.dumps(report).encode()),
                headers={"Content-Type": "application/tlsrpt+gzip"},
                extensions={"sni_hostname": "collector.example.test"},
            )
        assert response.status_code == 200
        event = await proc.next_line()
        assert event["report_id"] == "r1"
        assert event["policies"][0]["result_types"] == ["starttls-not-supported"]
        assert await proc.terminate() == 0


async def test_attacker_garbles_starttls_in_front_of_an_mx(tmp_path: Path) -> None:
    run_pki(tmp_path / "pki", ["mx.example.test"])
    pki = tmp_path / "pki"
    mx = LabMx(
        "127.0.0.77",
        hostname="mx.example.test",
        tls_context=ssl.create_default_context(ssl.Purpose.CLIENT_AUTH),
    )
    assert mx.tls_context is not None
    mx.tls_context.load_cert_chain(pki / "mx.example.test.crt", pki / "mx.example.test.key")
    async with mx.running():
        args = ["--listen", "127.0.0.78:0", "--upstream", f"127.0.0.77:{mx.port}"]
        args += ["--mode", "garble", "--ca-dir", str(pki), "--mx-name", "mx.example.test"]
        async with serve("attacker", *args) as attacker:
            assert attacker.ready["mode"] == "garble"
            host, port = attacker.address
            client = aiosmtplib.SMTP(
                hostname=host, port=port, start_tls=False, timeout=5, local_hostname="c.test"
            )
            async with client:
                reply = await client.ehlo()
            assert "XXXXXXXA" in reply.message
            assert "STARTTLS" not in reply.message.upper()
            assert await attacker.terminate() == 0


def test_attacker_rejects_an_unknown_mode(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["attacker", "--upstream", "127.0.0.1:25", "--mode", "teleport"])
    assert exit_info.value.code == 2
    assert "teleport" in capsys.readouterr().err


def test_pki_writes_ca_and_certificates_and_keeps_them(tmp_path: Path) -> None:
    out = tmp_path / "pki"
    first = run_pki(out, ["mx.example.test", "mta-sts.a.test,mta-sts.b.test"])
    assert first["reused"] is False
    cert = x509.load_pem_x509_certificate((out / "mta-sts.a.test.crt").read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["mta-sts.a.test", "mta-sts.b.test"]
    # The certificates chain to the written CA: a server with one is trusted by a client of it.
    client = ssl.create_default_context(cafile=str(out / "ca.pem"))
    assert client.cert_store_stats()["x509_ca"] == 1
    ca_before = (out / "ca.pem").read_bytes()
    assert run_pki(out, ["mx.example.test", "mta-sts.a.test"])["reused"] is True
    assert (out / "ca.pem").read_bytes() == ca_before
    run_pki(out, ["mx.example.test"], force=True)
    assert (out / "ca.pem").read_bytes() != ca_before


async def test_pki_certificates_verify_against_the_written_ca(tmp_path: Path) -> None:
    run_pki(tmp_path, ["mx.example.test"])
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(tmp_path / "mx.example.test.crt", tmp_path / "mx.example.test.key")
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.75", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        client = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
        _, writer = await asyncio.open_connection(
            "127.0.0.75", port, ssl=client, server_hostname="mx.example.test"
        )
        writer.close()
    finally:
        server.close()
        await server.wait_closed()


async def test_attacker_signs_with_the_ca_pki_wrote(tmp_path: Path) -> None:
    """The compose attacker loads the lab CA from the pki volume: what it issues is trusted."""
    run_pki(tmp_path / "pki", ["mx.example.test"])
    issued = attacker_ca(tmp_path / "pki").issue("not-mx.example.test")
    trusting = ssl.create_default_context(cafile=str(tmp_path / "pki" / "ca.pem"))
    stranger = attacker_ca(tmp_path / "empty").issue("mx.example.test")
    for cert, trusted in ((issued, True), (stranger, False)):
        server = await asyncio.start_server(
            lambda r, w: w.close(), "127.0.0.75", 0, ssl=cert.server_context()
        )
        port = server.sockets[0].getsockname()[1]
        try:
            if trusted:
                _, writer = await asyncio.open_connection(
                    "127.0.0.75", port, ssl=trusting, server_hostname="not-mx.example.test"
                )
                writer.close()
            else:
                with pytest.raises(ssl.SSLCertVerificationError):
                    await asyncio.open_connection(
                        "127.0.0.75", port, ssl=trusting, server_hostname="mx.example.test"
                    )
        finally:
            server.close()
            await server.wait_closed()


def test_bad_zone_file_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    zone = tmp_path / "zone.toml"
    zone.write_text('[[record]]\nname = "x.test"\ntype = "A"\nvalue = "not-an-address"\n')
    assert main(["dns", "--listen", "127.0.0.76:0", "--zone", str(zone)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "record 1" in err


def test_zone_json_rows_and_split_txt() -> None:
    text = json.dumps(
        {
            "record": [
                {"name": "a.test", "type": "a", "value": "127.0.0.9"},
                {"name": "_smtp._tls.a.test", "type": "TXT", "value": ["v=TLSRPTv1;", "rua=x"]},
            ]
        }
    )
    assert parse_zone(text, "json") == (
        ZoneRecord("a.test", "A", "127.0.0.9"),
        ZoneRecord("_smtp._tls.a.test", "TXT", ("v=TLSRPTv1;", "rua=x")),
    )


@pytest.mark.parametrize(
    "text",
    [
        '[[record]]\nname = "a.test"\ntype = "MX"\nvalue = "ten mx.a.test."\n',
        '[[record]]\nname = "a.test"\ntype = "A"\n',
        '[[record]]\nname = "a.test"\ntype = "A"\nvalue = "127.0.0.1"\nttl = 5\n',
        '[[record]]\nname = "a.test"\ntype = "NOPE"\nvalue = "x"\n',
        '[[record]]\nname = "a.test"\ntype = "TXT"\nvalue = []\n',
        'record = "a"\n',
        "zone = []\n",
        "not toml = = \n",
    ],
)
def test_zone_rejects_bad_rows(text: str) -> None:
    with pytest.raises(ConfigError, match="zone"):
        parse_zone(text)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200), st.sampled_from(["toml", "json"]))
def test_zone_parser_only_ever_raises_config_error(text: str, fmt: str) -> None:
    with suppress(ConfigError):
        parse_zone(text, fmt)


_label = st.from_regex(r"[a-z][a-z0-9-]{0,10}[a-z0-9]", fullmatch=True)
_name = st.lists(_label, min_size=1, max_size=3).map(lambda ls: ".".join([*ls, "test"]))
_row = st.one_of(
    st.builds(lambda n, a: {"name": n, "type": "A", "value": a}, _name, st.ip_addresses(v=4)),
    st.builds(
        lambda n, p, x: {"name": n, "type": "MX", "value": f"{p} {x}."},
        _name,
        st.integers(0, 65535),
        _name,
    ),
    st.builds(
        lambda n, t: {"name": n, "type": "TXT", "value": t},
        _name,
        st.lists(
            st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40),
            min_size=1,
            max_size=3,
        ),
    ),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(_row, max_size=5))
def test_zone_rows_round_trip_through_json(rows: list[dict[str, Any]]) -> None:
    for row in rows:
        row["value"] = str(row["value"]) if row["type"] == "A" else row["value"]
    parsed = parse_zone(json.dumps({"record": rows}), "json")
    assert [(r.name, r.type) for r in parsed] == [(row["name"], row["type"]) for row in rows]
    for record, row in zip(parsed, rows, strict=True):
        expected = tuple(row["value"]) if isinstance(row["value"], list) else row["value"]
        assert record.value == expected


async def test_resolver_validates_the_dns_service_and_its_tlsa_from_a_certificate(
    tmp_path: Path,
) -> None:
    """The compose lab's DNSSEC pair: `dns --tlsa --trust-anchor-out` and `resolver` (unbound)
    answer a TLSA record made from a certificate, validated (the AD bit)."""
    if unbound_path() is None:
        pytest.skip(UNBOUND_MISSING)
    run_pki(tmp_path / "pki", ["mx.example.test"])
    cert = tmp_path / "pki" / "mx.example.test.crt"
    zone = tmp_path / "zone.toml"
    zone.write_text(ZONE_TOML)
    anchor = tmp_path / "dnssec" / "trust-anchor"
    tlsa_name = "_25._tcp.mx.example.test"
    dns_args = ("dns", "--listen", "127.0.0.72:0", "--zone", str(zone), "--ttl", "0")
    async with serve(
        *dns_args, "--tlsa", f"{tlsa_name}={cert}", "--trust-anchor-out", str(anchor)
    ) as dns_proc:
        assert anchor.read_text().startswith(". ")  # the zone is the lab's root
        host, port = dns_proc.address
        async with serve(
            "resolver",
            "--listen",
            "127.0.0.72:0",
            "--upstream",
            f"{host}:{port}",
            "--trust-anchor",
            str(anchor),
        ) as resolver_proc:
            assert resolver_proc.ready["ready"] == "resolver"
            query = dns.message.make_query(tlsa_name, "TLSA", want_dnssec=True)
            r_host, r_port = resolver_proc.address
            reply = await dns.asyncquery.udp(query, r_host, port=r_port, timeout=5)
            assert reply.flags & dns.flags.AD, "unbound validated the signed TLSA answer"
            (rrset,) = [r for r in reply.answer if r.rdtype == dns.rdatatype.TLSA]
            leaf = x509.load_pem_x509_certificates(cert.read_bytes())[0]
            assert rrset[0].to_text() == tlsa_text(leaf, 3, 1, 1)
            assert await resolver_proc.terminate() == 0
