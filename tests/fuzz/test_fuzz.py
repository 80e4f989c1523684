"""The fuzz properties of tests/fuzz/targets.py as short hypothesis runs (the long runs are the
atheris scripts beside this file; see tests/fuzz/README.md).

Inputs are the targets' seeds mutated by hypothesis plus structured text, kept small: the whole
file runs in a few seconds on two cores.
"""

from __future__ import annotations

from collections.abc import Callable

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.fuzz import targets

FEW = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    database=None,
)

# Characters parsers meet in hostile input: line ends, NUL, separators, non-ASCII digits, %.
_NASTY = st.sampled_from(
    ["\r", "\n", "\r\n", "\x00", ";", ",", ":", "=", "%0D%0A", "%00", "%2C", " ", "\t", "²", "ø"]
)


def _mutations(seeds: list[bytes]) -> st.SearchStrategy[bytes]:
    """A seed with a few slices replaced by random or nasty bytes, or plain random bytes."""

    @st.composite
    def mutate(draw: st.DrawFn) -> bytes:
        data = bytearray(draw(st.sampled_from(seeds)))
        for _ in range(draw(st.integers(0, 4))):
            at = draw(st.integers(0, len(data)))
            cut = draw(st.integers(0, 8))
            piece = draw(st.one_of(st.binary(max_size=8), _NASTY.map(str.encode)))
            data[at : at + cut] = piece
        return bytes(data)

    return st.one_of(mutate(), st.binary(max_size=200))


def _property(name: str) -> Callable[[bytes], None]:
    run = targets.TARGETS[name]

    @FEW
    @given(data=_mutations(targets.SEEDS[name]))
    def check(data: bytes) -> None:
        run(data)

    for seed in targets.SEEDS[name]:
        check = example(data=seed)(check)
    return check


def test_sts_record() -> None:
    _property("sts_record")()


def test_policy_file() -> None:
    _property("policy")()


def test_mx_replies() -> None:
    _property("mx_replies")()


def test_tlsrpt_record() -> None:
    _property("tlsrpt_record")()


def test_intake_commands_and_addresses() -> None:
    _property("intake")()


def test_dsn() -> None:
    _property("dsn")()


def test_config() -> None:
    _property("config")()


def test_socketmap() -> None:
    _property("socketmap")()


@FEW
@given(
    reason=st.text(max_size=300),
    rcpt=st.from_regex(r"[a-z0-9.+-]{1,20}@[a-z0-9-]{1,20}\.example", fullmatch=True),
)
def test_dsn_any_reason_text(reason: str, rcpt: str) -> None:
    """What an MX answered ends up in the DSN's Diagnostic-Code: any text, one header."""
    targets.dsn_with(reason=reason, rcpt=rcpt)


_TOML_VALUE = st.one_of(
    st.text(max_size=30),
    _NASTY,
    st.integers(-(2**40), 2**40),
    st.booleans(),
    st.lists(st.one_of(st.text(max_size=20), _NASTY), max_size=3),
)
_KEYS = {
    "relay": ["listen", "hostname", "accept_networks", "metrics_listen", "state_dir"],
    "delivery": ["port", "retry_max", "queue_lifetime", "no_policy_tls"],
    "dns": ["nameservers", "timeout"],
    "tlsrpt": ["organization_name", "contact_info", "submitter", "post_timeout", "dkim_domain"],
    "mtasts": ["fetch_timeout", "https_port"],
}


@FEW
@given(
    section=st.sampled_from(sorted(_KEYS)),
    data=st.data(),
)
def test_config_values_of_every_type(section: str, data: st.DataObject) -> None:
    """Every key with a value of any TOML type: a ConfigError or a config that holds."""
    from relay.config import config_from_dict
    from relay.errors import ConfigError

    key = data.draw(st.sampled_from(_KEYS[section]))
    value = data.draw(_TOML_VALUE)
    try:
        config = config_from_dict({section: {key: value}})
    except ConfigError:
        return
    config.relay.listen_address  # noqa: B018
    config.dns.nameserver_addresses  # noqa: B018
    targets.clean(config.relay.hostname, "[relay].hostname")
    targets.clean(config.tlsrpt.organization_name, "[tlsrpt].organization_name")


# --- what the long runs found (kept as plain regression tests) ---------------------------------


def test_found_mx_reply_with_bytes_that_are_not_utf8_bounces_cleanly() -> None:
    """aiosmtplib decodes an MX's reply with surrogateescape; such a reason made build_dsn raise
    UnicodeEncodeError (the bounce, and with it the queue runner, failed)."""
    targets.mx_replies(b"554 go away\r\n501 \x80syntax\r\n")
    targets.dsn_with(reason="550 5.1.1 no such user \udc80\udcff \x00\x1b[31m")


def test_found_mailto_that_decodes_to_non_ascii_is_skipped() -> None:
    """``mailto:x%0@p%ADy0ees.st`` decodes to U+FFFD in the domain: build_report_mail raised
    UnicodeEncodeError for the To header (fuzz_tlsrpt_record)."""
    targets.tlsrpt_record(b"v=TLSRPTv1;rua=mailto:x%0@p%ADy0ees.st")


def test_found_intake_parser_crash_and_cr_in_a_quoted_local_part() -> None:
    """The first inputs fuzz_intake stopped at on main before the intake's checks: aiosmtpd's
    parser raised AttributeError on ``<$@[:&_>(x)``, and accepted a quoted local part holding a
    bare CR (the issue's ``Bcc:`` injection)."""
    targets.intake_command(b"<$@[:&_>(x)\xffhelo\x00name\xffa\nb\rc")
    targets.intake_command(b'<"x\rBcc: spy@evil.test\r"@good.test>\xffh\xff')
