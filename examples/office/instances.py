"""Private Postfix and Dovecot instances for the office example: config from the templates, start, stop.

Each ministry's office gets its own Postfix (``postfix -c CONF start``: its own
queue, data directory, log file and loopback ports) and its own Dovecot
(``dovecot -c CONF``: its own base_dir, state, log and ports). Nothing of the
system instances is used or started; both need root to start (they drop to
their own users). The config files are the templates of this directory
(``postfix/main.cf``, ``postfix/master.cf``, ``dovecot/dovecot.conf``, and
``dovecot/mail-crypt.conf`` for mailboxes encrypted at rest) with their
``@...@`` placeholders filled. ``DovecotFiles``, ``dovecot_conf`` and
``write_dovecot`` lay out and configure a Dovecot instance from the template;
the tests' private Dovecot (tests/support/dovecot.py) is built on them too, so
the tests run the configuration an admin copies.
"""

from __future__ import annotations

import base64
import grp
import hashlib
import os
import pwd
import re
import secrets
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
PLACEHOLDER = re.compile(r"@([A-Z][A-Z0-9_]*)@")
PROGRAMS = {"postfix": "postfix", "postmap": "postfix", "postqueue": "postfix", "dovecot": "dovecot-core",
            "doveadm": "dovecot-core", "doveconf": "dovecot-core", "swaks": "swaks", "mbsync": "isync",
            "neomutt": "neomutt", "gpg": "gnupg", "gpgconf": "gnupg", "openssl": "openssl"}
PACKAGES = "postfix dovecot-imapd dovecot-lmtpd isync swaks libnet-ssleay-perl neomutt gnupg openssl"
MAIL_USER = "nobody"  # owns the mailboxes (an admin makes a dedicated "vmail" user)


class InstanceError(RuntimeError):
    """A private server did not configure, start or stop; the message carries its log's tail."""


def missing_programs() -> list[str]:
    """What the scenario needs and this machine lacks: programs, and swaks's TLS module."""
    missing = [f"{p} ({pkg})" for p, pkg in PROGRAMS.items() if shutil.which(p) is None]
    lmtp = Path("/usr/lib/dovecot/lmtp")  # dovecot-lmtpd: the only trace of it is this program
    if not lmtp.exists():
        missing.append(f"{lmtp} (dovecot-lmtpd)")
    if not Path("/usr/lib/dovecot/imap").exists():
        missing.append("/usr/lib/dovecot/imap (dovecot-imapd)")
    # swaks only recommends its STARTTLS module: an install without recommends lacks it
    if shutil.which("perl") and subprocess.run(["perl", "-MNet::SSLeay", "-e", "1"], capture_output=True).returncode:
        missing.append("Net::SSLeay for swaks --tls (libnet-ssleay-perl)")
    return missing


def render(template: str, values: dict[str, object]) -> str:
    """``template`` with every ``@NAME@`` replaced; a placeholder without a value is an error."""
    missing = sorted(set(PLACEHOLDER.findall(template)) - values.keys())
    if missing:
        raise InstanceError(f"no value for {', '.join(missing)}")
    return PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), template)


def run(*argv: str, timeout: float = 60, check: bool = True, **kw) -> subprocess.CompletedProcess:
    if "input" not in kw:
        kw["stdin"] = subprocess.DEVNULL  # a program that asks must not wait on ours
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)
    if check and p.returncode != 0:
        raise InstanceError(f"{' '.join(argv)} exited {p.returncode}:\n{p.stdout}{p.stderr}")
    return p


def listening(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=1).close()
        return True
    except OSError:
        return False


def wait_ports(ports: list[tuple[str, int]], log: Path, what: str, timeout: float = 30) -> None:
    end = time.monotonic() + timeout
    while not all(listening(h, p) for h, p in ports):
        if time.monotonic() > end:
            raise InstanceError(f"{what} is not listening on {ports} after {timeout:.0f} s:\n{tail(log)}")
        time.sleep(0.1)


