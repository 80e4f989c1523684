"""Run one lab cast member as its own long-running process: what the compose lab's containers run.

    python -m lab.serve pki --out DIR --names mx.example.test mta-sts.a.test,mta-sts.b.test
    python -m lab.serve dns --listen 0.0.0.0:53 --zone zone.toml --tlsa N=CERT --trust-anchor-out F
    python -m lab.serve resolver --listen 0.0.0.0:53 --upstream 10.0.0.53:53 --trust-anchor F
    python -m lab.serve policy-host --listen 0.0.0.0:443 --cert C --key K --policy a.test=FILE
    python -m lab.serve mx --listen 0.0.0.0:25 --cert C --key K --hostname mx.example.test
    python -m lab.serve attacker --listen 0.0.0.0:25 --upstream 10.0.0.25:25 --mode strip --ca-dir D
    python -m lab.serve collector --listen 0.0.0.0:8443 --cert C --key K

Each prints one JSON line when ready (``{"ready": "dns", "listen": "0.0.0.0:53", ...}``; port 0
picks a free port and the line names it), then serves until SIGTERM or SIGINT and exits 0. The mx
and the collector also print one JSON line per message or report they receive. ``pki`` is one-shot:
it writes ``ca.pem`` and ``ca.key`` plus ``NAME.crt``/``NAME.key`` per certificate and exits
(the attacker signs its intercepting certificates with ``ca.key``, as the in-process lab does).
"""

from __future__ import annotations

import argparse
import asyncio
import email.parser
import email.policy
import json
import shutil
import signal
import ssl
import sys
import tempfile
import tomllib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import dns.exception
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
from cryptography import x509

from lab.attacker import Attacker, AttackMode
from lab.collector import CollectedRequest, ReportCollector
from lab.dns import LabDns, TxtValue
from lab.mx import LabMx, ReceivedMessage
from lab.pki import IssuedCert, LabCA, tlsa_text
from lab.policy_host import Failure, PolicyHost
from lab.unbound import LabUnbound, unbound_path
from relay.config_values import parse_hostport
from relay.errors import ConfigError, StsguardError, UsageError

SERVICES = ("pki", "dns", "resolver", "policy-host", "mx", "attacker", "collector")
_T = TypeVar("_T")


def emit(event: dict[str, Any]) -> None:
    """One JSON line on stdout, flushed: what `docker compose logs` and the tests read."""
    print(json.dumps(event, sort_keys=True), flush=True)


# --- zone files (pure) -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ZoneRecord:
    """One row of a zone file. A TXT value may be a list of strings (a split record)."""

    name: str
    type: str
    value: TxtValue


def parse_zone(text: str, fmt: str = "toml") -> tuple[ZoneRecord, ...]:
    """The records of a zone file given as TOML (``[[record]]`` rows) or JSON.

    JSON is either a list of rows or ``{"record": [rows]}``; a row is ``{name, type, value}``.
    Every row is checked the way the DNS server will parse it; a bad one raises `ConfigError`
    naming its position.
    """
    raw: Any
    try:
        if fmt == "toml":
            raw = tomllib.loads(text)
        elif fmt == "json":
            raw = json.loads(text)
        else:
            raise ConfigError(f"zone: unknown format {fmt!r} (toml or json)")
    except (tomllib.TOMLDecodeError, ValueError, RecursionError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"zone: not valid {fmt.upper()}: {exc}") from None
    rows = raw.get("record", []) if isinstance(raw, dict) else raw
    if isinstance(raw, dict) and set(raw) - {"record"}:
        raise ConfigError(f"zone: unknown keys {sorted(set(raw) - {'record'})} (only 'record')")
    if not isinstance(rows, list):
        raise ConfigError("zone: 'record' must be a list of {name, type, value} rows")
    return tuple(_zone_row(i, row) for i, row in enumerate(rows, 1))


