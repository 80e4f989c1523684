"""The report mailbox: TLS reports that arrive as mail (RFC 8460 5.3), read from a Maildir.

An MTA delivers the ``rua=mailto:`` address into a Maildir; each new message (``new/``) is read,
its reports validated and kept, and the message moved to ``cur/`` marked seen (``:2,S``) so it is
read once. A message that holds no report about our domains is moved too, flagged (``:2,F``),
so it is looked at by a person, not read again and again. Files larger than `MAX_MAIL_BYTES` are
flagged unread.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import structlog

from relay.inbound.taking import ReportKeeper
from tlsrpt_emit.errors import ReportRefused
from tlsrpt_emit.inbound import reports_in_mail

log = structlog.get_logger(__name__)

MAX_MAIL_BYTES = 16 * 1024 * 1024
MAX_PER_SCAN = 1000  # messages read per scan: a flood waits for the next one


@dataclass(frozen=True, slots=True)
class ScanResult:
    new: int = 0
    duplicates: int = 0
    refused: int = 0


def _move(path: Path, cur: Path, flag: str) -> None:
    name = path.name.split(":", 1)[0]
    os.replace(path, cur / f"{name}:2,{flag}")


def scan_maildir(
    maildir: Path,
    keeper: ReportKeeper,
    domains: Iterable[str],
    *,
    clock: Callable[[], float] = time.time,
) -> ScanResult:
    """Read every new message once; keep the reports about our domains."""
    new_dir, cur = maildir / "new", maildir / "cur"
    try:
        names = sorted(os.listdir(new_dir))[:MAX_PER_SCAN]
    except FileNotFoundError:
        return ScanResult()
    cur.mkdir(exist_ok=True)
    ours = tuple(domains)
    new = duplicates = refused = 0
    for name in names:
        path = new_dir / name
        if name.startswith("."):
            continue
        try:
            if path.stat().st_size > MAX_MAIL_BYTES:
                raise ReportRefused(f"larger than {MAX_MAIL_BYTES} bytes", status=413)
            found = reports_in_mail(path.read_bytes(), ours, now=clock())
        except ReportRefused as exc:
            log.warning("tlsrpt_inbound.mail_refused", file=name, why=str(exc))
            keeper.count("maildir", "refused")
            refused += 1
            _move(path, cur, "F")
            continue
        except FileNotFoundError:
            continue  # another reader took it
        for received in found:
            if keeper.keep(received):
                new += 1
            else:
                duplicates += 1
        _move(path, cur, "S")
    return ScanResult(new, duplicates, refused)
