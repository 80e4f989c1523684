"""The start-up checks hold for a SIGHUP reload too, which tells systemd it is reloading."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from relay.app import Relay
from relay.config import load_config

BASE = (
    '[relay]\nhostname = "relay.example.net"\nstate_dir = "{state}"\n{networks}'
    '[tlsrpt]\nenabled = false\n[dns]\nnameservers = ["127.0.0.1:9"]\n'
)


def test_a_reload_cannot_open_the_relay(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "relay.toml"
    path.write_text(BASE.format(state=tmp_path / "state", networks=""))
    relay = Relay(load_config(path), config_path=path)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(tmp_path / "notify"))
        notify.settimeout(10)
        monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))

        path.write_text(
            BASE.format(state=tmp_path / "state", networks='accept_networks = ["0.0.0.0/0"]\n')
        )
        assert relay.reload() is False
        assert relay.config.relay.accept_networks == ("127.0.0.0/8", "::1/128")
        assert notify.recv(4096).startswith(b"RELOADING=1\nMONOTONIC_USEC=")
        assert notify.recv(4096) == b"READY=1"

        path.write_text(
            BASE.format(
                state=tmp_path / "state",
                networks='accept_networks = ["0.0.0.0/0"]\nopen_relay = true\n',
            )
        )
        assert relay.reload() is True
        assert relay.config.relay.accept_networks == ("0.0.0.0/0",)
        assert notify.recv(4096).startswith(b"RELOADING=1")
        assert notify.recv(4096) == b"READY=1"
