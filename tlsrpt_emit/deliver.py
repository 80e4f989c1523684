"""Handing a rendered report to its rua destinations: https POST (RPT-11) and mailto (RPT-09/10).

Both take their clients from outside: an `httpx.AsyncClient`, the relay's resolver and a
`submit_mail` function. The relay's `submit_mail` puts the mail into its own durable queue flagged
so that MTA-STS and DANE are not applied and that session is not counted (RPT-10); this package
cannot import the relay.

The endpoint and the record are someone else's, so neither is trusted: the POST's answer is read
up to `MAX_RESPONSE_BODY` and dropped, the whole POST (DNS included) has one deadline, the rua host
is resolved through the given resolver only (never the system's), and a `mailto:` address that is
not exactly one clean address after percent-decoding is skipped.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.resolver
import httpx
import structlog

from tlsrpt_emit.errors import HttpsDeliveryError, MailDeliveryError, ReportDeliveryError
from tlsrpt_emit.model import Report
from tlsrpt_emit.record import mailto_address
from tlsrpt_emit.render import MEDIA_TYPE_GZIP, DkimKey, build_report_mail

log = structlog.get_logger(__name__)

SubmitMail = Callable[[str, list[str], bytes], Awaitable[None]]
"""``submit_mail(mail_from, rcpt_to, message_bytes)``: queue one report mail for delivery."""

MAX_RESPONSE_BODY = 64 * 1024
"""Bytes of a POST's answer read (and dropped) at most; the rest is never received."""
POST_TIMEOUT = 60.0
"""Seconds one POST may take in all, DNS included (`[tlsrpt].post_timeout`)."""

# One mailbox (RFC 5321 4.1.2): a dot-atom or quoted local part, then a domain of labels or an
# address literal; ASCII only (report mail goes out without SMTPUTF8; IDN domains in A-labels).
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-]"
_LOCAL = rf"(?:{_ATEXT}+(?:\.{_ATEXT}+)*|\"[\x21\x23-\x5b\x5d-\x7e]*\")"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?"
_DOMAIN = rf"(?:{_LABEL}(?:\.{_LABEL})*\.?|\[[\x21-\x5a\x5e-\x7e]+\])"
_MAILBOX = re.compile(rf"{_LOCAL}@{_DOMAIN}", re.ASCII)


def report_mailbox(uri: str) -> str:
    """The one address of a ``mailto:`` rua URI, percent-decoded; `MailDeliveryError` (not
    temporary) unless it is exactly one ASCII address without spaces or control characters."""
    address = mailto_address(uri)  # a %-escape that is not UTF-8 becomes U+FFFD: refused
    if len(address) > 254 or _MAILBOX.fullmatch(address) is None:
        raise MailDeliveryError(
            f"{uri}: not exactly one mail address after percent-decoding ({address!r})",
            destination=uri,
            temporary=False,
        )
    return address


async def _addresses(host: str, resolver: dns.asyncresolver.Resolver | None) -> list[str]:
    """The addresses to try for the rua host: itself when it is an IP literal, else its A then
    (only if there is none) AAAA records, looked up through `resolver` alone."""
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        pass
    if resolver is None:
        raise HttpsDeliveryError(f"no resolver given to look up {host}")
    errors: list[str] = []
    for rdtype in ("A", "AAAA"):
        try:
            answer = await resolver.resolve(host.rstrip(".") + ".", rdtype)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            continue
        except dns.exception.DNSException as exc:
            errors.append(f"{rdtype} look-up failed: {exc}")
            continue
        found = [rdata.to_text() for rdata in answer]
        if found:
            return found
    raise HttpsDeliveryError(f"{host}: {'; '.join(errors) or 'no A or AAAA record'}")


def https_target(url: str) -> tuple[httpx.URL, str]:
    """The parsed https: URL and its host (A-label, no brackets); `HttpsDeliveryError` if the
    rua is no https: URL with a host."""
    try:
        parsed = httpx.URL(url)
        host = parsed.raw_host.decode("ascii")
    except (httpx.InvalidURL, UnicodeError) as exc:
        raise HttpsDeliveryError(f"{url}: not an https: URL ({exc})", destination=url) from None
    if parsed.scheme != "https" or not host:
        raise HttpsDeliveryError(f"{url}: not an https: URL", destination=url)
    return parsed, host


