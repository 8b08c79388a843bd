"""Server processes for the benchmark: start, wait until listening, read /proc, stop.

psutil is not a dependency, so memory and CPU come from /proc: ``VmHWM`` (peak
RSS) and ``VmRSS`` from /proc/PID/status, CPU from /proc/PID/stat (utime,
stime, and cutime/cstime of waited-for children). ``TreeSampler`` follows a
server's whole process tree (serve --processes children, crypto workers, gpg
children) every 50 ms, because a process that has exited can no longer be read.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from tests.support.waits import terminate

REPO = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")


def status_fields(pid: int, fields: tuple[str, ...] = ("VmHWM", "VmRSS")) -> dict[str, int] | None:
    """``kB`` lines of /proc/PID/status in bytes (missing ones, e.g. of a zombie, are 0); None if gone."""
    out = dict.fromkeys(fields, 0)
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                name, _, rest = line.partition(":")
                if name in out:
                    out[name] = int(rest.split()[0]) * 1024
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return out


def status_bytes(pid: int, field: str) -> int | None:
    """A ``kB`` line of /proc/PID/status (VmHWM, VmRSS) in bytes; None if the process is gone."""
    got = status_fields(pid, (field,))
    return None if got is None else got[field] or None


@dataclass
class Stat:
    state: str      # R, S, D, Z (exited, not yet waited for)...
    ppid: int
    start: int      # start time in clock ticks since boot: with the pid, identifies the process
    own: float      # utime + stime, seconds
    reaped: float   # cutime + cstime: its children that exited and were waited for, seconds


def read_stat(pid: int) -> Stat | None:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            f = fh.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return Stat(f[0], int(f[1]), int(f[19]), (int(f[11]) + int(f[12])) / CLK_TCK,
                (int(f[13]) + int(f[14])) / CLK_TCK)


def comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as fh:
            return fh.read().strip()
    except OSError:
        return "?"


def cpu_seconds(pid: int, children: bool = True) -> float | None:
    """utime + stime (+ cutime + cstime) of PID in seconds."""
    st = read_stat(pid)
    return None if st is None else st.own + (st.reaped if children else 0.0)


def descendants(pid: int) -> list[int]:
    """Every descendant of PID, parents before their children."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop(0)
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


@dataclass
class Seen:
    """What the sampler knows of one process of a tree."""
    group: int                  # index in the sampler's roots (len(roots) for the extra pids)
    pid: int
    stat: Stat
    base: float = 0.0           # own + reaped CPU at the first sample (0 if it started later)
    base_own: float = 0.0       # own CPU at the first sample
    rss_before: int = 0         # VmRSS at the first sample
    hwm: int = 0                # highest VmHWM seen
    in_tree: bool = True        # in the tree at the last sample
    last: int = 0               # the last sample it was seen in
    last_running: int = 0       # the last sample it was seen in and not a zombie
    name: str = ""              # /proc/PID/comm at first sight

    @property
    def cpu(self) -> float:
        return self.stat.own + self.stat.reaped


