"""Errors of TLS-RPT (RFC 8460).

TlsRptError
├── TlsRptRecordError          the `_smtp._tls` TXT record does not parse (RPT-01)
│   └── TlsRptLookupError      the look-up itself failed (SERVFAIL, timeout): try again later
├── ReportStoreError           the counter store could not be read or written
├── ReportFormatError          a JSON report does not follow RFC 8460 section 4.4
│   └── ReportRefused          a received report we do not take (size, type, not our domain)
├── ReceivedStoreError         the store of received reports could not be read or written
└── ReportDeliveryError        a report could not be handed to one rua destination
    ├── HttpsDeliveryError     POST failed: transport error or a non-2xx status (RPT-11)
    └── MailDeliveryError      building or submitting the report mail failed

TLS-RPT's own errors never become TLS-RPT failures, so none of them carries a result type.
"""

from __future__ import annotations


class TlsRptError(Exception):
    """Base of every error raised by `tlsrpt_emit`."""


class TlsRptRecordError(TlsRptError):
    """The `_smtp._tls.<domain>` record is not a valid TLSRPTv1 record."""


class TlsRptLookupError(TlsRptRecordError):
    """The `_smtp._tls.<domain>` look-up failed (SERVFAIL, timeout); not the same as no record."""


class ReportStoreError(TlsRptError):
    """The report store could not be read or written."""


class ReportDeliveryError(TlsRptError):
    """A report could not be delivered to one destination; `destination` names it."""

    def __init__(self, message: str, *, destination: str = "", temporary: bool = True) -> None:
        super().__init__(message)
        self.destination = destination
        self.temporary = temporary


class HttpsDeliveryError(ReportDeliveryError):
    """The https POST failed or was answered with a status other than 2xx."""

    def __init__(self, message: str, *, destination: str = "", status: int | None = None) -> None:
        super().__init__(message, destination=destination)
        self.status = status


class MailDeliveryError(ReportDeliveryError):
    """The report mail could not be built or handed to the mail submitter."""


class ReportFormatError(TlsRptError):
    """A TLS-RPT JSON report does not follow RFC 8460 section 4.4."""


class ReportRefused(ReportFormatError):
    """A report sent to us that we do not take; `status` is the HTTP status to answer with."""

    def __init__(self, message: str, *, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class ReceivedStoreError(TlsRptError):
    """The store of received reports could not be read or written."""
