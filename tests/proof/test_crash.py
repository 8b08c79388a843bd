"""Crashes: ``kill -9`` of ``securemail serve`` under load, and between the next hop's 250 and our books.

The sending gateway A is a real ``securemail serve`` process; the receiving
gateway B is built in this process and records what it accepted. Office
clients send from 127.0.0.3 while A is killed with SIGKILL at random moments
and restarted. After the runs the queue drains and the invariant is checked:
every message that got a 250 was stored and is delivered (or still queued or
bounced), and every duplicate at B is a delivery that was in flight (leased)
when a kill came.
"""

from __future__ import annotations

import os
import random
import threading
import time

import pytest

from tests.conftest import run_cli
from tests.support import Running, office_send, wait_for

from .figures import runs
from .leaks import Scan
from .ledger import Ledger, tally
from .load import Load
from .sides import ALICE, BRUNO, Receiver, ServeProc, office_mail, probe
from .world import BACKENDS, database, world

SEED = int(os.environ.get("SECUREMAIL_PROOF_SEED") or random.SystemRandom().randrange(1, 2**31))


def _drain(ledger: Ledger, receiver: Receiver, acked: dict, timeout: float) -> None:
    """Until nothing stored is waiting and every acknowledged message reached the receiver."""
    def settled():
        rows = ledger.rows()
        return (rows and not [r for r in rows if r["state"] == "queued"]
                and all(receiver.accepted[m] for m in acked))
    wait_for(settled, timeout, "the queue to drain", every=0.25)


def _five_hundreds(replies) -> dict:
    return {k: v for k, v in replies.items() if k.split(" ")[-1].startswith("5")}


@pytest.mark.timeout(1800)
@pytest.mark.parametrize("backend", BACKENDS)
def test_kill_9_under_load_loses_nothing(backend, tmp_path, figures, logs):
    n_runs, lease = runs(3, 20), 12
    rng = random.Random(f"{SEED}-{backend}")
    began = time.monotonic()
    with database(backend) as url:
        w = world(tmp_path, a_url=url, lease_seconds=str(lease))
        receiver, serve = Receiver(), ServeProc(w.a)
        load = Load(w.a.relay, clients=4, tag=f"kill-{backend[:2]}")
        in_flight: set[str] = set()
        kills, probes = [], []
        try:
            with Running(w.b, wrap=receiver.install), Ledger(w.a.home) as ledger:
                serve.start()
                load.start()
                for _ in range(n_runs):
                    floor = load.acked_count()
                    wait_for(lambda: load.acked_count() > floor, 120, "mail acknowledged in this run",
                             every=0.02)
                    time.sleep(rng.uniform(0.0, 1.5))
                    serve.kill()
                    kills.append(load.acked_count())
                    in_flight |= ledger.in_flight()
                    time.sleep(rng.uniform(0.0, 0.5))
                    serve.start()
                    probes.append(probe(w.a.relay))
                time.sleep(0.5)
                load.stop()
                _drain(ledger, receiver, load.acked, lease + 120)
                rows = ledger.rows()
                exit_code = serve.stop()
        finally:
            load.stop()
            serve.kill()
        audit = run_cli(w.a.home, "audit", "verify")

    t = tally(load.acked, receiver.accepted, rows, in_flight=in_flight, in_doubt=load.in_doubt)
    scan = Scan()
    scan.replies(load.lines)
    scan.wire(receiver.received)
    scan.log(serve.log.read_bytes(), "serve.log")
    scan.log(logs.text(), "receiver log")
    figures.record(group="crash", name="kill -9 under load", backend=backend, runs=n_runs,
                   clients=4, seed=SEED, lease_seconds=lease, **t.figures(),
                   in_flight_at_kills=len(in_flight), replies=load.replies,
                   probes_ok=sum(ok for ok, _ in probes), probes=len(probes),
                   audit_intact="audit log intact" in audit.stdout, exit_code=exit_code,
                   seconds=round(time.monotonic() - began, 1), **scan.figures())

    assert t.not_stored == [] and t.lost == 0, f"seed {SEED}: {t}"
    assert t.unexplained_duplicates == [], f"seed {SEED}: duplicates not in flight at a kill: {t}"
    assert t.acked >= n_runs and all(ok for ok, _ in probes), probes
    assert not _five_hundreds(load.replies), load.replies
    assert scan.count == 0, scan.leaks
    assert audit.exit_code == 0 and "audit log intact" in audit.stdout, audit.output
    assert exit_code == 0, serve.output()


@pytest.mark.timeout(900)
@pytest.mark.parametrize("backend", BACKENDS)
def test_kill_after_next_hops_250_redelivers_once_after_the_lease(backend, tmp_path, figures, logs):
    """A is frozen (SIGSTOP) as B's 250 goes out, then killed: it never records the delivery.

    After a restart the delivery is claimed again once its lease has run out, and sent again:
    exactly one duplicate, nothing lost.
    """
    n_runs, lease = runs(1, 3), 8
    began = time.monotonic()
    delays, replies = [], []
    with database(backend) as url:
        w = world(tmp_path, a_url=url, lease_seconds=str(lease))
        receiver, serve = Receiver(), ServeProc(w.a)
        try:
            with Running(w.b, wrap=receiver.install), Ledger(w.a.home) as ledger:
                serve.start()
                for i in range(n_runs):
                    msgid, killed = f"between-{backend[:2]}-{i}", threading.Event()

                    def kill(done=killed):
                        serve.kill()
                        done.set()
                    receiver.trap(msgid, serve.freeze, kill)   # A is frozen when B's 250 goes out
                    qid = office_send(w.a.relay, ALICE, [BRUNO], office_mail(msgid))
                    wait_for(killed.is_set, 60, "the sender frozen before the 250 and killed after it")
                    serve.proc.wait(30)
                    row = [r for r in ledger.rows() if r["message_id"] == qid]
                    assert [r["state"] for r in row] == ["queued"] and row[0]["lease_owner"], row
                    assert receiver.accepted[msgid] == 1
                    serve.start()
                    wait_for(lambda: ledger.states(qid) == ["delivered"], lease + 90, "the re-delivery")
                    first, second = receiver.times(msgid)
                    assert second >= row[0]["lease_until"] - 0.5, (second, row[0]["lease_until"])
                    delays.append(round(second - first, 1))
                ok, replies = probe(w.a.relay)
                exit_code = serve.stop()
        finally:
            serve.kill()

    ids = [f"between-{backend[:2]}-{i}" for i in range(n_runs)]
    scan = Scan()
    scan.replies(replies)
    scan.wire(receiver.received)
    scan.log(serve.log.read_bytes(), "serve.log")
    scan.log(logs.text(), "receiver log")
    dup = sum(receiver.accepted[m] - 1 for m in ids)
    figures.record(group="crash", name="kill between the next hop's 250 and mark_delivered",
                   backend=backend, runs=n_runs, acked=n_runs, lease_seconds=lease,
                   delivered=sum(1 for m in ids if receiver.accepted[m]), duplicated=dup,
                   lost=sum(1 for m in ids if not receiver.accepted[m]),
                   redelivered_after_seconds=delays, probes_ok=int(ok), probes=1,
                   seconds=round(time.monotonic() - began, 1), **scan.figures())
    assert [receiver.accepted[m] for m in ids] == [2] * n_runs  # exactly one duplicate each
    assert ok and exit_code == 0, (replies, serve.output())
    assert scan.count == 0, scan.leaks