def tail(path: Path, n: int = 4000) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else f"({path} is empty)"


def reachable(path: Path) -> None:
    """Let the servers' own users (postfix, dovecot, nobody) through ``path`` and its parents up to the
    temporary directory: ``mkdtemp`` and pytest make them 0700, and those users reach their files by
    path after they drop root (Dovecot's auth and mail processes, Postfix's postdrop)."""
    top = Path(os.path.realpath(os.environ.get("TMPDIR", "/tmp")))
    for d in [path, *path.parents]:
        if d == top or top not in d.parents:
            break
        st = d.stat()
        if st.st_uid == os.geteuid() and st.st_mode & 0o011 != 0o011:
            d.chmod(st.st_mode | 0o011)


def ssha512(password: str) -> str:
    """Dovecot's ``{SSHA512}`` scheme (what ``doveadm pw -s SSHA512`` prints)."""
    salt = secrets.token_bytes(8)
    return "{SSHA512}" + base64.b64encode(hashlib.sha512(password.encode() + salt).digest() + salt).decode()


def self_signed(cert: Path, key: Path, hostname: str) -> None:
    """A TLS certificate for the office's submission and IMAP ports: the hostname, and for loopback
    clients 127.0.0.1 and localhost (mbsync 1.4 matches DNS names only, never an IP address)."""
    cert.parent.mkdir(parents=True, exist_ok=True)
    run("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-days", "30", "-subj", f"/CN={hostname}", "-addext", f"subjectAltName=DNS:{hostname},DNS:localhost,IP:127.0.0.1",
        "-keyout", str(key), "-out", str(cert))
    key.chmod(0o600)


