"""The one config object: defaults that work, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from relay.config import Config, config_keys, load_config
from relay.config_checks import SECTION_CHECKS
from relay.config_values import intake_process_count, parse_duration, parse_hostport
from relay.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "stsguard.toml"
    path.write_text(text)
    return path


def test_defaults_work_without_a_file() -> None:
    config = load_config(None)
    assert config == Config()
    assert config.relay.listen_address == ("127.0.0.1", 2525)
    assert config.delivery.port == 25
    assert config.delivery.queue_lifetime == 5 * 86400


def test_full_example_file_loads(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            """
[relay]
listen = "[::1]:2526"
state_dir = "/var/lib/stsguard"
[delivery]
port = 2525
queue_lifetime = "2d"
[dns]
nameservers = ["127.0.0.1:5353", "::1"]
[mtasts]
https_port = 8443
[domains."Example.ORG."]
tls = "verify"
""",
        )
    )
    assert config.relay.listen_address == ("::1", 2526)
    assert config.relay.state_dir == Path("/var/lib/stsguard")
    assert config.delivery.queue_lifetime == 2 * 86400
    assert config.dns.nameserver_addresses == (("127.0.0.1", 5353), ("::1", 53))
    assert config.mtasts.https_port == 8443
    assert config.domain_tls("example.org") == "verify"
    assert config.domain_tls("other.example") == "mta-sts"


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("[relay]\nlisten_on = 'x'\n", "[relay].listen_on"),
        ("[relais]\n", "[relais]"),
        ("[delivery]\nport = 0\n", "[delivery].port"),
        ("[delivery]\nport = '25'\n", "[delivery].port"),
        ("[delivery]\nno_policy_tls = 'maybe'\n", "[delivery].no_policy_tls"),
        ("[delivery]\nqueue_lifetime = 'forever'\n", "[delivery].queue_lifetime"),
        ("[dns]\nnameservers = ['ns1.example']\n", "[dns].nameservers"),
        ("[relay]\naccept_networks = ['10.0.0.0/33']\n", "[relay].accept_networks"),
        ("[relay]\nlisten = '127.0.0.1'\n", "[relay].listen"),
        ("[detect]\non_downgrade = 'panic'\n", "[detect].on_downgrade"),
        ('[domains."x.example"]\ntls = "maybe"\n', '[domains."x.example"].tls'),
        ('[domains."x.example"]\nmode = "verify"\n', '[domains."x.example"].mode'),
        ("[tlsrpt]\nenabled = 'yes'\n", "[tlsrpt].enabled"),
        ("[relay]\nintake_processes = 'many'\n", "[relay].intake_processes"),
    ],
)
def test_bad_key_or_value_names_the_key(tmp_path: Path, text: str, names: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert names in str(info.value)


def test_unreadable_and_invalid_files_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[relay\n"))


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("5m", 300), ("4h", 14400), ("5d", 432000), ("1w", 604800), ("90", 90), (7, 7)],
)
def test_durations(text: str | int, seconds: int) -> None:
    assert parse_duration(text, "k") == seconds


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:25", ("127.0.0.1", 25)),
        ("[::1]:53", ("::1", 53)),
        ("::1", ("::1", 53)),
        ("127.0.0.1", ("127.0.0.1", 53)),
        ("[::1]", ("::1", 53)),
    ],
)
def test_hostport(text: str, expected: tuple[str, int]) -> None:
    assert parse_hostport(text, "k", default_port=53) == expected


@pytest.mark.parametrize(
    ("text", "cores", "count"),
    [
        ('"auto"', 1, 0),
        ('"auto"', 2, 1),
        ('"auto"', 3, 2),
        ('"auto"', 64, 4),
        ("0", 8, 0),
        ("3", 1, 3),
    ],
)
def test_intake_processes_auto_follows_the_cores(
    tmp_path: Path, text: str, cores: int, count: int
) -> None:
    path = tmp_path / "c.toml"
    path.write_text(f"[relay]\nintake_processes = {text}\n")
    setting = load_config(path).relay.intake_processes
    assert intake_process_count(setting, cores) == count


def test_intake_processes_default_is_auto() -> None:
    assert Config().relay.intake_processes == "auto"


def test_every_section_key_has_a_check_and_every_check_a_key() -> None:
    """`relay.config_checks` and the section dataclasses name the same sections and keys."""
    assert {name: sorted(keys) for name, keys in config_keys().items()} == {
        name: sorted(checks) for name, checks in SECTION_CHECKS.items()
    }
