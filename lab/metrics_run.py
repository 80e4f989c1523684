"""A real relay run on the lab for the dashboard picture: mail in, `/metrics` scraped, page drawn.

    python -m lab.metrics_run OUT_DIR [--seconds 90]

Four recipient domains on loopback: `good.example` (MTA-STS enforce, valid certificate),
`expired.example` (enforce, expired certificate: deferred and retried), `plain.example` (no
policy, an MX without STARTTLS: plaintext) and `stripped.example` (enforce, an attacker strips
STARTTLS: a finding, deferred). The day before has sessions too, so the daily TLS-RPT sender
sends two reports at start (one collector takes its report, the other answers 500). Mail is sent
at a steady pace; `/metrics` is scraped every 3 s into
OUT_DIR/scrapes.json, drawn as OUT_DIR/dashboard.html and, with Chromium, OUT_DIR/dashboard.png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import smtplib
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from lab.attacker import Attacker, AttackMode
from lab.collector import ReportCollector
from lab.dashboard import Scrape, load_dashboard, render_page
from lab.mx import CertKind
from lab.world import LabWorld, free_port
from relay.app import Relay
from relay.log import configure_logging
from tlsrpt_emit.model import PolicyType, ResultType, SessionResult

DOMAINS = ("good.example", "good.example", "expired.example", "plain.example", "stripped.example")


def _send(listen: tuple[str, int], rcpt: str, n: int) -> None:
    with smtplib.SMTP(*listen, timeout=10) as client:
        body = f"Subject: dashboard run {n}\r\n\r\nmessage {n}\r\n".encode()
        client.sendmail("app@upstream.test", [rcpt], body)


def _scrape(listen: str) -> str:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://{listen}/metrics", timeout=10) as response:
        text: str = response.read().decode()
        return text


def yesterdays_sessions(relay: Relay) -> None:
    """Sessions of the day before, so the daily sender has two reports to send at start: one to
    a collector that takes it, one to a collector that answers 500 (a failed attempt)."""
    when = time.time() - 86400
    for domain, failed in (
        ("good.example", None),
        ("expired.example", ResultType.CERTIFICATE_EXPIRED),
    ):
        strings = ("version: STSv1", "mode: enforce", f"mx: mx.{domain}", "max_age: 86400")
        for _ in range(20):
            relay.sink.record(
                SessionResult(
                    domain,
                    PolicyType.STS,
                    strings,
                    when=when,
                    mx_host=f"mx.{domain}",
                    result_type=failed,
                )
            )
    relay.sink.flush()


async def _world_setup(world: LabWorld) -> None:
    await world.add_mx("mx.good.example", "127.0.0.31", cert=CertKind.GOOD)
    await world.add_mx("mx.expired.example", "127.0.0.32", cert=CertKind.EXPIRED)
    await world.add_mx("mx.plain.example", "127.0.0.33", cert=CertKind.NONE)
    target = await world.add_mx("mx.stripped.example", "127.0.0.34", cert=CertKind.GOOD)
    attacker = Attacker(
        (target.host, target.port), AttackMode.STRIP, host="127.0.0.35", port=target.port
    )
    await world.keep(attacker.running())
    world.dns.set("mx.stripped.example", "A", [attacker.host])
    for domain in ("good.example", "expired.example", "plain.example", "stripped.example"):
        world.publish_mx(domain, [(10, f"mx.{domain}")])
    for domain in ("good.example", "expired.example", "stripped.example"):
        world.publish_policy(domain, "enforce", [f"mx.{domain}"])
    context = world.ca.issue("127.0.0.1").server_context()
    for domain, status in (("good.example", 201), ("expired.example", 500)):
        collector = ReportCollector(context, statuses=[status])
        await world.keep(collector.running())
        world.publish_tlsrpt(domain, collector.url("/tlsrpt"))


async def run(seconds: float) -> list[dict[str, object]]:
    scrapes: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        async with LabWorld(Path(tmp) / "world").running() as world:
            await _world_setup(world)
            metrics_listen = f"127.0.0.1:{free_port()}"
            config = world.relay_config(
                Path(tmp) / "state",
                relay={"metrics_listen": metrics_listen, "log_level": "error"},
                delivery={"retry_initial": "20s", "retry_max": "40s"},
                tlsrpt={"max_delay": "0s"},  # yesterday's reports go out at start
            )
            relay = Relay(config)
            yesterdays_sessions(relay)
            async with relay.running():
                start = time.monotonic()
                n = 0
                next_scrape = start
                while time.monotonic() - start < seconds:
                    now = time.monotonic()
                    if now >= next_scrape:
                        text = await asyncio.to_thread(_scrape, metrics_listen)
                        scrapes.append({"at": time.time(), "text": text})
                        next_scrape += 3.0
                    # A burst in the middle third, a steady trickle otherwise.
                    third = (now - start) / seconds
                    burst = 3 if 1 / 3 < third < 2 / 3 else 1
                    for _ in range(burst):
                        domain = DOMAINS[n % len(DOMAINS)]
                        await asyncio.to_thread(_send, relay.listen_address, f"u{n}@{domain}", n)
                        n += 1
                    await asyncio.sleep(0.5)
    return scrapes


def draw(out: Path, scrapes: list[dict[str, object]], seconds: float) -> Path:
    parsed = [Scrape.parse(float(str(s["at"])), str(s["text"])) for s in scrapes]
    note = (
        f"A real {seconds:.0f}-second relay run on the lab (python -m lab.metrics_run), "
        f"{len(parsed)} scrapes of /metrics, drawn from relay/deploy/grafana-dashboard.json's "
        "queries; rate windows shortened to 15 s for the short run. Not Grafana: it is not in "
        "Debian's archive, PyPI or npm."
    )
    page = out / "dashboard.html"
    page.write_text(render_page(load_dashboard(), parsed, note=note, window=15.0))
    return page


def screenshot(page: Path, png: Path) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("chromium is not installed: the page is at " + str(page))
    subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--screenshot={png}",
            "--window-size=1204,1330",
            page.resolve().as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--seconds", type=float, default=90.0)
    args = parser.parse_args()
    configure_logging("console", "error")
    scrapes = asyncio.run(run(args.seconds))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scrapes.json").write_text(json.dumps(scrapes))
    page = draw(args.out, scrapes, args.seconds)
    screenshot(page, args.out / "dashboard.png")
    print(f"{len(scrapes)} scrapes; {page}; {args.out / 'dashboard.png'}")


if __name__ == "__main__":
    main()
