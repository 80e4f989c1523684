"""The main process's side of ``[relay].intake_processes``.

The main process binds the listening socket once (so a second relay on the same address still
fails with "address in use"), starts N `relay.intake.process` children that accept on it, passes
the queue ids they report to the queue runner, and restarts a child that dies (after 1 s, doubling
to 30 s while it keeps dying). Each child's notify socket is one end of a ``SOCK_SEQPACKET`` pair.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from relay.errors import StsguardError
from relay.intake.process import QUEUED, READY

log = structlog.get_logger(__name__)

START_TIMEOUT = 30.0
STOP_TIMEOUT = 5.0
RESTART_MAX = 30.0


def bind_listener(host: str, port: int) -> socket.socket:
    """A listening TCP socket on `host:port` (an ``OSError`` when that cannot be)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=1024)


@dataclass(eq=False)
class _Child:
    index: int
    proc: asyncio.subprocess.Process
    notify: socket.socket
    started: float
    ready: asyncio.Event = field(default_factory=asyncio.Event)


class IntakePool:
    """Runs the intake processes; `on_queued` gets the queue ids they accepted, in batches."""

    def __init__(
        self,
        count: int,
        config_path: Path,
        listen: tuple[str, int],
        on_queued: Callable[[list[str]], None],
    ) -> None:
        self.count = count
        self.config_path = config_path
        self.listen = listen
        self.on_queued = on_queued
        self.sock: socket.socket | None = None
        self.children: dict[int, _Child] = {}
        self.stopping = False  # set by `stop`: a child that exits now is not restarted

    @property
    def address(self) -> tuple[str, int]:
        assert self.sock is not None
        host, port = self.sock.getsockname()[:2]
        return str(host), int(port)

    async def start(self) -> None:
        """Bind, start every child and wait until each listens. `OSError` when the address
        cannot be bound; `StsguardError` when a child does not come up."""
        self.sock = bind_listener(*self.listen)
        for index in range(1, self.count + 1):
            self.children[index] = await self._spawn(index)
        for child in self.children.values():
            await self._wait_ready(child)

    async def _wait_ready(self, child: _Child) -> None:
        ready = asyncio.ensure_future(child.ready.wait())
        exited = asyncio.ensure_future(child.proc.wait())
        done, _ = await asyncio.wait(
            {ready, exited}, timeout=START_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
        )
        for task in (ready, exited):
            task.cancel()
        if ready not in done:
            status = child.proc.returncode
            why = f"exited with status {status}" if status is not None else "did not start"
            raise StsguardError(f"[relay].intake_processes: intake process {child.index} {why}")

    async def _spawn(self, index: int) -> _Child:
        assert self.sock is not None
        parent, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-P",  # not the working directory first on sys.path: the installed relay only
                "-m",
                "relay.intake.process",
                "--config",
                str(self.config_path),
                "--listen-fd",
                str(self.sock.fileno()),
                "--notify-fd",
                str(child_end.fileno()),
                "--index",
                str(index),
                pass_fds=(self.sock.fileno(), child_end.fileno()),
                stdin=asyncio.subprocess.DEVNULL,
            )
        except BaseException:
            parent.close()
            raise
        finally:
            child_end.close()
        parent.setblocking(False)
        child = _Child(index, proc, parent, time.monotonic())
        asyncio.get_running_loop().add_reader(parent.fileno(), self._readable, child)
        log.info("intake.process_started", index=index, pid=proc.pid)
        return child

    def _readable(self, child: _Child) -> None:
        ids: list[str] = []
        while True:
            try:
                packet = child.notify.recv(64)
            except BlockingIOError:
                break
            except OSError:
                packet = b""
            if not packet:  # the child is gone; `_watch` restarts it
                asyncio.get_running_loop().remove_reader(child.notify.fileno())
                break
            if packet == READY:
                child.ready.set()
            elif packet.startswith(QUEUED):
                ids.append(packet[len(QUEUED) :].decode("ascii", "replace"))
        if ids:
            self.on_queued(ids)

    async def run(self) -> None:
        """Watch the children until cancelled, then stop them (a TaskGroup member)."""
        try:
            async with asyncio.TaskGroup() as tasks:
                for index in list(self.children):
                    tasks.create_task(self._watch(index))
        finally:
            await self.stop()

    async def _watch(self, index: int) -> None:
        delay = 1.0
        while True:
            child = self.children[index]
            status = await child.proc.wait()
            if self.stopping:
                return
            self._close(child)
            if time.monotonic() - child.started > 60:
                delay = 1.0
            log.error("intake.process_exited", index=index, status=status, restart_in=delay)
            while True:
                await asyncio.sleep(delay)
                delay = min(delay * 2, RESTART_MAX)
                try:
                    self.children[index] = await self._spawn(index)
                    break
                except OSError as exc:
                    # Out of descriptors or processes (EMFILE, EAGAIN): try again later rather
                    # than end the relay's TaskGroup; the other intake processes go on.
                    log.error("intake.process_start_failed", index=index, error=str(exc))

    def _close(self, child: _Child) -> None:
        with contextlib.suppress(ValueError, OSError):
            asyncio.get_running_loop().remove_reader(child.notify.fileno())
        child.notify.close()

    def reload(self) -> None:
        """SIGHUP every intake process: each re-reads the config file and applies its limits,
        ``accept_networks`` and ``tls_required_no`` to new sessions (`Intake.reconfigure`)."""
        for child in self.children.values():
            if child.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    child.proc.send_signal(signal.SIGHUP)

    async def stop(self) -> None:
        """SIGTERM every child, SIGKILL what is left after `STOP_TIMEOUT`, close the sockets."""
        self.stopping = True
        children, self.children = list(self.children.values()), {}
        for child in children:
            if child.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    child.proc.terminate()
        for child in children:
            try:
                async with asyncio.timeout(STOP_TIMEOUT):
                    await child.proc.wait()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    child.proc.kill()
                await child.proc.wait()
            self._close(child)
        if self.sock is not None:
            self.sock.close()
            self.sock = None
