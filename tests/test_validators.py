"""Validators that judge a whole string judge all of it: a trailing newline (which `$` lets
through) or a non-ASCII digit (which `str.isdigit` lets through) is refused with the package's
own error, and the CLI reports a bad config in one line with exit status 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from mtasts.errors import PolicyInvalidError, StsRecordError
from mtasts.parse import check_mx_pattern, parse_policy, parse_sts_record
from relay.config import config_from_dict
from relay.config_values import parse_duration, parse_hostport
from relay.errors import ConfigError
from tests.cli import run_cli
from tlsrpt_emit.errors import TlsRptRecordError
from tlsrpt_emit.record import parse_tlsrpt_record

POLICY = "version: STSv1\nmode: enforce\nmx: mx.example.org\nmax_age: 86400\n"


@pytest.mark.parametrize(
    "text",
    [
        "v=STSv1; id=abc\n",
        "v=STSv1; id=abc\r",
        "v=STSv1; id=abc; ext=val\n",
        "v=STSv1; id=abc; ext\n=val",
    ],
)
def test_sts_record_with_a_trailing_line_end_is_refused(text: str) -> None:
    with pytest.raises(StsRecordError):
        parse_sts_record(text)


def test_sts_record_clean_still_parses() -> None:
    assert parse_sts_record("v=STSv1; id=abc").id == "abc"


@pytest.mark.parametrize(
    "text",
    [
        "v=TLSRPTv1; rua=https://h.example\n",
        "v=TLSRPTv1; rua=mailto:r@h.example\n",
        "v=TLSRPTv1; rua=https://h.example; ext=v\n",
    ],
)
def test_tlsrpt_record_with_a_trailing_line_end_is_refused(text: str) -> None:
    with pytest.raises(TlsRptRecordError):
        parse_tlsrpt_record(text)


def test_tlsrpt_record_clean_still_parses() -> None:
    assert parse_tlsrpt_record("v=TLSRPTv1; rua=https://h.example").rua == ("https://h.example",)


@pytest.mark.parametrize("pattern", ["mx.example.org\n", "*.example.org\n", "mx.example.org\r"])
def test_mx_pattern_with_a_line_end_is_refused(pattern: str) -> None:
    with pytest.raises(PolicyInvalidError):
        check_mx_pattern(pattern)


def test_policy_max_age_with_a_non_ascii_digit_is_refused() -> None:
    with pytest.raises(PolicyInvalidError):
        parse_policy(POLICY.replace("86400", "8640²"))
    assert parse_policy(POLICY).max_age == 86400


@pytest.mark.parametrize("listen", ["h:²", "h:٣", "127.0.0.1:25\n", "[::1]:²", "h:2\x0025"])
def test_listen_with_a_bad_port_is_a_config_error(listen: str) -> None:
    with pytest.raises(ConfigError, match=r"\[relay\]\.listen"):
        config_from_dict({"relay": {"listen": listen}})
    with pytest.raises(ConfigError):
        parse_hostport(listen, "[relay].listen")


@pytest.mark.parametrize("text", ["5m\x00", "\uff15m", "²s", "5 m x"])
def test_duration_refuses_junk(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_duration(text, "[delivery].retry_max")


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("relay", "hostname", "relay.test\r\nBcc: spy@evil.test"),
        ("relay", "hostname", "relay test"),
        ("relay", "state_dir", "/var/lib/x\x00y"),
        ("relay", "tls_cert_file", "a\x00"),
        ("tlsrpt", "organization_name", "Org\nBcc: spy@evil.test"),
        ("tlsrpt", "contact_info", "mailto:a@b\r\n"),
        ("tlsrpt", "submitter", "x\x85y"),
        ("tlsrpt", "dkim_domain", "d\n"),
        ("tlsrpt", "dkim_selector", "s\t"),
        ("tlsrpt", "post_timeout", "0s"),
        ("dns", "nameservers", ["127.0.0.1:²"]),
        ("relay", "metrics_listen", "127.0.0.1:9\n"),
    ],
)
def test_values_that_would_reach_a_header_or_command_are_refused(
    section: str, key: str, value: object
) -> None:
    with pytest.raises(ConfigError, match=rf"\[{section}\]\.{key}"):
        config_from_dict({section: {key: value}})


def test_clean_values_load() -> None:
    config = config_from_dict(
        {
            "relay": {"hostname": "relay.example.net", "listen": "[::1]:2525"},
            "tlsrpt": {"organization_name": "Example Org", "post_timeout": "2m"},
        }
    )
    assert config.relay.hostname == "relay.example.net"
    assert config.tlsrpt.post_timeout == 120
    assert config_from_dict({"relay": {"hostname": "[127.0.0.1]"}}).relay.hostname


def test_cli_bad_listen_is_one_line_and_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[relay]\nlisten = "h:²"\n', encoding="utf-8")
    done = run_cli("queue", "list", "--config", str(path))
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert "[relay].listen" in done.stderr


@pytest.mark.parametrize(
    "raw",
    [
        {"relay": {"a\nb": 1}},
        {"x\r\ny": {}},
        {"domains": {"a\nb": {"tls": "bad"}}},
        {"domains": {"a": {"t\nls": 1}}},
    ],
)
def test_config_errors_about_odd_key_names_stay_one_line(raw: dict[str, object]) -> None:
    """Found by fuzz_config: a key named with a line end made a multi-line CLI error."""
    with pytest.raises(ConfigError) as caught:
        config_from_dict(raw)
    assert not any(c in str(caught.value) for c in "\r\n\x00")
