"""The intake as its own process, for the crash test: ``python intake_main.py CONFIG PORT``.

Runs `Intake` + `Spool` from the config until killed; prints ``ready`` on stdout once listening.
"""

from __future__ import annotations

import asyncio
import sys

from relay.config import load_config
from relay.intake.server import Intake
from relay.log import configure_logging
from relay.queue.spool import Spool


async def main(config_path: str, port: int) -> None:
    config = load_config(config_path)
    configure_logging("json", config.relay.log_level)
    spool = Spool(config.relay.state_dir / "queue")
    intake = Intake(config, spool, listen=("127.0.0.1", port))
    await intake.start()
    print("ready", flush=True)
    await intake.serve()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
