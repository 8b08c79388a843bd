"""Runnable example of the core: two people, keys → send → read, over a real SMTP server on loopback.

Alice (interieur.gouv.fr) and Bruno (justice.gouv.fr) each get a home, generate
keys and exchange certificates; Alice sends an encrypted, signed notice with an
attachment through an SMTP server on 127.0.0.1 that drops mail into Bruno's
Maildir; Bruno reads it. Exits 0 only when every step checked out.
"""

from __future__ import annotations

import json
import mailbox
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from aiosmtpd.controller import Controller

CLI = [sys.executable, "-m", "cli.main"]
ROOT = Path(__file__).resolve().parent.parent


def sm(home: Path, *args: str, stdin: bytes | None = None) -> str:
    p = subprocess.run([*CLI, "--home", str(home), *args], input=stdin, capture_output=True, cwd=ROOT)
    if p.returncode not in (0,):
        sys.exit(f"step failed: securemail {' '.join(args)}\n{p.stderr.decode()}")
    return p.stdout.decode()


class MaildirSink:
    """An SMTP server standing in for Bruno's mail server: every message into his Maildir."""

    def __init__(self, maildir: Path) -> None:
        self.box = mailbox.Maildir(maildir, create=True)

    async def handle_DATA(self, server, session, envelope):
        self.box.add(envelope.original_content)
        return "250 2.0.0 OK: delivered"


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        alice, bruno = tmp / "alice", tmp / "bruno"
        step = lambda s: print(f"-- {s}")  # noqa: E731
        step("keys: each person generates a key (Ed25519 + Cv25519)")
        fa = sm(alice, "keys", "generate", "--uid", "Alice Martin <alice@interieur.gouv.fr>", "--no-passphrase").strip()
        fb = sm(bruno, "keys", "generate", "--uid", "Bruno Petit <bruno@justice.gouv.fr>", "--no-passphrase").strip()
        print(f"   alice {fa}\n   bruno {fb}")
        step("keys: they exchange certificates")
        sm(alice, "keys", "import", "-", stdin=sm(bruno, "keys", "export", "bruno@justice.gouv.fr").encode())
        sm(bruno, "keys", "import", "-", stdin=sm(alice, "keys", "export", "alice@interieur.gouv.fr").encode())
        (tmp / "ordre-du-jour.txt").write_text("1. Budget\n2. Calendrier\n")
        sink = MaildirSink(bruno / "Maildir")
        port = free_port()
        ctl = Controller(sink, hostname="127.0.0.1", port=port)
        ctl.start()
        try:
            step(f"send: Alice submits an encrypted, signed notice to 127.0.0.1:{port}")
            print("   " + sm(alice, "send", "--from", "alice@interieur.gouv.fr", "--to", "bruno@justice.gouv.fr",
                            "--subject", "Conseil restreint", "--attach", str(tmp / "ordre-du-jour.txt"),
                            "--server", f"127.0.0.1:{port}", "--insecure-plain",  # a local sink, no password
                            stdin="Bruno,\nréunion demain 9h.\n".encode()).strip())
        finally:
            ctl.stop()
        raw = next(iter(sink.box)).as_bytes()
        assert b"Conseil restreint" not in raw and "réunion".encode() not in raw, "plaintext on the wire"
        print("   on the wire: Subject '...', body only OpenPGP ciphertext")
        step("read: Bruno reads his Maildir")
        print("   " + sm(bruno, "read").replace("\n", "\n   "))
        r = json.loads(sm(bruno, "read", "--json"))[0]
        ok = (r["encrypted"] and r["decrypted"] and r["signature"] == "valid" and r["signer"] == fa
              and r["subject"] == "Conseil restreint" and "réunion demain" in r["body"]
              and r["attachments"][0]["name"] == "ordre-du-jour.txt")
        print("demo OK" if ok else f"demo FAILED: {r}")
        return 0 if ok else 1


if __name__ == "__main__":
    t = time.time()
    code = main()
    print(f"({time.time() - t:.1f} s)")
    sys.exit(code)
