"""IDN-01 / D6: domains compared and looked up as IDNA 2008 A-labels (UTS 46, non-transitional).

Python's "idna" codec is IDNA 2003: it maps ß to "ss" and final sigma to sigma, so a recipient at
``faß.de`` would get ``fass.de``'s policy (another registrable domain), while dnspython looks the
MX up as ``xn--fa-hia.de``.
"""

from __future__ import annotations

import dns.name
import pytest

from mtasts.fetch import policy_host, record_name
from mtasts.match import mx_matches, normalize_host
from mtasts.parse import policy_domain


@pytest.mark.parametrize(
    ("domain", "expected"),
    [
        ("faß.de", "xn--fa-hia.de"),  # IDNA 2003: fass.de
        ("ς.example", "xn--3xa.example"),  # IDNA 2003: xn--4xa (sigma)
        ("bücher.example", "xn--bcher-kva.example"),
        ("BÜCHER.Example.", "xn--bcher-kva.example"),  # UTS 46 maps case
        ("xn--fa-hia.de", "xn--fa-hia.de"),
        ("fass.de", "fass.de"),
        ("☃\u200d.example", None),  # a joiner where CONTEXTJ forbids it: not a valid IDN
    ],
)
def test_idn01_policy_domain_is_idna2008_a_label(domain: str, expected: str | None) -> None:
    assert policy_domain(domain) == expected


@pytest.mark.parametrize("domain", ["faß.de", "ς.example", "bücher.example"])
def test_idn01_policy_domain_agrees_with_the_dns_look_up_name(domain: str) -> None:
    """The name the MX look-up (dnspython) sends is the name the policy is fetched for."""
    name = policy_domain(domain)
    assert name is not None
    assert dns.name.from_text(domain).to_text(omit_final_dot=True) == name
    assert policy_host(name) == f"mta-sts.{name}"
    assert record_name(name) == f"_mta-sts.{name}."


@pytest.mark.parametrize(
    ("pattern", "host", "expected"),
    [
        ("strasse.example", "straße.example", False),  # IDNA 2003 said True
        ("xn--strae-oqa.example", "straße.example", True),
        ("xn--3xa.example", "ς.example", True),
        ("xn--4xa.example", "ς.example", False),
        ("*.xn--fa-hia.de", "mx.faß.de", True),
        ("*.fass.de", "mx.faß.de", False),
        ("mx.xn--bcher-kva.example", "MX.Bücher.Example.", True),
    ],
)
def test_idn01_mx_match_uses_idna2008(pattern: str, host: str, expected: bool) -> None:
    assert mx_matches(pattern, host) is expected


def test_idn01_normalize_host() -> None:
    assert normalize_host("Straße.example.") == "xn--strae-oqa.example"
    assert normalize_host("*.faß.de") == "*.xn--fa-hia.de"
    assert normalize_host("MX.Example.ORG.") == "mx.example.org"
