"""Office load: several concurrent SMTP clients (threads, from the office address) sending until stopped.

Each client opens a session, sends a few messages on it, says QUIT, and
starts again; a refused or broken connection is noted and retried after a
short pause, as an office MTA would. A message counts as *acknowledged* only
when the gateway answered 250 at the end of DATA; its Message-ID and the
queue id from the reply are kept. A message whose DATA was sent but whose
reply never came (the gateway died) is *in doubt*: the gateway may or may not
have stored it, and the client does not resend it.
"""

from __future__ import annotations

import re
import smtplib
import threading
import time
from collections import Counter
from collections.abc import Callable

from tests.support import OFFICE

from .sides import ALICE, BRUNO, office_mail

_QID = re.compile(r"queued as ([0-9a-f]+)")


class Load:
    def __init__(self, port: int, *, clients: int = 4, per_session: int = 5, tag: str = "load",
                 make: Callable[[str], bytes] = office_mail, rcpt: str = BRUNO, pause: float = 0.0) -> None:
        self.port, self.clients, self.per_session, self.tag = port, clients, per_session, tag
        self.make, self.rcpt, self.pause = make, rcpt, pause
        self.acked: dict[str, str] = {}        # Message-ID -> queue id
        self.in_doubt: set[str] = set()        # DATA sent, no reply
        self.refused: dict[str, str] = {}      # Message-ID -> the non-250 reply at DATA
        self.replies: Counter[str] = Counter()  # "DATA 250", "connect ConnectionRefusedError", ...
        self.lines: set[str] = set()           # every distinct reply line, for the leak scan
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._client, args=(i,), daemon=True)
                         for i in range(clients)]

    def start(self) -> "Load":
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(60)

    def acked_count(self) -> int:
        with self._lock:
            return len(self.acked)

    def _note(self, stage: str, code: int | str, text: bytes | str = b"") -> None:
        line = text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)
        with self._lock:
            self.replies[f"{stage} {code}"] += 1
            if isinstance(code, int):
                for part in line.splitlines() or [""]:
                    self.lines.add(f"{code} {part}")

    def _client(self, n: int) -> None:
        seq = 0
        while not self._stop.is_set():
            try:
                with smtplib.SMTP("127.0.0.1", self.port, source_address=(OFFICE, 0), timeout=30) as s:
                    code, text = s.ehlo("office.interieur.gouv.fr")
                    self._note("EHLO", code, text.split(b"\n")[0])
                    for _ in range(self.per_session):
                        if self._stop.is_set():
                            break
                        seq += 1
                        self._one(s, f"{self.tag}-{n}-{seq}")
                        if self.pause:
                            time.sleep(self.pause)
            except (OSError, smtplib.SMTPException) as err:
                self._note("session", type(err).__name__)
                time.sleep(0.05)

    def _one(self, s: smtplib.SMTP, msgid: str) -> None:
        code, text = s.mail(ALICE)
        self._note("MAIL", code, text)
        if code != 250:
            s.rset()
            return
        code, text = s.rcpt(self.rcpt)
        self._note("RCPT", code, text)
        if code not in (250, 251):
            s.rset()
            return
        with self._lock:
            self.in_doubt.add(msgid)
        try:
            code, text = s.data(self.make(msgid))
        except smtplib.SMTPDataError as err:  # refused at DATA itself (before 354)
            code, text = err.smtp_code, err.smtp_error
        self._note("DATA", code, text)
        with self._lock:
            self.in_doubt.discard(msgid)
            if code == 250:
                self.acked[msgid] = _QID.search(text.decode()).group(1)
            else:
                self.refused[msgid] = f"{code} {text.decode('utf-8', 'replace')}"
