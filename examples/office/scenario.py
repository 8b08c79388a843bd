"""The office scenario: two ministries on loopback, each with a real Postfix, a real Dovecot and a gateway.

interieur.gouv.fr and justice.gouv.fr each get a private Postfix (submission with
Dovecot SASL; member domains to the gateway through a transport map made by
``securemail federation postfix-transport``), a private Dovecot (LMTP, IMAP)
and a securemail gateway (``securemail serve``). The two gateways deliver
inbound mail the two ways an office can choose (``INBOUND``): interieur's hands
it to its Postfix (``delivery.local = "relay"``, ``relay_to``), which delivers
to Dovecot over LMTP, and interieur's Dovecot encrypts mailboxes at rest
(mail_crypt); justice's hands it straight to its Dovecot's LMTP socket
(``delivery.local = "lmtp"``). A federation authority signs the manifest; the
manifest lists a recording proxy (tap.py) as each gateway, so that what crosses
between the gateways, both ways, can be read in path 5. ``World`` is set up by
``build`` and torn down by ``close``; paths.py holds the five paths.
examples/office/run.py and tests/office/test_office.py both run this one scenario.
"""

from __future__ import annotations

import json
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .clients import Gpg, Person
from .instances import Dovecot, InstanceError, Office, Postfix, reachable
from .tap import Tap

ROOT = Path(__file__).resolve().parents[2]
A, B = "interieur.gouv.fr", "justice.gouv.fr"
OFFICE_SOURCE = {A: "127.0.0.3", B: "127.0.0.4"}  # where each Postfix reaches its gateway from
GATEWAY_SIZE_LIMIT = 256 << 10                      # interieur's gateway: [limits] message_size (path 3)
INBOUND = {A: "relay", B: "lmtp"}                   # each gateway's delivery.local
PEOPLE = {  # address: (name, has an OpenPGP client)
    "paul@" + A: ("Paul Durand", False), "alice@" + A: ("Alice Martin", True),
    "bruno@" + B: ("Bruno Petit", False), "claire@" + B: ("Claire Moreau", True),
}


def free_port() -> int:
    """A free loopback port, the kernel's choice (the tests hand ``build`` their own chooser, one
    that keeps below the ephemeral range an outgoing connection could take the port from)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sm(home: Path, *args: str, stdin: bytes | None = None) -> str:
    """The securemail command (the CLI, run in this process); its output, or InstanceError."""
    from click.testing import CliRunner

    from cli.main import cli
    res = CliRunner().invoke(cli, ["--home", str(home), *args], input=stdin, catch_exceptions=False)
    if res.exit_code != 0:
        raise InstanceError(f"securemail {' '.join(args[:3])} exited {res.exit_code}:\n{res.output}")
    return res.stdout


def preflight(home: Path, relay: str) -> tuple[int, str]:
    """``securemail gateway check --json`` on a gateway home, as an admin runs it before ``serve``: how
    many checks passed, and the one problem this bench makes on purpose (the manifest names the tap,
    not the gateway's relay listener); any other problem is an InstanceError."""
    from click.testing import CliRunner

    from cli.main import cli
    res = CliRunner().invoke(cli, ["--home", str(home), "gateway", "check", "--json"], catch_exceptions=False)
    checks = json.loads(res.stdout)["checks"]
    problems = [c for c in checks if not c["ok"]]
    tapped = [c for c in problems if c["name"].startswith("federation entry") and relay in c["detail"]]
    if res.exit_code not in (0, 1) or problems != tapped or len(tapped) != 1:
        raise InstanceError(f"gateway check of {home} (exit {res.exit_code}):\n{res.stdout}")
    return len(checks) - 1, f"{tapped[0]['name']}: {tapped[0]['detail']}"


def tune(config: Path, **values: object) -> None:
    """Set ``key = value`` lines of a securemail.toml (each key there once)."""
    text = config.read_text()
    for key, value in values.items():
        text, n = re.subn(rf"(?m)^{key} = [^#\n]*", f"{key} = {value}  ", text)
        if n != 1:
            raise InstanceError(f"{key} is in {config} {n} times")
    config.write_text(text)


@dataclass
class Gateway:
    domain: str
    home: Path
    relay: int
    wkd: int
    proc: subprocess.Popen | None = None

    @property
    def log(self) -> Path:
        return self.home / "serve.log"

    @property
    def tls(self) -> tuple[Path, Path]:
        return self.home / "tls" / "cert.pem", self.home / "tls" / "key.pem"

    def start(self, timeout: float = 120) -> None:  # 3-7 s alone; a loaded machine takes much longer
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "cli.main", "--home", str(self.home), "serve"],
                                         cwd=ROOT, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
        end = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise InstanceError(f"securemail serve of {self.domain} exited {self.proc.returncode}:\n"
                                    + self.log.read_text(errors="replace")[-3000:])
            try:  # its own greeting: on a busy machine another program may have taken the port
                with socket.create_connection(("127.0.0.1", self.relay), timeout=5) as s:
                    greeting = s.makefile("rb").readline()
            except OSError:
                if time.monotonic() > end:
                    raise InstanceError(f"the gateway of {self.domain} is not listening") from None
                time.sleep(0.1)
                continue
            if greeting.startswith(f"220 gw.{self.domain} ".encode()):
                return
            if time.monotonic() > end:  # (if serve exited, the next round says why)
                raise InstanceError(f"127.0.0.1:{self.relay} answers {greeting[:80]!r}, not the gateway of {self.domain}")
            time.sleep(0.1)

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


