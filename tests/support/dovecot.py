"""A private Dovecot (LMTP and IMAP) for one test: its own config, ports, users and mail store.

``Dovecot(directory, users)`` lays ``directory`` out as the office example's
Dovecot does (examples/office/instances.py ``DovecotFiles``: ``dovecot.conf``,
``run/`` as base_dir, ``state/``, ``dovecot.log``, a ``passwd`` file, the mail
store ``mail/DOMAIN/LOCAL/Maildir``) and configures it from the same template,
examples/office/dovecot/dovecot.conf: the configuration the deployment guide
shows is the one these tests run. ``start()`` runs ``dovecot -F -c CONF`` in the
foreground as a child of the test, listening on free loopback ports only: LMTP
on ``lmtp_port`` and on the unix socket ``lmtp_socket``, IMAP on ``imap_port``
(the template's ``ssl = required``, with a self-signed certificate in ``tls/``;
Dovecot counts loopback as secured, so a plain LOGIN from 127.0.0.1 works).
``stop()`` ends it (SIGTERM to the master, which stops its children). Nothing
system-wide is touched: no /etc/dovecot, no /var/run/dovecot.

Users are addresses with plaintext passwords (``{PLAIN}``) in a passwd-file,
all mapped to one unprivileged system user (``mail`` by default: Dovecot never
stores mail as root). That user must reach the mail store, so ``start`` adds
the search bit for others (o+x, not read) to ``directory`` and the directories
above it up to the temporary directory (pytest's tmp directories are 0700).
``add_user`` works while Dovecot runs: it rereads the passwd-file when it changes.

Attributes for other helpers: ``users`` (address -> password), ``lmtp_port``,
``lmtp`` ("127.0.0.1:PORT", a ``delivery.lmtp`` value), ``lmtp_socket``,
``imap_port``, ``cert`` (the IMAP server's certificate), ``maildir`` (the mail store), ``mailbox(address)``, ``conf``,
``log_path``. ``messages(address)`` reads a mailbox back over IMAP;
``wait_messages`` polls until it holds a number of them.

``require_dovecot()`` skips a test with the reason when the Debian packages
(dovecot-core, dovecot-lmtpd, dovecot-imapd) are missing, and fails it under CI.
Nothing here imports pytest at import time.
"""

from __future__ import annotations

import imaplib
import os
import pwd
import shutil
import subprocess
from pathlib import Path

from securemail.admin.setup import self_signed_cert

from .ports import free_port
from .office import office_module
from .waits import terminate, wait_for, wait_listening

PASSWORD = "secret"                  # users' password unless given
LIBEXEC = Path("/usr/lib/dovecot")   # where Debian puts the lmtp and imap programs
MAX_SOCKET = 107                     # a unix socket path, in bytes
LONGEST_SOCKET = "replication-notify-fifo"  # the longest name Dovecot creates in base_dir


def dovecot_binary() -> str | None:
    return shutil.which("dovecot") or next((p for p in ("/usr/sbin/dovecot",) if os.path.exists(p)), None)


def dovecot_missing(mail_user: str = "mail") -> str | None:
    """None when a private Dovecot can run here, else why not."""
    if dovecot_binary() is None:
        return "dovecot is not installed (Debian: dovecot-core)"
    for program, package in (("lmtp", "dovecot-lmtpd"), ("imap", "dovecot-imapd")):
        if not (LIBEXEC / program).exists():
            return f"{LIBEXEC / program} is missing (Debian: {package})"
    try:
        pwd.getpwnam(mail_user)
    except KeyError:
        return f"no system user {mail_user!r} to own the test mailboxes"
    return None


def require_dovecot(mail_user: str = "mail") -> None:
    """Skip when Dovecot cannot run, visibly; fail instead when $CI is set."""
    why = dovecot_missing(mail_user)
    if why:
        import pytest
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)


