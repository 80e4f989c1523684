"""Parsing the `_mta-sts` TXT record (RFC 8461 section 3.1) and the policy text (3.2): pure."""

from __future__ import annotations

import re
from collections.abc import Sequence

from mtasts.errors import PolicyInvalidError, StsRecordError
from mtasts.model import Mode, Policy, StsRecord
from mtasts.names import a_label

MAX_MAX_AGE = 31_557_600  # 3.2: "max_age" is at most 31557600 seconds (about a year)

# 3.1: sts-field-delim = *WSP ";" *WSP; a record must begin with the version field.
_RECORD_START = re.compile(r"^v=STSv1[ \t]*;")
_FIELD_DELIM = re.compile(r"[ \t]*;[ \t]*")
_ID = re.compile(r"^[A-Za-z0-9]{1,32}\Z")
_EXT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,31}\Z")
_EXT_VALUE = re.compile(r"^[\x21-\x3a\x3c\x3e-\x7e]+\Z")  # no "=", ";", space or controls

# 3.2: a field is "name:" *WSP value, then optional trailing WSP before the line end.
_POLICY_FIELD = re.compile(r"^([A-Za-z0-9][A-Za-z0-9_.\-]{0,31}):[ \t]*(.*?)[ \t]*\Z")
_MAX_AGE = re.compile(r"^[0-9]{1,10}\Z")
_LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\Z")
_POLICY_VCHAR = re.compile(r"^[^\x00-\x1f\x7f]+\Z")


def parse_sts_record(text: str) -> StsRecord:
    """Parse one TXT record (strings already joined). Raise `StsRecordError` if it is invalid.

    Unknown extension fields are kept in `extensions`; a repeated field keeps its first value.
    """
    if not _RECORD_START.match(text):
        raise StsRecordError("TXT record does not start with 'v=STSv1;'")
    fields = _FIELD_DELIM.split(text)
    seen: set[str] = set()
    record_id: str | None = None
    extensions: list[tuple[str, str]] = []
    for position, item in enumerate(fields[1:], start=2):
        if not item:
            if position == len(fields):
                continue  # a trailing ";" is allowed
            raise StsRecordError(f"TXT record has an empty field (field {position})")
        name, eq, value = item.partition("=")
        if not eq or not _EXT_NAME.match(name):
            raise StsRecordError(f"TXT record field {item!r} is not name=value")
        if name in seen:
            continue
        seen.add(name)
        if name == "id":
            if not _ID.match(value):
                raise StsRecordError(f"TXT record id {value!r} is not 1 to 32 letters or digits")
            record_id = value
        elif not _EXT_VALUE.match(value):
            raise StsRecordError(f"TXT record field {item!r} has a bad value")
        else:
            extensions.append((name, value))
    if record_id is None:
        raise StsRecordError("TXT record has no id= field")
    return StsRecord(id=record_id, extensions=tuple(extensions))


def _join(txt: str | bytes | Sequence[bytes]) -> str:
    """One TXT record as text; its strings are joined with nothing between (3.1)."""
    if isinstance(txt, str):
        return txt
    raw = txt if isinstance(txt, bytes) else b"".join(txt)
    return raw.decode("utf-8", errors="replace")


def select_sts_record(txt_strings: Sequence[str | bytes | Sequence[bytes]]) -> StsRecord | None:
    """Choose the domain's record among its TXT records (STS-02).

    Records not starting with ``v=STSv1;`` are discarded; unless exactly one is left the domain has
    no policy (None). That one not parsing raises `StsRecordError`.
    """
    candidates = [text for text in map(_join, txt_strings) if _RECORD_START.match(text)]
    if len(candidates) != 1:
        return None
    return parse_sts_record(candidates[0])


def check_mx_pattern(value: str, line: int = 0) -> str:
    """An `mx` value lower-cased and without a trailing dot; A-labels only (3.2)."""
    if not value.isascii():
        raise PolicyInvalidError(f"mx {value!r} is not in A-label (ASCII) form", line=line)
    pattern = value.lower()
    if pattern.endswith(".") and not pattern.endswith(".."):
        pattern = pattern[:-1]
    host = pattern[2:] if pattern.startswith("*.") else pattern
    labels = host.split(".")
    if len(host) > 253 or not all(_LABEL.match(label) for label in labels):
        raise PolicyInvalidError(f"mx {value!r} is not a host name or '*.' and one", line=line)
    return pattern


def parse_policy(text: str) -> Policy:
    """Parse a policy file (STS-03). Raise `PolicyInvalidError` naming the line at fault.

    Lines end in LF or CRLF; unknown keys are ignored; a repeated key other than `mx` keeps its
    first value. `Policy.text` is the text as given.
    """
    values: dict[str, tuple[str, int]] = {}
    mx: list[str] = []
    lines = text.split("\n")
    for number, raw in enumerate(lines, start=1):
        line = raw.removesuffix("\r")
        if not line.strip():
            continue  # blank lines (and the final line end) carry nothing
        m = _POLICY_FIELD.match(line)
        if not m:
            raise PolicyInvalidError(f"{_show(line)} is not 'key: value'", line=number)
        key, value = m.group(1), m.group(2)
        if not value or not _POLICY_VCHAR.match(value):
            raise PolicyInvalidError(f"{key}: empty or bad value", line=number)
        if key == "mx":
            pattern = check_mx_pattern(value, number)
            if pattern not in mx:
                mx.append(pattern)
        elif key not in values:
            values[key] = (value, number)
    version, line_no = values.get("version", ("", 0))
    if version != "STSv1":
        if not line_no:
            raise PolicyInvalidError("no 'version: STSv1' line")
        raise PolicyInvalidError(f"version {version!r} is not STSv1", line=line_no)
    mode_text, line_no = values.get("mode", ("", 0))
    if not line_no:
        raise PolicyInvalidError("no 'mode' line")
    try:
        mode = Mode(mode_text)
    except ValueError:
        raise PolicyInvalidError(
            f"mode {mode_text!r} is not enforce, testing or none", line=line_no
        ) from None
    age_text, line_no = values.get("max_age", ("", 0))
    if not line_no:
        raise PolicyInvalidError("no 'max_age' line")
    if not _MAX_AGE.match(age_text) or int(age_text) > MAX_MAX_AGE:
        raise PolicyInvalidError(
            f"max_age {age_text!r} is not a whole number of seconds up to {MAX_MAX_AGE}",
            line=line_no,
        )
    if not mx and mode is not Mode.NONE:
        raise PolicyInvalidError(f"no 'mx' line (required unless mode is none, here {mode})")
    return Policy(mode=mode, max_age=int(age_text), mx=tuple(mx), text=text)


def _show(line: str) -> str:
    return repr(line if len(line) <= 60 else line[:57] + "...")


def policy_domain(domain: str) -> str | None:
    """The policy domain of a recipient domain: itself, lower-case A-labels, no trailing dot.

    U-labels are mapped by IDNA 2008 and UTS 46 (IDN-01): ``faß.de`` is ``xn--fa-hia.de``.
    None for an address literal (``[192.0.2.1]``), a bare IP address or a name that is not a
    valid domain: those have no MTA-STS policy (STS-08). Never a parent domain.
    """
    name = domain.strip()
    if not name or name.startswith("[") or ":" in name:
        return None
    found = a_label(name)
    if found is None:
        return None
    labels = found.split(".")
    if len(found) > 253 or len(labels) < 2 or not all(_LABEL.match(label) for label in labels):
        return None
    if labels[-1].isdigit():
        return None  # 192.0.2.1: an IP address, not a domain
    return found
