"""The compose lab (lab/docker-compose.yml, lab/Dockerfile, lab/compose/) without a Docker engine.

The file is validated by `compose-spec` (the Rust `compose_spec` parser: unknown keys, bad types,
bad addresses and undefined networks are errors) and, where a `docker compose` CLI exists, by
`docker compose config -q` too. The rest checks that the parts name each other correctly: every
command is a real `lab.serve` service or `stsguard` command, the network is internal, every
address in the zone data belongs to a service, and the relay's config points at the lab.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from compose_spec import PyCompose

import lab.serve
from lab.attacker import AttackMode
from mtasts.parse import parse_policy, parse_sts_record
from relay.cli import build_parser as stsguard_parser
from relay.config import load_config
from tlsrpt_emit.record import parse_tlsrpt_record

LAB = Path(__file__).resolve().parents[2] / "lab"
COMPOSE_FILE = LAB / "docker-compose.yml"
DOCKERFILE = LAB / "Dockerfile"
README = LAB / "README.md"
ZONE = LAB / "compose" / "zone.toml"
RELAY_TOML = LAB / "compose" / "relay.toml"
_VAR = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


def _compose() -> dict[str, Any]:
    """The compose file as Compose reads it (YAML merge keys resolved)."""
    data: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return data


def _services() -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = _compose()["services"]
    return services


def _interpolate(value: str, env: dict[str, str] | None = None) -> str:
    """Compose's ``${VAR:-default}`` with `env` (nothing set: the defaults)."""
    env = env or {}
    return _VAR.sub(lambda m: env.get(m.group(1)) or (m.group(2) or ""), value)


def _command(service: str, env: dict[str, str] | None = None) -> list[str]:
    command = _services()[service]["command"]
    assert isinstance(command, list), f"{service}: give the command as a list"
    return [_interpolate(str(part), env) for part in command]


def _serve_args(service: str, env: dict[str, str] | None = None) -> argparse.Namespace:
    command = _command(service, env)
    assert command[:3] == ["python", "-m", "lab.serve"], command
    return lab.serve.build_parser().parse_args(command[3:])


def _ip(service: str) -> str:
    return str(_services()[service]["networks"]["lab"]["ipv4_address"])


def _zone() -> tuple[lab.serve.ZoneRecord, ...]:
    return lab.serve.load_zone(ZONE)


def _zone_values(rdtype: str, name: str | None = None) -> list[str]:
    return [
        r.value if isinstance(r.value, str) else "".join(r.value)
        for r in _zone()
        if r.type == rdtype and (name is None or r.name.rstrip(".") == name)
    ]


# --- the file itself ---------------------------------------------------------------------------


def test_compose_file_is_valid_compose_spec() -> None:
    spec = PyCompose.from_json(json.dumps(_compose()))
    spec.validate()
    assert set(spec.service_names()) == {
        "pki",
        "dns",
        "resolver",
        "policy-host",
        "mx",
        "attacker",
        "collector",
        "relay",
        "sender",
    }


def test_the_validator_catches_a_broken_file() -> None:
    """The validator is not a rubber stamp: a misspelt key and an undefined network fail."""
    broken = _compose()
    broken["services"]["relay"]["networks"]["lab"]["ipv4_adress"] = "172.29.0.30"
    with pytest.raises(ValueError, match="ipv4_adress"):
        PyCompose.from_json(json.dumps(broken)).validate()
    broken = _compose()
    broken["services"]["relay"]["networks"] = {"elsewhere": None}
    with pytest.raises(ValueError, match="elsewhere"):
        PyCompose.from_json(json.dumps(broken)).validate()


def _compose_cli() -> list[str] | None:
    """A `docker compose` that works here without an engine, if any."""
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker"):
        probe = subprocess.run(
            ["docker", "compose", "version"], capture_output=True, timeout=30, check=False
        )
        if probe.returncode == 0:
            return ["docker", "compose"]
    return None