def _zone_row(index: int, row: Any) -> ZoneRecord:
    where = f"zone: record {index}"
    if not isinstance(row, dict) or set(row) != {"name", "type", "value"}:
        raise ConfigError(f"{where}: expected exactly the keys name, type and value")
    name, rdtype, value = row["name"], row["type"], row["value"]
    if not isinstance(name, str) or not isinstance(rdtype, str):
        raise ConfigError(f"{where}: name and type must be strings")
    if isinstance(value, list) and rdtype.upper() == "TXT":
        if not value or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}: a split TXT value is a non-empty list of strings")
        value = tuple(value)
    elif not isinstance(value, str):
        raise ConfigError(f"{where}: value must be a string")
    record = ZoneRecord(name, rdtype.upper(), value)
    try:
        # The same parse LabDns.add does, so a bad row fails here, with its position.
        LabDns().add(record.name, record.type, record.value)
    except (dns.exception.DNSException, ValueError, UnicodeError) as exc:
        raise ConfigError(f"{where} ({name} {rdtype}): {exc}") from None
    return record


def load_zone(path: Path) -> tuple[ZoneRecord, ...]:
    """Read a zone file; ``.json`` files are JSON, anything else TOML."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"zone: cannot read {path}: {exc}") from None
    return parse_zone(text, "json" if path.suffix.lower() == ".json" else "toml")


# --- argument helpers --------------------------------------------------------------------------


def _listen(text: str) -> tuple[str, int]:
    """``host:port`` to listen on; port 0 picks a free one."""
    if text.rpartition(":")[2] == "0":
        host = text.rpartition(":")[0].strip("[]")
        if not host:
            raise UsageError(f"--listen: expected 'host:port', got {text!r}")
        return host, 0
    return parse_hostport(text, "--listen")


def _shown(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _pairs(items: Sequence[str] | None, option: str) -> list[tuple[str, str]]:
    """``KEY=VALUE`` options as pairs."""
    pairs = []
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise UsageError(f"{option}: expected DOMAIN=VALUE, got {item!r}")
        pairs.append((key, value))
    return pairs


def _cert(args: argparse.Namespace, required: bool) -> IssuedCert | None:
    if not args.cert and not args.key:
        if required:
            raise UsageError("--cert and --key are required")
        return None
    if not (args.cert and args.key):
        raise UsageError("--cert and --key go together")
    cert = IssuedCert(Path(args.cert), Path(args.key))
    try:
        cert.server_context()
    except (OSError, ssl.SSLError) as exc:
        raise UsageError(f"cannot load --cert {args.cert} / --key {args.key}: {exc}") from None
    return cert


class _Announcing(list[_T]):
    """A list that reports every appended item: turns the cast's records into log lines."""

    def __init__(self, announce: Callable[[_T], None]) -> None:
        super().__init__()
        self._announce = announce

    def append(self, item: _T) -> None:
        super().append(item)
        self._announce(item)


# --- the services ------------------------------------------------------------------------------


def run_pki(out: Path, names: Sequence[str], *, force: bool = False) -> dict[str, Any]:
    """Write the lab CA (``ca.pem``) and one certificate per entry of `names` into `out`.

    An entry is one name or several joined by commas (one certificate, several SANs); the files
    are named after its first name. Existing files are kept unless `force`, so a second run (a
    `docker compose up` again) does not pull the CA from under running services. The CA key is
    written too (``ca.key``): the attacker loads the CA from it (`LabCA.load`).
    """
    certs = [[n.strip() for n in entry.split(",") if n.strip()] for entry in names]
    if not certs or not all(certs):
        raise UsageError("--names: give at least one name per certificate")
    out.mkdir(parents=True, exist_ok=True)
    wanted = [out / "ca.pem", out / "ca.key"]
    wanted += [out / f"{c[0]}.{ext}" for c in certs for ext in ("crt", "key")]
    if not force and all(p.exists() for p in wanted):
        return {"ready": "pki", "out": str(out), "ca_file": str(wanted[0]), "reused": True}
    with tempfile.TemporaryDirectory() as tmp:
        ca = LabCA(Path(tmp))
        shutil.copyfile(ca.ca_file, out / "ca.pem")
        ca.write_key(out / "ca.key")
        for sans in certs:
            issued = ca.issue(*sans)
            shutil.copyfile(issued.cert_file, out / f"{sans[0]}.crt")
            shutil.copyfile(issued.key_file, out / f"{sans[0]}.key")
    return {
        "ready": "pki",
        "out": str(out),
        "ca_file": str(out / "ca.pem"),
        "certs": {c[0]: c for c in certs},
        "reused": False,
    }


