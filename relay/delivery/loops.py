"""Mail that would loop back to the relay itself (RFC 5321 5.1, "mail loops back to myself").

An MX address is the relay itself when it is the relay's own listen address: the same IP and
port, or a wildcard listen (``0.0.0.0``, ``::``) and a local address with the same port. Such an
MX record and every less preferred one are discarded; when none is left, the recipients bounce
with 5.4.6, as Postfix does.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable

from relay.config import Config
from relay.delivery.mx import MxHost

LOOP_REASON = "554 5.4.6 mail for {domain} loops back to myself"
_WILDCARDS = frozenset({"", "*", "0.0.0.0", "::"})


def _is_local(ip: str) -> bool:
    """True when `ip` is an address of this machine: binding a socket to it succeeds. No packet
    is sent."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    if address.is_loopback:
        return True
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.bind((ip, 0))
    except OSError:
        return False
    return True


class SelfAddresses:
    """Tells whether an MX address is the relay's own listen address (`[relay].listen`)."""

    def __init__(self, config: Config, *, is_local: Callable[[str], bool] = _is_local) -> None:
        host, self.port = config.relay.listen_address
        self.host = "127.0.0.1" if host == "localhost" else _canonical(host)
        self.delivery_port = config.delivery.port
        self._is_local = is_local
        self._local: dict[str, bool] = {}

    def __call__(self, ip: str) -> bool:
        if self.delivery_port != self.port:
            return False
        ip = _canonical(ip)
        if ip == self.host:
            return True
        if self.host not in _WILDCARDS:
            return False
        if ip not in self._local:
            self._local[ip] = self._is_local(ip)
        return self._local[ip]


def _canonical(ip: str) -> str:
    try:
        return str(ipaddress.ip_address(ip))
    except ValueError:
        return ip


def discard_self(
    hosts: tuple[MxHost, ...], is_self: Callable[[str], bool]
) -> tuple[tuple[MxHost, ...], bool]:
    """The MX hosts left once the relay's own record and every less preferred one are dropped
    (RFC 5321 5.1), and whether the relay was among them. `hosts` are in delivery order."""
    mine = [h.preference for h in hosts if any(is_self(ip) for ip in h.addresses)]
    if not mine:
        return hosts, False
    cutoff = min(mine)
    kept = tuple(
        h
        for h in hosts
        if h.preference < cutoff or (h.preference == cutoff and not any(map(is_self, h.addresses)))
    )
    return kept, True