@dataclass
class Ministry:
    office: Office
    postfix: Postfix
    dovecot: Dovecot
    gateway: Gateway


@dataclass
class World:
    work: Path
    say: Callable[[str], None]
    run_id: str = field(default_factory=lambda: secrets.token_hex(4))
    ministries: dict[str, Ministry] = field(default_factory=dict)
    people: dict[str, Person] = field(default_factory=dict)
    gpg: dict[str, Gpg] = field(default_factory=dict)
    fpr: dict[str, str] = field(default_factory=dict)
    taps: dict[str, Tap] = field(default_factory=dict)  # receiving domain -> the proxy in front of its gateway
    markers: list[str] = field(default_factory=list)   # every plaintext marker sent (path 5 looks for them)
    port: Callable[[], int] = free_port                # where a listener's port comes from
    started: list[list[Callable[[], object]]] = field(default_factory=list)  # stops, batches in start order

    def marker(self, path: int) -> str:
        m = f"MARQUEUR-{self.run_id}-CHEMIN-{path}-{len(self.markers)}"
        self.markers.append(m)
        return m

    def person(self, address: str) -> Person:
        return self.people[address]

    def close(self) -> None:
        """Stop everything that was started, the last batch first, each batch's stops side by side;
        every stop is tried."""
        def attempt(stop) -> None:
            try:
                stop()
            except Exception as e:  # noqa: BLE001 - report and go on stopping the others
                self.say(f"   (while stopping: {e})")
        for batch in reversed(self.started):
            together(attempt, batch)
        self.started.clear()


def together(fn: Callable, items) -> list:
    """``fn(item)`` for every item at once, in threads (servers start and stop in parallel); the
    results in order; the first exception raised again once all are done."""
    with ThreadPoolExecutor(max_workers=max(1, len(items))) as pool:
        futures = [pool.submit(fn, i) for i in items]
    return [f.result() for f in futures]


def build(work: Path, say: Callable[[str], None] = print, port: Callable[[], int] = free_port) -> World:
    """Everything of both ministries set up and running; ``World.close`` stops it (also on failure).
    ``port`` chooses each listener's port."""
    work.mkdir(parents=True, exist_ok=True)
    reachable(work)
    w = World(work, say, port=port)
    try:
        for stage in (_gateways, _federation, _offices, _keys, _start):
            t0 = time.monotonic()
            stage(w)
            say(f"   ({time.monotonic() - t0:.1f} s)")
    except BaseException:
        w.close()
        raise
    return w


def _gateways(w: World) -> None:
    say = w.say
    say("setup: a securemail gateway per ministry (inbound: interieur relay_to its Postfix, justice LMTP to Dovecot)")
    for d in (A, B):
        office = Office(d, w.work / d.split(".")[0], w.port(), w.port(), w.port(), w.port(),
                        OFFICE_SOURCE[d],
                        passwords={a: f"mot de passe de {a} {secrets.token_hex(6)}" for a in PEOPLE if a.endswith(d)})
        g = Gateway(d, w.work / f"gw-{d.split('.')[0]}", w.port(), w.port())
        postfix = Postfix(office)
        dovecot = Dovecot(office, postfix, encrypted_at_rest=INBOUND[d] == "relay")
        inbound = (["--relay-to", f"{office.host}:{office.smtp_port}"] if INBOUND[d] == "relay"
                   else ["--lmtp", str(dovecot.lmtp_socket)])
        sm(g.home, "gateway", "init", "--domain", d, "--listen", f"127.0.0.1:{g.relay}", "--submission", "none",
           "--wkd", f"127.0.0.1:{g.wkd}", "--hostname", f"gw.{d}", "--trusted-network", f"{OFFICE_SOURCE[d]}/32",
           *inbound)
        tune(g.home / "securemail.toml", poll_interval=0.2, first=2, cap=10,
             **({"message_size": GATEWAY_SIZE_LIMIT} if d == A else {}))
        w.ministries[d] = Ministry(office, postfix, dovecot, g)
        say(f"   {d}: gateway relay 127.0.0.1:{g.relay}; inbound " + (
            f"relay_to office Postfix {office.host}:{office.smtp_port} (Dovecot: mail_crypt at rest)"
            if INBOUND[d] == "relay" else f"LMTP to Dovecot {dovecot.lmtp_socket}"))


