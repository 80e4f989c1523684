"""What every session of one intake shares: who may relay (`client_allowed` on
``accept_networks``) and the limits of README "Limits and abuse" (`SessionRules`), with the
``421`` each limit ends a session with (`CLOSING_REPLIES`)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

from relay.config import RelayConfig
from relay.intake.deadlines import COMMAND_DEADLINE, MIN_DATA_RATE
from relay.intake.limits import AuthFailures, ConnectionLimits, RefusalLog

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(networks: Iterable[str]) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(n, strict=False) for n in networks)


def client_ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The client's address (IPv4-mapped IPv6 as IPv4, no zone), or None when it is not one."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def client_allowed(address: str, networks: Iterable[IPNetwork]) -> bool:
    """True when the client address lies in one of the networks (IPv4-mapped IPv6 as IPv4)."""
    ip = client_ip(address)
    return ip is not None and any(ip.version == net.version and ip in net for net in networks)


# The 421 that ends a session at a limit: (status, words). A client too slow is Postfix's 4.4.2.
CLOSING_REPLIES = {
    "idle_timeout": ("4.7.0", "Idle timeout"),
    "session_timeout": ("4.7.0", "Session time limit reached"),
    "max_junk_commands": ("4.7.0", "Too many commands without mail"),
    "auth_failures": ("4.7.0", "Too many failed AUTH attempts"),
    COMMAND_DEADLINE: ("4.4.2", "Command not complete in time"),
    MIN_DATA_RATE: ("4.4.2", "Message data arriving too slowly"),
}
# Failed AUTHs are answered this many seconds late, so a password guesser gets nowhere fast.
AUTH_FAILURE_DELAY = 1.0


@dataclass
class SessionRules:
    """The limits every session of one intake shares (README "Limits and abuse")."""

    hostname: str
    networks: tuple[IPNetwork, ...]
    connections: ConnectionLimits
    auth_failures: AuthFailures
    idle_timeout: float
    session_timeout: float
    max_junk_commands: int
    auth_failures_per_connection: int
    command_deadline: float = 60.0
    min_data_rate: float = 500.0
    requiretls_loopback: bool = False
    auth_failure_delay: float = AUTH_FAILURE_DELAY
    refusals: RefusalLog = field(default_factory=RefusalLog)

    @classmethod
    def from_config(
        cls, config: RelayConfig, *, max_connections: int | None = None
    ) -> SessionRules:
        networks = parse_networks(config.accept_networks)
        return cls(
            hostname=config.hostname,
            networks=networks,
            connections=ConnectionLimits.for_relay(
                max_connections or config.max_connections,
                config.max_connections_per_ip,
                has_networks=bool(networks),
            ),
            auth_failures=AuthFailures(config.auth_failures_per_ip),
            idle_timeout=float(config.idle_timeout),
            session_timeout=float(config.session_timeout),
            max_junk_commands=config.max_junk_commands,
            auth_failures_per_connection=config.auth_failures_per_connection,
            command_deadline=float(config.command_deadline),
            min_data_rate=float(config.min_data_rate),
            requiretls_loopback=config.requiretls_loopback,
        )