async def serve_dns(args: argparse.Namespace, stopped: asyncio.Event) -> None:
    records = load_zone(Path(args.zone))
    host, port = _listen(args.listen)
    server = LabDns(host=host, ttl=args.ttl)
    for record in records:
        server.add(record.name, record.type, record.value)
    for name, value in _pairs(args.tlsa, "--tlsa"):
        server.add(name, "TLSA", _tlsa_from_cert(name, value))
    async with server.running(port):
        if args.trust_anchor_out:
            _write_atomically(Path(args.trust_anchor_out), server.trust_anchor + "\n")
        emit(
            {
                "ready": "dns",
                "listen": _shown(host, server.port),
                "records": len(records) + len(args.tlsa or ()),
                "signed": True,
            }
        )
        await stopped.wait()


def _tlsa_from_cert(name: str, value: str) -> str:
    """``CERTFILE`` or ``CERTFILE:USAGE,SELECTOR,MTYPE`` (default 3,1,1) as a TLSA record."""
    path, _, params = value.partition(":")
    try:
        usage, selector, mtype = (int(n) for n in (params or "3,1,1").split(","))
        cert = x509.load_pem_x509_certificates(Path(path).read_bytes())[0]
    except (OSError, ValueError) as exc:
        raise UsageError(f"--tlsa {name}: {exc}") from None
    return tlsa_text(cert, usage, selector, mtype)


def _write_atomically(path: Path, text: str) -> None:
    """Readers never see half a file: write beside it, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


async def serve_resolver(args: argparse.Namespace, stopped: asyncio.Event) -> None:
    """unbound validating the lab DNS's signed zone with the anchor the dns service wrote."""
    if unbound_path() is None:
        raise UsageError("unbound is not installed (Debian: apt-get install unbound)")
    host, port = _listen(args.listen)
    up_host, up_port = parse_hostport(args.upstream, "--upstream")
    anchor = await _wait_for_file(Path(args.trust_anchor), args.wait)
    upstream = _Upstream(up_host, up_port, anchor.strip())
    with tempfile.TemporaryDirectory(prefix="lab-unbound-") as tmp:
        unbound = LabUnbound(
            upstream, Path(tmp), host=host, port=port, access=args.allow or ["127.0.0.0/8"]
        )
        async with unbound.running():
            emit(
                {
                    "ready": "resolver",
                    "listen": _shown(host, unbound.port),
                    "upstream": args.upstream,
                }
            )
            await stopped.wait()


async def _wait_for_file(path: Path, within: float) -> str:
    """The text of a file another service writes once it is up (polled: it is in a volume)."""
    async with asyncio.timeout(within):
        while True:
            try:
                return await asyncio.to_thread(path.read_text)
            except FileNotFoundError:
                await asyncio.sleep(0.2)


@dataclass(frozen=True, slots=True)
class _Upstream:
    host: str
    port: int
    trust_anchor: str


async def serve_policy_host(args: argparse.Namespace, stopped: asyncio.Event) -> None:
    cert = _cert(args, required=True)
    policies = _pairs(args.policy, "--policy")
    failures = _pairs(args.failure, "--failure")
    host, port = _listen(args.listen)
    texts = _read_policies(policies)
    with tempfile.TemporaryDirectory() as tmp:
        # PolicyHost wants a CA for its fall-back certificate; every domain is served with `cert`.
        policy_host = PolicyHost(LabCA(Path(tmp)), host=host, cert=cert)
        for domain, text in texts.items():
            policy_host.set_policy(domain, text)
        for domain, kind in failures:
            try:
                policy_host.set_failure(domain, Failure(kind))
            except ValueError:
                known = ", ".join(f.value for f in Failure)
                raise UsageError(f"--failure {domain}: {kind!r} is not one of {known}") from None
        async with policy_host.running(port):
            emit(
                {
                    "ready": "policy-host",
                    "listen": _shown(host, policy_host.port),
                    "domains": sorted(texts),
                    "failures": dict(failures),
                }
            )
            await stopped.wait()


