"""The fuzz properties: one function per parser of untrusted input, each taking raw bytes.

The atheris scripts beside this file (``fuzz_*.py``) run them for minutes; ``test_fuzz.py`` runs
them as short hypothesis runs inside the suite. Each function

- feeds the input to the parser as the relay would (DNS TXT bytes, an HTTPS body, an MX reply,
  a client's command line, a config file),
- lets only the parser's documented error types through (it catches exactly those), so any other
  exception is a finding,
- and checks that nothing that reaches a mail header or an SMTP command carries CR, LF or NUL.

An `AssertionError` or any unexpected exception is a bug; both fail the run.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email
import email.policy
import tomllib
from collections.abc import Iterable

from aiosmtplib.errors import SMTPResponseException
from aiosmtplib.protocol import SMTPProtocol
from aiosmtplib.response import SMTPResponse

from detect.ehlo import judge_banner, judge_ehlo
from detect.model import MAX_EVIDENCE, Finding
from detect.starttls import judge_pre_handshake_bytes, judge_starttls_reply
from detect.tls import judge_tls_failure
from mtasts.errors import PolicyInvalidError, StsRecordError
from mtasts.match import mx_matches, normalize_host, policy_allows
from mtasts.model import PolicyResult, PolicySource
from mtasts.parse import parse_policy, parse_sts_record, policy_domain, select_sts_record
from relay.config import config_from_dict
from relay.errors import ConfigError
from relay.intake import hygiene
from relay.intake import server as intake
from relay.queue.bounce import build_dsn, status_of
from relay.queue.spool import QueuedMessage
from relay.socketmap.answer import MapFacts, answer, map_domain
from relay.socketmap.errors import SocketmapProtocolError
from relay.socketmap.netstring import MAX_QUERY, NetstringDecoder
from relay.socketmap.protocol import Dialect, parse_request
from tlsrpt_emit.deliver import https_target, report_mailbox
from tlsrpt_emit.errors import ReportDeliveryError, TlsRptRecordError
from tlsrpt_emit.model import Report
from tlsrpt_emit.record import parse_tlsrpt_record, select_tlsrpt_record
from tlsrpt_emit.render import build_report_mail

FORBIDDEN = ("\r", "\n", "\x00")
NOW = 1_800_000_000.0


def clean(text: str, what: str) -> None:
    """`text` reaches a header line or an SMTP command: no CR, LF or NUL in it."""
    if any(c in text for c in FORBIDDEN):
        raise AssertionError(f"{what} carries CR/LF/NUL: {text!r}")


def _text(data: bytes) -> str:
    """Bytes as the relay decodes what it receives from DNS and HTTPS (utf-8, replace)."""
    return data.decode("utf-8", "replace")


def _pieces(data: bytes, n: int) -> list[bytes]:
    """Up to `n` pieces of the input, split at 0xFF (which never occurs in UTF-8 text)."""
    parts = data.split(b"\xff", n - 1)
    return parts + [b""] * (n - len(parts))


def _check_findings(findings: Iterable[Finding]) -> None:
    for finding in findings:
        assert len(finding.evidence) <= MAX_EVIDENCE, finding
        assert finding.result_type, finding
        finding.as_log()


# --- MTA-STS ---------------------------------------------------------------------------------


def sts_record(data: bytes) -> None:
    """`_mta-sts` TXT records: raw TXT strings (bytes), one record or several."""
    records = [tuple(p.split(b"\x00")) for p in data.split(b"\xff")]
    try:
        record = select_sts_record(records)
    except StsRecordError:
        record = None
    try:
        parsed = parse_sts_record(_text(data))
    except StsRecordError:
        parsed = None
    for found in (record, parsed):
        if found is not None:
            assert found.id.isascii(), found
            assert found.id.isalnum(), found
            assert 1 <= len(found.id) <= 32, found
            for name, value in found.extensions:
                clean(name + value, "STS record extension")
                assert " " not in value, found


def policy_file(data: bytes) -> None:
    """A policy body as fetched (UTF-8 checked by the fetcher first), and MX names against it."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return  # mtasts.fetch refuses it with PolicyInvalidError before parsing
    try:
        policy = parse_policy(text)
    except PolicyInvalidError as exc:
        if not exc.message:
            raise AssertionError("PolicyInvalidError without a message") from exc
        return
    assert 0 <= policy.max_age <= 31_557_600, policy
    for pattern in policy.mx:
        clean(pattern, "policy mx pattern")
        assert pattern.isascii(), pattern
        assert pattern == pattern.lower(), pattern
        assert " " not in pattern, pattern
        if pattern.startswith("*."):
            assert mx_matches(pattern, "mx." + pattern[2:]), pattern
        else:
            assert mx_matches(pattern, pattern), pattern
    host = text.rsplit("\n", 1)[-1][:300]  # an MX name from DNS is just as untrusted
    policy_allows(policy, host)
    normalize_host(host)
    policy_domain(host)


