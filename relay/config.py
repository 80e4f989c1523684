"""The one config object, loaded from one TOML file.

Every key is optional and has a default that works; an unknown key or a bad value raises
`ConfigError` naming the key (``[relay].listen: ...``). README documents every key.
"""

from __future__ import annotations

import ipaddress
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

from mtasts.match import normalize_host
from relay.config_checks import SECTION_CHECKS, Check, choice
from relay.config_values import CONTROL_CHARACTERS, machine_fqdn, parse_hostport
from relay.errors import ConfigError
from relay.state_url import StateUrl, parse_state_url
from tlsrpt_emit.aggregate import submitter_for


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
    concurrency_per_destination: int = 20  # Postfix's default_destination_concurrency_limit
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

# Each section's type, and the check of each of its keys (`relay.config_checks`).
_SECTIONS: dict[str, tuple[type[Any], dict[str, Check]]] = {
    name: (cls, SECTION_CHECKS[name])
    for name, cls in (
        ("relay", RelayConfig),
        ("delivery", DeliveryConfig),
        ("dns", DnsConfig),
        ("tls", TlsConfig),
        ("mtasts", MtastsConfig),
        ("detect", DetectConfig),
        ("tlsrpt", TlsrptConfig),
        ("state", StateConfig),
        ("socketmap", SocketmapConfig),
        ("tlsrpt_inbound", TlsrptInboundConfig),
    )
}


def _shown(name: str) -> str:
    """A key or section name as an error shows it: escaped when it holds control characters,
    so the error stays one line."""
    return repr(name)[1:-1] if CONTROL_CHARACTERS.search(name) else name


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
        tls = choice(DOMAIN_TLS)(table.get("tls", "mta-sts"), f"{key}.tls")
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