def _read_policies(pairs: Sequence[tuple[str, str]]) -> dict[str, str]:
    texts = {}
    for domain, file in pairs:
        try:
            texts[domain] = Path(file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"--policy {domain}: cannot read {file}: {exc}") from None
    return texts


def message_summary(message: ReceivedMessage) -> dict[str, Any]:
    """What the mx prints for one received message."""
    headers = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(message.data)
    return {
        "received": "message",
        "mail_from": message.mail_from,
        "rcpt_tos": list(message.rcpt_tos),
        "helo": message.helo,
        "tls": message.tls,
        "tls_version": message.tls_version,
        "size": len(message.data),
        "subject": str(headers.get("Subject", "")),
    }


async def serve_mx(args: argparse.Namespace, stopped: asyncio.Event) -> None:
    cert = _cert(args, required=False)
    host, port = _listen(args.listen)
    mx = LabMx(
        host,
        hostname=args.hostname,
        tls_context=cert.server_context() if cert else None,
        rcpt_reply=args.rcpt_reply,
    )
    mx.messages = _Announcing(lambda m: emit(message_summary(m)))
    async with mx.running(port):
        emit(
            {
                "ready": "mx",
                "listen": _shown(host, mx.port),
                "hostname": args.hostname,
                "starttls": cert is not None,
            }
        )
        await stopped.wait()


def report_summary(request: CollectedRequest) -> dict[str, Any]:
    """What the collector prints for one received request: the report's gist when it is one."""
    summary: dict[str, Any] = {
        "received": "report",
        "method": request.method,
        "path": request.path,
        "content_type": request.headers.get("content-type", ""),
        "status": request.status,
        "size": len(request.body),
    }
    try:
        report = request.report()
        summary["report_id"] = report.get("report-id")
        summary["policies"] = [
            {
                "policy_domain": p["policy"]["policy-domain"],
                "policy_type": p["policy"]["policy-type"],
                "summary": p["summary"],
                "result_types": sorted({d["result-type"] for d in p.get("failure-details", ())}),
            }
            for p in report.get("policies", ())
        ]
    except (ValueError, OSError, EOFError, KeyError, TypeError, AttributeError):
        summary["report_id"] = None  # not a report we can read: the summary says what came
    return summary


async def serve_collector(args: argparse.Namespace, stopped: asyncio.Event) -> None:
    cert = _cert(args, required=False)
    host, port = _listen(args.listen)
    collector = ReportCollector(cert.server_context() if cert else None, host=host)
    collector.received = _Announcing(lambda r: emit(report_summary(r)))
    async with collector.running(port):
        emit({"ready": "collector", "listen": _shown(host, collector.port), "tls": bool(cert)})
        await stopped.wait()


def attacker_ca(ca_dir: Path) -> LabCA:
    """The CA the attacker signs with: the lab CA that `run_pki` wrote into `ca_dir`, or a new one
    there (which nothing trusts) when the directory holds none."""
    ca_file, key_file = ca_dir / "ca.pem", ca_dir / "ca.key"
    if ca_file.exists() and key_file.exists():
        return LabCA.load(Path(tempfile.mkdtemp(prefix="attacker-ca-")), ca_file, key_file)
    return LabCA(ca_dir)


async def serve_attacker(args: argparse.Namespace, stopped: asyncio.Event) -> None:
    host, port = _listen(args.listen)
    upstream = parse_hostport(args.upstream, "--upstream")
    ca = attacker_ca(Path(args.ca_dir or tempfile.mkdtemp(prefix="attacker-ca-")))
    attacker = Attacker(upstream, args.mode, host=host, port=port, mx_name=args.mx_name, ca=ca)
    async with attacker.running():
        emit(
            {
                "ready": "attacker",
                "listen": _shown(host, attacker.port),
                "upstream": _shown(*upstream),
                "mode": args.mode,
            }
        )
        await stopped.wait()


_SERVE: dict[str, Callable[[argparse.Namespace, asyncio.Event], Awaitable[None]]] = {
    "dns": serve_dns,
    "policy-host": serve_policy_host,
    "mx": serve_mx,
    "collector": serve_collector,
    "attacker": serve_attacker,
    "resolver": serve_resolver,
}


