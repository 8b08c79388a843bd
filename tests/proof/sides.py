"""The parties around the gateway under test: its own OS process, the receiving gateway, hung peers.

``ServeProc`` is a real ``securemail -v serve`` process that can be killed
with SIGKILL. ``Receiver`` wraps the receiving gateway (B, built in this
process with ``Running``): it records every message it answered at DATA and
can misbehave on demand (4xx, 5xx, hang up after DATA, hang at DATA, act
just before and just after its 250 for one message). ``Tarpit`` accepts TCP and never
answers. ``probe`` is the next session an office MTA would open after a fault.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from tests.conftest import REPO
from tests.support import OFFICE, Serve, wait_for, wait_listening

from .leaks import MARKER

ALICE, BRUNO = "alice@interieur.gouv.fr", "bruno@justice.gouv.fr"
A, B = "interieur.gouv.fr", "justice.gouv.fr"
_MSGID = re.compile(rb"(?im)^Message-ID:[ \t]*<([^>\r\n]+)>")


def office_mail(msgid: str, rcpt: str = BRUNO, *, pad: int = 0) -> bytes:
    """Office mail from alice with ``MARKER`` in its Subject and body (``pad`` bytes of filler)."""
    filler = "".join(f"Ligne {i:05d} du rapport trimestriel, sans objet particulier.\r\n"
                     for i in range(pad // 60))
    return (f"From: Alice Martin <{ALICE}>\r\nTo: {rcpt}\r\nSubject: Note {MARKER}\r\n"
            f"Message-ID: <{msgid}@interieur.gouv.fr>\r\n\r\n"
            f"Texte {MARKER} en clair au bureau ({msgid}).\r\n{filler}").encode()


def message_id(raw: bytes) -> str:
    """The Message-ID's local part, without brackets or domain ("" if none): the test's message name."""
    m = _MSGID.search(raw.split(b"\r\n\r\n", 1)[0])
    return m.group(1).decode("ascii", "replace").split("@")[0] if m else ""


class ServeProc(Serve):
    """``securemail -v --home H serve`` as an OS process (debug logging, so every log line is checked).

    It runs in a process group of its own with its children (crypto workers, the delivery
    process): a crash is the whole gateway stopping at once, as when its machine or container
    dies, so ``freeze`` and ``kill`` act on the group.
    """

    def start(self, timeout: float = 90.0) -> "ServeProc":
        with open(self.log, "ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cli.main", "-v", "--home", str(self.home.home), "serve"],
                cwd=REPO, stdin=subprocess.DEVNULL, stdout=err, stderr=err, start_new_session=True)
        for port in (self.home.relay, self.home.submission):
            wait_listening(port, timeout, alive=self._alive)
        return self

    @property
    def pid(self) -> int:
        return self.proc.pid

    def group(self) -> list[int]:
        """The pids of the gateway's process group (serve and its children)."""
        out = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(fields[2]) == self.proc.pid and fields[0] != "Z":
                    out.append(int(entry.name))
        return out

    def freeze(self, timeout: float = 10.0) -> None:
        """SIGSTOP to the group, and wait until every thread of every process in it is stopped."""
        os.killpg(self.proc.pid, signal.SIGSTOP)

        def stopped() -> bool:
            try:
                return all((t / "stat").read_text().rsplit(")", 1)[1].split()[0] in "tT"
                           for pid in self.group() for t in Path(f"/proc/{pid}/task").iterdir())
            except OSError:
                return False
        wait_for(stopped, timeout, "the gateway's processes to stop", every=0.005)

    def kill(self) -> None:
        """SIGKILL to the group: no cleanup of any kind runs in the gateway or its children."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.proc is not None:
            self.proc.wait(30)
            for pid in self.group():  # children already exiting: never left to a next start
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def run_once(self, timeout: float = 45.0) -> tuple[int | None, str]:
        """``serve`` expected to fail at start: (exit status, stderr); (None, ...) if it kept running."""
        try:
            res = subprocess.run([sys.executable, "-m", "cli.main", "--home", str(self.home.home), "serve"],
                                 cwd=REPO, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:  # run() has killed it
            return None, (e.stderr or b"").decode("utf-8", "replace")
        return res.returncode, res.stderr.decode("utf-8", "replace")


class Receiver:
    """The receiving gateway's SMTP handlers, wrapped: records each DATA, misbehaves on demand."""

    OK, TEMP, PERM, DROP, HANG = "ok", "4xx", "5xx", "drop after DATA", "hang at DATA"
    TEMP_REPLY = "451 4.3.0 Busy, try again later"
    PERM_REPLY = "554 5.7.1 Refused by the next hop"

    def __init__(self) -> None:
        self.mode = self.OK                              # for every message...
        self.faults: dict[str, str] = {}                 # ...unless its Message-ID has its own mode
        self.accepted: Counter[str] = Counter()          # Message-ID -> times answered 250
        self.received: list[bytes] = []                  # every body that reached DATA
        self.events: list[tuple[float, str, str]] = []   # (time, Message-ID, reply or mode)
        self.release = threading.Event()                 # ends a hang
        self._traps: dict[str, tuple[Callable, Callable]] = {}  # Message-ID -> (before, after) our 250
        self._lock = threading.Lock()

    def install(self, gateway) -> None:
        """``Running(..., wrap=receiver.install)``: wrap every listener's handler."""
        for server in gateway.servers:
            self._wrap(server.handler)

    def trap(self, msgid: str, before: Callable[[], None], after: Callable[[], None]) -> None:
        """For ``msgid`` (once): ``before()`` just before our 250 goes out, ``after()`` just after it."""
        self._traps[msgid] = (before, after)

    def times(self, msgid: str, reply_prefix: str = "250") -> list[float]:
        with self._lock:
            return [t for t, m, r in self.events if m == msgid and r.startswith(reply_prefix)]

    def _note(self, raw: bytes, msgid: str, reply: str) -> None:
        with self._lock:
            self.received.append(raw)
            self.events.append((time.time(), msgid, reply))
            if reply.startswith("250"):
                self.accepted[msgid] += 1

    def _wrap(self, handler) -> None:
        inner = handler.handle_DATA

        async def handle_DATA(server, session, envelope):
            raw = bytes(envelope.original_content or b"")
            msgid = message_id(raw)
            mode = self.faults.get(msgid, self.mode)
            if mode == self.DROP:
                self._note(raw, msgid, mode)
                server.transport.abort()
                return self.TEMP_REPLY  # never reaches the sender
            if mode == self.HANG:
                self._note(raw, msgid, mode)
                end = time.monotonic() + 120
                while not self.release.is_set() and time.monotonic() < end:
                    await asyncio.sleep(0.05)
                return self.TEMP_REPLY
            if mode in (self.TEMP, self.PERM):
                reply = self.TEMP_REPLY if mode == self.TEMP else self.PERM_REPLY
                self._note(raw, msgid, reply)
                return reply
            reply = await inner(server, session, envelope)
            self._note(raw, msgid, reply)
            trap = self._traps.pop(msgid, None) if reply.startswith("250") else None
            if trap is not None:
                trap[0]()
                asyncio.get_running_loop().call_later(0.3, trap[1])  # the 250 is written first
            return reply

        handler.handle_DATA = handle_DATA


