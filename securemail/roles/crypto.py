"""A crypto worker process: build the stage from the home, say ready, answer envelopes until EOF."""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
from pathlib import Path

from ..app import open_child, setup_logging
from ..errors import SecureMailError
from ..procs import cpu


def main(home: str, fd: int, log_level: int) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the serve process, which stops us in order
    setup_logging(Path(home), "crypto", level=log_level)
    sock = socket.socket(fileno=fd)
    try:
        parts = open_child(Path(home), "crypto")
    except SecureMailError as err:
        cpu.ready(sock, False, err.message)
        return 1
    except Exception as err:  # noqa: BLE001 - reported to the parent, which refuses to start
        logging.getLogger(__name__).exception("crypto worker could not build its stage")
        cpu.ready(sock, False, type(err).__name__)
        return 1
    cpu.ready(sock, True, os.getpid())
    try:
        return cpu.serve_requests(parts.stage, sock)
    finally:
        parts.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