# --- command line ------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lab.serve", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="service", required=True, metavar="SERVICE")

    p = sub.add_parser("pki", help="write the lab CA and certificates, then exit")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--names", required=True, nargs="+", metavar="NAME[,NAME...]")
    p.add_argument("--force", action="store_true", help="write new files even if some exist")

    p = sub.add_parser("dns", help="authoritative DNS (UDP and TCP) from a zone file")
    p.add_argument("--listen", default="0.0.0.0:53", metavar="HOST:PORT")
    p.add_argument("--zone", required=True, metavar="FILE", help="TOML or .json zone rows")
    p.add_argument("--ttl", type=int, default=60)
    p.add_argument(
        "--tlsa",
        action="append",
        metavar="NAME=CERT[:U,S,M]",
        help="a TLSA record made from a PEM certificate at start (default 3,1,1); repeatable",
    )
    p.add_argument(
        "--trust-anchor-out", metavar="FILE", help="write the zone's trust anchor here once up"
    )

    p = sub.add_parser("resolver", help="unbound validating the lab DNS (DNSSEC, for DANE)")
    p.add_argument("--listen", default="0.0.0.0:53", metavar="HOST:PORT")
    p.add_argument("--upstream", required=True, metavar="HOST:PORT", help="the lab dns service")
    p.add_argument("--trust-anchor", required=True, metavar="FILE", help="what dns wrote")
    p.add_argument("--allow", action="append", metavar="NET", help="clients it answers")
    p.add_argument("--wait", type=float, default=60.0, help="seconds to wait for the anchor")

    p = sub.add_parser("policy-host", help="HTTPS MTA-STS policy host")
    p.add_argument("--listen", default="0.0.0.0:443", metavar="HOST:PORT")
    p.add_argument("--cert", metavar="FILE")
    p.add_argument("--key", metavar="FILE")
    p.add_argument("--policy", action="append", metavar="DOMAIN=FILE", help="repeatable")
    p.add_argument(
        "--failure", action="append", metavar="DOMAIN=KIND", help="break a domain's host"
    )

    p = sub.add_parser("mx", help="recipient MX (STARTTLS when given a certificate)")
    p.add_argument("--listen", default="0.0.0.0:25", metavar="HOST:PORT")
    p.add_argument("--cert", metavar="FILE")
    p.add_argument("--key", metavar="FILE")
    p.add_argument("--hostname", default="mx.example.test", help="name in the banner and EHLO")
    p.add_argument("--rcpt-reply", metavar="REPLY", help='e.g. "550 5.1.1 no such user"')

    p = sub.add_parser("attacker", help="on-path attacker proxy in front of an MX")
    p.add_argument("--listen", default="0.0.0.0:25", metavar="HOST:PORT")
    p.add_argument("--upstream", required=True, metavar="HOST:PORT")
    p.add_argument("--mode", required=True, choices=[m.value for m in AttackMode])
    p.add_argument("--ca-dir", metavar="DIR", help="the lab CA (pki --out DIR) to sign with")
    p.add_argument("--mx-name", default="mx.example.test", help="the MX name it stands in for")

    p = sub.add_parser("collector", help="TLS-RPT report collector (HTTPS with a certificate)")
    p.add_argument("--listen", default="0.0.0.0:8443", metavar="HOST:PORT")
    p.add_argument("--cert", metavar="FILE")
    p.add_argument("--key", metavar="FILE")
    return parser


async def _serve(
    service: Callable[[argparse.Namespace, asyncio.Event], Awaitable[None]],
    args: argparse.Namespace,
) -> None:
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopped.set)
    try:
        await service(args, stopped)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one service; 0 after a clean stop, 2 with one line on stderr for bad input."""
    args = build_parser().parse_args(argv)
    try:
        if args.service == "pki":
            emit(run_pki(Path(args.out), args.names, force=args.force))
            return 0
        service = _SERVE[args.service]
        asyncio.run(_serve(service, args))
    except StsguardError as exc:
        print(f"lab.serve {args.service}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # e.g. the address is in use or not ours
        print(f"lab.serve {args.service}: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
