"""What each config key accepts: one check per key, section by section (`SECTION_CHECKS`).

A check takes the TOML value and the key's full name and returns the value to keep, or raises
`ConfigError` naming the key.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import idna

from relay.config_values import CONTROL_CHARACTERS, parse_duration, parse_hostport
from relay.errors import ConfigError
from relay.state_url import StateUrlError, parse_state_url
from tlsrpt_emit.aggregate import contact_address

Check = Callable[[Any, str], Any]

_HOSTNAME = re.compile(
    r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
    r"|\[[\x21-\x5a\x5e-\x7e]+\]"
)

NO_POLICY_TLS = ("opportunistic", "encrypt", "verify")
DNSSEC = ("auto", "off", "ad")
ON_DOWNGRADE = ("defer", "log")
LOG_FORMATS = ("auto", "json", "console", "journal")
TLS_REQUIRED_NO = ("honour", "authenticated", "ignore")


def choice(options: tuple[str, ...]) -> Callable[[Any, str], str]:
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
    if CONTROL_CHARACTERS.search(text):
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
    return choice(("debug", "info", "warning", "error"))(value, key)


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


SECTION_CHECKS: dict[str, dict[str, Check]] = {
    "relay": {
        "listen": _listen,
        "hostname": _hostname,
        "accept_networks": _networks,
        "max_message_size": _int_range(1024, 2**40),
        "state_dir": _path,
        "metrics_listen": _optional_listen,
        "tls_cert_file": _line,
        "tls_key_file": _line,
        "auth_file": _line,
        "log_format": choice(LOG_FORMATS),
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
        "tls_required_no": choice(TLS_REQUIRED_NO),
        "requiretls_loopback": _bool,
        "stop_timeout": _duration,
    },
    "delivery": {
        "port": _port,
        "no_policy_tls": choice(NO_POLICY_TLS),
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
    "dns": {"nameservers": _nameservers, "timeout": _duration, "dnssec": choice(DNSSEC)},
    "tls": {"ca_file": _string},
    "mtasts": {
        "https_port": _port,
        "fetch_timeout": _duration,
        "refresh_interval": _duration,
        "answer_ttl": _duration,
    },
    "detect": {
        "on_downgrade": choice(ON_DOWNGRADE),
        "history_days": _int_range(0, 3650),
        "prevalence_days": _int_range(0, 3650),
    },
    "tlsrpt": {
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
    "state": {"url": _state_url},
    "socketmap": {"listen": _socketmap_listen},
    "tlsrpt_inbound": {
        "listen": _optional_listen,
        "tls_cert_file": _line,
        "tls_key_file": _line,
        "domains": _domain_names,
        "maildir": _line,
        "notify": _notify_address,
        "alert_days": _int_range(1, 3650),
        "alert_failure_percent": _int_range(0, 100),
    },
}


def duration_keys() -> frozenset[tuple[str, str]]:
    """(section, key) of every key that takes a duration ("5m", "5d"), for showing the config."""
    durations = (_duration, _positive_duration)
    return frozenset(
        (name, key)
        for name, checks in SECTION_CHECKS.items()
        for key, check in checks.items()
        if check in durations
    )
