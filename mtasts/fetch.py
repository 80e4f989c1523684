"""Discovery I/O (RFC 8461 sections 3.1, 3.3): the `_mta-sts` TXT look-up and the HTTPS fetch.

Both take their resolver (never the system one unless the caller passes it) and SSL context from
outside, and translate dnspython and httpx errors into `PolicyError`s carrying their result type.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import TypeVar

import dns.asyncresolver
import dns.exception
import dns.resolver
import httpx
import structlog

from mtasts.errors import (
    PolicyError,
    PolicyFetchError,
    PolicyInvalidError,
    PolicyWebPkiError,
    StsLookupError,
)
from mtasts.model import Policy, StsRecord
from mtasts.parse import parse_policy, select_sts_record

log = structlog.get_logger(__name__)
_E = TypeVar("_E", bound=BaseException)

MAX_POLICY_SIZE = 64 * 1024  # 3.3: senders may limit the policy body to 64 KiB
WELL_KNOWN_PATH = "/.well-known/mta-sts.txt"
_CHARSETS = ("utf-8", "us-ascii")


def record_name(domain: str) -> str:
    return f"_mta-sts.{domain.rstrip('.')}."


def policy_host(domain: str) -> str:
    return f"mta-sts.{domain.rstrip('.')}"


def policy_url(domain: str) -> str:
    return f"https://{policy_host(domain)}{WELL_KNOWN_PATH}"


async def lookup_sts_record(domain: str, resolver: dns.asyncresolver.Resolver) -> StsRecord | None:
    """Look up and select `_mta-sts.<domain>` (STS-01, STS-02). No name or no TXT: None.

    SERVFAIL or a timeout raises `StsLookupError`; a record that does not parse raises
    `StsRecordError`.
    """
    name = record_name(domain)
    try:
        answer = await resolver.resolve(name, "TXT")
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return None
    except dns.exception.DNSException as exc:
        raise StsLookupError(f"{name} TXT look-up failed: {exc}") from exc
    return select_sts_record([tuple(rdata.strings) for rdata in answer])


async def _addresses(host: str, resolver: dns.asyncresolver.Resolver) -> list[str]:
    """IPv4 then (only if there is none) IPv6 addresses of the policy host."""
    errors: list[str] = []
    for rdtype in ("A", "AAAA"):
        try:
            answer = await resolver.resolve(host + ".", rdtype)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            continue
        except dns.exception.DNSException as exc:
            errors.append(f"{rdtype} look-up failed: {exc}")
            continue
        found = [rdata.to_text() for rdata in answer]
        if found:
            return found
    detail = "; ".join(errors) if errors else "no A or AAAA record"
    raise PolicyFetchError(f"policy host {host}: {detail}")


def _in_chain(exc: BaseException, kind: type[_E]) -> _E | None:
    """The first exception of `kind` in the cause chain of `exc` (httpx wraps ssl errors)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, kind):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _check_media_type(value: str | None, url: str) -> None:
    """3.3: the policy is served as text/plain; a charset, if any, is utf-8 or us-ascii."""
    if not value:
        raise PolicyFetchError(f"{url}: no Content-Type (must be text/plain)")
    media, *params = (part.strip() for part in value.split(";"))
    if media.lower() != "text/plain":
        raise PolicyFetchError(f"{url}: Content-Type is {media!r}, not text/plain")
    for param in params:
        name, _, charset = param.partition("=")
        if name.strip().lower() == "charset":
            charset = charset.strip().strip('"').lower()
            if charset not in _CHARSETS:
                raise PolicyFetchError(f"{url}: charset {charset!r} is not utf-8 or us-ascii")


