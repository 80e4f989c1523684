"""The checks the relay runs before it starts, shared with `stsguard check` so the two cannot drift.

`config_problems` reads files only; `listen_problems` binds and releases the listening addresses
(the relay binds them itself when it starts); `dkim_problems` compares the DKIM key with DNS.
Each returns `Problem`s: an error stops the relay (exit 2), a warning is logged and it starts.
"""

from __future__ import annotations

import base64
import ipaddress
import os
import re
import socket
from pathlib import Path

import dns.asyncresolver
import dns.exception
import dns.resolver
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from relay.config import Config, DomainTls
from relay.config_values import parse_hostport
from relay.errors import StsguardError
from relay.problems import Problem
from relay.reports import report_settings

_OPEN_NETWORKS = (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0"))
_NOT_REAL_SUFFIXES = (".localhost", ".localdomain", ".local", ".invalid", ".internal", ".lan")
_LDH_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")


def is_real_domain(name: str) -> bool:
    """A name other hosts can resolve and reply to: dotted, not localhost or a private suffix."""
    name = name.strip().lower().rstrip(".")
    if "." not in name or name in ("localhost", "localdomain") or name.endswith(_NOT_REAL_SUFFIXES):
        return False
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return True
    return False  # an address literal is no domain


def tlsrpt_identity_problem(config: Config) -> str | None:
    """Why TLS-RPT reports must not be sent yet, or None: every name a receiver sees in them
    (contact-info, submitter, the DSN sender's domain) must be a real domain, so a fresh install
    never mails third parties as postmaster@localhost."""
    if not config.tlsrpt.enabled:
        return None
    try:
        settings = report_settings(config)
    except StsguardError:
        return None  # reported as a key problem of its own
    names = {
        "[tlsrpt].contact_info (and the submitter, its domain)": settings.submitter,
        "[relay].hostname (the DSN sender)": config.relay.hostname,
    }
    bad = [
        f"{key} names {value or '(nothing)'!r}"
        for key, value in names.items()
        if not is_real_domain(value)
    ]
    if not bad:
        return None
    return (
        "TLS-RPT reports are counted but not sent until the reporting identity names a real "
        f"domain: {'; '.join(bad)} (set [relay].hostname or [tlsrpt].contact_info)"
    )


def _hostname_problems(config: Config) -> list[Problem]:
    name = config.relay.hostname
    if name.lower().rstrip(".") == "localhost" or "." not in name:
        return [
            Problem(
                "warning",
                f"[relay].hostname is {name!r}: MX hosts see it in EHLO and DSNs come from "
                f"MAILER-DAEMON@{name}; set this host's public name",
            )
        ]
    return []


def _open_relay_problems(config: Config) -> list[Problem]:
    nets = config.relay.accept_networks
    open_nets = [n for n in nets if ipaddress.ip_network(n, strict=False) in _OPEN_NETWORKS]
    if not open_nets:
        return []
    if config.relay.open_relay:
        return [
            Problem(
                "warning",
                f"[relay].accept_networks contains {', '.join(open_nets)}: an open relay "
                "(open_relay = true)",
            )
        ]
    return [
        Problem(
            "error",
            f"[relay].accept_networks contains {', '.join(open_nets)}, which makes an open relay "
            "for the whole internet; narrow it, or set [relay].open_relay = true if you mean it",
        )
    ]


def _file_problems(config: Config) -> list[Problem]:
    """Certificates, keys, the AUTH file and the CA file, loaded as the relay will load them."""
    # The intake's loaders, so `check` judges the files exactly as the relay does.
    from relay.intake.auth import load_auth_file
    from relay.intake.server import auth_tls_problem, server_tls_context
    from relay.tls import client_context

    problems: list[Problem] = []
    relay = config.relay
    try:
        server_tls_context(relay)
    except StsguardError as exc:
        problems.append(Problem("error", str(exc)))
    if relay.auth_file:
        try:
            load_auth_file(relay.auth_file)
        except StsguardError as exc:
            problems.append(Problem("error", str(exc)))
        if (auth := auth_tls_problem(relay)) is not None:
            problems.append(Problem("error", auth))
    try:
        client_context(config.tls.ca_file)
    except StsguardError as exc:
        problems.append(Problem("error", str(exc)))
    problems += _inbound_problems(config)
    if config.tlsrpt.enabled:
        try:
            settings = report_settings(config)
            if settings.dkim_key is not None:
                _public_key_b64(settings.dkim_key.private_key)
        except StsguardError as exc:
            problems.append(Problem("error", str(exc)))  # it names the key already
        except (ValueError, TypeError) as exc:
            where = config.tlsrpt.dkim_key_file
            problems.append(
                Problem("error", f"[tlsrpt].dkim_key_file: {where}: not a usable key: {exc}")
            )
    return problems


def _inbound_problems(config: Config) -> list[Problem]:
    """The report endpoint's certificate and key; a report Maildir that is not there (yet)."""
    from relay.tls import report_endpoint_context

    inbound = config.tlsrpt_inbound
    problems = []
    if inbound.listen:
        try:
            report_endpoint_context(inbound.tls_cert_file, inbound.tls_key_file)
        except StsguardError as exc:
            problems.append(Problem("error", str(exc)))
    if inbound.maildir and not Path(inbound.maildir, "new").is_dir():
        problems.append(
            Problem(
                "warning",
                f"[tlsrpt_inbound].maildir: no {Path(inbound.maildir, 'new')} yet "
                "(read once the MTA delivers there)",
            )
        )
    return problems


def _state_dir_problems(config: Config) -> list[Problem]:
    state_dir = config.relay.state_dir
    if not state_dir.is_absolute():
        return [
            Problem(
                "warning",
                f"[relay].state_dir {str(state_dir)!r} is relative: the relay and each command "
                "find it from their own working directory; set an absolute path "
                '(state_dir = "/var/lib/stsguard")',
            ),
            *_state_dir_access(state_dir),
        ]
    return _state_dir_access(state_dir)


def _state_dir_access(state_dir: Path) -> list[Problem]:
    probe = state_dir
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        return [Problem("error", f"[relay].state_dir: {probe} is not a directory")]
    if not os.access(probe, os.W_OK | os.X_OK):
        return [Problem("error", f"[relay].state_dir: {probe} is not writable by this user")]
    return []


def _delivery_problems(config: Config) -> list[Problem]:
    """Retry and expiry settings that cannot mean what they say."""
    cfg = config.delivery
    problems = []
    if cfg.queue_lifetime < 1:
        problems.append(
            Problem(
                "error",
                "[delivery].queue_lifetime is 0: every message would bounce before its first "
                'attempt; give a duration such as "5d"',
            )
        )
    if cfg.retry_initial > cfg.retry_max:
        problems.append(
            Problem(
                "error",
                f"[delivery].retry_initial ({cfg.retry_initial}s) is longer than retry_max "
                f"({cfg.retry_max}s): the backoff starts above its ceiling; lower retry_initial "
                "or raise retry_max",
            )
        )
    return problems


def is_domain_name(name: str) -> bool:
    """A DNS name of letter-digit-hyphen labels (after IDNA), as `[domains."x"]` must be."""
    labels = name.split(".")
    return len(name) <= 253 and all(_LDH_LABEL.fullmatch(label) for label in labels)


def _domain_problems(config: Config) -> list[Problem]:
    return [
        Problem(
            "error",
            f'[domains."{name}"]: not a domain name (letters, digits, hyphens and dots; '
            "the override would never match a recipient)",
        )
        for name in config.domains
        if not is_domain_name(name)
    ]


def _dnssec_problems(config: Config) -> list[Problem]:
    """DANE needs DNSSEC answers the relay may believe (RFC 7672 1.3, 2.1.1): say when it is off."""
    dns = config.dns
    if dns.dnssec_mode == "ad":
        return []
    dane_only = sorted(d for d, o in config.domains.items() if o.tls == DomainTls.DANE_ONLY)
    why = (
        '[dns].dnssec = "off"'
        if dns.dnssec == "off"
        else "[dns].nameservers "
        + (", ".join(dns.nameservers) or "is empty (the system resolver)")
        + ' is not all on loopback, so the AD bit is not believed (dnssec = "auto")'
    )
    if dane_only:
        return [
            Problem(
                "error",
                f'[domains]: {", ".join(dane_only)} set tls = "dane-only" but DANE is off: '
                f"{why}; their mail would never leave. Run a validating resolver on loopback "
                '(unbound) or set [dns].dnssec = "ad" for a resolver you trust',
            )
        ]
    if dns.dnssec == "auto" and dns.nameservers:
        return [
            Problem(
                "warning",
                f"[dns]: DANE is off: {why}. Run a validating resolver on loopback (unbound) "
                'and name it, or set [dns].dnssec = "ad" if the path to it is trusted',
            )
        ]
    return []


def _requiretls_problems(config: Config) -> list[Problem]:
    """`[relay].requiretls_loopback` does nothing unless accept_networks holds a loopback one."""
    relay = config.relay
    nets = [ipaddress.ip_network(n, strict=False) for n in relay.accept_networks]
    if not relay.requiretls_loopback or any(n.is_loopback for n in nets):
        return []
    return [
        Problem(
            "warning",
            "[relay].requiretls_loopback = true has no effect: accept_networks has no loopback "
            "network (127.0.0.0/8 or ::1)",
        )
    ]


def config_problems(config: Config) -> list[Problem]:
    """Every check that needs no network: names, open relay, files, the state directory,
    retry and expiry, overrides, DNSSEC."""
    problems = [
        *_hostname_problems(config),
        *_open_relay_problems(config),
        *_file_problems(config),
        *_state_dir_problems(config),
        *_delivery_problems(config),
        *_domain_problems(config),
        *_dnssec_problems(config),
        *_requiretls_problems(config),
    ]
    identity = tlsrpt_identity_problem(config)
    if identity:
        problems.append(Problem("warning", f"[tlsrpt]: {identity}"))
    return problems


def _bind_problem(listen: str, key: str) -> Problem | None:
    if listen.endswith(":0"):
        return None
    host, port = parse_hostport(listen, key)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen()
    except OSError as exc:
        return Problem("error", f"{key}: cannot listen on {listen}: {exc.strerror or exc}")
    return None


def listen_problems(config: Config) -> list[Problem]:
    """Whether `[relay].listen`, `metrics_listen` and `[socketmap].listen` can be bound now (for
    `stsguard check`); a socketmap Unix socket needs its directory."""
    checks = [(config.relay.listen, "[relay].listen")]
    if config.relay.metrics_listen:
        checks.append((config.relay.metrics_listen, "[relay].metrics_listen"))
    found = []
    socketmap = config.socketmap.listen
    if socketmap.startswith("/"):
        if not Path(socketmap).parent.is_dir():
            found.append(
                Problem("error", f"[socketmap].listen: no directory {Path(socketmap).parent}")
            )
    elif socketmap:
        checks.append((socketmap, "[socketmap].listen"))
    if config.tlsrpt_inbound.listen:
        checks.append((config.tlsrpt_inbound.listen, "[tlsrpt_inbound].listen"))
    return found + [p for listen, key in checks if (p := _bind_problem(listen, key)) is not None]


def _public_key_b64(private_pem: bytes) -> str:
    """The DKIM ``p=`` value of a PEM private key (RSA: SubjectPublicKeyInfo; Ed25519: raw)."""
    key = serialization.load_pem_private_key(private_pem, password=None)
    public = key.public_key()
    if isinstance(public, ed25519.Ed25519PublicKey):
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    else:
        raw = public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    return base64.b64encode(raw).decode()


def _txt_tags(text: str) -> dict[str, str]:
    tags: dict[str, str] = {}
    for part in text.split(";"):
        name, sep, value = part.partition("=")
        if sep:
            tags[name.strip()] = "".join(value.split())
    return tags


def _dkim_public_key(config: Config) -> str | None:
    cfg = config.tlsrpt
    if not (cfg.enabled and cfg.dkim_key_file and cfg.dkim_domain and cfg.dkim_selector):
        return None
    try:
        return _public_key_b64(Path(cfg.dkim_key_file).read_bytes())
    except (OSError, ValueError, TypeError):
        return None  # config_problems reports the unreadable key


async def dkim_problems(config: Config, resolver: dns.asyncresolver.Resolver) -> list[Problem]:
    """The DKIM key of report mail against its published record, when DNS can be asked."""
    expected = _dkim_public_key(config)
    if expected is None:
        return []
    cfg = config.tlsrpt
    name = f"{cfg.dkim_selector}._domainkey.{cfg.dkim_domain}."
    key = "[tlsrpt].dkim_key_file"
    try:
        answer = await resolver.resolve(name, "TXT")
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return [Problem("error", f"{key}: no DKIM record at {name} (publish the public key)")]
    except dns.exception.DNSException as exc:
        return [Problem("warning", f"{key}: could not look up {name} to compare: {exc}")]
    records = [_txt_tags(b"".join(r.strings).decode("ascii", "replace")) for r in answer]
    if expected in (tags.get("p", "") for tags in records):
        services = [tags.get("s", "*").split(":") for tags in records]
        if not any("tlsrpt" in s or "*" in s for s in services):
            return [Problem("warning", f"{key}: {name} lacks s=tlsrpt (RFC 8460 5.3)")]
        return []
    return [
        Problem("error", f"{key}: the public key at {name} does not match the private key file")
    ]