def _federation(w: World) -> None:
    w.say("setup: the federation authority signs the manifest (each gateway listed behind a tap)")
    authority, tmp = w.work / "authority", w.work
    sm(authority, "federation", "init", "--no-passphrase")
    tap_ports = {d: w.port() for d in w.ministries}
    for d, m in w.ministries.items():
        entry = json.loads(sm(m.gateway.home, "federation", "entry"))
        for e in entry:
            e["gateway"] = f"127.0.0.1:{tap_ports[d]}"
        (tmp / f"{d}.json").write_text(json.dumps(entry))
        sm(authority, "federation", "add", "--entry", str(tmp / f"{d}.json"))
    sm(authority, "federation", "sign", "--output", str(tmp / "federation.json"))
    fpr = json.loads(sm(authority, "keys", "list", "--json"))[0]["fingerprint"]
    (tmp / "authority.asc").write_text(sm(authority, "keys", "export", fpr))
    for m in w.ministries.values():
        sm(m.gateway.home, "federation", "install", str(tmp / "federation.json"), "--authority", fpr,
           "--authority-key", str(tmp / "authority.asc"))
    for receiver, sender in ((A, B), (B, A)):
        r, s = w.ministries[receiver].gateway, w.ministries[sender].gateway
        w.taps[receiver] = Tap(("127.0.0.1", tap_ports[receiver]), ("127.0.0.1", r.relay), server_cert=r.tls,
                               client_cert=s.tls)
        w.say(f"   tap 127.0.0.1:{tap_ports[receiver]} -> {receiver}'s relay 127.0.0.1:{r.relay}")
    w.say(f"   manifest signed by {fpr[:16]}..., installed on both")


def _offices(w: World) -> None:
    w.say("setup: a private Postfix and Dovecot per ministry (own config, queue, state, logs, ports)")
    maps = [(sm(m.gateway.home, "federation", "postfix-transport"),
             json.loads(sm(m.gateway.home, "federation", "entry"))[0]["tls_pin"]) for m in w.ministries.values()]
    together(lambda pair: _office(pair[0], *pair[1]), list(zip(w.ministries.values(), maps)))  # CLI: this thread
    for d, m in w.ministries.items():
        o = m.office
        for line in (m.postfix.conf / "transport").read_text().splitlines()[1:]:
            w.say(f"   {d} transport: {line}")
        w.say(f"   {d}: Postfix smtp {o.smtp_port}, submission {o.submission_port}; Dovecot LMTP {o.lmtp_port} "
              f"and {m.dovecot.lmtp_socket.name}, IMAP {o.imap_port}; config {m.postfix.conf}, {m.dovecot.conf}")
        for address, (name, _) in PEOPLE.items():
            if address.endswith("@" + d):
                w.people[address] = Person(address, name, o.passwords[address], o,
                                           w.work / "people" / address.split("@")[0])
                w.people[address].prepare()


def _office(m: Ministry, transport: str, pin: str) -> None:
    """Certificate, Postfix config (``transport``: the map from the gateway's manifest; ``pin``: the
    gateway's certificate, pinned), Dovecot config."""
    m.office.prepare()
    m.postfix.configure(transport, pin)
    m.dovecot.configure()


def _keys(w: World) -> None:
    """alice and claire use GnuPG; claire's key is registered at her gateway (its directory serves it)."""
    w.say("setup: alice and claire make their keys with GnuPG; claire's is registered at justice's gateway")
    for address, (_, openpgp) in PEOPLE.items():
        if openpgp:
            g = w.gpg[address] = Gpg(w.people[address])
            w.started.append([g.close])
            w.fpr[address] = g.generate()
    alice, claire = "alice@" + A, "claire@" + B
    sm(w.ministries[B].gateway.home, "keys", "import", "-", stdin=w.gpg[claire].export(w.fpr[claire]))
    w.gpg[alice]("--import", stdin=w.gpg[claire].export(w.fpr[claire]))
    w.gpg[claire]("--import", stdin=w.gpg[alice].export(w.fpr[alice]))
    # claire's securemail home (for `securemail read`): her secret key and alice's certificate
    home = w.people[claire].home / "securemail"
    sm(home, "keys", "import", "-", stdin=w.gpg[claire].export(w.fpr[claire], secret=True))
    sm(home, "keys", "import", "-", stdin=w.gpg[alice].export(w.fpr[alice]))


def _start(w: World) -> None:
    w.say("setup: start Dovecot, Postfix and the taps; `securemail gateway check`; start both gateways")
    ministries = list(w.ministries.values())
    w.started.append([m.dovecot.stop for m in ministries])
    together(lambda m: m.dovecot.start(), ministries)  # first: it makes the SASL socket in Postfix's queue
    w.started.append([m.postfix.stop for m in ministries])
    together(lambda m: m.postfix.start(), ministries)
    for d, m in w.ministries.items():
        passed, tapped = preflight(m.gateway.home, f"127.0.0.1:{m.gateway.relay}")
        w.say(f"   {d}: gateway check: {passed} ok, {tapped} (the manifest lists the tap as its gateway)")
    for tap in w.taps.values():
        tap.__enter__()
        w.started.append([lambda tap=tap: tap.__exit__(None, None, None)])
    w.started.append([m.gateway.stop for m in ministries])
    together(lambda m: m.gateway.start(), ministries)