async def _post_to(client: httpx.AsyncClient, url: httpx.URL, address: str, gz_bytes: bytes) -> int:
    """One POST to `address` with SNI, certificate check and Host naming the URL's host; the
    answer's body is read up to `MAX_RESPONSE_BODY` and dropped."""
    host = url.raw_host.decode("ascii")
    host_header = host if url.port is None else f"{host}:{url.port}"
    async with client.stream(
        "POST",
        url.copy_with(host=address),
        content=gz_bytes,
        headers={
            "Host": host_header,
            "Content-Type": MEDIA_TYPE_GZIP,
            "Connection": "close",
            "Accept-Encoding": "identity",
        },
        extensions={"sni_hostname": host},
        follow_redirects=False,  # RPT-11: a 3xx is a failure, whatever the client's setting
    ) as response:
        read = 0
        async for chunk in response.aiter_raw():
            read += len(chunk)
            if read >= MAX_RESPONSE_BODY:
                break  # leaving the block closes the connection: the rest is never received
        return response.status_code


async def post_report(
    url: str,
    gz_bytes: bytes,
    *,
    client: httpx.AsyncClient,
    resolver: dns.asyncresolver.Resolver | None = None,
    timeout: float = POST_TIMEOUT,  # noqa: ASYNC109  (the whole POST, DNS included)
) -> int:
    """POST the gzipped report; any 2xx is success (RPT-11). Returns the status code.

    The host is resolved through `resolver` (an IP literal needs none); the connection goes to
    its addresses in turn with SNI and the certificate check for the host. Redirects are not
    followed. Everything, DNS included, ends after `timeout` seconds.
    """
    parsed, host = https_target(url)
    try:
        async with asyncio.timeout(timeout):
            status = await _post_first(client, parsed, await _addresses(host, resolver), gz_bytes)
    except TimeoutError:
        raise HttpsDeliveryError(
            f"{url}: no complete answer within {timeout:g} s", destination=url
        ) from None
    except HttpsDeliveryError as exc:
        raise HttpsDeliveryError(f"{url}: {exc}", destination=url) from exc
    if not 200 <= status < 300:
        raise HttpsDeliveryError(f"{url}: HTTP {status}", destination=url, status=status)
    return status


async def _post_first(
    client: httpx.AsyncClient, url: httpx.URL, addresses: list[str], gz_bytes: bytes
) -> int:
    """The status from the first address that connects; any later error ends the search."""
    last: Exception | None = None
    for address in addresses:
        try:
            return await _post_to(client, url, address, gz_bytes)
        except httpx.ConnectError as exc:  # refused, unreachable, or TLS: try the next one
            last = exc
        except httpx.HTTPError as exc:
            raise HttpsDeliveryError(f"{address}: {exc!r}") from exc
    raise HttpsDeliveryError(f"{addresses[-1]}: {last!r}") from last


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
    """Build the DKIM-signed report mail for one mailto: URI and submit it.

    A URI that is not exactly one clean address raises a non-temporary `MailDeliveryError`
    before anything is built (a ``%0D%0A`` in it would otherwise become a header line)."""
    address = report_mailbox(uri)
    try:
        message = build_report_mail(
            report, gz_bytes, mail_from=mail_from, rcpt_to=[address], now=now, dkim_key=dkim_key
        )
    except (ValueError, UnicodeError) as exc:  # e.g. a From that cannot be encoded
        raise MailDeliveryError(f"{uri}: building the report mail failed: {exc}") from exc
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
    resolver: dns.asyncresolver.Resolver | None = None,
    post_timeout: float = POST_TIMEOUT,
) -> DeliveryOutcome:
    """Try every destination once (RPT-02: the report is delivered when any one accepts)."""
    accepted: list[str] = []
    errors: list[tuple[str, str]] = []
    for uri in destinations:
        try:
            if uri[:6].lower() == "https:":
                await post_report(
                    uri, gz_bytes, client=client, resolver=resolver, timeout=post_timeout
                )
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
            if not exc.temporary:
                log.warning("tlsrpt.rua_skipped", report_id=report.report_id, error=str(exc))
                errors.append((uri, str(exc)))
                continue
            log.warning("tlsrpt.destination_failed", report_id=report.report_id, error=str(exc))
            errors.append((uri, str(exc)))
        else:
            log.info("tlsrpt.destination_accepted", report_id=report.report_id, destination=uri)
            accepted.append(uri)
    return DeliveryOutcome(tuple(accepted), tuple(errors))
