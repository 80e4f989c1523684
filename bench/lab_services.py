"""The lab DNS server and MTA-STS policy host of a bench run, in a process of their own.

Both stsguard and postfix-mta-sts-resolver resolve and fetch against these, so neither pays for
the other's servers, and the harness that measures does not share their event loop.

    python bench/lab_services.py --dns 127.0.0.53:53 --https 127.0.0.21:443 \
        --control 127.0.0.53:5399 --workdir DIR --domains bench.test,cold.bench.test

It prints ``ready CA_FILE`` once both listen. Every domain D gets ``D MX 10 sink.bench.test``,
``_mta-sts.D TXT v=STSv1; id=1`` and an ``enforce`` policy naming ``sink.bench.test``.
With ``--unbound HOST`` a real unbound (`lab.unbound`) validates the signed lab zone on HOST and
``ready`` names it too (``ready CA_FILE HOST:PORT``, ``-`` without unbound); ``--dane-domain D``
gives D ``MX 10 dane-sink.bench.test`` (the same sink) with a signed TLSA 3 1 1 for the sink's key.
The control port answers one line per request: ``TXT D`` -> TXT queries for ``_mta-sts.D``,
``HTTPS D`` -> policy fetches for D, ``A NAME`` -> A queries for NAME.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from pathlib import Path

from lab.dns import LabDns
from lab.pki import LabCA
from lab.policy_host import PolicyHost
from lab.unbound import LabUnbound, unbound_path

SINK_NAME = "sink.bench.test"
DANE_SINK_NAME = "dane-sink.bench.test"
POLICY = "version: STSv1\r\nmode: enforce\r\nmx: {mx}\r\nmax_age: 604800\r\n"


def zone(dns: LabDns, domains: list[str], sink_ip: str, policy_ip: str) -> None:
    dns.add(SINK_NAME, "A", sink_ip)
    for domain in domains:
        dns.add(domain, "MX", f"10 {SINK_NAME}.")
        dns.add(f"_mta-sts.{domain}", "TXT", "v=STSv1; id=1")
        dns.add(f"mta-sts.{domain}", "A", policy_ip)


async def serve_control(dns: LabDns, host: PolicyHost, addr: str) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while line := await reader.readline():
                kind, _, name = line.decode().strip().partition(" ")
                if kind == "TXT":
                    value = dns.count(f"_mta-sts.{name}", "TXT")
                elif kind == "A":
                    value = dns.count(name, "A")
                elif kind == "HTTPS":
                    value = host.requests[name]
                else:
                    value = -1
                writer.write(f"{value}\n".encode())
                await writer.drain()
        writer.close()

    chost, cport = addr.rsplit(":", 1)
    return await asyncio.start_server(handle, chost, int(cport))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dns", required=True, help="host:port of the DNS server")
    parser.add_argument("--https", required=True, help="host:port of the policy host")
    parser.add_argument("--control", required=True, help="host:port for the counter queries")
    parser.add_argument("--workdir", required=True, type=Path, help="where the CA files go")
    parser.add_argument("--sink-ip", default="127.0.0.20")
    parser.add_argument("--domains", required=True, help="comma-separated recipient domains")
    parser.add_argument("--unbound", default="", help="run unbound on this address (DANE)")
    parser.add_argument("--dane-domain", default="", help="a recipient domain under DANE")
    args = parser.parse_args()
    domains = [d for d in args.domains.split(",") if d]
    ca = LabCA(args.workdir, name="bench")
    # The sink's certificate comes from the same CA.
    sink = ca.issue(SINK_NAME)
    (args.workdir / "sink.crt").write_bytes(sink.cert_file.read_bytes())
    (args.workdir / "sink.key").write_bytes(sink.key_file.read_bytes())
    dns_host, dns_port = args.dns.rsplit(":", 1)
    https_host, https_port = args.https.rsplit(":", 1)
    policy_cert = ca.issue(*(f"mta-sts.{d}" for d in domains))
    host = PolicyHost(ca, host=https_host, cert=policy_cert)
    for domain in domains:
        host.set_policy(domain, POLICY.format(mx=SINK_NAME))
    dns = LabDns(host=dns_host, ttl=300)
    zone(dns, domains, args.sink_ip, https_host)
    if args.dane_domain:
        dns.add(args.dane_domain, "MX", f"10 {DANE_SINK_NAME}.")
        dns.add(DANE_SINK_NAME, "A", args.sink_ip)
        dns.add(f"_25._tcp.{DANE_SINK_NAME}", "TLSA", sink.tlsa(3, 1, 1))
    await dns.start(int(dns_port))
    unbound: LabUnbound | None = None
    if args.unbound and unbound_path() is not None:
        # Answers kept for their TTL, as a production resolver would.
        unbound = LabUnbound(dns, args.workdir / "unbound", host=args.unbound, max_ttl=300)
        await unbound.start()
    await host.start(int(https_port))
    control = await serve_control(dns, host, args.control)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    print(f"ready {ca.ca_file} {unbound.address if unbound else '-'}", flush=True)
    await stop.wait()
    if unbound is not None:
        await unbound.stop()
    control.close()
    await host.stop()
    await dns.stop()


if __name__ == "__main__":
    asyncio.run(main())
