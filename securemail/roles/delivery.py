"""The delivery child process: build the delivery workers from the home, say ready, deliver until
SIGTERM (finishing what is in flight) or until its stdin closes (the serve process is gone)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from ..app import open_child, setup_logging
from ..procs.delivery import READY


def main(home: str, owner: str, log_level: int) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    setup_logging(Path(home), "delivery", level=log_level)
    parts = open_child(Path(home), "delivery", owner=owner)
    try:
        asyncio.run(_run(parts.workers, parts.sessions))
    finally:
        parts.close()
    return 0


async def _run(workers, sessions) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)

    def parent_gone() -> None:  # stdin is a pipe from the serve process: EOF when it exits
        if not os.read(0, 4096):
            loop.remove_reader(0)
            stop.set()
    loop.add_reader(0, parent_gone)
    tasks = [asyncio.create_task(w.run(stop)) for w in workers]
    sys.stdout.write(READY.decode() + "\n")
    sys.stdout.flush()
    await stop.wait()
    await asyncio.gather(*tasks, return_exceptions=True)
    await sessions.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
