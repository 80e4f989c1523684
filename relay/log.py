"""structlog set-up: JSON lines in production, readable lines on a terminal, syslog-prefixed lines
for the journal; library log records and Python warnings go through the same renderer.

Event names are dotted ``area.event`` (``delivery.attempt``, ``intake.queued``); a line from a
library is ``library.log`` with its logger's name, a Python warning ``python.warning``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import warnings
from typing import TextIO

import structlog
from structlog.types import EventDict, Processor, WrappedLogger

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}

# syslog priorities (RFC 5424 6.2.1), as systemd reads them with SyslogLevelPrefix=true
SYSLOG_PRIORITY = {
    "debug": 7,
    "info": 6,
    "warning": 4,
    "error": 3,
    "exception": 3,
    "critical": 2,
}

log = structlog.get_logger(__name__)


def plain_value(value: object) -> object:
    """A field value as a reader of the journal wants it, not as Python prints it: bytes as
    text, a tuple or list as its items joined by commas (``127.0.0.1,25``), None as nothing;
    True and False stay for the renderer (``true``/``false``)."""
    if value is None:
        return ""
    if isinstance(value, bool | str | int | float):
        return value
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "backslashreplace")
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value, key=str) if isinstance(value, set | frozenset) else value
        return ",".join(_item_text(v) for v in items)
    if isinstance(value, dict):
        try:
            return json.dumps(value, default=_json_default, separators=(",", ":"))
        except (TypeError, ValueError):  # keys json cannot take
            return str(value)
    return str(value)


def _item_text(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else str(plain_value(value))


def _json_default(value: object) -> object:
    """What `json` cannot encode: bytes as text, sets as sorted lists, anything else as str."""
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "backslashreplace")
    if isinstance(value, set | frozenset):
        return sorted(value, key=str)
    return str(value)


class JournalRenderer:
    """``<4>delivery.attempt key=value ...``: the priority prefix lets `journalctl -p warning`
    select problems; no time stamp (the journal has one), one line per event."""

    def __init__(self) -> None:
        self._fields = structlog.processors.LogfmtRenderer(bool_as_flag=False)

    def __call__(self, logger: WrappedLogger, name: str, event_dict: EventDict) -> str:
        level = str(event_dict.pop("level", name))
        event_dict.pop("timestamp", None)
        event = str(event_dict.pop("event", ""))
        for key, value in event_dict.items():
            if not isinstance(value, str | int | float):
                event_dict[key] = plain_value(value)
        rest = self._fields(logger, name, event_dict) if event_dict else ""
        line = f"<{SYSLOG_PRIORITY.get(level, 6)}>{event}" + (f" {rest}" if rest else "")
        return line.replace("\n", "\\n")


def _library_line(logger: WrappedLogger, name: str, event_dict: EventDict) -> EventDict:
    """A stdlib record from a library (aiosmtpd, asyncio): ``library.log`` naming the logger."""
    record = event_dict.get("_record")
    if record is not None and not event_dict.get("_from_structlog", False):
        event_dict["message"] = event_dict.pop("event", "")
        event_dict["event"] = "library.log"
        event_dict["logger"] = record.name
    return event_dict


# Warnings raised before logging is configured (a library's import-time deprecation notice),
# kept for `configure_logging` to log; bounded, as everything a process accumulates.
_PENDING_WARNINGS: list[dict[str, str]] = []
_PENDING_LIMIT = 32
_logging_configured = False


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    """`warnings.showwarning` replacement: one structured line instead of text on stderr."""
    fields = {
        "category": category.__name__,
        "message": str(message),
        "source": f"{filename}:{lineno}",
    }
    if _logging_configured:
        log.warning("python.warning", **fields)
    elif len(_PENDING_WARNINGS) < _PENDING_LIMIT:
        _PENDING_WARNINGS.append(fields)


def capture_warnings() -> None:
    """Route Python warnings into the log from here on, never as raw text on stderr.

    Called first thing by every entry point: a library imported later (dnspython's DNSSEC module
    under a newer cryptography) must not write to a user's terminal. Warnings raised before
    `configure_logging` are logged by it; a command that never configures logging drops them.
    """
    warnings.showwarning = _show_warning


def stderr_is_journal() -> bool:
    """systemd connected stderr to the journal: $JOURNAL_STREAM names its device and inode."""
    device, _, inode = os.environ.get("JOURNAL_STREAM", "").partition(":")
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return f"{st.st_dev}:{st.st_ino}" == f"{device}:{inode}"


def _renderer(fmt: str) -> Processor:
    if fmt == "journal" or (fmt == "auto" and stderr_is_journal()):
        return JournalRenderer()
    if fmt == "json" or (fmt == "auto" and not sys.stderr.isatty()):
        return structlog.processors.JSONRenderer(default=_json_default)
    return structlog.dev.ConsoleRenderer()


# aiosmtpd logs about 13 ``info`` lines per message on ``mail.log``, keyed only by the client's
# (address, port) tuple; ``intake.queued`` says what matters. httpx logs each request at ``info``
# beside our own ``mtasts.policy_fetched`` and ``tlsrpt`` lines. Their ``info`` lines are ``debug``
# here: at any other level the logger's own threshold drops them before a record is even made.
CHATTY_LOGGERS = ("mail.log", "httpx")


class _PeerText(str):
    """A client's (address, port) as ``127.0.0.1:41234``, also where a library formats it %r."""

    __slots__ = ()

    def __repr__(self) -> str:
        return str(self)


