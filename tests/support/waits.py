"""Polling waits: for a condition, for a port to listen."""

from __future__ import annotations

import signal
import socket
import subprocess
import time


def wait_for(pred, timeout: float = 60.0, what: str = "condition", every: float = 0.1):
    """Poll ``pred`` until it returns something true; that value, or AssertionError at ``timeout``."""
    end = time.monotonic() + timeout
    while True:
        got = pred()
        if got:
            return got
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


def wait_listening(port: int, timeout: float = 60.0, alive=lambda: True) -> None:
    """Until something accepts on 127.0.0.1:``port``; ``alive()`` raises when the server died."""
    def up():
        alive()
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            return False
    wait_for(up, timeout, f"port {port} to listen")


def terminate(proc: subprocess.Popen | None, timeout: float) -> int | None:
    """SIGTERM and the exit status; SIGKILL (and None) if it does not stop within ``timeout``."""
    if proc is None or proc.poll() is not None:
        return None if proc is None else proc.returncode
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return None
