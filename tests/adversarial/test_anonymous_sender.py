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
from tests.integration.gateways import audit_records as _f7_audit  # noqa: E402


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