def _plain_arg(arg: object) -> object:
    if (
        isinstance(arg, tuple)
        and len(arg) >= 2
        and isinstance(arg[0], str)
        and isinstance(arg[1], int)
    ):
        return _PeerText(f"[{arg[0]}]:{arg[1]}" if ":" in arg[0] else f"{arg[0]}:{arg[1]}")
    return arg


class _LibraryRecords(logging.Filter):
    """A chatty library's records: ``info`` relabelled ``debug`` (kept only at
    ``log_level = "debug"``), and a peer tuple in the message as ``address:port``, not a repr."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.INFO:
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        if isinstance(record.args, tuple) and record.args:
            record.args = tuple(_plain_arg(a) for a in record.args)
        return True


def _quiet_libraries(threshold: int) -> None:
    for name in CHATTY_LOGGERS:
        chatty = logging.getLogger(name)
        for old in [f for f in chatty.filters if isinstance(f, _LibraryRecords)]:
            chatty.removeFilter(old)
        chatty.addFilter(_LibraryRecords())
        chatty.setLevel(
            logging.DEBUG if threshold <= logging.DEBUG else max(threshold, logging.WARNING)
        )


class _StsguardHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Our stdlib handler, told apart from others (pytest's) when configuring again."""


class _SharedWriter:
    """structlog's logger factory handing out one `WriteLogger` (one lock, one write a line)."""

    def __init__(self, writer: structlog.WriteLogger) -> None:
        self.writer = writer

    def __call__(self, *args: object) -> structlog.WriteLogger:
        return self.writer


def configure_logging(fmt: str = "auto", level: str = "info") -> None:
    """Configure logging once at start-up. `fmt` is auto | json | console | journal."""
    renderer = _renderer(fmt)
    threshold = _LEVELS.get(level, logging.INFO)
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        # One writer for every logger (a line is one write; the lazy loggers would make a new
        # writer per line otherwise).
        logger_factory=_SharedWriter(structlog.WriteLogger(sys.stderr)),
        cache_logger_on_first_use=False,
    )
    handler = _StsguardHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, _library_line],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _StsguardHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(threshold)
    _quiet_libraries(threshold)
    global _logging_configured
    _logging_configured = True
    warnings.showwarning = _show_warning
    while _PENDING_WARNINGS:
        log.warning("python.warning", **_PENDING_WARNINGS.pop(0))