class Tarpit:
    """Listens on ``port``, accepts every connection and never sends a byte (a hung next hop)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.accepted = 0
        self._conns: list[socket.socket] = []
        self._stop = threading.Event()
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> "Tarpit":
        self._sock.bind(("127.0.0.1", self.port))
        self._sock.listen(16)
        self._sock.settimeout(0.1)
        self._thread.start()
        return self

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except (TimeoutError, OSError):
                continue
            self.accepted += 1
            self._conns.append(conn)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)
        for c in [*self._conns, self._sock]:
            c.close()


def probe(port: int, source: str = OFFICE, timeout: float = 30.0) -> tuple[bool, list[str]]:
    """A new session after a fault: EHLO, NOOP, QUIT answered 250, 250, 221 (and the replies)."""
    got: list[str] = []
    try:
        with smtplib.SMTP("127.0.0.1", port, source_address=(source, 0), timeout=timeout) as s:
            for cmd in ("EHLO proof.test", "NOOP", "QUIT"):
                code, text = s.docmd(cmd)
                got.append(f"{code} {text.decode('utf-8', 'replace').splitlines()[0] if text else ''}")
                if cmd == "QUIT":
                    s.close()
    except (OSError, smtplib.SMTPException) as err:
        got.append(f"error {type(err).__name__}")
    codes = [g.split(" ", 1)[0] for g in got]
    return codes == ["250", "250", "221"], got
