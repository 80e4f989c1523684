"""Errors of the relay program.

StsguardError
├── ConfigError      bad config file, key or value; the message names the key
└── UsageError       bad command-line input; the message is one line for the user
"""


class StsguardError(Exception):
    """Base of every error the relay reports to a user as one line."""


class ConfigError(StsguardError):
    """The config file, a key or a value is wrong; the message names the key."""


class UsageError(StsguardError):
    """A command was called with bad arguments."""
