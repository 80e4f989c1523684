"""Errors of the relay program.

StsguardError
├── ConfigError      bad config file, key or value; the message names the key
├── UsageError       bad command-line input; the message is one line for the user
├── SessionError     an MX session broke (refused, lost, timed out): not a TLS failure, the next
│                    MX or a later retry may do; aiosmtplib and OSError are translated to it
└── SpoolError       the queue directory cannot be read or written
    └── UnknownMessage  no queued message has this id
"""

from __future__ import annotations

from typing import Any


class StsguardError(Exception):
    """Base of every error the relay reports to a user as one line."""


class ConfigError(StsguardError):
    """The config file, a key or a value is wrong; the message names the key."""


class UsageError(StsguardError):
    """A command was called with bad arguments."""


class SessionError(StsguardError):
    """An SMTP session to an MX host could not be had or broke; `findings` are what was judged
    of it (e.g. a refused banner)."""

    def __init__(self, message: str, findings: tuple[Any, ...] = ()) -> None:
        super().__init__(message)
        self.findings = findings


class SpoolError(StsguardError):
    """The queue directory cannot be read or written, or a queue file is damaged."""


class UnknownMessage(SpoolError):
    """No queued message has this id (never queued, or already finished or deleted)."""