class Dovecot:
    def __init__(self, directory: Path, users=(), *, mail_user: str = "mail",
                 hostname: str = "mail.office.test", detail_mailbox: bool = False, fsync: bool = True) -> None:
        self.directory = Path(directory)
        self.files = _instances().DovecotFiles(self.directory)
        self.conf, self.base_dir, self.state_dir = self.files.conf, self.files.run, self.files.state
        self.log_path, self.passwd_file, self.maildir = self.files.log, self.files.passwd, self.files.mail
        self.lmtp_socket = self.files.lmtp_socket
        if len(os.fsencode(self.base_dir / LONGEST_SOCKET)) > MAX_SOCKET:
            raise ValueError(f"{self.base_dir} is too long for Dovecot's unix sockets; use a shorter directory")
        self.hostname, self.detail_mailbox, self.fsync = hostname, detail_mailbox, fsync
        entry = pwd.getpwnam(mail_user)
        self.mail_user, self.uid, self.gid = mail_user, entry.pw_uid, entry.pw_gid
        self.users: dict[str, str] = {}
        for u in (users.items() if isinstance(users, dict) else ((a, PASSWORD) for a in users)):
            self.users[u[0].lower()] = u[1]
        self.lmtp_port, self.imap_port = free_port(), free_port()
        self.tls = (self.directory / "tls" / "cert.pem", self.directory / "tls" / "key.pem")
        self.cert = self.tls[0]   # the IMAP server's certificate (STARTTLS), for a client's cafile
        self.proc: subprocess.Popen | None = None

    @property
    def lmtp(self) -> str:
        """LMTP over TCP as ``delivery.lmtp`` names it."""
        return f"127.0.0.1:{self.lmtp_port}"

    def mailbox(self, address: str) -> Path:
        """The Maildir of ``address`` (``mail/DOMAIN/LOCAL/Maildir``)."""
        return self.files.maildir(address)

    def add_user(self, address: str, password: str = PASSWORD, timeout: float = 30.0) -> None:
        """Add (or change) a user; a running Dovecot rereads the passwd-file (it checks its time
        stamp, in seconds): this returns once ``doveadm user`` finds the address."""
        self.users[address.lower()] = password
        self._write_passwd()
        if self.proc is not None:
            wait_for(lambda: self.doveadm("user", address).returncode == 0, timeout, f"Dovecot to know {address}")

    def doveadm(self, *args: str) -> subprocess.CompletedProcess:
        """``doveadm -c CONF ARGS`` on this instance (output captured)."""
        return subprocess.run([shutil.which("doveadm") or "/usr/bin/doveadm", "-c", str(self.conf), *args],
                              capture_output=True, text=True, timeout=30)

    # --- start and stop -------------------------------------------------------------
    def start(self, timeout: float = 30.0) -> "Dovecot":
        if not self.tls[0].exists():
            self_signed_cert(self.hostname, *self.tls)
        _instances().write_dovecot(self.files, self.config_text(), self.users, self.mail_user, scheme="PLAIN")
        with open(self.directory / "dovecot.out", "ab") as out:
            self.proc = subprocess.Popen([dovecot_binary(), "-F", "-c", str(self.conf)],
                                         stdin=subprocess.DEVNULL, stdout=out, stderr=out)
        try:
            for port in (self.lmtp_port, self.imap_port):
                wait_listening(port, timeout, alive=self._alive)
            wait_for(lambda: self._alive() and self.lmtp_socket.exists(), timeout, "the LMTP socket")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM to the master (it stops its children); its exit status, None if it had to be killed."""
        status = terminate(self.proc, timeout)
        self.proc = None
        return status

    def __enter__(self) -> "Dovecot":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _alive(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"dovecot exited with {self.proc.returncode}:\n{self.log()}")
        return True

    def log(self) -> str:
        """The end of Dovecot's log and of its own output (for assertion messages)."""
        parts = [p.read_text(errors="replace")[-3000:] for p in (self.directory / "dovecot.out", self.log_path)
                 if p.exists()]
        return "\n".join(parts)

    # --- reading mail back over IMAP ---------------------------------------------------
    def imap(self, address: str) -> imaplib.IMAP4:
        """An IMAP session logged in as ``address`` (the caller logs out)."""
        session = imaplib.IMAP4("127.0.0.1", self.imap_port, timeout=30)
        session.login(address, self.users[address.lower()])
        return session

    def messages(self, address: str, mailbox: str = "INBOX") -> list[bytes]:
        """Every message of ``address``'s ``mailbox``, as IMAP gives it, in order (not marked seen)."""
        session = self.imap(address)
        try:
            typ, _ = session.select(mailbox, readonly=True)
            if typ != "OK":
                return []
            typ, data = session.search(None, "ALL")
            out = []
            for num in data[0].split():
                typ, parts = session.fetch(num, "(BODY.PEEK[])")
                out.append(next(p[1] for p in parts if isinstance(p, tuple)))
            return out
        finally:
            session.logout()

    def wait_messages(self, address: str, count: int, timeout: float = 60.0) -> list[bytes]:
        """``messages(address)`` once there are at least ``count``."""
        def enough():
            found = self.messages(address)
            return found if len(found) >= count else None
        return wait_for(enough, timeout, f"{count} message(s) for {address} in Dovecot")

    # --- files ----------------------------------------------------------------------
    def _write_passwd(self) -> None:
        _instances().write_passwd(self.passwd_file, self.users, "PLAIN")

    def config_text(self) -> str:
        """examples/office/dovecot/dovecot.conf for this instance (no Postfix here: the SASL socket,
        unused, is root's; so is the LMTP socket, as the tests run as root)."""
        me = pwd.getpwuid(os.geteuid()).pw_name
        return _instances().dovecot_conf(
            self.files, instance=f"securemail-test-{self.lmtp_port}", hostname=self.hostname,
            domain=self.hostname, tls=self.tls, lmtp=("127.0.0.1", self.lmtp_port), imap=("127.0.0.1", self.imap_port),
            mail_user=self.mail_user, gateway_user=me, postfix_auth_socket=self.base_dir / "auth-mta",
            postfix_user=me, detail_mailbox=self.detail_mailbox) + ("" if self.fsync else "mail_fsync = never\n")


def _instances():
    """examples/office/instances.py: the Dovecot template and how to lay an instance out."""
    return office_module("instances")
