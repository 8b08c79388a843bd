"""The bridge for tests and the benchmark: a home set up with the real CLI, ``bridge serve`` as an OS
process, a mail client's session on it (imaplib, STARTTLS), and mbsync (isync) configured for it.

``bridge_home(tmp, dovecot, address, keys)`` imports ``keys`` (files) into a new home and runs
``bridge init`` against ``dovecot`` (which must run with ``tls=True``); ``BridgeServe(home)``
runs ``securemail bridge serve`` until ``stop()`` (SIGTERM), its output in ``home/bridge.log``;
``Mbsync(dir, creds)`` writes an mbsync config syncing every folder into ``dir/Maildir`` and
runs it. ``require_mbsync()`` skips without isync, visibly, and fails under CI.
"""

from __future__ import annotations

import imaplib
import json
import os
import shutil
import ssl
import subprocess
import sys
import time
from pathlib import Path

from .commands import REPO, ok, run_cli
from .ports import free_port
from .waits import terminate, wait_listening


def require_mbsync() -> None:
    if shutil.which("mbsync") is None:
        import pytest
        why = "mbsync is not installed (Debian: isync)"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)


def bridge_home(tmp: Path, dovecot, address: str, keys=(), *, generate: bool = False,
                imap_listen: str | None = None, readers: int | None = None) -> tuple[Path, dict]:
    """A person's home with ``keys`` imported (or a key generated) and the bridge set up on
    ``dovecot``, with ``readers`` reader processes (bridge.toml's ``[readers] count``) when given;
    (home, ``bridge credentials --json``)."""
    home = tmp / f"home-{address.split('@')[0]}"
    if keys:
        ok(run_cli(home, "keys", "import", *map(str, keys)), "keys import")
    if generate:
        ok(run_cli(home, "keys", "generate", "--uid", address, "--no-passphrase"), "keys generate")
    pw = tmp / f"upstream-{address}.pw"
    pw.write_text(dovecot.users[address.lower()] + "\n")
    ok(run_cli(home, "bridge", "init", "--imap", f"127.0.0.1:{dovecot.imap_port}", "--smtp", "127.0.0.1:1",
               "--username", address, "--password-file", str(pw), "--cafile", str(dovecot.cert),
               "--imap-listen", imap_listen or f"127.0.0.1:{free_port()}", "--smtp-listen",
               f"127.0.0.1:{free_port()}"), "bridge init")
    if readers is not None:
        with open(home / "bridge.toml", "a") as conf:
            conf.write(f"\n[readers]\ncount = {readers}\n")
    return home, json.loads(ok(run_cli(home, "bridge", "credentials", "--json")).stdout)


class BridgeServe:
    """``securemail --home HOME bridge serve`` as an OS process."""

    def __init__(self, home: Path, creds: dict, *, verbose: bool = False) -> None:
        self.home, self.creds, self.verbose = home, creds, verbose
        self.log = home / "bridge.log"
        self.proc: subprocess.Popen | None = None

    @property
    def port(self) -> int:
        return self.creds["imap"]["port"]

    def start(self, timeout: float = 60.0) -> "BridgeServe":
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "cli.main", *(["--verbose"] if self.verbose else []),
                                          "--home", str(self.home), "bridge", "serve"],
                                         cwd=REPO, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
        wait_listening(self.port, timeout, alive=self._alive)
        return self

    def _alive(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"bridge serve exited with {self.proc.returncode}:\n{self.output()}")
        return True

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""

    def stop(self, timeout: float = 30.0) -> int | None:
        return terminate(self.proc, timeout)

    def client(self, password: str | None = None) -> imaplib.IMAP4:
        """A mail client's session: STARTTLS (the bridge's certificate trusted), then LOGIN."""
        session = imaplib.IMAP4("127.0.0.1", self.port, timeout=60)
        session.starttls(ssl.create_default_context(cafile=self.creds["certificate"]))
        session.login(self.creds["username"], self.creds["password"] if password is None else password)
        return session


class Mbsync:
    """mbsync (isync) syncing every folder of the bridge (or any IMAP server) into ``dir/Maildir``."""

    def __init__(self, directory: Path, host: str, port: int, user: str, password: str, cert: str | None,
                 starttls: bool = True, fsync: bool = True) -> None:
        self.directory = directory
        self.maildir = directory / "Maildir"
        self.conf = directory / "mbsyncrc"
        self.maildir.mkdir(parents=True, exist_ok=True)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "pass").write_text(password)
        os.chmod(directory / "pass", 0o600)
        ssl_lines = f"SSLType STARTTLS\nCertificateFile {cert}\n" if starttls else "SSLType None\n"
        self.conf.write_text(f"""\
FSync {"yes" if fsync else "no"}

IMAPAccount far
Host 127.0.0.1
Port {port}
User {user}
PassCmd "cat {directory / 'pass'}"
{ssl_lines}AuthMechs LOGIN
Timeout 120

IMAPStore far
Account far

MaildirStore near
Path {self.maildir}/
Inbox {self.maildir}/INBOX
SubFolders Verbatim

Channel all
Far :far:
Near :near:
Patterns *
Create Near
Sync All
Expunge None
SyncState *
""")

    def run(self, timeout: float = 300) -> float:
        """One full run; its wall-clock seconds (AssertionError with its output when it fails)."""
        start = time.monotonic()
        p = subprocess.run(["mbsync", "-c", str(self.conf), "-a"], capture_output=True, text=True, timeout=timeout)
        took = time.monotonic() - start
        assert p.returncode == 0, f"mbsync exited {p.returncode}:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
        return took

    def files(self, folder: str = "INBOX") -> list[Path]:
        base = self.maildir / folder
        return sorted(f for d in ("cur", "new") if (base / d).is_dir() for f in (base / d).iterdir())
