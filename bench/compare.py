"""The throughput comparison of `bench/run`: relays side by side, alternating runs, one sink.

Each contender (the Postfix smarthost, stsguard in the configuration under test, and with
``--vs REV`` the relay of another commit) stays up for the whole comparison; the runs go
round-robin (Postfix, stsguard, [REV], Postfix, ...), so a change in the machine's load hits
every contender alike. Each figure is the median of the runs with their minimum and maximum.

Latency: beside smtp-source, a probe client sends one small message every `PROBE_INTERVAL`
over one session, each to ``probe-N@DOMAIN``; the harness notes the time of the intake's 250
after DATA, the sink the time of its own 250 for that recipient (both `time.monotonic`, one
clock for every process on the machine). The difference is how long the relay held the
message, under the run's load.
"""

from __future__ import annotations

import re
import smtplib
import statistics
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

PROBE_INTERVAL = 0.05


@dataclass
class Figure:
    """The runs of one measure for one contender: median with min-max."""

    runs: list[float] = field(default_factory=list)

    @property
    def median(self) -> float | None:
        return statistics.median(self.runs) if self.runs else None

    def spread(self, digits: int = 0) -> str:
        if not self.runs:
            return "-"
        return (
            f"{self.median:,.{digits}f} ({min(self.runs):,.{digits}f}-{max(self.runs):,.{digits}f})"
        )


@dataclass
class Contender:
    """One relay in the comparison: its SMTP port and how to read its CPU seconds."""

    name: str
    port: int
    cpu: Callable[[], float]
    config: str = ""
    pid: int = 0
    rate: Figure = field(default_factory=Figure)
    cpu_ms: Figure = field(default_factory=Figure)
    p50_ms: Figure = field(default_factory=Figure)
    p99_ms: Figure = field(default_factory=Figure)

    def as_dict(self) -> dict[str, object]:
        return {
            "config": self.config,
            "msgs_per_s": self.rate.median,
            "msgs_per_s_runs": self.rate.runs,
            "cpu_ms_per_msg": self.cpu_ms.median,
            "cpu_ms_per_msg_runs": self.cpu_ms.runs,
            "latency_p50_ms": self.p50_ms.median,
            "latency_p99_ms": self.p99_ms.median,
            "latency_p50_ms_runs": self.p50_ms.runs,
            "latency_p99_ms_runs": self.p99_ms.runs,
        }


# --- the relay's configuration --------------------------------------------------------------


def example_config(relay_command: list[str], cwd: Path | None = None) -> str:
    """`stsguard example-config` of the relay under test (its last word ``relay`` replaced); for
    an older tree without that command, its ``stsguard.example.toml``."""
    run = subprocess.run(
        [*relay_command[:-1], "example-config"], capture_output=True, text=True, cwd=cwd
    )
    shipped = (cwd or Path.cwd()) / "stsguard.example.toml"
    if run.returncode != 0 and shipped.exists():
        return shipped.read_text()
    run.check_returncode()
    return run.stdout


def set_keys(text: str, values: dict[tuple[str, str], str]) -> str:
    """`text` (TOML as `example-config` writes it) with each ``(section, key)`` set to its value
    (already TOML); keys the text lacks are added at the end of their section."""
    out: list[str] = []
    section = ""
    missing = dict(values)

    def close_section() -> None:
        for (sec, key), value in list(missing.items()):
            if sec == section:
                out.append(f"{key} = {value}")
                del missing[(sec, key)]

    for line in text.splitlines():
        header = re.match(r"^\[([A-Za-z0-9_.]+)\]\s*$", line)
        if header:
            close_section()
            section = header.group(1)
        m = re.match(r"^([A-Za-z0-9_]+)\s*=", line)
        if m and (section, m.group(1)) in missing:
            line = f"{m.group(1)} = {missing.pop((section, m.group(1)))}"
        out.append(line)
    close_section()
    for (sec, key), value in missing.items():
        out += [f"[{sec}]", f"{key} = {value}"]
    return "\n".join(out) + "\n"


# --- latency --------------------------------------------------------------------------------


class LatencyProbe:
    """One SMTP session sending small messages to ``probe-N@domain`` while the load runs."""

    def __init__(self, port: int, domain: str, sender: str) -> None:
        self.port, self.domain, self.sender = port, domain, sender
        self.sent: dict[int, float] = {}
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> LatencyProbe:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        n = int(time.monotonic() * 1000)  # ids unique across runs
        try:
            with smtplib.SMTP("127.0.0.1", self.port, timeout=30) as smtp:
                smtp.ehlo("probe.bench.test")
                while not self._stop.wait(PROBE_INTERVAL):
                    n += 1
                    body = f"Subject: probe {n}\r\n\r\nprobe\r\n"
                    try:
                        smtp.sendmail(self.sender, [f"probe-{n}@{self.domain}"], body)
                    except smtplib.SMTPException:
                        self.errors += 1
                        continue
                    self.sent[n] = time.monotonic()
        except (OSError, smtplib.SMTPException):
            self.errors += 1


def latencies_ms(sent: dict[int, float], arrived: dict[int, float]) -> tuple[float, float] | None:
    """p50 and p99 of (arrival at the sink - the intake's 250), in milliseconds."""
    held = sorted((arrived[n] - t) * 1000 for n, t in sent.items() if n in arrived)
    if not held:
        return None
    return held[len(held) // 2], held[min(len(held) - 1, int(len(held) * 0.99))]