# --- the MX's replies ------------------------------------------------------------------------

_LOOP = asyncio.new_event_loop()


def smtp_replies(data: bytes) -> list[SMTPResponse]:
    """The replies aiosmtplib reads from these bytes (as the delivery sees them)."""
    protocol = SMTPProtocol(loop=_LOOP)
    protocol._buffer = bytearray(data)
    replies: list[SMTPResponse] = []
    while True:
        try:
            reply = protocol._read_response_from_buffer()
        except SMTPResponseException:
            return replies  # a malformed reply: aiosmtplib raises, the session ends there
        if reply is None:
            return replies
        replies.append(reply)


def mx_replies(data: bytes) -> None:
    """Banner, EHLO and STARTTLS replies and bytes injected after the 220, from the wire."""
    head, tail = _pieces(data, 2)
    replies = smtp_replies(head)
    for reply in replies:
        _check_findings(judge_banner(reply.code, reply.message))
        for expect in (False, True):
            judged = judge_ehlo(reply.code, reply.message.split("\n"), expect_starttls=expect)
            _check_findings(judged.findings)
            assert judged.offers_starttls is ("STARTTLS" in judged.keywords)
        refused = judge_starttls_reply(reply.code, reply.message)
        if refused is not None:
            _check_findings([refused])
        else:
            assert reply.code == 220
        _check_findings([judge_tls_failure(None, reply.message)])
        _check_findings([judge_tls_failure(reply.code, reply.message)])
    injected = judge_pre_handshake_bytes(tail)
    assert (injected is None) is (tail == b"")
    if injected is not None:
        _check_findings([injected])
    # What an MX says ends up as the reason of a bounce: the DSN must stay well-formed.
    if replies:
        reason = f"{replies[-1].code} {replies[-1].message}"
        dsn_with(reason=reason)


# --- TLS-RPT ---------------------------------------------------------------------------------

_REPORT = Report(
    organization_name="Fuzz Org",
    start=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    end=dt.datetime(2026, 1, 2, tzinfo=dt.UTC),
    contact_info="tlsrpt@reporter.example",
    report_id="2026-01-01T00:00:00Z_example.org",
    policy_domain="example.org",
    submitter="reporter.example",
    policies=(),
)
_REPORT_HEADERS = {
    "from",
    "to",
    "date",
    "message-id",
    "subject",
    "tls-report-domain",
    "tls-report-submitter",
    "tls-required",
    "content-type",
    "mime-version",
}


def tlsrpt_record(data: bytes) -> None:
    """`_smtp._tls` TXT records, then each rua as delivery would use it (URL, mailbox, mail)."""
    txts = [_text(p) for p in data.split(b"\xff")]
    records = []
    for parse in (lambda: select_tlsrpt_record(txts), lambda: parse_tlsrpt_record(txts[0])):
        try:
            record = parse()
        except TlsRptRecordError:
            continue
        if record is not None:
            records.append(record)
    for record in records:
        assert record.rua, record
        for uri in record.rua:
            clean(uri, "rua URI")
            assert " " not in uri, uri
            try:
                if uri[:6].lower() == "https:":
                    https_target(uri)
                else:
                    _report_mail_to(uri)
            except ReportDeliveryError:
                pass


def _report_mail_to(uri: str) -> None:
    address = report_mailbox(uri)
    clean(address, "report rcpt")
    message = build_report_mail(
        _REPORT, b"\x1f\x8b", mail_from="tlsrpt@reporter.example", rcpt_to=[address], now=NOW
    )
    parsed = email.message_from_bytes(message, policy=email.policy.compat32)
    names = {k.lower() for k in parsed}
    assert names <= _REPORT_HEADERS, names - _REPORT_HEADERS
    assert len(parsed.get_all("To", [])) == 1, parsed.get_all("To")


