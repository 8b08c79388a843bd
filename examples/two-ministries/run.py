"""The main job, runnable: two ministries' gateways on loopback, each a real `securemail serve` process.

interieur.gouv.fr and justice.gouv.fr get a gateway home each (SQLite), a
federation authority signs the manifest listing both, and a user on each side
gets a key. Then, with both gateways running:
  1. Alice sends an end-to-end encrypted notice with `securemail send` (submission,
     STARTTLS, AUTH) and Bruno reads it with `securemail read`;
  2. the office MTA (plain smtplib from the trusted network) sends plain mail, the
     gateway encrypts it, Bruno reads it;
  3. plain mail from an untrusted source is refused with its reason.
Exits 0 when every step worked. Run: `make demo` (or python examples/two-ministries/run.py).
"""

from __future__ import annotations

import json
import os
import re
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "cli.main"]
OFFICE_IP, OUTSIDER_IP = "127.0.0.3", "127.0.0.9"
A, B = "interieur.gouv.fr", "justice.gouv.fr"


def sm(home: Path, *args: str, stdin: bytes | None = None, check: bool = True) -> str:
    p = subprocess.run([*CLI, "--home", str(home), *args], input=stdin, capture_output=True, cwd=ROOT)
    if check and p.returncode != 0:
        raise SystemExit(f"FAILED: securemail {' '.join(args)}\n{p.stderr.decode()}")
    return p.stdout.decode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def step(text: str) -> None:
    print(f"\n== {text}")


def wait_for(path: Path, timeout: float = 60.0) -> list[Path]:
    end = time.time() + timeout
    while time.time() < end:
        files = sorted(path.glob("*")) if path.exists() else []
        if files:
            return files
        time.sleep(0.2)
    raise SystemExit(f"FAILED: nothing delivered to {path} within {timeout:.0f} s")


def setup(tmp: Path) -> dict:
    step("setup: two gateway homes, a federation authority, one user per ministry")
    authority, gw, ports = tmp / "authority", {}, {}
    sm(authority, "federation", "init", "--no-passphrase")
    for d in (A, B):
        home, relay, sub = tmp / f"gw-{d}", free_port(), free_port()
        sm(home, "gateway", "init", "--domain", d, "--listen", f"127.0.0.1:{relay}",
           "--submission", f"127.0.0.1:{sub}", "--hostname", f"gw.{d}", "--trusted-network", f"{OFFICE_IP}/32")
        cfg = home / "securemail.toml"  # demo pace: poll the queue often
        cfg.write_text(re.sub(r"(?m)^poll_interval = .*$", "poll_interval = 0.2", cfg.read_text()))
        entry = tmp / f"{d}.json"
        entry.write_text(sm(home, "federation", "entry"))
        sm(authority, "federation", "add", "--entry", str(entry))
        gw[d], ports[d] = home, (relay, sub)
        print(f"   {d}: relay 127.0.0.1:{relay}, submission 127.0.0.1:{sub}")
    sm(authority, "federation", "sign", "--output", str(tmp / "federation.json"))
    fpr = json.loads(sm(authority, "keys", "list", "--json"))[0]["fingerprint"]
    (tmp / "authority.asc").write_text(sm(authority, "keys", "export", fpr))
    for home in gw.values():
        sm(home, "federation", "install", str(tmp / "federation.json"), "--authority", fpr,
           "--authority-key", str(tmp / "authority.asc"))
    print(f"   federation manifest signed by {fpr} and installed on both gateways")
    users = {}
    for addr, d, name in (("alice@" + A, A, "Alice Martin"), ("bruno@" + B, B, "Bruno Petit")):
        home = tmp / addr
        sm(home, "keys", "generate", "--uid", f"{name} <{addr}>", "--no-passphrase")
        users[addr] = home
        sm(gw[d], "keys", "import", "-", stdin=sm(home, "keys", "export", addr).encode())
    (tmp / "pw").write_text("alice's long password\n")
    sm(gw[A], "gateway", "user", "add", "alice@" + A, "--password-file", str(tmp / "pw"))
    # Correspondents' keys, and the sending gateway's key to verify what it signs.
    sm(users["alice@" + A], "keys", "import", "-", stdin=sm(users["bruno@" + B], "keys", "export", "bruno@" + B).encode())
    sm(users["bruno@" + B], "keys", "import", "-", stdin=sm(users["alice@" + A], "keys", "export", "alice@" + A).encode())
    sm(users["bruno@" + B], "keys", "import", "-", stdin=sm(gw[A], "keys", "export", "gateway@" + A).encode())
    return {"gw": gw, "ports": ports, "users": users, "tmp": tmp}


