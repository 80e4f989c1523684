"""Config values that other parts read too: durations, ``host:port``, this machine's name, the
intake process count. Pure parsers raise `ConfigError` naming the key."""

from __future__ import annotations

import functools
import os
import re
import socket
from pathlib import Path

from relay.errors import ConfigError

_DURATION = re.compile(r"\s*([0-9]+)\s*([smhdw]?)\s*", re.ASCII)  # used with fullmatch
_PORT = re.compile(r"[0-9]{1,5}")
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


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
    if not isinstance(text, str) or not text.strip() or CONTROL_CHARACTERS.search(text):
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