# --- intake ----------------------------------------------------------------------------------


class _Handler:
    pass


_SMTP = intake._IntakeSMTP(_Handler(), loop=_LOOP)


def intake_command(data: bytes) -> None:
    """A MAIL or RCPT argument as the intake parses it (aiosmtpd's parser with the intake's fast
    path), and the `Received:` line built from what was accepted; HELO names; header checks."""
    line, helo, message = _pieces(data, 3)
    # aiosmtpd reads a command up to LF and strips the CRLF: a bare CR or a NUL can remain.
    arg = line.split(b"\n", 1)[0].rstrip(b"\r").decode("utf-8", "surrogateescape")
    address, rest = _SMTP._getaddr(arg)
    if address is not None:
        params = _SMTP._getparams((rest or "").split())
        assert params is None or isinstance(params, dict)
        if _accepted_address(address, arg):
            clean(address, "accepted address")
    trace = intake.received_header(
        helo=helo.decode("utf-8", "surrogateescape"),
        client="127.0.0.1",
        hostname="relay.example",
        protocol="ESMTP",
        queue_id="Q1",
        rcpts=[address] if address and _accepted_address(address, arg) else [],
        now=NOW,
    )
    lines = trace.split(b"\r\n")
    assert lines[-1] == b"", trace
    for folded in lines[1:-1]:
        assert folded.startswith(b"\t"), trace  # every line after the first is a continuation
    assert not any(c in trace.replace(b"\r\n", b"") for c in b"\r\n\x00"), trace
    intake.tls_required_no(message)
    offset = intake.bare_line_end(message)
    if offset is None:
        assert message.count(b"\r") == message.count(b"\n") == message.count(b"\r\n")
    else:
        assert message[offset : offset + 1] in (b"\r", b"\n")
    intake.client_allowed(_text(helo), intake.parse_networks(["127.0.0.0/8", "::1/128"]))


def _accepted_address(address: str, arg: str | None = None) -> bool:
    """Whether the intake takes this command argument and the address parsed from it."""
    if arg is not None and hygiene.command_problem(arg) is not None:
        return False
    return hygiene.address_problem(address, smtputf8=True, null_ok=True) is None


# --- DSN -------------------------------------------------------------------------------------

_DSN_TOP = {
    "from",
    "to",
    "subject",
    "date",
    "message-id",
    "auto-submitted",
    "content-type",
    "mime-version",
}


def dsn_with(
    *, reason: str, rcpt: str = "bob@example.org", mail_from: str = "alice@example.net"
) -> None:
    """Build a DSN for one failed recipient and check it is still one well-formed message."""
    message = QueuedMessage(
        id="Q1", mail_from=mail_from, recipients=(), received_at=NOW - 3600, size=10
    )
    original = b"Subject: hi\r\nFrom: alice@example.net\r\n\r\nbody\r\n"
    out = build_dsn(message, original, [(rcpt, reason)], reporting_mta="relay.example", now=NOW)
    assert intake.bare_line_end(out) is None, out[:400]
    parsed = email.message_from_bytes(out, policy=email.policy.compat32)
    names = {k.lower() for k in parsed}
    assert names <= _DSN_TOP, names - _DSN_TOP
    head = out.split(b"\r\n\r\n", 1)[0]
    assert b"\x00" not in head, head
    parts = parsed.get_payload()
    assert isinstance(parts, list)
    assert len(parts) == 3, len(parts)
    status = parts[1].get_payload()
    assert isinstance(status, list)
    assert len(status) == 2, [str(s) for s in status]  # one per-message block, one per rcpt
    fields = {k.lower() for k in status[1]}
    assert fields == {
        "final-recipient",
        "action",
        "status",
        "diagnostic-code",
        "last-attempt-date",
    }, fields
    assert status_of(reason)[0] == "5"


