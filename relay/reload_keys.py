"""Which config keys a SIGHUP applies to the running relay (`Relay.reload`), and which changed
keys only take effect at the next start (pure)."""

from __future__ import annotations

from dataclasses import fields

from relay.config import Config

# Keys a SIGHUP applies; any other changed key takes effect at the next start.
LIVE_KEYS = {
    "relay": {
        "hostname",
        "max_message_size",
        "accept_networks",
        "stop_timeout",
        # the intake's limits (Intake.reconfigure; intake processes re-read the file)
        "max_connections",
        "max_connections_per_ip",
        "idle_timeout",
        "session_timeout",
        "command_deadline",
        "min_data_rate",
        "max_junk_commands",
        "max_recipients",
        "auth_failures_per_connection",
        "auth_failures_per_ip",
        "tls_required_no",
        "requiretls_loopback",
    },
    "delivery": {
        "port",
        "no_policy_tls",
        "queue_lifetime",
        "retry_initial",
        "retry_max",
        "connect_timeout",
        "command_timeout",
        "concurrency_per_destination",
        "workers",
        "max_hops",
        "delay_warning",
    },
    "detect": {"on_downgrade", "prevalence_days"},
}


def needs_restart(old: Config, new: Config) -> list[str]:
    """The changed keys that a reload does not apply (`[section].key`), sorted."""
    changed: list[str] = []
    for section in fields(Config):
        name = section.name
        before, after = getattr(old, name), getattr(new, name)
        if name == "domains":
            continue  # read per delivery
        for key in fields(before):
            if getattr(before, key.name) == getattr(after, key.name):
                continue
            live = key.name in LIVE_KEYS.get(name, set())
            if not live:
                changed.append(f"[{name}].{key.name}")
    return sorted(changed)
