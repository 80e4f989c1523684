"""The one config object, loaded from one TOML file.

Every key is optional and has a default that works; an unknown key or a bad value raises
`ConfigError` naming the key (``[relay].listen: ...``). README documents every key.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import re
import socket
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

import idna

from mtasts.match import normalize_host
from relay.errors import ConfigError
from relay.state_url import StateUrl, StateUrlError, parse_state_url
from tlsrpt_emit.aggregate import contact_address, submitter_for

_DURATION = re.compile(r"\s*([0-9]+)\s*([smhdw]?)\s*", re.ASCII)  # used with fullmatch
_PORT = re.compile(r"[0-9]{1,5}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_HOSTNAME = re.compile(
    r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
    r"|\[[\x21-\x5a\x5e-\x7e]+\]"
)
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}

NO_POLICY_TLS = ("opportunistic", "encrypt", "verify")


class DomainTls(StrEnum):
    """`[domains."x"].tls`: a local override of a recipient domain's TLS policy."""

    NONE = "none"
    OPPORTUNISTIC = "opportunistic"
    ENCRYPT = "encrypt"
    VERIFY = "verify"
    MTA_STS = "mta-sts"  # no override: MTA-STS and DANE as published
    DANE = "dane"
    DANE_ONLY = "dane-only"


DOMAIN_TLS = tuple(str(t) for t in DomainTls)
DNSSEC = ("auto", "off", "ad")
ON_DOWNGRADE = ("defer", "log")
LOG_FORMATS = ("auto", "json", "console", "journal")
TLS_REQUIRED_NO = ("honour", "authenticated", "ignore")


def parse_duration(text: str | int, key: str) -> int:
    """Seconds from "30s", "5m", "4h", "5d", "1w", or a bare integer of seconds."""
    if isinstance(text, bool):
        raise ConfigError(f"{key}: expected a duration like '5m' or '5d', got {text!r}")
    if isinstance(text, int):
        if text < 0:
            raise ConfigError(f"{key}: a duration cannot be negative")
        return text
    m = _DURATION.fullmatch(text) if isinstance(text, str) else None
    if not m:
        raise ConfigError(
            f"{key}: expected a duration like '30s', '5m', '4h' or '5d', got {text!r}"
        )
    return int(m.group(1)) * _UNITS[m.group(2)]


def parse_hostport(text: str, key: str, default_port: int | None = None) -> tuple[str, int]:
    """Split ``host:port``, ``[v6]:port`` or (with a default port) a bare host or address."""
    if not isinstance(text, str) or not text.strip() or _CONTROL.search(text):
        raise ConfigError(f"{key}: expected 'host:port', got {text!r}")
    text = text.strip()
    host, sep, port_text = text.rpartition(":")
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ConfigError(f"{key}: unclosed '[' in {text!r}")
        host, rest = text[1:end], text[end + 1 :]
        if rest.startswith(":"):
            port_text, sep = rest[1:], ":"
        elif rest == "":
            port_text, sep = "", ""
        else:
            raise ConfigError(f"{key}: expected '[address]:port', got {text!r}")
    elif not sep or ":" in host:
        # No colon, or a bare IPv6 address: no port given.
        host, port_text, sep = text, "", ""
    if not sep:
        if default_port is None:
            raise ConfigError(f"{key}: expected 'host:port', got {text!r}")
        return host, default_port
    # Not str.isdigit: it accepts "²", which int() then refuses with a ValueError.
    if not _PORT.fullmatch(port_text) or not 0 < int(port_text) < 65536:
        raise ConfigError(f"{key}: bad port in {text!r}")
    return host, int(port_text)


