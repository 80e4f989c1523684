"""Errors of `detect`.

DetectError
├── HistoryStoreError      the remembered-TLS store could not be opened, read or written
└── PrevalenceStoreError   the downgrade-prevalence store could not be read or written

Findings are not errors: the judges return them as values (`detect.model.Finding`), each with its
RFC 8460 result type. Only the store's I/O can fail, and that is no TLS-RPT failure.
"""

from __future__ import annotations


class DetectError(Exception):
    """Base of every error raised by `detect`."""


class HistoryStoreError(DetectError):
    """The remembered-TLS store (SQLite) could not be opened, read or written."""


class PrevalenceStoreError(DetectError):
    """The downgrade-prevalence store (SQLite or PostgreSQL) could not be read or written."""