def serve(home: Path, log: Path) -> subprocess.Popen:
    out = open(log, "wb")
    return subprocess.Popen([*CLI, "--home", str(home), "serve"], stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)


def wait_listening(port: int, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            raise SystemExit("FAILED: securemail serve exited early")
        try:
            with socket.create_connection(("127.0.0.1", port), 0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("FAILED: gateway did not start listening")


def read(env: dict, path: Path) -> dict:
    out = json.loads(sm(env["users"]["bruno@" + B], "read", "--json", str(path), check=False))[0]
    print("   " + sm(env["users"]["bruno@" + B], "read", str(path), check=False).replace("\n", "\n   "))
    return out


def run(env: dict) -> bool:
    gw, ports, tmp = env["gw"], env["ports"], env["tmp"]
    inbox = gw[B] / "Maildir" / ("bruno@" + B) / "new"
    ok = True

    step("1. Alice sends an end-to-end encrypted notice (securemail send → submission, STARTTLS, AUTH)")
    (tmp / "body.txt").write_text("Bruno,\nle conseil restreint est avancé à 9h.\n")
    print("   " + sm(env["users"]["alice@" + A], "send", "--from", "alice@" + A, "--to", "bruno@" + B,
                   "--subject", "Conseil restreint", "--body-file", str(tmp / "body.txt"),
                   "--server", f"127.0.0.1:{ports[A][1]}", "--starttls", "--cafile", str(gw[A] / "tls/cert.pem"),
                   "--username", "alice@" + A, "--password-file", str(tmp / "pw")).strip())
    first = wait_for(inbox)[0]
    r = read(env, first)
    ok &= r["decrypted"] and r["signature"] == "valid" and r["subject"] == "Conseil restreint"
    (inbox.parent / "cur").mkdir(exist_ok=True)
    first.rename(inbox.parent / "cur" / (first.name + ":2,S"))  # read: new/ → cur/, as a mail client does

    step("2. The office MTA sends plain mail from the trusted network; the gateway encrypts it")
    msg = ("From: Alice Martin <alice@interieur.gouv.fr>\r\nTo: bruno@justice.gouv.fr\r\n"
           "Subject: Note du cabinet\r\nMessage-ID: <cabinet-1@interieur.gouv.fr>\r\n\r\n"
           "Texte saisi en clair dans le bureau.\r\n")
    with smtplib.SMTP("127.0.0.1", ports[A][0], source_address=(OFFICE_IP, 0), timeout=30) as s:
        s.sendmail("alice@" + A, ["bruno@" + B], msg.encode())
    second = wait_for(inbox)[0]
    r = read(env, second)
    raw = second.read_bytes()
    ok &= (r["decrypted"] and r["signature"] == "valid" and "en clair dans le bureau" in r["body"]
           and b"en clair dans le bureau" not in raw)

    step("3. Plain mail from an untrusted source is refused")
    try:
        with smtplib.SMTP("127.0.0.1", ports[A][0], source_address=(OUTSIDER_IP, 0), timeout=30) as s:
            s.sendmail("x@" + A, ["bruno@" + B], b"From: x@interieur.gouv.fr\r\nSubject: s\r\n\r\nclear\r\n")
        print("   NOT refused")
        ok = False
    except smtplib.SMTPRecipientsRefused as e:
        code, text = e.recipients["bruno@" + B]
        print(f"   refused: {code} {text.decode()}")
    return bool(ok)


def main() -> int:
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="two-ministries-") as d:
        env = setup(Path(d))
        procs = [serve(env["gw"][x], Path(d) / f"{x}.log") for x in (A, B)]
        try:
            for x, p in zip((A, B), procs):
                wait_listening(env["ports"][x][0], p)
            ok = run(env)
        finally:
            for p in procs:
                p.send_signal(signal.SIGTERM)
            for p in procs:
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    p.kill()
        if not ok or any(p.returncode != 0 for p in procs):
            for x in (A, B):
                print(f"--- {x} log\n" + (Path(d) / f"{x}.log").read_text()[-3000:])
    print(f"\ntwo-ministries: {'OK' if ok else 'FAILED'} ({time.time() - t0:.0f} s)")
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