def dsn(data: bytes) -> None:
    """DSN building from a reason an MX gave and the envelope the intake accepted."""
    reason, rcpt, mail_from = (p.decode("utf-8", "surrogateescape") for p in _pieces(data, 3))
    if not (_accepted_address(rcpt) and _accepted_address(mail_from)):
        return
    if any(c in rcpt + mail_from for c in FORBIDDEN):
        return  # the intake refuses these before anything is spooled (checked by intake_command)
    dsn_with(reason=reason, rcpt=rcpt or "bob@example.org", mail_from=mail_from or "a@b.example")


# --- config ----------------------------------------------------------------------------------


def config_text(data: bytes) -> None:
    """A config file: TOML, then the checks; only a TOML or config error may come out."""
    try:
        raw = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError):
        return  # load_config turns both into ConfigError
    try:
        config = config_from_dict(raw)
    except ConfigError as exc:
        if any(c in str(exc) for c in FORBIDDEN):
            # The CLI prints it as its one line on stderr.
            raise AssertionError(f"config error is not one clean line: {str(exc)!r}") from exc
        return
    config.relay.listen_address  # noqa: B018  (must not raise once loaded)
    config.dns.nameserver_addresses  # noqa: B018
    for what, value in (
        ("[relay].hostname", config.relay.hostname),
        ("[tlsrpt].organization_name", config.tlsrpt.organization_name),
        ("[tlsrpt].contact_info", config.tlsrpt.contact_info),
        ("[tlsrpt].submitter", config.tlsrpt.submitter),
        ("[tlsrpt].dkim_domain", config.tlsrpt.dkim_domain),
        ("[tlsrpt].dkim_selector", config.tlsrpt.dkim_selector),
    ):
        clean(value, what)
    for domain in config.domains:
        config.domain_tls(domain)


def _postfix_pairs(reply: str) -> list[tuple[str, str]]:
    """The name=value pairs Postfix's `tls_policy_lookup_one` reads from an ``OK`` reply:
    tokens split at commas and white space outside balanced braces; ``{ name = value }`` or
    ``name=value``. A token Postfix could not read is an AssertionError."""
    tokens, level, current = [], 0, ""
    for ch in reply[3:]:
        level += (ch == "{") - (ch == "}" and level > 0)
        if level == 0 and ch in ", \t\r\n":
            tokens, current = ([*tokens, current] if current else tokens), ""
        else:
            current += ch
    tokens += [current] if current else []
    pairs = []
    for token in tokens[1:]:
        inner = token[1:-1] if token.startswith("{") else token
        if token.startswith("{") and (not token.endswith("}") or "{" in inner or "}" in inner):
            raise AssertionError(f"unreadable attribute {token!r} in {reply!r}")
        name, eq, value = inner.partition("=")
        if not eq or not name.strip() or not value.strip():
            raise AssertionError(f"not name=value: {token!r} in {reply!r}")
        pairs.append((name.strip(), value.strip()))
    return pairs


def socketmap(data: bytes) -> None:
    """The socketmap: a client's byte stream (netstrings, `name key` requests) and a policy
    text whose lines become Postfix TLSRPT attributes; no policy text may add an attribute."""
    stream, _, policy_text = data.partition(b"\xff")
    decoder = NetstringDecoder()
    try:
        half = len(stream) // 2
        payloads = decoder.feed(stream[:half]) + decoder.feed(stream[half:])
    except SocketmapProtocolError:
        payloads = []
    for payload in payloads:
        if len(payload) > MAX_QUERY:
            raise AssertionError(f"a query of {len(payload)} bytes got through")
        try:
            key = parse_request(payload).key
        except SocketmapProtocolError:
            continue
        domain = map_domain(key)
        if domain is not None:
            clean(domain, "socketmap domain")
    try:
        policy = parse_policy(_text(policy_text))
    except PolicyInvalidError:
        return
    sts = PolicyResult("example.org", policy, PolicySource.CACHED)
    for dialect in Dialect:
        reply = answer(MapFacts("example.org", sts), dialect).reply
        clean(reply, "socketmap reply")
        if not reply.startswith("OK "):
            continue
        names = [name for name, _ in _postfix_pairs(reply)]
        allowed = {"match", "servername", "policy_type", "policy_domain", "mx_host_pattern"}
        if set(names) - allowed - {"policy_string"} or names.count("policy_type") > 1:
            raise AssertionError(f"policy text added attributes: {reply!r}")


