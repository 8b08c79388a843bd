"""Server processes for the benchmark: start, wait until listening, read /proc, stop.

psutil is not a dependency, so memory and CPU come from /proc: ``VmHWM`` (peak
RSS) and ``VmRSS`` from /proc/PID/status, CPU from /proc/PID/stat (utime,
stime, and cutime/cstime of waited-for children). ``TreeSampler`` polls the
summed RSS of a process and all its descendants (e.g. gpg children), because a
child that has exited can no longer be read.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")


def status_bytes(pid: int, field: str) -> int | None:
    """A ``kB`` line of /proc/PID/status (VmHWM, VmRSS) in bytes; None if the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return None


def cpu_seconds(pid: int, children: bool = True) -> float | None:
    """utime + stime (+ cutime + cstime) of PID in seconds."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    ticks = int(fields[11]) + int(fields[12]) + (int(fields[13]) + int(fields[14]) if children else 0)
    return ticks / CLK_TCK


def descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except FileNotFoundError:
            continue
        for t in tasks:
            try:
                with open(f"/proc/{p}/task/{t}/children") as fh:
                    kids = [int(x) for x in fh.read().split()]
            except FileNotFoundError:
                continue
            out += kids
            todo += kids
    return out


def reset_peak(pid: int) -> bool:
    """Reset VmHWM to the current RSS (Linux clear_refs 5); False where that is not allowed."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def pids_with_arg(text: str) -> list[int]:
    """Processes whose command line contains ``text`` (e.g. a gpg-agent started for our GNUPGHOME)."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/cmdline", "rb") as fh:
                    if text.encode() in fh.read():
                        out.append(int(d))
            except OSError:
                pass
    return out


class TreeSampler:
    """Peak of the summed RSS of ``roots`` and their descendants, sampled every ``every`` seconds."""

    def __init__(self, roots: list[int], every: float = 0.05) -> None:
        self.roots, self.every = roots, every
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            pids = [p for r in self.roots for p in [r, *descendants(r)]]
            self.peak = max(self.peak, sum(status_bytes(p, "VmRSS") or 0 for p in pids))
            self._stop.wait(self.every)

    def __enter__(self) -> "TreeSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def wait_listening(port: int, proc: subprocess.Popen, timeout: float = 60.0, log: Path | None = None) -> None:
    end = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
            raise RuntimeError(f"{proc.args[:4]} exited with {proc.returncode}\n{tail}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > end:
                raise RuntimeError(f"nothing listening on port {port} after {timeout:.0f}s") from None
            time.sleep(0.05)


class Proc:
    """A Python module run as a server process; stdout and stderr go to ``log``."""

    def __init__(self, args: list[str], log: Path, ports: list[int], env: dict | None = None) -> None:
        self.args, self.log, self.ports, self.env = args, log, ports, env
        self.proc: subprocess.Popen | None = None

    @classmethod
    def module(cls, module: str, *args: str, log: Path, ports: list[int], env: dict | None = None) -> "Proc":
        return cls([sys.executable, "-m", module, *args], log, ports, env)

    def start(self, timeout: float = 60.0) -> "Proc":
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.args, cwd=REPO, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=out, env=self.env)
        for port in self.ports:
            wait_listening(port, self.proc, timeout, self.log)
        return self

    @property
    def pid(self) -> int:
        return self.proc.pid

    def peak_rss(self) -> int | None:
        return status_bytes(self.pid, "VmHWM")

    def rss(self) -> int | None:
        return status_bytes(self.pid, "VmRSS")

    def cpu(self) -> float:
        return cpu_seconds(self.pid) or 0.0

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM and the exit status; SIGKILL (and None) if it does not stop in time."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return None

    def tail(self, n: int = 2000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""
