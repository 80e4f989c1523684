"""Our strict reading of an RFC 8460 report, used on every report the tests and the lab produce:
the JSON Schema in `tlsrpt-report.schema.json` (written from RFC 8460 section 4), the checks a
schema cannot express (counts add up, the range is one day), parsedmarc's parser and our own."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
from parsedmarc import parse_smtp_tls_report_json

from tlsrpt_emit.render import parse_report_json

SCHEMA = json.loads((Path(__file__).parent / "tlsrpt-report.schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA, format_checker=jsonschema.FormatChecker())
jsonschema.Draft202012Validator.check_schema(SCHEMA)


def schema_errors(doc: Any) -> list[str]:
    """Every place where `doc` breaks the schema, as ``path: message``."""
    return [
        f"{'/'.join(str(p) for p in error.absolute_path) or '(top)'}: {error.message}"
        for error in sorted(VALIDATOR.iter_errors(doc), key=lambda e: list(e.absolute_path))
    ]


def check_report(doc: dict[str, Any]) -> None:
    """Assert that `doc` is a report every strict reader accepts."""
    errors = schema_errors(doc)
    assert not errors, f"{doc.get('report-id')}: " + "; ".join(errors)
    for entry in doc["policies"]:
        details = entry.get("failure-details", [])
        total = sum(d["failed-session-count"] for d in details)
        assert total == entry["summary"]["total-failure-session-count"], entry
        keys = [
            json.dumps({k: v for k, v in d.items() if k != "failed-session-count"}) for d in details
        ]
        assert len(keys) == len(set(keys)), f"one failure-detail listed twice: {details}"
    text = json.dumps(doc)
    parsed = parse_smtp_tls_report_json(text)
    assert parsed["report_id"] == doc["report-id"]
    ours = parse_report_json(text)
    assert ours.end > ours.start
    assert [p.policy_domain for p in ours.policies] == [
        p["policy"]["policy-domain"] for p in doc["policies"]
    ]