class TreeSampler:
    """CPU and memory of the process trees under ``roots`` (and of ``extra`` pids and theirs).

    Every ``every`` seconds, the tree of each root is listed and each process's
    /proc/PID/stat and status read; the last values seen of every process are
    kept, so that processes that exit during the run still count. Entering the
    ``with`` takes the first sample: the baseline for CPU and for RSS growth
    (``reset_peaks`` then resets VmHWM of every process in it, via clear_refs).

    CPU: at the end, each process still in a tree counts its own CPU plus that
    of its children that exited and were waited for (cutime/cstime), minus its
    baseline. A process gone by then is already inside its parent's
    cutime/cstime when the parent is still in the tree (it waited for it, as
    supervisors, process pools and asyncio subprocesses do), so it counts only
    otherwise (orphaned, or its parent gone too without waiting): with its last
    values seen, or its current ones if it lives on outside the tree. So a gpg
    child living 10 ms between two samples still counts, through its parent.
    """

    def __init__(self, roots: list[int], extra: list[int] = (), every: float = 0.05,
                 reset_peaks: bool = False) -> None:
        self.roots, self.extra, self.every, self.reset_peaks = list(roots), list(extra), every, reset_peaks
        self.procs: dict[tuple[int, int], Seen] = {}
        self.peak = 0              # peak of the summed VmRSS of everything sampled
        self.rss_before = 0        # summed VmRSS at the first sample
        self.samples = 0
        self._current: set[tuple[int, int]] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _groups(self) -> list[tuple[int, list[int]]]:
        out = [(i, [r, *descendants(r)]) for i, r in enumerate(self.roots)]
        return out + [(len(self.roots), [p for r in self.extra for p in [r, *descendants(r)]])]

    def sample(self, first: bool = False) -> None:
        with self._lock:
            current, total = set(), 0
            for group, pids in self._groups():
                for pid in pids:
                    st = read_stat(pid)
                    mem = status_fields(pid) if st is not None else None
                    if st is None or mem is None:
                        continue
                    key = (pid, st.start)
                    seen = self.procs.get(key)
                    if seen is None:
                        seen = self.procs[key] = Seen(group, pid, st, name=comm(pid))
                        if first:
                            seen.base, seen.base_own, seen.rss_before = seen.cpu, st.own, mem["VmRSS"]
                    seen.stat, seen.in_tree, seen.last = st, True, self.samples
                    if st.state not in "ZX":
                        seen.last_running = self.samples
                    seen.hwm = max(seen.hwm, mem["VmHWM"])
                    total += mem["VmRSS"]
                    current.add(key)
            for key in self._current - current:
                self.procs[key].in_tree = False
            self._current = current
            self.peak = max(self.peak, total)
            self.samples += 1
            if first:
                self.rss_before = total

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.sample()

    def __enter__(self) -> "TreeSampler":
        self.sample(first=True)
        if self.reset_peaks:
            for key in self._current:
                if reset_peak(key[0]):
                    self.procs[key].hwm = 0
            self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    # --- results (after the with block) ------------------------------------------------
    def _counted(self, seen: Seen) -> float:
        """The CPU of one process that the tree sums should count (see the class docstring)."""
        if seen.in_tree:
            return seen.cpu - seen.base
        now = read_stat(seen.pid)
        if now is not None and now.start == seen.stat.start:   # alive, outside the tree: orphaned
            return now.own + now.reaped - seen.base
        if self._waited_for(seen):
            return -seen.base  # its CPU since the start is in its parent's cutime/cstime, all of it
        return seen.cpu - seen.base

    def _waited_for(self, seen: Seen) -> bool:
        """Whether its parent was seen running after it was gone: then the parent waited for it
        (it could not have been re-parented), and the parent's cutime/cstime, counted directly or
        in turn through its own parent, include it."""
        parent = max((s for s in self.procs.values()
                      if s.pid == seen.stat.ppid and s.stat.start <= seen.stat.start),
                     key=lambda s: s.stat.start, default=None)
        return parent is not None and parent.last_running > seen.last

    def cpu(self, group: int | None = None) -> float:
        """CPU seconds used during the run by root ``group``'s tree, or by everything sampled."""
        return sum(self._counted(s) for s in self.procs.values() if group is None or s.group == group)

    def largest_peak(self, group: int) -> int:
        """The highest VmHWM of any one process of root ``group``'s tree."""
        return max((s.hwm for s in self.procs.values() if s.group == group), default=0)

    def largest_growth(self, group: int) -> int:
        """The largest growth of any one process of root ``group``'s tree: VmHWM minus its RSS at the start."""
        return max((s.hwm - s.rss_before for s in self.procs.values() if s.group == group), default=0)

    def top(self, n: int = 12) -> list[dict]:
        """The ``n`` processes that used the most CPU during the run (own CPU, children not included)."""
        def own(s: Seen) -> float:
            return s.stat.own - s.base_own
        rows = sorted(self.procs.values(), key=own, reverse=True)[:n]
        return [{"pid": s.pid, "ppid": s.stat.ppid, "root": s.group, "name": s.name,
                 "cpu_s": round(own(s), 3), "peak_rss_bytes": s.hwm, "running_at_end": s.in_tree}
                for s in rows]

    def summed_growth(self) -> int:
        """Sum over every process of its VmHWM minus its RSS at the start: an upper bound of the
        tree's growth (the peaks need not coincide) that sampling cannot miss."""
        return sum(max(0, s.hwm - s.rss_before) for s in self.procs.values())

    def processes(self, group: int | None = None) -> int:
        """How many distinct processes were seen."""
        return sum(1 for s in self.procs.values() if group is None or s.group == group)


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
        return terminate(self.proc, timeout)

    def tail(self, n: int = 2000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""
