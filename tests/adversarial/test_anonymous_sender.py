"""Threat agent: an anonymous internet sender: no account, no member certificate, any source address.

Every test drives the real gateways of the conftest as this agent would and
asserts a promise of docs/security-target.md.
"""

from __future__ import annotations

import pytest

from tests.hostile import ALICE, BRUNO, GATEWAY_PEER, JUSTICE, OFFICE, OWN, STRANGER  # noqa: F401

pytestmark = pytest.mark.timeout(300)


# --- finding 7: password guessing, and the event loop it used to block (tests/adversarial/lockout.py) ---
import statistics as _f7_statistics  # noqa: E402
import threading as _f7_threading  # noqa: E402
import time as _f7_time  # noqa: E402

from securemail.smtp import replies as _f7_replies  # noqa: E402
from tests.adversarial.lockout import PASSWORD as _F7_PASSWORD, auth_plain as _f7_plain  # noqa: E402
from tests.adversarial.lockout import guarded_gateway as _f7_guarded_gateway  # noqa: E402
from tests.hostile import Raw as _F7Raw  # noqa: E402
from tests.support import audit_records as _f7_audit  # noqa: E402


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    with _f7_guarded_gateway(tmp_path_factory.mktemp("guarded")) as g:
        yield g


def test_guessing_sessions_do_not_slow_other_sessions(guarded):
    """8 sessions guess passwords (unknown users: the dummy scrypt) while another times NOOP."""
    answers: list[str] = []

    def guess(n: int) -> None:
        source = f"127.0.{10 + n}.1"  # a /24 each: the per-network slot limit is not what is tested
        for attempt in range(3):  # 3 sessions of 3 failures: 9, under the source budget of 10
            client = guarded.session(source)
            try:
                for k in range(3):
                    answers.append(client.cmd(_f7_plain(f"guess{n}-{attempt}-{k}@{OWN}", "hunter2")))
            finally:
                client.close()

    probe = guarded.session("127.0.30.1")
    threads = [_f7_threading.Thread(target=guess, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    latencies = []
    while any(t.is_alive() for t in threads):
        started = _f7_time.perf_counter()
        assert probe.cmd(b"NOOP") == "250 2.0.0 OK"
        latencies.append(_f7_time.perf_counter() - started)
        _f7_time.sleep(0.02)
    for t in threads:
        t.join()
    probe.close()
    p95 = _f7_statistics.quantiles(latencies, n=20)[-1]
    assert len(latencies) >= 20 and p95 < 0.1, (len(latencies), p95, max(latencies))
    assert answers == [_f7_replies.AUTH_INVALID] * 72  # every guess was checked: 72 scrypts ran


def test_fourth_auth_in_a_session_is_421_and_closed(guarded, record):
    client = guarded.session("127.0.40.1")
    replies = [client.cmd(_f7_plain(f"nobody{k}@{OWN}", "wrong")) for k in range(3)]
    assert replies == [_f7_replies.AUTH_INVALID] * 3
    reply = client.cmd(_f7_plain(f"alice@{OWN}", _F7_PASSWORD))  # the right one: too late
    record("fourth AUTH in one session", reply)
    assert reply == "421 4.7.0 Too many authentication failures, closing connection"
    assert client.at_eof()
    client.close()


def test_failure_budget_locks_a_source_even_for_the_right_password(guarded, record):
    source = "127.0.41.1"
    failures = 0
    while failures < 10:  # 10 failures in sessions of 3, each with a name of its own
        client = guarded.session(source)
        for _ in range(min(3, 10 - failures)):
            assert client.cmd(_f7_plain(f"u{failures}@{OWN}", "wrong")) == _f7_replies.AUTH_INVALID
            failures += 1
        client.close()
    client = guarded.session(source)
    reply = client.cmd(_f7_plain(f"alice@{OWN}", _F7_PASSWORD))
    record("AUTH from a source over its failure budget (right password)", reply)
    assert reply == "454 4.7.0 Too many authentication failures, try again later"
    assert client.cmd(b"MAIL FROM:<alice@interieur.gouv.fr>") == "530 5.7.0 Authentication required"
    client.close()
    other = guarded.session("127.0.42.1")  # another source is not locked out
    assert other.cmd(_f7_plain(f"alice@{OWN}", _F7_PASSWORD)) == _f7_replies.AUTH_OK
    other.close()
    locks = _f7_audit(guarded.home.home, "auth-locked")
    assert {"scope": "source", "name": source, "seconds": 900} in [r["fields"] for r in locks], locks
    assert _F7_PASSWORD not in str(locks) and "wrong" not in str(locks)


def test_failure_budget_locks_an_account_guessed_from_many_sources(guarded):
    for n in range(10):  # one failure from each of 10 sources: no source is over its budget
        client = guarded.session(f"127.0.{50 + n}.1")
        assert client.cmd(_f7_plain(f"bob@{OWN}", f"guess-{n}")) == _f7_replies.AUTH_INVALID
        client.close()
    client = guarded.session("127.0.60.1")
    assert client.cmd(_f7_plain(f"bob@{OWN}", _F7_PASSWORD)) == _f7_replies.AUTH_LOCKED
    client.close()
    fields = [r["fields"] for r in _f7_audit(guarded.home.home, "auth-locked")]
    assert {"scope": "account", "name": f"bob@{OWN}", "seconds": 900} in fields, fields


def test_auth_is_not_offered_on_the_relay_port_by_default(gw, raw, record):
    client = raw(gw.a.relay, STRANGER)
    ehlo = client.greet(b"EHLO laptop.example.org", tls=True)
    assert "AUTH" not in ehlo.upper().replace("STARTTLS", ""), ehlo
    reply = client.cmd(b"AUTH PLAIN " + __import__("base64").b64encode(f"\0{ALICE}\0wrong".encode()))
    record("AUTH on the relay port (not configured there)", reply)
    assert reply.startswith("504 5.5.4 "), reply


# --- finding 11: connection slots -------------------------------------------------------------------
def _f11_held(port: int, sources: list[str]) -> tuple[list[_F7Raw], list[str]]:
    clients = [_F7Raw(port, s, timeout=10) for s in sources]
    return clients, [c.reply() for c in clients]


def _f11_close(clients) -> None:
    for c in clients:
        c.close()
    _f7_time.sleep(0.3)  # the gateway counts them out when it sees the close


def test_many_addresses_of_one_network_share_its_slots(guarded, record):
    banner = "220 gw.interieur.gouv.fr ESMTP"
    clients, banners = _f11_held(guarded.relay, [f"127.0.70.{10 + n}" for n in range(5)])
    try:
        record("fifth connection from one /24 (connections_per_network = 4)", banners[4])
        assert banners == [banner] * 4 + ["421 4.7.0 Too many connections"]
        assert clients[4].at_eof()
        other, reply = _f11_held(guarded.relay, ["127.0.71.10"])  # the next /24 is not affected
        clients += other
        assert reply == [banner]
    finally:
        _f11_close(clients)


def test_office_and_member_slots_remain_when_the_public_fills_its_share(guarded, record):
    banner = "220 gw.interieur.gouv.fr ESMTP"
    public = [f"127.0.{80 + n}.1" for n in range(13)]  # 16 connections, 4 reserved: the public has 12
    clients, banners = _f11_held(guarded.relay, public)
    try:
        record("public connection over its share (connections 16, reserved 4)", banners[12])
        assert banners == [banner] * 12 + ["421 4.7.0 Too many connections"]
        office, member = _f11_held(guarded.relay, [OFFICE, GATEWAY_PEER])  # trusted; the manifest's
        clients += office
        assert member == [banner, banner]
        assert office[0].cmd(b"EHLO office.interieur.gouv.fr").startswith("250-")
    finally:
        _f11_close(clients)


def test_idle_before_mail_is_closed_sooner_than_after_mail(guarded, record):
    client = _F7Raw(guarded.relay, OFFICE, timeout=10)
    client.greet(b"EHLO office.interieur.gouv.fr")
    started = _f7_time.monotonic()
    reply = client.reply()
    waited = _f7_time.monotonic() - started
    record("idle before MAIL (idle_before_mail = 1 s)", reply)
    assert reply == "421 4.4.2 Timeout exceeded, closing connection" and 0.7 < waited < 5, waited
    assert client.at_eof()
    client.close()
    client = _F7Raw(guarded.relay, OFFICE, timeout=10)
    client.greet(b"EHLO office.interieur.gouv.fr")
    assert client.cmd(f"MAIL FROM:<{ALICE}>".encode()) == "250 2.1.0 Sender OK"
    _f7_time.sleep(2.5)  # after MAIL the command timeout (30 s) applies
    assert client.cmd(f"RCPT TO:<{ALICE}>".encode()) == "250 2.1.5 Recipient OK"
    client.close()


# --- findings 4 and 10: the cost of one message before its reply, and the one header-block parse ------
import os as _f4_os  # noqa: E402
import threading as _f4_threading  # noqa: E402
import time as _f4_time  # noqa: E402

from securemail.smtp import replies as _f4_replies  # noqa: E402

_F4_CPU_BOUND = 1.0      # seconds of CPU for one hostile message, all gateway processes together (was 10-21 s)
_F4_TLS_REQUIRED = "530 5.7.10 TLS is required between member gateways"
_F4_PLAINTEXT = ("550 5.7.1 Plaintext between member domains is refused: "
                 "message is not properly OpenPGP encrypted")


def _f4_tree_cpu() -> float:
    """CPU seconds used so far by this process (every thread: the in-process gateways) and every living
    process below it (crypto workers, delivery processes), from /proc."""
    table = {}
    for entry in _f4_os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            rest = stat[stat.rindex(")") + 2:].split()
            table[int(entry)] = (int(rest[1]), int(rest[11]) + int(rest[12]))
    tree, grew = {_f4_os.getpid()}, True
    while grew:
        below = {pid for pid, (ppid, _) in table.items() if ppid in tree} - tree
        tree |= below
        grew = bool(below)
    return sum(table[p][1] for p in tree if p in table) / _f4_os.sysconf("SC_CLK_TCK")


def _f4_names(n: int) -> list[bytes]:
    """n distinct field names (case-insensitive) of one to three characters."""
    alphabet = [bytes([c]) for c in range(33, 127) if chr(c) not in ":;=" and not chr(c).isupper()]
    out, width = [], 1
    while len(out) < n:
        out += [b"".join(t) for t in _f4_product(alphabet, width)][:n - len(out)]
        width += 1
    return out


def _f4_product(alphabet, width):
    import itertools
    return itertools.product(alphabet, repeat=width)


def _f4_h_bomb(names: int = 16000, size: int = 270 << 10, sender: str = BRUNO, fields: int = 0) -> bytes:
    """The issue's message: a DKIM-Signature claiming the sender's domain, with its real selector and
    the body's true hash (so dkimpy goes on to match h=), ``names`` names in h= (folded in lines under
    1000 octets) and ``fields`` more header fields, padded to ``size`` bytes with a body."""
    from securemail.crypto.dkim_signing import relaxed_body_hash
    h, line = [], b""
    for name in [b"from"] + _f4_names(names - 1):
        if len(line) + len(name) > 900:
            h.append(line)
            line = b""
        line += name + b":"
    h.append(line.rstrip(b":"))
    domain = sender.split("@")[1].encode()
    head = (b"".join(b"X-F%05d: v\r\n" % i for i in range(fields))
            + (f"From: Bruno <{sender}>\r\nTo: <{ALICE}>\r\nSubject: ...\r\n"
               f"Message-ID: <{_f4_time.monotonic_ns()}@{JUSTICE}>\r\n\r\n").encode())
    body = b"x" * 76 + b"\r\n"
    body = body * ((size - len(head) - 120 - sum(len(x) + 3 for x in h)) // len(body))
    sig = (b"DKIM-Signature: v=1; a=ed25519-sha256; c=relaxed/relaxed; d=" + domain + b"; s=sm-ed25519;\r\n"
           b" h=" + b"\r\n ".join(h) + b";\r\n bh=" + _f4_b64(relaxed_body_hash(body)) + b";\r\n"
           b" b=" + b"A" * 86 + b"==\r\n")
    return sig + head + body


def _f4_b64(digest: bytes) -> bytes:
    import base64
    return base64.b64encode(digest)


def _f4_send(gw, raw, data: bytes, *, tls: bool, sender: str = BRUNO) -> tuple[str, float, set]:
    """(reply, CPU seconds of every gateway process while it was decided, ids queued) for ``data`` sent
    by a stranger (127.0.0.2), with or without STARTTLS."""
    before = gw.queued()
    client = raw(gw.a.relay, STRANGER, timeout=120)
    client.greet(tls=tls)
    client.envelope(sender, [ALICE])
    start = _f4_tree_cpu()
    client.send(data + b".\r\n")
    reply = client.reply()
    return reply, _f4_tree_cpu() - start, gw.queued() - before


def test_h_bomb_from_a_stranger_without_tls_is_refused_before_any_dkim_work(gw, raw, record):
    """16,000 names in h=, 270 KiB, a member sender, no TLS: 530 at once, while NOOP stays fast."""
    data = _f4_h_bomb()
    assert len(data) >= 269 << 10 and data.count(b":") > 16000 and data.index(b"\r\n\r\n") < 64 << 10
    probe = raw(gw.a.relay, OFFICE)
    probe.greet()
    latencies: list[float] = []
    done = _f4_threading.Event()

    def noop_loop() -> None:
        while not done.is_set():
            started = _f4_time.perf_counter()
            assert probe.cmd(b"NOOP") == "250 2.0.0 OK"
            latencies.append(_f4_time.perf_counter() - started)
            _f4_time.sleep(0.01)

    pinger = _f4_threading.Thread(target=noop_loop)
    pinger.start()
    try:
        reply, cpu, added = _f4_send(gw, raw, data, tls=False)
    finally:
        done.set()
        pinger.join()
    record("h= bomb, 16,000 names, 270 KiB, stranger without TLS", reply, cpu_seconds=round(cpu, 3))
    assert reply == _F4_TLS_REQUIRED
    assert added == set()
    assert cpu < _F4_CPU_BOUND, f"{cpu:.2f} s of CPU for one refused message"
    assert latencies and max(latencies) < 1.0, max(latencies)


def test_h_bomb_from_a_stranger_with_starttls_is_refused_before_any_dkim_work(gw, raw, record):
    """The same over STARTTLS, without a member's client certificate: refused by a cheap rule."""
    reply, cpu, added = _f4_send(gw, raw, _f4_h_bomb(), tls=True)
    record("h= bomb, 16,000 names, 270 KiB, stranger with STARTTLS", reply, cpu_seconds=round(cpu, 3))
    assert reply == getattr(_f4_replies, "MEMBER_CERT_REQUIRED", _F4_PLAINTEXT)
    assert added == set()
    assert cpu < _F4_CPU_BOUND, f"{cpu:.2f} s of CPU for one refused message"


def test_the_issues_h_bomb_is_refused_by_the_header_limit_in_a_moment(gw, raw, record):
    """The issue's shape: 16,000 names in h= and 9,000 more fields, 270 KiB (10 s of CPU before this
    work, then 530): its header block is over limits.header_bytes, refused before anything else."""
    data = _f4_h_bomb(fields=9000)
    assert len(data) >= 269 << 10 and data.index(b"\r\n\r\n") > 128 << 10
    reply, cpu, added = _f4_send(gw, raw, data, tls=False)
    record("h= bomb, 16,000 names and 9,000 fields, 270 KiB, stranger without TLS", reply,
           cpu_seconds=round(cpu, 3))
    assert reply == _f4_replies.HEADERS_TOO_BIG
    assert added == set()
    assert cpu < _F4_CPU_BOUND, f"{cpu:.2f} s of CPU for one refused message"


def _f10_second_from(after: int = 256 << 10) -> bytes:
    """One From, ``after`` bytes of other fields, then a second From (the next hop saw both)."""
    filler = b"".join(b"X-Filler-%06d: %s\r\n" % (i, b"f" * 70) for i in range(after // 88 + 1))
    return (f"From: Bruno <{BRUNO}>\r\nTo: <{ALICE}>\r\nSubject: ...\r\n".encode() + filler
            + b"From: Le Ministre <ministre@justice.gouv.fr>\r\n\r\nTexte.\r\n")


@pytest.mark.parametrize("tls", [False, True])
def test_a_second_from_after_256_kib_is_refused_whole(gw, raw, record, tls):
    reply, cpu, added = _f4_send(gw, raw, _f10_second_from(), tls=tls)
    record(f"second From after 256 KiB of header fields, stranger{' with STARTTLS' if tls else ''}", reply)
    assert reply == _f4_replies.HEADERS_TOO_BIG
    assert added == set()
    assert cpu < _F4_CPU_BOUND


def test_too_many_header_fields_are_refused_whole(gw, raw, record):
    fields = b"".join(b"X-N%05d: 1\r\n" % i for i in range(1001))  # 13 KiB: under the size limit
    data = f"From: Bruno <{BRUNO}>\r\nTo: <{ALICE}>\r\n".encode() + fields + b"\r\nTexte.\r\n"
    reply, _, added = _f4_send(gw, raw, data, tls=False)
    record("1,003 header fields, stranger", reply)
    assert reply == _f4_replies.TOO_MANY_HEADERS
    assert added == set()


def test_a_header_line_no_parser_reads_alike_is_refused(gw, raw, record):
    """A whitespace-only line ends the header block for some parsers and folds for others."""
    data = (f"From: Bruno <{BRUNO}>\r\nTo: <{ALICE}>\r\n \r\nFrom: <ministre@justice.gouv.fr>\r\n"
            f"\r\nTexte.\r\n").encode()
    reply, _, added = _f4_send(gw, raw, data, tls=False)
    record("whitespace-only line in the header block, stranger", reply)
    assert reply == _f4_replies.MALFORMED_HEADERS
    assert added == set()