TARGETS = {
    "sts_record": sts_record,
    "policy": policy_file,
    "mx_replies": mx_replies,
    "tlsrpt_record": tlsrpt_record,
    "intake": intake_command,
    "dsn": dsn,
    "config": config_text,
    "socketmap": socketmap,
}

# Starting inputs for each target (the runner writes them into a fresh corpus directory).
SEEDS: dict[str, list[bytes]] = {
    "sts_record": [
        b"v=STSv1; id=20240101T000000;",
        b"v=STSv1; id=abc; ext=val\xffv=STSv1; id=def",
        b"v=STS\x00v1; id=a\x00bc",
    ],
    "policy": [
        b"version: STSv1\r\nmode: enforce\r\nmx: mx1.example.org\r\nmx: *.example.net\r\n"
        b"max_age: 604800\r\n",
        b"version: STSv1\nmode: testing\nmx: mail.example.com\nmax_age: 86400\nmx.example.com",
        b"version: STSv1\nmode: none\nmax_age: 0\n",
    ],
    "mx_replies": [
        b"220 mx.example.org ESMTP\r\n250-mx.example.org\r\n250-PIPELINING\r\n250-STARTTLS\r\n"
        b"250 8BITMIME\r\n220 2.0.0 go ahead\r\n\xff250-injected\r\n",
        b"220 **********\r\n250-mx\r\n250-XXXXXXXA\r\n250 SIZE 1000\r\n454 4.7.0 no\r\n",
        b"554 go away\r\n501 syntax\r\n\xff",
    ],
    "tlsrpt_record": [
        b"v=TLSRPTv1; rua=mailto:tlsrpt@example.org,https://reports.example.org/v1",
        b"v=TLSRPTv1;rua=mailto:x%0D%0ABcc:%20spy@evil.test@good.test",
        b"v=TLSRPTv1; rua=https://[::1]:8443/r?x=1\xffv=TLSRPTv1; rua=mailto:a%2Cb@c.d",
    ],
    "intake": [
        b"<alice@example.org> SIZE=100 BODY=8BITMIME\xffclient.example\xffSubject: x\r\n\r\nhi\r\n",
        b'<"x\rBcc: spy@evil.test\r"@good.test>\xffh\xffTLS-Required: No\r\n\r\n',
        b"<$@[:&_>(x)\xffhelo\x00name\xffa\nb\rc",
        b"<b\xc3\xb8b@good.test> SMTPUTF8\xff[127.0.0.1]\xff",
    ],
    "dsn": [
        b"550 5.1.1 <bob@example.org>: no such user\xffbob@example.org\xffalice@example.net",
        b"451 4.7.0 TLS handshake failed\r\nBcc: x\xffb\xc3\xb8b@example.org\xff",
        b"tls-failure: certificate has expired \xed\xb2\x80\xff\xff",
    ],
    "config": [
        b'[relay]\nlisten = "127.0.0.1:2525"\nhostname = "relay.example.net"\n'
        b'accept_networks = ["127.0.0.0/8"]\n[dns]\nnameservers = ["127.0.0.1:5353"]\n'
        b'[delivery]\nretry_max = "1h"\n[tlsrpt]\npost_timeout = "60s"\n'
        b'organization_name = "Org"\n[domains."example.org"]\ntls = "verify"\n',
        b'[relay]\nlisten = "h:\xc2\xb2"\n',
        b'[mtasts]\nfetch_timeout = 5\n[detect]\non_downgrade = "log"\nhistory_days = 3\n',
    ],
    "socketmap": [
        b"19:postfix example.org,22:tlsrpt [mx.example]:25,\xffversion: STSv1\r\nmode: enforce\r\n"
        b"mx: mx1.example.org\r\nmx: *.example.net\r\nmax_age: 86400\r\n",
        b"7:postfix,0:,99999:\xffversion: STSv1\nmode: testing\nmx: a.b\nmax_age: 1\n"
        b"ext: } policy_type=no-policy-found {\n",
        b"12:postfix .b\xc3\xbc.de,\xffversion: STSv1\nmode: enforce\nmx: a.b\nmax_age: 1\n"
        b"x: {a}\n",
    ],
}