def host_port(host: str, port: int) -> str:
    """``host:port`` as `parse_hostport` reads it (``[v6]:port`` for an IPv6 address)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def hosts_file_fqdn(name: str, hosts_text: str) -> str:
    """The first dotted name on an /etc/hosts line that lists `name` (or `name` itself)."""
    for line in hosts_text.splitlines():
        names = line.split("#", 1)[0].split()[1:]
        if name in names:
            dotted = [n for n in names if "." in n]
            if dotted:
                return dotted[0]
    return name


@functools.cache
def machine_fqdn() -> str:
    """This machine's full name without asking DNS: the host name if dotted, else its full name
    in /etc/hosts (as `hostname -f` finds it there), else the bare host name."""
    name = socket.gethostname()
    if "." in name:
        return name
    try:
        return hosts_file_fqdn(
            name, Path("/etc/hosts").read_text(encoding="utf-8", errors="replace")
        )
    except OSError:
        return name


@dataclass(frozen=True, slots=True)
class RelayConfig:
    listen: str = "127.0.0.1:2525"
    hostname: str = ""
    accept_networks: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    max_message_size: int = 52_428_800
    state_dir: Path = Path("./stsguard-state")
    metrics_listen: str = ""
    tls_cert_file: str = ""
    tls_key_file: str = ""
    auth_file: str = ""
    log_format: str = "auto"
    log_level: str = "info"
    intake_processes: int | str = "auto"  # a count, or "auto" (`intake_process_count`)
    open_relay: bool = False
    log_recipients: bool | str = True  # true | false | "hash": envelope recipients in log lines
    # Intake limits (README "Limits and abuse"); per intake process when intake_processes > 0.
    max_connections: int = 300
    max_connections_per_ip: int = 50
    idle_timeout: int = 300
    session_timeout: int = 1800
    command_deadline: int = 60  # seconds for one command line; DATA's budget (Postfix 3.7)
    min_data_rate: int = 500  # bytes per second in DATA; 0: no rate check
    max_junk_commands: int = 100
    max_recipients: int = 1000
    auth_failures_per_connection: int = 3
    auth_failures_per_ip: int = 10
    tls_required_no: str = "honour"
    requiretls_loopback: bool = False  # REQUIRETLS from accept_networks over plaintext loopback
    stop_timeout: int = 30

    def __post_init__(self) -> None:
        if not self.hostname:  # the default: this machine's name
            object.__setattr__(self, "hostname", machine_fqdn())

    @property
    def listen_address(self) -> tuple[str, int]:
        return parse_hostport(self.listen, "[relay].listen")


@dataclass(frozen=True, slots=True)
class DeliveryConfig:
    port: int = 25
    no_policy_tls: str = "opportunistic"
    queue_lifetime: int = 5 * 86400
    retry_initial: int = 300
    retry_max: int = 3600
    connect_timeout: int = 30
    command_timeout: int = 300
    concurrency_per_destination: int = 4
    workers: int = 32
    max_mx_addresses: int = 5
    max_hops: int = 50
    delay_warning: int = 0


@dataclass(frozen=True, slots=True)
class DnsConfig:
    nameservers: tuple[str, ...] = ()
    timeout: int = 10
    dnssec: str = "auto"  # off | ad; auto = ad when every nameserver is on loopback, else off

    @property
    def dnssec_mode(self) -> str:
        """Whether the AD bit is trusted (``"ad"``) or not (``"off"``): DANE needs ``"ad"``.

        Like Postfix's `smtp_dns_support_level = dnssec`, the AD bit is believed only from a
        resolver the operator vouches for; by default that is a validating resolver on loopback
        (a local unbound), because the path to any other one can forge the bit.
        """
        if self.dnssec != "auto":
            return self.dnssec
        hosts = [host for host, _ in self.nameserver_addresses]
        if hosts and all(ipaddress.ip_address(h).is_loopback for h in hosts):
            return "ad"
        return "off"

    @property
    def nameserver_addresses(self) -> tuple[tuple[str, int], ...]:
        return tuple(
            parse_hostport(ns, "[dns].nameservers", default_port=53) for ns in self.nameservers
        )


@dataclass(frozen=True, slots=True)
class TlsConfig:
    ca_file: str = ""


@dataclass(frozen=True, slots=True)
class MtastsConfig:
    https_port: int = 443
    fetch_timeout: int = 60
    refresh_interval: int = 86400
    answer_ttl: int = 5


@dataclass(frozen=True, slots=True)
class DetectConfig:
    on_downgrade: str = "defer"
    history_days: int = 30
    prevalence_days: int = 90  # downgrade prevalence counts kept this many UTC days; 0 = forever


@dataclass(frozen=True, slots=True)
class TlsrptConfig:
    enabled: bool = True
    organization_name: str = "stsguard"
    contact_info: str = ""
    submitter: str = ""
    dkim_domain: str = ""
    dkim_selector: str = ""
    dkim_key_file: str = ""
    max_delay: int = 4 * 3600
    flush_interval: int = 5
    post_timeout: int = 60


@dataclass(frozen=True, slots=True)
class StateConfig:
    url: str = ""  # empty: sqlite:///<state_dir>/state.sqlite3


@dataclass(frozen=True, slots=True)
class SocketmapConfig:
    listen: str = ""  # host:port or a Unix socket path; empty: no socketmap


@dataclass(frozen=True, slots=True)
class TlsrptInboundConfig:
    """TLS reports others send about our own domains (RFC 8460 5.3): https POSTs and a Maildir."""

    listen: str = ""  # host:port of the https endpoint; empty: none
    tls_cert_file: str = ""
    tls_key_file: str = ""
    domains: tuple[str, ...] = ()  # our own policy domains; a report about another is refused
    maildir: str = ""  # the report mailbox an MTA delivers to; empty: none
    notify: str = ""  # an address for alert mails; empty: alerts only in the log and metrics
    alert_days: int = 30  # a result type not seen in this many days is news
    alert_failure_percent: int = 10  # a report whose failed sessions are above this share alerts


@dataclass(frozen=True, slots=True)
class DomainConfig:
    tls: DomainTls = DomainTls.MTA_STS


@dataclass(frozen=True, slots=True)
class Config:
    relay: RelayConfig = field(default_factory=RelayConfig)
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)
    dns: DnsConfig = field(default_factory=DnsConfig)
    tls: TlsConfig = field(default_factory=TlsConfig)
    mtasts: MtastsConfig = field(default_factory=MtastsConfig)
    detect: DetectConfig = field(default_factory=DetectConfig)
    tlsrpt: TlsrptConfig = field(default_factory=TlsrptConfig)
    domains: Mapping[str, DomainConfig] = field(default_factory=dict)
    state: StateConfig = field(default_factory=StateConfig)
    socketmap: SocketmapConfig = field(default_factory=SocketmapConfig)
    tlsrpt_inbound: TlsrptInboundConfig = field(default_factory=TlsrptInboundConfig)

    @property
    def state_db(self) -> Path:
        """The SQLite state file (policy cache, TLS history, TLS-RPT counters) when `[state].url`
        names none: under `state_dir`."""
        url = self.state_url
        return url.path if url.path is not None else self.relay.state_dir / "state.sqlite3"

    @property
    def state_url(self) -> StateUrl:
        """Where the state lives (`[state].url`, validated at load)."""
        return parse_state_url(self.state.url, self.relay.state_dir / "state.sqlite3")

    def domain_tls(self, domain: str) -> DomainTls:
        """The local TLS override for a recipient domain, or `DomainTls.MTA_STS` when none."""
        override = self.domains.get(normalize_host(domain))
        return override.tls if override else DomainTls.MTA_STS


# --- loading -------------------------------------------------------------------------------

_T = TypeVar("_T")


def _choice(options: tuple[str, ...]) -> Callable[[Any, str], str]:
    def check(value: Any, key: str) -> str:
        if value not in options:
            raise ConfigError(f"{key}: must be one of {', '.join(options)}; got {value!r}")
        return str(value)

    return check


def _string(value: Any, key: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    return value


def _line(value: Any, key: str) -> str:
    """A string that may go into a header line, a report or an SMTP command: no control
    characters (CR, LF, NUL, TAB and the rest of C0, DEL, C1)."""
    text = _string(value, key)
    if _CONTROL.search(text):
        raise ConfigError(f"{key}: control characters (CR, LF, NUL...) are not allowed: {text!r}")
    return text


def _hostname(value: Any, key: str) -> str:
    """Our EHLO name and the `Received:` host: a DNS name or an address literal (empty: this
    machine's name)."""
    text = _line(value, key)
    if text and not _HOSTNAME.fullmatch(text):
        raise ConfigError(f"{key}: expected a host name or [address literal], got {text!r}")
    return text


def _bool(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    return value


def _int_range(low: int, high: int) -> Callable[[Any, str], int]:
    def check(value: Any, key: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ConfigError(f"{key}: expected a whole number from {low} to {high}, got {value!r}")
        return value

    return check


def _intake_processes(value: Any, key: str) -> int | str:
    if value == "auto":
        return "auto"
    return _int_range(0, 64)(value, key)


def intake_process_count(setting: int | str, cores: int) -> int:
    """`[relay].intake_processes` as a count: ``auto`` is one intake process per core beyond the
    first (at most 4), so the delivering process keeps a core; 0 on one core."""
    if setting == "auto":
        return max(0, min(4, cores - 1))
    return int(setting)


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity; cgroup quotas are not read)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _port(value: Any, key: str) -> int:
    return _int_range(1, 65535)(value, key)


def _strings(value: Any, key: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{key}: expected a list of strings, got {value!r}")
    return tuple(value)


def _networks(value: Any, key: str) -> tuple[str, ...]:
    nets = _strings(value, key)
    for net in nets:
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            raise ConfigError(f"{key}: {net!r} is not an IP network") from None
    return nets


def _listen(value: Any, key: str) -> str:
    text = _string(value, key)
    parse_hostport(text, key)
    return text


def _optional_listen(value: Any, key: str) -> str:
    text = _string(value, key)
    if text:
        parse_hostport(text, key)
    return text


def _socketmap_listen(value: Any, key: str) -> str:
    """``host:port``, an absolute Unix socket path, or empty (off)."""
    text = _line(value, key)
    if text.startswith("/"):
        return text
    if "/" in text:
        raise ConfigError(f"{key}: a Unix socket path must be absolute, got {text!r}")
    return _optional_listen(text, key)


def _nameservers(value: Any, key: str) -> tuple[str, ...]:
    servers = _strings(value, key)
    for ns in servers:
        host, _ = parse_hostport(ns, key, default_port=53)
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ConfigError(
                f"{key}: {ns!r} must be an IP address with an optional port"
            ) from None
    return servers


def _path(value: Any, key: str) -> Path:
    return Path(_line(value, key))


def _duration(value: Any, key: str) -> int:
    return parse_duration(value, key)


def _positive_duration(value: Any, key: str) -> int:
    seconds = parse_duration(value, key)
    if seconds < 1:
        raise ConfigError(f"{key}: must be at least 1 second, got {value!r}")
    return seconds


def _log_recipients(value: Any, key: str) -> bool | str:
    if isinstance(value, bool) or value == "hash":
        return value  # type: ignore[no-any-return]
    raise ConfigError(f'{key}: must be true, false or "hash"; got {value!r}')


def _log_level(value: Any, key: str) -> str:
    return _choice(("debug", "info", "warning", "error"))(value, key)


def _contact_info(value: Any, key: str) -> str:
    """RFC 8460 4.4: an e-mail address; a ``mailto:`` URI is read as its address."""
    text = _line(value, key)
    if not text:
        return text
    try:
        return contact_address(text)
    except ValueError as exc:
        raise ConfigError(f"{key}: {exc}") from None


def _domain_names(value: Any, key: str) -> tuple[str, ...]:
    """Domain names, compared as A-labels in lower case without a trailing dot."""
    names = []
    for name in _strings(value, key):
        try:
            names.append(idna.encode(name.strip().rstrip("."), uts46=True).decode().lower())
        except idna.IDNAError:
            raise ConfigError(f"{key}: {name!r} is not a domain name") from None
    return tuple(names)


def _notify_address(value: Any, key: str) -> str:
    text = _line(value, key)
    if text and (text.count("@") != 1 or text.startswith("@") or text.endswith("@")):
        raise ConfigError(f"{key}: expected an e-mail address, got {text!r}")
    return text


def _state_url(value: Any, key: str) -> str:
    text = _line(value, key)
    try:
        parse_state_url(text, Path("state.sqlite3"))
    except StateUrlError as exc:
        raise ConfigError(f"{key}: {exc}") from None
    return text


_SECTIONS: dict[str, tuple[type[Any], dict[str, Callable[[Any, str], Any]]]] = {
    "relay": (
        RelayConfig,
        {
            "listen": _listen,
            "hostname": _hostname,
            "accept_networks": _networks,
            "max_message_size": _int_range(1024, 2**40),
            "state_dir": _path,
            "metrics_listen": _optional_listen,
            "tls_cert_file": _line,
            "tls_key_file": _line,
            "auth_file": _line,
            "log_format": _choice(LOG_FORMATS),
            "log_level": _log_level,
            "intake_processes": _intake_processes,
            "open_relay": _bool,
            "log_recipients": _log_recipients,
            "max_connections": _int_range(1, 1_000_000),
            "max_connections_per_ip": _int_range(1, 1_000_000),
            "idle_timeout": _positive_duration,
            "session_timeout": _positive_duration,
            "command_deadline": _positive_duration,
            "min_data_rate": _int_range(0, 1_000_000_000),
            "max_junk_commands": _int_range(1, 1_000_000),
            "max_recipients": _int_range(100, 1_000_000),
            "auth_failures_per_connection": _int_range(1, 1000),
            "auth_failures_per_ip": _int_range(1, 1_000_000),
            "tls_required_no": _choice(TLS_REQUIRED_NO),
            "requiretls_loopback": _bool,
            "stop_timeout": _duration,
        },
    ),
    "delivery": (
        DeliveryConfig,
        {
            "port": _port,
            "no_policy_tls": _choice(NO_POLICY_TLS),
            "queue_lifetime": _duration,
            "retry_initial": _duration,
            "retry_max": _duration,
            "connect_timeout": _duration,
            "command_timeout": _duration,
            "concurrency_per_destination": _int_range(1, 1000),
            "workers": _int_range(1, 10000),
            "max_mx_addresses": _int_range(1, 100),
            "max_hops": _int_range(1, 1000),
            "delay_warning": _duration,
        },
    ),
    "dns": (
        DnsConfig,
        {"nameservers": _nameservers, "timeout": _duration, "dnssec": _choice(DNSSEC)},
    ),
    "tls": (TlsConfig, {"ca_file": _string}),
    "mtasts": (
        MtastsConfig,
        {
            "https_port": _port,
            "fetch_timeout": _duration,
            "refresh_interval": _duration,
            "answer_ttl": _duration,
        },
    ),
    "detect": (
        DetectConfig,
        {
            "on_downgrade": _choice(ON_DOWNGRADE),
            "history_days": _int_range(0, 3650),
            "prevalence_days": _int_range(0, 3650),
        },
    ),
    "tlsrpt": (
        TlsrptConfig,
        {
            "enabled": _bool,
            "organization_name": _line,
            "contact_info": _contact_info,
            "submitter": _line,
            "dkim_domain": _line,
            "dkim_selector": _line,
            "dkim_key_file": _line,
            "max_delay": _duration,
            "flush_interval": _duration,
            "post_timeout": _positive_duration,
        },
    ),
    "state": (StateConfig, {"url": _state_url}),
    "socketmap": (SocketmapConfig, {"listen": _socketmap_listen}),
    "tlsrpt_inbound": (
        TlsrptInboundConfig,
        {
            "listen": _optional_listen,
            "tls_cert_file": _line,
            "tls_key_file": _line,
            "domains": _domain_names,
            "maildir": _line,
            "notify": _notify_address,
            "alert_days": _int_range(1, 3650),
            "alert_failure_percent": _int_range(0, 100),
        },
    ),
}


def _shown(name: str) -> str:
    """A key or section name as an error shows it: escaped when it holds control characters,
    so the error stays one line."""
    return repr(name)[1:-1] if _CONTROL.search(name) else name


def _section(
    name: str, raw: Any, cls: type[_T], checks: Mapping[str, Callable[[Any, str], Any]]
) -> _T:
    if not isinstance(raw, dict):
        raise ConfigError(f"[{name}]: expected a table")
    values: dict[str, Any] = {}
    for key, value in raw.items():
        full = f"[{name}].{_shown(key)}"
        if key not in checks:
            known = ", ".join(sorted(checks))
            raise ConfigError(f"{full}: unknown key (known keys: {known})")
        values[key] = checks[key](value, full)
    return cls(**values)


def config_from_dict(raw: Mapping[str, Any]) -> Config:
    """Build a `Config` from parsed TOML, checking every key and value."""
    parts: dict[str, Any] = {}
    for name, value in raw.items():
        if name == "domains":
            parts["domains"] = _domains(value)
        elif name in _SECTIONS:
            cls, checks = _SECTIONS[name]
            parts[name] = _section(name, value, cls, checks)
        else:
            known = ", ".join(sorted([*_SECTIONS, "domains"]))
            raise ConfigError(f"[{_shown(name)}]: unknown section (known sections: {known})")
    config = Config(**parts)
    _check_submitter(config)
    _check_tlsrpt_inbound(config.tlsrpt_inbound)
    return config


def _check_tlsrpt_inbound(cfg: TlsrptInboundConfig) -> None:
    """The https endpoint needs its certificate, and a report source needs our domains."""
    if cfg.listen and not (cfg.tls_cert_file and cfg.tls_key_file):
        raise ConfigError(
            "[tlsrpt_inbound].listen: set tls_cert_file and tls_key_file too (RFC 8460 5.3: "
            "reports are POSTed over https)"
        )
    if (cfg.listen or cfg.maildir) and not cfg.domains:
        raise ConfigError(
            "[tlsrpt_inbound].domains: name our own policy domains, whose reports are taken"
        )


def _check_submitter(config: Config) -> None:
    """RFC 8460 5.3: the submitter is the domain of the contact-info address."""
    cfg = config.tlsrpt
    if cfg.submitter:
        contact = cfg.contact_info or default_contact_info(config)
        want = submitter_for(contact)
        if normalize_host(cfg.submitter) != want:
            raise ConfigError(
                f"[tlsrpt].submitter: {cfg.submitter!r} must be the domain of contact_info "
                f"{contact!r} ({want!r}; RFC 8460 5.3), or be left out"
            )


def default_contact_info(config: Config) -> str:
    """`[tlsrpt].contact_info` when not set: the postmaster of our host name."""
    return f"postmaster@{config.relay.hostname}"


def _domains(raw: Any) -> dict[str, DomainConfig]:
    if not isinstance(raw, dict):
        raise ConfigError("[domains]: expected a table of domains")
    result: dict[str, DomainConfig] = {}
    for domain, table in raw.items():
        key = f'[domains."{_shown(domain)}"]'
        if not isinstance(table, dict):
            raise ConfigError(f'{key}: expected a table such as {{ tls = "verify" }}')
        for name in table:
            if name != "tls":
                raise ConfigError(f"{key}.{_shown(name)}: unknown key (known keys: tls)")
        tls = _choice(DOMAIN_TLS)(table.get("tls", "mta-sts"), f"{key}.tls")
        # IDN-01: A-labels, like look-ups
        result[normalize_host(domain)] = DomainConfig(tls=DomainTls(tls))
    return result


def load_config(path: str | Path | None) -> Config:
    """Load the TOML file at `path`; `None` gives the defaults."""
    if path is None:
        return Config()
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read config file: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: config file is not UTF-8") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from None
    return config_from_dict(raw)


def config_keys() -> dict[str, list[str]]:
    """Every section and its keys, for documentation checks."""
    return {name: [f.name for f in fields(cls)] for name, (cls, _) in _SECTIONS.items()}


def duration_keys() -> frozenset[tuple[str, str]]:
    """(section, key) of every key that takes a duration ("5m", "5d"), for showing the config."""
    durations = (_duration, _positive_duration)
    return frozenset(
        (name, key)
        for name, (_, checks) in _SECTIONS.items()
        for key, check in checks.items()
        if check in durations
    )