@dataclass
class Office:
    """One ministry's office: where its servers live and listen, and its users' passwords."""
    domain: str
    root: Path                  # everything of this office's servers lives under it
    smtp_port: int              # Postfix inbound (from the gateway)
    submission_port: int        # Postfix submission (users, STARTTLS + AUTH)
    lmtp_port: int              # Dovecot LMTP (from Postfix)
    imap_port: int              # Dovecot IMAP (users, STARTTLS)
    gateway_source: str         # the address Postfix connects to the gateway from (trusted there)
    message_size_limit: int = 10 << 20
    host: str = "127.0.0.1"
    passwords: dict[str, str] = field(default_factory=dict)   # address -> password

    @property
    def hostname(self) -> str:
        return f"mail.{self.domain}"

    @property
    def tls(self) -> tuple[Path, Path]:
        return self.root / "tls" / "cert.pem", self.root / "tls" / "key.pem"

    def prepare(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        reachable(self.root)
        if not self.tls[0].exists():
            self_signed(*self.tls, self.hostname)


class Postfix:
    """A private Postfix instance of ``office``: config dir ``root/postfix/etc``, queue ``.../spool``."""

    def __init__(self, office: Office) -> None:
        self.office = office
        base = office.root / "postfix"
        self.conf, self.queue_dir, self.data_dir = base / "etc", base / "spool", base / "data"
        self.log = base / "postfix.log"

    @property
    def auth_socket(self) -> Path:
        """Where Dovecot puts the SASL socket: ``smtpd_sasl_path = private/auth`` in the queue directory."""
        return self.queue_dir / "private" / "auth"

    def values(self) -> dict[str, object]:
        o = self.office
        return {"CONFIG_DIR": self.conf, "QUEUE_DIR": self.queue_dir, "DATA_DIR": self.data_dir,
                "LOG_FILE": self.log, "HOSTNAME": o.hostname, "DOMAIN": o.domain, "LISTEN_ADDRESS": o.host,
                "LMTP_ADDRESS": f"{o.host}:{o.lmtp_port}", "GATEWAY_SOURCE": o.gateway_source,
                "MESSAGE_SIZE_LIMIT": o.message_size_limit, "TLS_CERT": o.tls[0], "TLS_KEY": o.tls[1],
                "SMTP_PORT": o.smtp_port, "SUBMISSION_PORT": o.submission_port}

    def configure(self, transport: str, gateway_pin: str) -> None:
        """Write main.cf, master.cf and the maps (``transport``: what ``federation postfix-transport``
        printed; ``gateway_pin``: the gateway's tls_pin, hex), index them, and create the queue
        directories (``postfix check``)."""
        for d in (self.conf, self.queue_dir, self.data_dir):  # postfix check makes what is inside
            d.mkdir(parents=True, exist_ok=True)
        postfix = pwd.getpwnam("postfix")
        os.chown(self.data_dir, postfix.pw_uid, postfix.pw_gid)  # its TLS session cache, its locks
        for name in ("main.cf", "master.cf"):
            (self.conf / name).write_text(render((HERE / "postfix" / name).read_text(), self.values()))
        (self.conf / "transport").write_text(transport)
        match = ":".join(gateway_pin[i:i + 2] for i in range(0, len(gateway_pin), 2)).upper()
        hops = sorted({line.split()[1].partition(":")[2] for line in transport.splitlines()
                       if line.strip() and not line.startswith("#")})
        (self.conf / "tls_policy").write_text("".join(f"{h}  fingerprint match={match}\n" for h in hops))
        (self.conf / "mailboxes").write_text("".join(f"{a}  OK\n" for a in self.office.passwords))
        shutil.copy(HERE / "postfix" / "sender_logins", self.conf / "sender_logins")  # login = address
        for name in ("transport", "tls_policy", "mailboxes"):
            self.postfix_cmd("postmap", f"hash:{self.conf / name}")
        self.postfix_cmd("postfix", "check")

    def postfix_cmd(self, program: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """``program -c CONF ARGS``; with maillog_file set, Postfix says why it failed in its log only."""
        try:
            return run(program, "-c", str(self.conf), *args, check=check)
        except InstanceError as e:
            raise InstanceError(f"{e}\n{tail(self.log, 1500)}") from None

    def start(self) -> None:
        self.postfix_cmd("postfix", "start")
        o = self.office
        wait_ports([(o.host, o.smtp_port), (o.host, o.submission_port)], self.log, f"postfix of {o.domain}")

    def stop(self) -> None:
        """``postfix stop``, then wait until its master has gone (the pid file stays: read the pid)."""
        pid_file = self.queue_dir / "pid" / "master.pid"
        pid = int(pid_file.read_text().split()[0]) if pid_file.exists() else None
        self.postfix_cmd("postfix", "stop", check=False)
        end = time.monotonic() + 30
        while pid and time.monotonic() < end and _alive(pid):
            time.sleep(0.1)

    def flush(self) -> None:
        """``postqueue -f``: deliver the deferred mail now (also forgets the 'dead' destinations)."""
        self.postfix_cmd("postqueue", "-f")

    def queued(self) -> list[dict]:
        """The queue as ``postqueue -j`` prints it (one JSON object per message)."""
        import json
        out = self.postfix_cmd("postqueue", "-j").stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


class DovecotFiles:
    """Where a private Dovecot keeps everything, under one directory: ``dovecot.conf``, ``run/`` (its
    base_dir: the LMTP socket ``run/lmtp`` is there), ``state/``, ``dovecot.log``, ``passwd`` (the
    users) and ``mail/`` (the mailboxes, ``mail/DOMAIN/LOCAL/Maildir``). The office's Dovecot and the
    tests' (tests/support/dovecot.py) both lay it out so, and both configure it with ``dovecot_conf``."""

    def __init__(self, root: Path) -> None:
        self.root, self.conf, self.run, self.state = root, root / "dovecot.conf", root / "run", root / "state"
        self.log, self.passwd, self.mail = root / "dovecot.log", root / "passwd", root / "mail"
        self.lmtp_socket = self.run / "lmtp"

    def maildir(self, address: str) -> Path:
        local, _, domain = address.lower().rpartition("@")
        return self.mail / domain / local / "Maildir"


def dovecot_conf(files: DovecotFiles, *, instance: str, hostname: str, domain: str, tls: tuple[Path, Path],
                 lmtp: tuple[str, int], imap: tuple[str, int], mail_user: str, gateway_user: str,
                 postfix_auth_socket: Path, postfix_user: str = "postfix", detail_mailbox: bool = False,
                 listen: str = "127.0.0.1") -> str:
    """dovecot/dovecot.conf filled for an instance laid out as ``files``: LMTP on ``lmtp`` (HOST, PORT)
    and on ``files.lmtp_socket`` (for ``gateway_user`` only), IMAP on ``imap``; mailboxes owned by
    ``mail_user``; the SASL socket for ``postfix_user`` at ``postfix_auth_socket``."""
    user = pwd.getpwnam(mail_user)
    values = {"INSTANCE": instance, "RUN_DIR": files.run, "STATE_DIR": files.state, "LOG_FILE": files.log,
              "HOSTNAME": hostname, "LISTEN_ADDRESS": listen, "TLS_CERT": tls[0], "TLS_KEY": tls[1],
              "USERS_FILE": files.passwd, "MAIL_USER": user.pw_name, "MAIL_GROUP": grp.getgrgid(user.pw_gid).gr_name,
              "MAIL_DIR": files.mail, "FIRST_VALID_UID": min(user.pw_uid, 500), "LMTP_HOST": lmtp[0],
              "LMTP_PORT": lmtp[1], "IMAP_HOST": imap[0], "IMAP_PORT": imap[1], "DOMAIN": domain,
              "GATEWAY_USER": gateway_user, "DETAIL_MAILBOX": "yes" if detail_mailbox else "no",
              "POSTFIX_AUTH_SOCKET": postfix_auth_socket, "POSTFIX_USER": postfix_user, "CONFIG_DIR": files.root}
    return render((HERE / "dovecot" / "dovecot.conf").read_text(), values)


def write_dovecot(files: DovecotFiles, text: str, users: dict[str, str], mail_user: str, *,
                  scheme: str = "SSHA512") -> None:
    """Lay ``files`` out: the config ``text``, the users' passwd-file, the mail store owned by
    ``mail_user``, and every directory above reachable by Dovecot's own users."""
    for d in (files.root, files.state):
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
    reachable(files.root)
    user = pwd.getpwnam(mail_user)
    files.mail.mkdir(mode=0o700, exist_ok=True)
    os.chown(files.mail, user.pw_uid, user.pw_gid)
    write_passwd(files.passwd, users, scheme)
    files.conf.write_text(text)


def write_passwd(path: Path, users: dict[str, str], scheme: str = "SSHA512") -> None:
    """Dovecot's passwd-file of ``users`` (address -> password) with the passwords in ``scheme``
    (SSHA512, or PLAIN for tests that log in with them), replaced whole. Dovecot's auth process runs
    as the dovecot user: 0640, group dovecot."""
    hashed = {"SSHA512": ssha512, "PLAIN": lambda p: "{PLAIN}" + p}[scheme]
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    with os.fdopen(fd, "w") as f:
        f.write("".join(f"{a}:{hashed(p)}::::::\n" for a, p in users.items()))
    os.chown(tmp, 0, grp.getgrnam("dovecot").gr_gid)
    os.chmod(tmp, 0o640)
    os.replace(tmp, path)


def mail_crypt(files: DovecotFiles) -> None:
    """Mailboxes at rest encrypted: dovecot/mail-crypt.conf beside the config, and its key pair."""
    keys = files.root / "mail-crypt"
    keys.mkdir(mode=0o700, exist_ok=True)
    run("openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-out", str(keys / "ecprivkey.pem"))
    run("openssl", "pkey", "-in", str(keys / "ecprivkey.pem"), "-pubout", "-out", str(keys / "ecpubkey.pem"))
    (keys / "ecprivkey.pem").chmod(0o600)
    text = render((HERE / "dovecot" / "mail-crypt.conf").read_text(), {"CONFIG_DIR": files.root})
    (files.root / "mail-crypt.conf").write_text(text)


class Dovecot:
    """A private Dovecot instance of ``office`` in ``root/dovecot`` (see DovecotFiles): LMTP for its
    Postfix (TCP) and for its gateway (the unix socket), IMAP for its users, SASL for its Postfix."""

    def __init__(self, office: Office, postfix: Postfix, *, encrypted_at_rest: bool = False) -> None:
        self.office, self.postfix, self.encrypted_at_rest = office, postfix, encrypted_at_rest
        self.files = DovecotFiles(office.root / "dovecot")
        self.base, self.conf, self.log = self.files.root, self.files.conf, self.files.log

    @property
    def lmtp_socket(self) -> Path:
        """The LMTP socket for the gateway (delivery.lmtp)."""
        return self.files.lmtp_socket

    def configure(self) -> None:
        o = self.office
        text = dovecot_conf(self.files, instance=f"office-{o.domain}", hostname=o.hostname, domain=o.domain,
                            tls=o.tls, lmtp=(o.host, o.lmtp_port), imap=(o.host, o.imap_port), mail_user=MAIL_USER,
                            gateway_user=pwd.getpwuid(os.geteuid()).pw_name,  # the scenario's gateways run as us
                            postfix_auth_socket=self.postfix.auth_socket)
        write_dovecot(self.files, text, o.passwords, MAIL_USER)
        if self.encrypted_at_rest:
            mail_crypt(self.files)
        run("doveconf", "-c", str(self.conf), "-n")  # refuses a config it cannot parse

    def start(self) -> None:
        # Its daemon keeps the standard output it was given: a pipe would never reach end of file.
        with open(self.base / "start.log", "ab") as out:
            p = subprocess.run(["dovecot", "-c", str(self.conf)], stdin=subprocess.DEVNULL, stdout=out,
                               stderr=out, timeout=60)
        if p.returncode != 0:
            raise InstanceError(f"dovecot exited {p.returncode}:\n{tail(self.base / 'start.log')}{tail(self.log)}")
        o = self.office
        wait_ports([(o.host, o.lmtp_port), (o.host, o.imap_port)], self.log, f"dovecot of {o.domain}")
        end = time.monotonic() + 10
        while not (self.postfix.auth_socket.exists() and self.lmtp_socket.exists()):
            if time.monotonic() > end:
                raise InstanceError(f"no SASL socket {self.postfix.auth_socket} or LMTP socket {self.lmtp_socket}:"
                                    f"\n{tail(self.log)}")
            time.sleep(0.1)

    def stop(self) -> None:
        run("doveadm", "-c", str(self.conf), "stop", check=False)
        end = time.monotonic() + 30
        o = self.office
        while listening(o.host, o.imap_port) and time.monotonic() < end:
            time.sleep(0.1)

    def maildir(self, address: str) -> Path:
        return self.files.maildir(address)


def systemd_unit(dest: Path, *, securemail: Path, home: Path, user: str = "securemail") -> Path:
    """systemd/securemail.service filled for a gateway ``home`` (run as ``user``), written to ``dest``."""
    values = {"SECUREMAIL": securemail, "HOME": home, "USER": user}
    dest.write_text(render((HERE / "systemd" / "securemail.service").read_text(), values))
    return dest


def unit_exposure(unit: Path) -> float | None:
    """``systemd-analyze security --offline=yes``'s overall exposure of ``unit`` (None: no systemd-analyze)."""
    if shutil.which("systemd-analyze") is None:
        return None
    out = run("systemd-analyze", "security", "--offline=yes", "--no-pager", str(unit), check=False)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out.stdout + out.stderr)
    if m is None:
        raise InstanceError(f"systemd-analyze gave no exposure for {unit}:\n{out.stdout[-1500:]}{out.stderr}")
    return float(m.group(1))
