"""The crypto stage in worker processes (procs/cpu.py): same results as in-process, and a dead
worker costs only its messages in flight, answered 451, never a lost or half-processed message."""

from __future__ import annotations

import asyncio
import os
import signal
import smtplib
import threading

import pytest

from securemail.errors import ConfigError
from securemail.app import role_command
from securemail.procs.cpu import CpuPool

from tests.support import OFFICE, Running, federation, office_send, person, wait_for

MARKER = "PLAINTEXT-MARKER-c9e1"


def plain(sender: str, rcpt: str, n: int) -> bytes:
    return (f"From: {sender}\r\nTo: {rcpt}\r\nSubject: pool {n}\r\nMessage-ID: <pool-{n}@x>\r\n\r\n"
            f"{MARKER} {n}\r\n").encode()


def maildir(home, address):
    d = home / "Maildir" / address / "new"
    return sorted(d.iterdir()) if d.exists() else []


def parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


@pytest.fixture(scope="module")
def fed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pool")
    _, homes = federation(tmp, trusted=OFFICE + "/32")
    a, b = homes["interieur.gouv.fr"], homes["justice.gouv.fr"]
    person(tmp, "bruno@justice.gouv.fr", b, "Bruno Petit")  # his gateway re-encrypts to his key
    with Running(a, b, cpu_workers=1) as running:
        yield a, b, running.gateways[0]


def test_office_mail_is_encrypted_in_a_worker_process_and_delivered(fed):
    a, b, gw = fed
    assert gw.cpu is not None and len(gw.cpu.pids) == 1
    (pid,) = gw.cpu.pids
    assert pid != os.getpid() and parent_of(pid) == os.getpid()
    before = len(maildir(b.home, "bruno@justice.gouv.fr"))
    office_send(a.relay, "alice@interieur.gouv.fr", ["bruno@justice.gouv.fr"],
                plain("alice@interieur.gouv.fr", "bruno@justice.gouv.fr", 1))
    files = wait_for(lambda: maildir(b.home, "bruno@justice.gouv.fr")[before:], what="delivery")
    data = files[0].read_bytes()
    assert b"multipart/encrypted" in data and MARKER.encode() not in data


def test_a_refusal_made_in_a_worker_reaches_the_client_with_its_code(fed):
    a, _, _ = fed
    with smtplib.SMTP("127.0.0.1", a.relay, source_address=(OFFICE, 0), timeout=60) as s:
        s.ehlo()
        assert s.mail("alice@interieur.gouv.fr")[0] == 250
        assert s.rcpt("bruno@justice.gouv.fr")[0] == 250
        code, text = s.data(b"From: mallory@elsewhere.example\r\nTo: bruno@justice.gouv.fr\r\n"
                            b"Subject: spoof\r\n\r\nhello\r\n")
    # the From: domain is neither ours nor a member's: the policy chain's own refusal, not 451
    assert 500 <= code < 600, (code, text)
    assert not text.startswith(b"4")


def test_a_worker_killed_mid_message_answers_451_and_is_replaced(fed):
    a, b, gw = fed
    (pid,) = gw.cpu.pids
    os.kill(pid, signal.SIGSTOP)  # the message reaches the worker and stays there
    result: dict = {}

    def send():
        try:
            office_send(a.relay, "alice@interieur.gouv.fr", ["bruno@justice.gouv.fr"],
                        plain("alice@interieur.gouv.fr", "bruno@justice.gouv.fr", 2))
            result["code"] = 250
        except AssertionError as err:
            result["code"] = err.args[0][0]
    t = threading.Thread(target=send)
    t.start()
    slot = gw.cpu._slots[0]
    wait_for(lambda: slot.pending, what="the message in flight in the stopped worker")
    os.kill(pid, signal.SIGKILL)
    t.join(60)
    assert result["code"] == 451
    new = wait_for(lambda: gw.cpu.pids - {pid}, what="a new worker")
    assert parent_of(next(iter(new))) == os.getpid()
    before = len(maildir(b.home, "bruno@justice.gouv.fr"))
    office_send(a.relay, "alice@interieur.gouv.fr", ["bruno@justice.gouv.fr"],
                plain("alice@interieur.gouv.fr", "bruno@justice.gouv.fr", 3))
    wait_for(lambda: len(maildir(b.home, "bruno@justice.gouv.fr")) > before, what="delivery after restart")


def test_a_worker_that_cannot_build_its_stage_stops_the_start(tmp_path):
    pool = CpuPool(role_command("crypto", tmp_path / "no-such-home"), 1)
    with pytest.raises(ConfigError, match="could not start"):
        asyncio.run(pool.start())


def test_a_big_message_is_committed_by_the_worker_and_delivered(fed):
    from tests.support import queue_rows
    a, b, gw = fed
    before = len(maildir(b.home, "bruno@justice.gouv.fr"))
    filler = ("x" * 76 + "\r\n") * 40_000  # ~3 MB: sent to the worker in pieces, stored there
    msg = plain("alice@interieur.gouv.fr", "bruno@justice.gouv.fr", 4) + filler.encode()
    qid = office_send(a.relay, "alice@interieur.gouv.fr", ["bruno@justice.gouv.fr"], msg)
    assert [r["message_id"] for r in queue_rows(a.home, qid)] == [qid]
    files = wait_for(lambda: maildir(b.home, "bruno@justice.gouv.fr")[before:], what="delivery")
    assert len(files[0].read_bytes()) > len(msg) and MARKER.encode() not in files[0].read_bytes()