def test_docker_compose_config_accepts_the_file() -> None:
    cli = _compose_cli()
    if cli is None:
        pytest.skip("no docker compose CLI here; compose-spec validated the file")
    env = {**os.environ, "ATTACK": "garble"}
    result = subprocess.run(
        [*cli, "-f", str(COMPOSE_FILE), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_depends_on_and_volumes_name_what_exists() -> None:
    compose = _compose()
    services = compose["services"]
    named_volumes = set(compose.get("volumes", {}))
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown {dependency}"
        for mount in service.get("volumes", []):
            source = mount.split(":")[0]
            if source.startswith("."):
                assert (LAB / source).exists(), f"{name}: {source} does not exist"
            else:
                assert source in named_volumes, f"{name}: volume {source} is not declared"


# --- network -----------------------------------------------------------------------------------


def test_network_is_internal_with_fixed_private_addresses() -> None:
    network = _compose()["networks"]["lab"]
    assert network["internal"] is True
    [pool] = network["ipam"]["config"]
    subnet = ipaddress.ip_network(pool["subnet"])
    assert subnet.is_private
    seen: dict[str, str] = {}
    for name, service in _services().items():
        if service.get("network_mode") == "none":
            assert name == "pki", "only the one-shot pki service runs without a network"
            continue
        assert "network_mode" not in service
        assert set(service["networks"]) == {"lab"}, f"{name} must be on the lab network only"
        address = ipaddress.ip_address(_ip(name))
        assert address in subnet
        assert address not in (subnet.network_address, subnet.network_address + 1)  # gateway
        assert str(address) not in seen, f"{name} and {seen.get(str(address))} share {address}"
        seen[str(address)] = name
        assert "ports" not in service, f"{name}: the lab publishes nothing"


def test_every_zone_address_belongs_to_a_service() -> None:
    service_ips = {_ip(name) for name, s in _services().items() if "networks" in s}
    addresses = _zone_values("A") + _zone_values("AAAA")
    assert addresses
    for address in addresses:
        assert address in service_ips, f"{address} in zone.toml is no service's address"


def test_mx_points_at_the_attacker_which_forwards_to_the_mx() -> None:
    mx_hosts = {v.split()[1].rstrip(".") for v in _zone_values("MX")}
    # The DANE domain's MX has a name of its own (TLSA is per MX host) at the same attacker.
    assert mx_hosts == {"mx.example.test", "mx.dane.example.test"}
    for host in mx_hosts:
        assert _zone_values("A", host) == [_ip("attacker")]
    attacker = _serve_args("attacker")
    mx = _serve_args("mx")
    assert attacker.upstream == f"{_ip('mx')}:{mx.listen.rpartition(':')[2]}"
    assert attacker.listen.rpartition(":")[2] == mx.listen.rpartition(":")[2]
    assert mx.hostname == "mx.example.test"
    assert attacker.mx_name == mx.hostname
    assert attacker.ca_dir == _serve_args("pki").out


# --- commands ----------------------------------------------------------------------------------


def test_every_command_is_a_real_lab_serve_service_or_stsguard_command() -> None:
    kinds = {}
    for name in _services():
        command = _command(name)
        if command[:3] == ["python", "-m", "lab.serve"]:
            args = _serve_args(name)
            assert args.service in lab.serve.SERVICES
            kinds[name] = args.service
        elif command[0] == "stsguard":
            args = stsguard_parser().parse_args(command[1:])
            kinds[name] = f"stsguard {args.command}"
        else:
            assert command[0] == "swaks", f"{name}: unknown program {command[0]}"
            kinds[name] = "swaks"
    assert kinds == {
        "pki": "pki",
        "dns": "dns",
        "resolver": "resolver",
        "policy-host": "policy-host",
        "mx": "mx",
        "attacker": "attacker",
        "collector": "collector",
        "relay": "stsguard relay",
        "sender": "swaks",
    }


def test_attack_mode_comes_from_the_environment() -> None:
    assert _serve_args("attacker").mode == AttackMode.NONE
    assert _serve_args("attacker", {"ATTACK": "garble"}).mode == "garble"


def test_sender_is_a_tool_that_talks_to_the_relay() -> None:
    sender = _services()["sender"]
    assert sender["profiles"] == ["tools"]
    command = _command("sender")
    server = command[command.index("--server") + 1]
    relay_listen = load_config(RELAY_TOML).relay.listen_address
    assert server == f"{_ip('relay')}:{relay_listen[1]}"
    recipient = command[command.index("--to") + 1]
    assert _zone_values("MX", recipient.rpartition("@")[2])


def test_relay_config_points_at_the_lab() -> None:
    config = load_config(RELAY_TOML)
    assert _command("relay") == ["stsguard", "relay", "--config", "/lab/relay.toml"]
    assert "./compose/relay.toml:/lab/relay.toml:ro" in _services()["relay"]["volumes"]
    # The relay asks the validating resolver, which asks the dns service, and believes its AD bit.
    resolver = _serve_args("resolver")
    resolver_port = resolver.listen.rpartition(":")[2]
    assert config.dns.nameserver_addresses == ((_ip("resolver"), int(resolver_port)),)
    assert config.dns.dnssec_mode == "ad"
    dns_port = _serve_args("dns").listen.rpartition(":")[2]
    assert resolver.upstream == f"{_ip('dns')}:{dns_port}"
    assert resolver.trust_anchor == _serve_args("dns").trust_anchor_out
    assert any(
        ipaddress.ip_address(_ip("relay")) in ipaddress.ip_network(n) for n in resolver.allow
    )
    pki = _serve_args("pki")
    assert config.tls.ca_file == f"{pki.out}/ca.pem"
    assert config.delivery.port == int(_serve_args("attacker").listen.rpartition(":")[2])
    assert config.mtasts.https_port == int(_serve_args("policy-host").listen.rpartition(":")[2])
    networks = [ipaddress.ip_network(n) for n in config.relay.accept_networks]
    assert any(ipaddress.ip_address(_ip("sender")) in n for n in networks)
    assert not any(n.prefixlen == 0 for n in networks), "an open relay"


# --- certificates and records ------------------------------------------------------------------


def _pki_names() -> set[str]:
    return {n for entry in _serve_args("pki").names for n in entry.split(",")}


def _cert_files() -> set[str]:
    out = _serve_args("pki").out
    return {
        f"{out}/{entry.split(',')[0]}.{ext}"
        for entry in _serve_args("pki").names
        for ext in ("crt", "key")
    }


def test_every_certificate_a_service_loads_is_one_pki_writes() -> None:
    for name in ("policy-host", "mx", "collector"):
        args = _serve_args(name)
        assert {args.cert, args.key} <= _cert_files(), name


def test_certificates_cover_every_host_the_relay_verifies() -> None:
    names = _pki_names()
    mx_hosts = {v.split()[1].rstrip(".") for v in _zone_values("MX")}
    # DANE-EE checks the key, not the name: the DANE MX may present mx.example.test's certificate.
    assert mx_hosts - {"mx.dane.example.test"} <= names
    policy_domains = {d for d, _ in (p.split("=", 1) for p in _serve_args("policy-host").policy)}
    assert {f"mta-sts.{d}" for d in policy_domains} <= names
    for value in _zone_values("TXT"):
        if value.startswith("v=TLSRPTv1"):
            for url in parse_tlsrpt_record(value).https_urls:
                assert urlsplit(url).hostname in names


def test_policies_are_served_for_exactly_the_domains_with_a_txt_record() -> None:
    served = dict(p.split("=", 1) for p in _serve_args("policy-host").policy)
    with_txt = set()
    for record in _zone():
        if record.type == "TXT" and record.name.startswith("_mta-sts."):
            parse_sts_record(str(record.value))
            with_txt.add(record.name.removeprefix("_mta-sts."))
            assert _zone_values("A", f"mta-sts.{record.name.removeprefix('_mta-sts.')}") == [
                _ip("policy-host")
            ]
    assert set(served) == with_txt
    modes = {}
    for domain, path in served.items():
        policy = parse_policy((LAB / "compose" / Path(path).name).read_text())
        assert policy.allows("mx.example.test")
        modes[domain] = policy.mode.value
    assert modes == {"example.test": "enforce", "testing.example.test": "testing"}


# --- Dockerfile and README ---------------------------------------------------------------------


def test_dockerfile_installs_the_project_and_swaks() -> None:
    text = DOCKERFILE.read_text()
    instructions = [
        line.split(None, 1)
        for line in text.replace("\\\n", " ").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    # A registry's python image by default, any local base where there is no registry.
    assert instructions[0] == ["ARG", "BASE=python:3.11-slim"]
    assert instructions[1] == ["FROM", "${BASE}"]
    runs = " ".join(arg for op, arg in instructions if op == "RUN")
    assert re.search(r"apt-get install .*\bswaks\b", runs)
    # From the pre-built wheels without an index when there are any, else from the source.
    assert re.search(r"pip install [^&;]*--no-index --find-links lab/wheels stsguard", runs)
    assert re.search(r"pip install [^&;]*\s\.;", runs)
    copied = {arg.split()[0] for op, arg in instructions if op == "COPY"}
    pyproject = tomllib.loads((LAB.parent / "pyproject.toml").read_text())
    packages = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    for package in packages:
        assert package.rstrip("*") in copied, f"Dockerfile does not copy {package}"
    assert {"pyproject.toml", pyproject["project"]["readme"]} <= set(
        " ".join(arg for op, arg in instructions if op == "COPY").split()
    )
    assert any(op == "USER" and arg.strip() != "root" for op, arg in instructions)


def test_every_service_uses_the_one_lab_image() -> None:
    images = {s["image"] for s in _services().values()}
    assert len(images) == 1
    for service in _services().values():
        assert service["build"] == {
            "context": "..",
            "dockerfile": "lab/Dockerfile",
            "args": {"BASE": "${LAB_BASE:-python:3.11-slim}"},
        }


def test_no_top_level_name_for_docker_compose_1_29() -> None:
    """docker-compose 1.29 (Debian 12) rejects a top-level `name:`; lab/.env names the project."""
    assert "name" not in _compose()
    env = dict(
        line.split("=", 1)
        for line in (LAB / ".env").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert env["COMPOSE_PROJECT_NAME"] == "stsguard-lab"


def test_readme_commands_name_real_services_and_modes() -> None:
    text = README.read_text()
    assert "## Scenarios" in text
    services = set(_services())
    for match in re.finditer(r"docker compose -f lab/docker-compose.yml (\w+) (.*)", text):
        verb, rest = match.groups()
        if verb in ("run", "exec", "logs"):
            words = [w for w in rest.split() if not w.startswith("-")]
            assert words, match.group(0)
            assert words[0] in services, f"README names unknown service: {match.group(0)}"
    joined = text.replace("\\\n", " ")
    commands = re.findall(r"exec relay (stsguard .*)", joined)
    assert len(commands) >= 3
    for command in commands:
        words = shlex.split(command.replace('"$(date -u +%F)"', "2026-01-01"))
        stsguard_parser().parse_args(words[1:])
    modes = set(re.findall(r"ATTACK=([\w-]+)", text))
    assert modes
    for mode in modes:
        assert _serve_args("attacker", {"ATTACK": mode}).mode == mode
    # The README lists every mode the attacker has.
    listed = set(re.findall(r"`([a-z0-9-]+)`", text.split("### Run an attack")[1].split("```")[0]))
    assert {m.value for m in AttackMode} - {"none"} <= listed


def test_the_dane_mx_has_a_tlsa_record_made_from_the_real_mx_certificate() -> None:
    """The dns service adds `_25._tcp.mx.dane.example.test` from the mx's certificate (DANE-EE)."""
    dns_args = _serve_args("dns")
    (tlsa,) = dns_args.tlsa
    name, _, cert = tlsa.partition("=")
    assert name == "_25._tcp.mx.dane.example.test"
    assert cert == _serve_args("mx").cert
    assert "pki:/lab/pki:ro" in _services()["dns"]["volumes"]
