"""Log set-up as the relay process has it: every line, ours or a library's, in one format."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.cli import ROOT

# Our events at three levels, a stdlib record from aiosmtpd (its real deprecation warning, as an
# AUTH handler that reads Session.login_data triggers it) and a Python `warnings` warning.
SCRIPT = textwrap.dedent(
    """
    import asyncio, sys, warnings
    import structlog
    from aiosmtpd.smtp import Session
    from relay.log import configure_logging

    configure_logging(sys.argv[1], "info")
    log = structlog.get_logger("t")
    log.debug("test.hidden")
    log.info("test.info", n=1)
    log.warning("test.warning", reason="two words")
    log.error("test.error")
    loop = asyncio.new_event_loop()
    Session(loop).login_data
    loop.close()
    warnings.warn("old thing", DeprecationWarning, stacklevel=1)
    """
)


def run_script(fmt: str) -> list[str]:
    proc = subprocess.run(
        [sys.executable, "-W", "always", "-c", SCRIPT, fmt],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=True,
    )
    assert proc.stdout == ""
    return proc.stderr.splitlines()


def test_json_every_line_is_an_object_library_lines_included() -> None:
    lines = [json.loads(line) for line in run_script("json")]
    assert [(e["event"], e["level"]) for e in lines] == [
        ("test.info", "info"),
        ("test.warning", "warning"),
        ("test.error", "error"),
        ("library.log", "warning"),
        ("python.warning", "warning"),
    ]
    library, python = lines[3], lines[4]
    assert library["logger"] == "mail.log"
    assert library["message"].startswith("Session.login_data is deprecated")
    assert (python["category"], python["message"]) == ("DeprecationWarning", "old thing")
    assert all("timestamp" in e for e in lines)


def test_journal_lines_carry_syslog_priorities() -> None:
    lines = run_script("journal")
    assert lines == [
        "<6>test.info n=1",
        '<4>test.warning reason="two words"',
        "<3>test.error",
        "<4>library.log message="
        '"Session.login_data is deprecated and will be removed in version 2.0" logger=mail.log',
        lines[4],
    ]
    assert lines[4].startswith("<4>python.warning category=DeprecationWarning")


def test_auto_is_journal_when_systemd_gave_stderr_to_the_journal(tmp_path: Path) -> None:
    err = tmp_path / "stderr"
    with err.open("w") as stream:
        st = os.fstat(stream.fileno())
        subprocess.run(
            [sys.executable, "-c", SCRIPT, "auto"],
            stderr=stream,
            cwd=ROOT,
            env={**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"},
            timeout=60,
            check=True,
        )
    assert err.read_text().splitlines()[0] == "<6>test.info n=1"


# A library that warns when imported, before any log is configured: cryptography 51 made
# dnspython's DNSSEC module do this, and four raw lines broke `stsguard lab --json`'s stderr.
EARLY = textwrap.dedent(
    """
    import sys, warnings
    from relay.log import capture_warnings, configure_logging

    capture_warnings()
    warnings.warn("imported too early", UserWarning, stacklevel=1)
    print("before", file=sys.stderr, flush=True)
    if sys.argv[1] == "configure":
        configure_logging("json", "info")
    """
)


def test_an_early_warning_never_reaches_stderr_as_raw_text() -> None:
    for mode in ("drop", "configure"):
        proc = subprocess.run(
            [sys.executable, "-W", "always", "-c", EARLY, mode],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )
        assert proc.returncode == 0, proc.stderr
        first, *rest = proc.stderr.splitlines()
        assert first == "before"  # nothing raw was printed ahead of our own line
        if mode == "drop":
            assert rest == []
        else:
            (line,) = rest
            obj = json.loads(line)
            assert obj["event"] == "python.warning"
            assert obj["message"] == "imported too early"


def test_cli_commands_print_only_their_own_lines_on_stderr(tmp_path: Path) -> None:
    """Each command that imports the DNSSEC code: stderr holds only `stsguard:` lines."""
    env = {k: v for k, v in os.environ.items() if k != "STSGUARD_CONFIG"}
    for words in (["lab", "--scenario", "nope"], ["probe", "--help"], ["policy", "--help"]):
        proc = subprocess.run(
            [sys.executable, "-W", "always", "-m", "relay.cli", *words],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
            env=env,
        )
        stray = [ln for ln in proc.stderr.splitlines() if not ln.startswith("stsguard")]
        assert stray == [], (words, proc.stderr)


def test_journal_fields_are_plain_values_not_python_reprs() -> None:
    from relay.log import JournalRenderer

    line = JournalRenderer()(
        None,
        "info",
        {
            "event": "test.fields",
            "level": "warning",
            "peer": ("127.0.0.1", 41234),
            "reply": b"250 2.0.0 Ok",
            "mx": None,
            "tls": True,
            "hosts": ["a.test", "b.test"],
            "found": {"kind": b"x"},
            "n": 3,
        },
    )
    assert line == (
        '<4>test.fields peer=127.0.0.1,41234 reply="250 2.0.0 Ok" mx= tls=true'
        ' hosts=a.test,b.test found="{\\"kind\\":\\"x\\"}" n=3'
    )


# aiosmtpd's own lines (an `info` one for each command, and a warning) and httpx's request line.
CHATTER = textwrap.dedent(
    """
    import logging, sys
    from relay.log import configure_logging

    configure_logging("json", sys.argv[1])
    logging.getLogger("mail.log").info("%r >> %r", ("127.0.0.1", 41234), b"NOOP")
    logging.getLogger("mail.log").warning("%r unrecognised: %s", ("127.0.0.1", 41234), "X")
    logging.getLogger("httpx").info("HTTP Request: GET https://mta-sts.example.org/")
    """
)


@pytest.mark.parametrize(
    ("level", "expected"),
    [
        ("info", [("warning", "127.0.0.1:41234 unrecognised: X")]),
        (
            "debug",
            [
                ("debug", "127.0.0.1:41234 >> b'NOOP'"),
                ("warning", "127.0.0.1:41234 unrecognised: X"),
                ("debug", "HTTP Request: GET https://mta-sts.example.org/"),
            ],
        ),
    ],
)
def test_aiosmtpd_per_command_lines_are_debug(level: str, expected: list[tuple[str, str]]) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", CHATTER, level],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=True,
    )
    lines = [json.loads(line) for line in proc.stderr.splitlines()]
    assert [(e["level"], e["message"]) for e in lines] == expected


# What asyncio sometimes logs in the lab when an attacked TLS peer half-closes.
LAB_NOISE = textwrap.dedent(
    """
    import logging, sys
    import lab.runner

    def noisy_run(args, config):
        logging.getLogger("asyncio").warning(
            "returning true from eof_received() has no effect when using ssl"
        )
        print("lab report")
        return 0

    lab.runner.run = noisy_run
    from relay.cli import main
    sys.exit(main(["lab"]))
    """
)


def test_the_lab_prints_no_library_warning_on_stderr(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "STSGUARD_CONFIG"}
    proc = subprocess.run(
        [sys.executable, "-c", LAB_NOISE],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "lab report\n"
    assert proc.stderr == ""
