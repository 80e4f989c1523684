"""Handing a rendered report to its rua destinations: https POST (RPT-11) and mailto (RPT-09/10).

Both take their clients from outside: an `httpx.AsyncClient` and a `submit_mail` function. The
relay's `submit_mail` puts the mail into its own durable queue flagged so that MTA-STS and DANE
are not applied and that session is not counted (RPT-10); this package cannot import the relay.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import httpx
import structlog

from tlsrpt_emit.errors import HttpsDeliveryError, MailDeliveryError, ReportDeliveryError
from tlsrpt_emit.model import Report
from tlsrpt_emit.record import mailto_address
from tlsrpt_emit.render import MEDIA_TYPE_GZIP, DkimKey, build_report_mail

log = structlog.get_logger(__name__)

SubmitMail = Callable[[str, list[str], bytes], Awaitable[None]]
"""``submit_mail(mail_from, rcpt_to, message_bytes)``: queue one report mail for delivery."""


async def post_report(url: str, gz_bytes: bytes, *, client: httpx.AsyncClient) -> int:
    """POST the gzipped report; any 2xx is success (RPT-11). Returns the status code.

    Redirects are not followed (a 3xx is a failure), as the client is expected to be set up.
    """
    try:
        response = await client.post(
            url,
            content=gz_bytes,
            headers={"Content-Type": MEDIA_TYPE_GZIP},
            follow_redirects=False,
        )
    except httpx.HTTPError as exc:
        raise HttpsDeliveryError(f"{url}: {exc!r}", destination=url) from exc
    if not 200 <= response.status_code < 300:
        raise HttpsDeliveryError(
            f"{url}: HTTP {response.status_code}", destination=url, status=response.status_code
        )
    return response.status_code


async def mail_report(
    report: Report,
    gz_bytes: bytes,
    uri: str,
    *,
    submit_mail: SubmitMail,
    mail_from: str,
    now: float,
    dkim_key: DkimKey | None = None,
) -> None:
    """Build the DKIM-signed report mail for one mailto: URI and submit it."""
    address = mailto_address(uri)
    message = build_report_mail(
        report, gz_bytes, mail_from=mail_from, rcpt_to=[address], now=now, dkim_key=dkim_key
    )
    try:
        await submit_mail(mail_from, [address], message)
    except ReportDeliveryError:
        raise
    except Exception as exc:  # the submitter is someone else's code: keep the cause
        raise MailDeliveryError(f"{uri}: submitting failed: {exc!r}", destination=uri) from exc


@dataclass(frozen=True, slots=True)
class DeliveryOutcome:
    """Which destinations took the report this round and why the others did not."""

    accepted: tuple[str, ...]
    errors: tuple[tuple[str, str], ...]


async def deliver_report(
    report: Report,
    gz_bytes: bytes,
    destinations: Sequence[str],
    *,
    client: httpx.AsyncClient,
    submit_mail: SubmitMail | None,
    mail_from: str,
    now: float,
    dkim_key: DkimKey | None = None,
) -> DeliveryOutcome:
    """Try every destination once (RPT-02: the report is delivered when any one accepts)."""
    accepted: list[str] = []
    errors: list[tuple[str, str]] = []
    for uri in destinations:
        try:
            if uri[:6].lower() == "https:":
                await post_report(uri, gz_bytes, client=client)
            elif submit_mail is None:
                raise MailDeliveryError("no mail submitter configured", destination=uri)
            else:
                await mail_report(
                    report,
                    gz_bytes,
                    uri,
                    submit_mail=submit_mail,
                    mail_from=mail_from,
                    now=now,
                    dkim_key=dkim_key,
                )
        except ReportDeliveryError as exc:
            log.info("tlsrpt.destination_failed", report_id=report.report_id, error=str(exc))
            errors.append((uri, str(exc)))
        else:
            log.info("tlsrpt.destination_accepted", report_id=report.report_id, destination=uri)
            accepted.append(uri)
    return DeliveryOutcome(tuple(accepted), tuple(errors))
