"""`stsguard socketmap` as its own process, and the same map inside `stsguard relay`."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

from lab.world import LabWorld, free_port, to_toml, wait_until
from relay.app import Relay
from relay.config import config_from_dict
from relay.preflight import listen_problems
from tests.cli import run_cli
from tests.relay.socketmap.client import connect_to

SECURE = "OK secure match=mx1.example.org servername=hostname"


def publish(world: LabWorld) -> None:
    world.publish_mx("example.org", [(10, "mx1.example.org")])
    world.publish_policy("example.org", "enforce", ["mx1.example.org"])


async def ask_when_up(address: str, key: str) -> str:
    """The reply to `postfix key`, once the server listens (it may still be starting)."""
    async with asyncio.timeout(30):
        while True:
            try:
                client = await connect_to(address)
            except OSError:
                await asyncio.sleep(0.1)
                continue
            return await client.ask("postfix", key)


async def test_socketmap_command_serves_tcp_and_stops_on_sigterm(tmp_path: Path) -> None:
    async with LabWorld(tmp_path / "world").running() as world:
        publish(world)
        listen, metrics = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
        settings = world.relay_settings(
            tmp_path / "state", socketmap={"listen": listen}, relay={"metrics_listen": metrics}
        )
        config = tmp_path / "stsguard.toml"
        config.write_text(to_toml(settings))
        log = (tmp_path / "socketmap.log").open("wb")
        proc = subprocess.Popen(  # noqa: ASYNC220  (a long-running server, waited for below)
            [sys.executable, "-m", "relay.cli", "socketmap", "--config", str(config)],
            stdout=log,
            stderr=log,
        )
        try:
            assert await ask_when_up(listen, "example.org") == SECURE
            assert await ask_when_up(listen, "other.example") == "NOTFOUND "
            scrape = await asyncio.to_thread(
                lambda: urllib.request.urlopen(f"http://{metrics}/metrics", timeout=5).read()
            )
            assert b'stsguard_socketmap_queries_total{answer="secure"} 1.0' in scrape
            assert b"stsguard_socketmap_query_seconds_count 2.0" in scrape
        finally:
            proc.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(proc.wait, 20)
    assert code == 0
    text = (tmp_path / "socketmap.log").read_text()
    assert "socketmap.answer" in text
    assert "Traceback" not in text


async def test_relay_serves_the_socketmap_on_a_unix_socket(tmp_path: Path) -> None:
    path = tmp_path / "policy.sock"
    async with LabWorld(tmp_path / "world").running() as world:
        publish(world)
        relay = Relay(world.relay_config(tmp_path / "state", socketmap={"listen": str(path)}))
        async with relay.running():
            await wait_until(path.exists)
            client = await connect_to(str(path))
            assert await client.ask("postfix", "example.org") == SECURE
            assert relay.policies.misses == 1  # the relay's own policy service and cache
            answered = relay.metrics.value("stsguard_socketmap_queries_total", {"answer": "secure"})
            assert answered == 1
        relay.close()
    assert not path.exists()


def test_socketmap_command_without_an_address_is_one_line_and_exit_2(tmp_path: Path) -> None:
    config = tmp_path / "stsguard.toml"
    config.write_text(f'[relay]\nstate_dir = "{tmp_path / "state"}"\n')
    run = run_cli("socketmap", "--config", str(config))
    assert run.returncode == 2
    assert run.stderr.count("\n") == 1
    assert "[socketmap].listen" in run.stderr
    bad = run_cli("socketmap", "--config", str(config), "--listen", "127.0.0.1:99999")
    assert bad.returncode == 2
    assert "Traceback" not in bad.stderr


def test_check_binds_the_socketmap_address(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config = config_from_dict({"socketmap": {"listen": f"127.0.0.1:{port}"}})
        problems = [p.message for p in listen_problems(config)]
    assert any(
        m.startswith(f"[socketmap].listen: cannot listen on 127.0.0.1:{port}") for m in problems
    )
    unix = config_from_dict({"socketmap": {"listen": str(tmp_path / "no" / "map.sock")}})
    assert any("[socketmap].listen: no directory" in p.message for p in listen_problems(unix))


async def test_relay_reload_changes_the_socketmap_answer_at_once(tmp_path: Path) -> None:
    listen = f"127.0.0.1:{free_port()}"
    async with LabWorld(tmp_path / "world").running() as world:
        publish(world)
        settings = world.relay_settings(tmp_path / "state", socketmap={"listen": listen})
        path = tmp_path / "stsguard.toml"
        path.write_text(to_toml(settings))
        relay = Relay(
            world.relay_config(tmp_path / "state", socketmap={"listen": listen}), config_path=path
        )
        async with relay.running():
            client = await connect_to(listen)
            assert await client.ask("postfix", "example.org") == SECURE
            assert await client.ask("postfix", "example.org") == SECURE  # from memory now
            path.write_text(to_toml(settings) + '\n[domains."example.org"]\ntls = "encrypt"\n')
            assert relay.reload()
            assert await client.ask("postfix", "example.org") == "OK encrypt"
        relay.close()