async def _get_body(
    client: httpx.AsyncClient, address: str, port: int, host: str, url: str
) -> bytes:
    ip = f"[{address}]" if ":" in address else address
    host_header = host if port == 443 else f"{host}:{port}"
    async with client.stream(
        "GET",
        f"https://{ip}:{port}{WELL_KNOWN_PATH}",
        headers={"Host": host_header, "Connection": "close", "Accept-Encoding": "identity"},
        extensions={"sni_hostname": host},  # SNI and the certificate check name mta-sts.<domain>
        follow_redirects=False,  # 3.3: never, even on a caller's client that follows them
    ) as response:
        if response.status_code != 200:
            # 3.3: only 200 counts; redirects are not followed (follow_redirects=False).
            where = response.headers.get("location")
            detail = f" (redirect to {where})" if where else ""
            raise PolicyFetchError(f"{url}: HTTP status {response.status_code}{detail}")
        _check_media_type(response.headers.get("content-type"), url)
        length = response.headers.get("content-length", "")
        if length.isascii() and length.isdigit() and int(length) > MAX_POLICY_SIZE:
            raise PolicyFetchError(f"{url}: body of {length} bytes is over {MAX_POLICY_SIZE}")
        body = bytearray()
        async for chunk in response.aiter_raw():
            body += chunk
            if len(body) > MAX_POLICY_SIZE:
                raise PolicyFetchError(f"{url}: body is over {MAX_POLICY_SIZE} bytes")
        return bytes(body)


async def fetch_policy(
    domain: str,
    *,
    resolver: dns.asyncresolver.Resolver,
    ssl_context: ssl.SSLContext,
    port: int = 443,
    timeout: float = 60,  # noqa: ASYNC109  (the whole fetch, DNS included, in one limit)
    client: httpx.AsyncClient | None = None,
) -> Policy:
    """Fetch and parse `https://mta-sts.<domain>/.well-known/mta-sts.txt` (STS-04).

    The host is resolved through `resolver`; the connection goes to its address with SNI and the
    certificate check for `mta-sts.<domain>`. Raises `PolicyWebPkiError` (certificate),
    `PolicyFetchError` (DNS, connection, status, media type, size, time) or `PolicyInvalidError`.
    A caller's `client` must already verify with `ssl_context` (it is used as it is).
    """
    host, url = policy_host(domain), policy_url(domain)
    own = client is None
    if client is None:
        client = httpx.AsyncClient(
            verify=ssl_context,
            follow_redirects=False,
            trust_env=False,
            timeout=httpx.Timeout(timeout),
        )
    try:
        async with asyncio.timeout(timeout):
            addresses = await _addresses(host, resolver)
            body = await _fetch_first(client, addresses, port, host, url)
    except TimeoutError:
        raise PolicyFetchError(f"{url}: no complete answer within {timeout:g} s") from None
    finally:
        if own:
            await client.aclose()
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PolicyInvalidError(f"{url}: policy is not UTF-8 text ({exc.reason})") from None
    try:
        return parse_policy(text)
    except PolicyInvalidError as exc:
        wrapped = PolicyInvalidError(f"{url}: {exc.message}")
        wrapped.line = exc.line
        raise wrapped from exc


async def _fetch_first(
    client: httpx.AsyncClient, addresses: list[str], port: int, host: str, url: str
) -> bytes:
    """The body from the first address that connects; a certificate failure ends the search."""
    last: PolicyError | None = None
    for address in addresses:
        try:
            return await _get_body(client, address, port, host, url)
        except PolicyError:
            raise
        except httpx.TimeoutException as exc:
            raise PolicyFetchError(f"{url}: timed out ({type(exc).__name__})") from exc
        except (httpx.HTTPError, ssl.SSLError, OSError) as exc:
            bad_cert = _in_chain(exc, ssl.SSLCertVerificationError)
            if bad_cert is not None:
                reason = bad_cert.verify_message or str(bad_cert)
                raise PolicyWebPkiError(
                    f"{url}: certificate of {host} not valid: {reason}"
                ) from exc
            if _in_chain(exc, ssl.SSLError) is not None:
                raise PolicyFetchError(f"{url}: TLS with {address} failed: {exc}") from exc
            last = PolicyFetchError(f"{url}: {address} port {port}: {exc or type(exc).__name__}")
            log.debug("mtasts.fetch_address_failed", url=url, address=address, error=str(exc))
    assert last is not None
    raise last
