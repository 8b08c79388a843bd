"""The people's programs in the office example: swaks and neomutt to send, mbsync and imaplib to read, GnuPG.

Each is the real program, configured the way a person would (a ``muttrc``, an
``mbsyncrc``, a ``GNUPGHOME``), in a directory of their own under the
scenario's work directory; passwords never appear on a command line.
"""

from __future__ import annotations

import email
import imaplib
import os
import re
import ssl
import subprocess
from dataclasses import dataclass
from email import policy
from pathlib import Path

from .instances import InstanceError, Office, run


@dataclass
class Person:
    address: str
    name: str
    password: str
    office: Office
    home: Path                   # their own directory: .netrc, muttrc, mbsyncrc, local Maildir, gnupg

    def prepare(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.home.chmod(0o700)

    def env(self) -> dict[str, str]:
        return {**os.environ, "HOME": str(self.home), "GNUPGHOME": str(self.gnupg)}

    @property
    def gnupg(self) -> Path:
        return self.home / "gnupg"


# --- sending ------------------------------------------------------------------------------------
def swaks(p: Person, to: str, *, data: Path | None = None, headers: dict[str, str] | None = None,
          body: str = "", attach: Path | None = None, sender: str | None = None) -> str:
    """Submit with swaks to the person's office Postfix (587-like port: STARTTLS verified, AUTH PLAIN);
    ``data`` is a whole message file (``--data``), else ``headers`` and ``body`` (and a file to
    ``attach``). Its transcript."""
    o = p.office
    argv = ["swaks", "--server", o.host, "--port", str(o.submission_port), "--tls", "--tls-verify",
            "--tls-ca-path", str(o.tls[0]), "--auth", "PLAIN", "--auth-user", p.address,
            "--auth-hide-password", "--from", sender or p.address, "--to", to, "--timeout", "60"]
    if data is not None:
        argv += ["--data", f"@{data}"]
    else:
        for name, value in (headers or {}).items():
            argv += ["--header", f"{name}: {value}"]
        argv += ["--body", body]
    if attach is not None:
        argv += ["--attach", f"@{attach}"]
    # No --auth-password: swaks asks for it and reads standard input (its .netrc lookup would read
    # the real user's home, not $HOME), so the password is in no argv.
    out = run(*argv, env=p.env(), check=False, input=p.password + "\n")
    if out.returncode != 0 or not re.search(r"<~  250 [^\n]*queued as", out.stdout):
        raise InstanceError(f"swaks as {p.address} failed ({out.returncode}):\n{out.stdout[-2000:]}{out.stderr}")
    return out.stdout


def neomutt(p: Person, to: str, subject: str, body: str) -> None:
    """Send with neomutt in batch mode through the office's submission port (STARTTLS, AUTH)."""
    o = p.office
    rc = p.home / "muttrc"
    rc.write_text(f"""\
set from = "{p.name} <{p.address}>"
set use_from = yes
set hostname = "{o.domain}"
set smtp_url = "smtp://{p.address.replace('@', '%40')}@{o.host}:{o.submission_port}/"
set smtp_pass = "{p.password}"
set ssl_starttls = yes
set ssl_force_tls = yes
set certificate_file = "{o.tls[0]}"
set record = ""
set copy = no
""")
    rc.chmod(0o600)
    out = subprocess.run(["neomutt", "-n", "-F", str(rc), "-s", subject, "--", to], input=body,
                         capture_output=True, text=True, timeout=60, env=p.env())
    if out.returncode != 0:
        raise InstanceError(f"neomutt as {p.address} exited {out.returncode}:\n{out.stdout}{out.stderr}")


# --- reading ------------------------------------------------------------------------------------
def mbsync(p: Person) -> list[bytes]:
    """Synchronise the person's IMAP INBOX into a local Maildir with mbsync; every message there."""
    o, local = p.office, p.home / "Mail"
    (p.home / "imap-password").write_text(p.password + "\n")
    (p.home / "imap-password").chmod(0o600)
    rc = p.home / "mbsyncrc"
    rc.write_text(f"""\
IMAPAccount office
Host localhost
# mbsync 1.4 checks the certificate's DNS names only (IP addresses never match): a name, not {o.host}
Port {o.imap_port}
User {p.address}
PassCmd "cat {p.home / 'imap-password'}"
SSLType STARTTLS
CertificateFile {o.tls[0]}
AuthMechs PLAIN

IMAPStore office-remote
Account office

MaildirStore office-local
Path {local}/
Inbox {local}/INBOX

Channel office
Far :office-remote:
Near :office-local:
Patterns INBOX
Create Near
Sync Pull
SyncState *
""")
    local.mkdir(exist_ok=True)
    run("mbsync", "-c", str(rc), "-a", env=p.env())
    return [f.read_bytes() for sub in ("new", "cur") for f in sorted((local / "INBOX" / sub).glob("*"))]


def imap(p: Person) -> list[bytes]:
    """Every message of the person's INBOX, read with imaplib (STARTTLS, the office certificate verified)."""
    o = p.office
    ctx = ssl.create_default_context(cafile=str(o.tls[0]))
    with imaplib.IMAP4(o.host, o.imap_port, timeout=30) as m:
        m.starttls(ctx)
        m.login(p.address, p.password)
        m.select("INBOX", readonly=True)
        _, nums = m.search(None, "ALL")
        out = []
        for n in nums[0].split():
            _, data = m.fetch(n, "(BODY.PEEK[])")
            out.append(data[0][1])
        m.logout()
    return out


def parse(raw: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(raw, policy=policy.default)


# --- GnuPG ---------------------------------------------------------------------------------------
class Gpg:
    """The person's GnuPG (an OpenPGP mail client's engine): keys without passphrase, in ``GNUPGHOME``."""

    BASE = ["--batch", "--yes", "--no-tty", "--pinentry-mode", "loopback", "--passphrase", "",
            "--trust-model", "always"]

    def __init__(self, person: Person) -> None:
        self.person = person
        person.gnupg.mkdir(mode=0o700, exist_ok=True)

    def __call__(self, *args: str, stdin: bytes = b"") -> tuple[bytes, str]:
        """gpg's output and its status lines."""
        p = subprocess.run(["gpg", *self.BASE, "--status-fd", "2", *args], input=stdin, capture_output=True,
                           timeout=60, env=self.person.env())
        if p.returncode != 0:
            raise InstanceError(f"gpg {' '.join(args)} exited {p.returncode}:\n{p.stderr.decode()[-1500:]}")
        return p.stdout, p.stderr.decode("utf-8", "replace")

    def generate(self) -> str:
        """An Ed25519 signing key with a Cv25519 encryption subkey; its fingerprint."""
        _, status = self("--quick-gen-key", f"{self.person.name} <{self.person.address}>", "ed25519", "sign", "1y")
        fpr = next(x.split()[-1] for x in status.splitlines() if "KEY_CREATED" in x)
        self("--quick-add-key", fpr, "cv25519", "encr", "1y")
        return fpr

    def export(self, fpr: str, secret: bool = False) -> bytes:
        return self("--armor", "--export-secret-keys" if secret else "--export", fpr)[0]

    def close(self) -> None:
        subprocess.run(["gpgconf", "--kill", "all"], env=self.person.env(), capture_output=True, timeout=30)
