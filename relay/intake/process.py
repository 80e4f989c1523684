"""One intake process (``[relay].intake_processes``): accepts mail on the listening socket it
shares with its siblings, queues each message durably before the 250, and tells the main process
its queue id. Delivery, policies, remembered TLS, TLS-RPT and metrics stay in the main process.

Started by `relay.intake.pool` as ``python -P -m relay.intake.process --config FILE --listen-fd
N --notify-fd N --index N``. The notify socket is a ``SOCK_SEQPACKET`` pair end: ``R`` once
listening, then ``Q<queue id>`` per message. It closes when the main process ends, and this
process then stops too. SIGHUP re-reads the config file for the intake's limits. A lost notice
costs nothing: the main process reads the spool every second.

It runs at a lower CPU priority than the main process (`NICENESS`): when both want the same core,
delivery goes first and the intake answers a little later, so accepted mail does not pile up
waiting (as Postfix's ``in_flow_delay`` slows its SMTP server when delivery falls behind). On an
idle core it makes no difference.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import sys

import structlog

from relay.config import Config, load_config
from relay.errors import StsguardError
from relay.intake.server import Intake
from relay.log import configure_logging
from relay.queue.spool import QueuedMessage, Spool

log = structlog.get_logger(__name__)

READY = b"R"
# Added to the main process's nice value. Measured (2000 messages, 20 sessions, 2 cores): p50/p99
# latency from the 250 at intake to the MX's 250 47-187 / 156-412 ms instead of 329-804 /
# 660-1646 ms, throughput and CPU per message unchanged.
NICENESS = 5
QUEUED = b"Q"


class Notifier:
    """Sends queue ids to the main process; never blocks intake."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sock.setblocking(False)
        self.dropped = 0

    def send(self, packet: bytes) -> None:
        try:
            self.sock.send(packet)
        except (BlockingIOError, ConnectionError):
            self.dropped += 1  # found by the main process's next spool scan instead

    def queued(self, message: QueuedMessage, data: bytes) -> None:
        self.send(QUEUED + message.id.encode("ascii"))


async def serve(
    config: Config,
    listen: socket.socket,
    notify: socket.socket,
    config_path: str | None = None,
) -> None:
    """Accept mail until SIGTERM/SIGINT or until the main process goes away; SIGHUP re-reads
    `config_path` and hands its limits to the intake (`IntakePool.reload` sends it)."""
    spool = Spool(config.relay.state_dir / "queue")
    notifier = Notifier(notify)
    intake = Intake(config, spool, on_queued=notifier.queued, sock=listen)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def reload() -> None:
        if config_path is None:
            return
        try:
            fresh = load_config(config_path)
        except StsguardError as exc:
            log.error("intake.reload_failed", error=str(exc))  # the old config stays
            return
        intake.reconfigure(fresh)
        log.info("intake.reloaded", max_connections=intake.rules.connections.max_total)

    loop.add_signal_handler(signal.SIGHUP, reload)

    def main_gone() -> None:
        try:
            gone = notify.recv(16) == b""
        except BlockingIOError:
            return
        except OSError:  # reset: the main process died with our notices unread (SIGKILL)
            gone = True
        if gone:
            stop.set()

    loop.add_reader(notify.fileno(), main_gone)
    async with intake.running():
        notifier.send(READY)
        await stop.wait()
    loop.remove_reader(notify.fileno())
    if notifier.dropped:
        log.info("intake.notices_dropped", count=notifier.dropped)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stsguard-intake")
    parser.add_argument("--config", required=True)
    parser.add_argument("--listen-fd", type=int, required=True)
    parser.add_argument("--notify-fd", type=int, required=True)
    parser.add_argument("--index", type=int, default=1)
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except StsguardError as exc:
        print(f"stsguard: {exc}", file=sys.stderr)
        return 2
    configure_logging(config.relay.log_format, config.relay.log_level)
    structlog.contextvars.bind_contextvars(process=f"intake-{args.index}")
    with contextlib.suppress(OSError):
        os.nice(NICENESS)
    listen = socket.socket(fileno=args.listen_fd)
    notify = socket.socket(fileno=args.notify_fd)
    try:
        asyncio.run(serve(config, listen, notify, args.config))
    except StsguardError as exc:
        print(f"stsguard: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
