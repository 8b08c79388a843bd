"""Storage faults: the disk under the SQLite queue fills up; PostgreSQL stops and comes back.

Gateway A is a real ``securemail serve`` process; B (in this process) is up
throughout. While storage is gone, new mail must get a 4xx (never a 5xx), a
new session must still be answered, and nothing acknowledged may be lost;
when storage is back, mail is accepted again without restarting A. A
duplicate is allowed only for a message B first accepted while storage was
gone (A could not record the delivery and sent it again after the lease).
"""

from __future__ import annotations

import errno
import shutil
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.support import Running, wait_for

from .figures import FULL, runs
from .leaks import Scan
from .ledger import Ledger, tally
from .load import Load
from .sides import Receiver, ServeProc, office_mail, probe
from .world import pg_schema, world

LEASE = 8


def _send_until(load_port: int, tag: str, want, limit: int, pad: int = 0) -> Load:
    """One client sending one message at a time until ``want(load)`` or ``limit`` messages."""
    load = Load(load_port, clients=1, per_session=1, tag=tag, make=lambda m: office_mail(m, pad=pad))
    load.start()
    try:
        wait_for(lambda: want(load) or sum(v for k, v in load.replies.items() if k.startswith("DATA")) >= limit,
                 120, f"{tag}: the replies wanted", every=0.05)
    finally:
        load.stop()
    return load


def _data_codes(load: Load) -> dict[str, int]:
    return {k.split(" ")[1]: v for k, v in load.replies.items() if k.startswith("DATA")}


def _in_outage(receiver: Receiver, start: float, end: float) -> set[str]:
    """Message-IDs B first accepted while their delivery's bookkeeping could fail for the outage.

    A delivery settles within its lease or not at all, so one accepted up to a lease before the
    outage began may still have been waiting for its commit; one accepted up to a lease after it
    ended may have been claimed during it.
    """
    return {m for m in list(receiver.accepted) if start - LEASE <= receiver.times(m)[0] <= end + LEASE + 5}


def _scan(loads: dict, probes: list, receiver: Receiver, serve: ServeProc) -> Scan:
    """Every reply, probe, message on the wire and serve.log line of a run, searched for leaks."""
    scan = Scan()
    for load in loads.values():
        scan.replies(load.lines)
    scan.replies(line for _, got in probes for line in got)
    scan.wire(receiver.received)
    scan.log(serve.log.read_bytes(), "serve.log")
    return scan


def _fill(directory: Path) -> Path:
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as f:  # unbuffered: nothing left to flush at close
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError as e:
            assert e.errno == errno.ENOSPC, e
    return filler


@pytest.fixture
def tmpfs(tmp_path):
    """A 2 MiB tmpfs (root only; skipped with the reason otherwise), unmounted after."""
    mnt = tmp_path / "dbfs"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(mnt)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs for the disk-full test (needs root): "
                    f"{res.stderr.strip() or res.returncode}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _move_database(g, mnt: Path) -> Path:
    db = g.home / "securemail.db"
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    target = mnt / "securemail.db"
    shutil.copy2(db, target)
    for f in g.home.glob("securemail.db*"):
        f.unlink()
    g.tune(url=f'"sqlite:///{target}"')
    return target


@pytest.mark.timeout(600)
def test_disk_full_answers_4xx_and_resumes_without_restart(tmp_path, tmpfs, figures):
    began = time.monotonic()
    w = world(tmp_path, lease_seconds=str(LEASE))
    db = _move_database(w.a, tmpfs)
    receiver, serve = Receiver(), ServeProc(w.a)
    probes, loads = [], {}
    try:
        with Running(w.b, wrap=receiver.install), Ledger(w.a.home) as ledger:
            serve.start()
            loads["before"] = _send_until(w.a.relay, "disk-before", lambda l: len(l.acked) >= 5, 5)
            filler, full_at = _fill(tmpfs), time.time()
            loads["full"] = _send_until(w.a.relay, "disk-full", lambda l: len(l.refused) >= 5, 60, pad=20000)
            probes.append(probe(w.a.relay))
            alive_while_full = serve.proc.poll() is None
            filler.unlink()
            freed_at = time.time()
            loads["after"] = _send_until(w.a.relay, "disk-after", lambda l: len(l.acked) >= 5, 40)
            probes.append(probe(w.a.relay))
            acked = {m: q for l in loads.values() for m, q in l.acked.items()}
            wait_for(lambda: all(receiver.accepted[m] for m in acked)
                     and not [r for r in ledger.rows() if r["state"] == "queued"],
                     LEASE + 120, "the queue to drain", every=0.25)
            rows = ledger.rows()
            exit_code = serve.stop()
    finally:
        serve.kill()
    integrity = sqlite3.connect(db).execute("PRAGMA integrity_check").fetchone()[0]
    audit = run_cli(w.a.home, "audit", "verify")

    t = tally(acked, receiver.accepted, rows, in_flight=_in_outage(receiver, full_at, freed_at),
              in_doubt=set().union(*(l.in_doubt for l in loads.values())))
    full_codes = _data_codes(loads["full"])
    scan = _scan(loads, probes, receiver, serve)
    figures.record(group="storage", name="disk full (SQLite on a 2 MiB tmpfs)", backend="sqlite", runs=1,
                   **t.figures(), replies_while_full=full_codes, replies_after=_data_codes(loads["after"]),
                   probes=len(probes), probes_ok=sum(ok for ok, _ in probes), restarted=False,
                   integrity=integrity, audit_intact="audit log intact" in audit.stdout,
                   seconds=round(time.monotonic() - began, 1), **scan.figures())

    assert alive_while_full, serve.output()
    assert full_codes.get("451", 0) >= 1 and not any(c.startswith("5") for c in full_codes), full_codes
    assert not [k for k in loads["full"].replies if k.split(" ")[-1].startswith("5")], loads["full"].replies
    assert len(loads["after"].acked) >= 5, loads["after"].replies       # resumed, same process
    assert t.lost == 0 and t.not_stored == [], t
    assert t.unexplained_duplicates == [], t
    assert all(ok for ok, _ in probes), probes
    assert integrity == "ok" and audit.exit_code == 0, audit.output
    assert scan.count == 0, scan.leaks
    assert exit_code == 0, serve.output()


def _pg_cluster() -> tuple[str, str]:
    """(version, name) of the local PostgreSQL cluster on port 5432, or skip."""
    if shutil.which("pg_ctlcluster") is None or shutil.which("pg_lsclusters") is None:
        pytest.skip("pg_ctlcluster not installed: cannot stop and start PostgreSQL here")
    for line in subprocess.run(["pg_lsclusters", "-h"], capture_output=True, text=True).stdout.splitlines():
        ver, name, port, status, *_ = line.split()
        if port == "5432" and status == "online":
            return ver, name
    pytest.skip("no online local PostgreSQL cluster on port 5432")


def _pg(ver: str, name: str, action: str, *extra: str) -> None:
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", ver, name, action, *extra],
                   check=True, capture_output=True, timeout=120)


def _pg_ready(timeout: float = 60) -> None:
    wait_for(lambda: subprocess.run(["pg_isready", "-h", "127.0.0.1", "-p", "5432", "-q"]).returncode == 0,
             timeout, "PostgreSQL to accept connections", every=0.2)


@pytest.mark.postgres
@pytest.mark.timeout(600)
@pytest.mark.skipif(not FULL, reason="stops the shared PostgreSQL server: only in the full proof (make proof)")
def test_postgresql_stopped_answers_4xx_and_resumes_by_itself(tmp_path, figures):
    began = time.monotonic()
    ver, name = _pg_cluster()
    probes, loads, down = [], {}, runs(1, 5)
    with pg_schema("stop") as url:
        w = world(tmp_path, a_url=url, lease_seconds=str(LEASE))
        receiver, serve = Receiver(), ServeProc(w.a)
        try:
            with Running(w.b, wrap=receiver.install):
                serve.start()
                loads["before"] = _send_until(w.a.relay, "pg-before", lambda l: len(l.acked) >= 5, 5)
                stopped_at = time.time()
                try:
                    _pg(ver, name, "stop", "-m", "immediate")
                    loads["down"] = _send_until(w.a.relay, "pg-down", lambda l: len(l.refused) >= down, 30)
                    probes.append(probe(w.a.relay))
                finally:
                    _pg(ver, name, "start")
                    _pg_ready()
                started_at = time.time()
                loads["after"] = _send_until(w.a.relay, "pg-after", lambda l: len(l.acked) >= 5, 60)
                probes.append(probe(w.a.relay))
                acked = {m: q for l in loads.values() for m, q in l.acked.items()}
                with Ledger(w.a.home) as ledger:
                    wait_for(lambda: all(receiver.accepted[m] for m in acked)
                             and not [r for r in ledger.rows() if r["state"] == "queued"],
                             LEASE + 120, "the queue to drain", every=0.25)
                    rows = ledger.rows()
                exit_code = serve.stop()
        finally:
            serve.kill()
        audit = run_cli(w.a.home, "audit", "verify")

    t = tally(acked, receiver.accepted, rows, in_flight=_in_outage(receiver, stopped_at, started_at),
              in_doubt=set().union(*(l.in_doubt for l in loads.values())))
    down_codes = _data_codes(loads["down"])
    scan = _scan(loads, probes, receiver, serve)
    figures.record(group="storage", name="PostgreSQL stopped (-m immediate) and restarted", backend="postgresql",
                   runs=1, **t.figures(), replies_while_down=down_codes, replies_after=_data_codes(loads["after"]),
                   down_seconds=round(started_at - stopped_at, 1), probes=len(probes),
                   probes_ok=sum(ok for ok, _ in probes), restarted=False,
                   audit_intact="audit log intact" in audit.stdout,
                   seconds=round(time.monotonic() - began, 1), **scan.figures())

    assert down_codes and all(c.startswith("4") for c in down_codes), loads["down"].replies
    assert not [k for k in loads["down"].replies if k.split(" ")[-1].startswith("5")], loads["down"].replies
    assert len(loads["after"].acked) >= 5, loads["after"].replies
    assert t.lost == 0 and t.not_stored == [], t
    assert t.unexplained_duplicates == [], t
    assert all(ok for ok, _ in probes), probes
    assert audit.exit_code == 0, audit.output
    assert scan.count == 0, scan.leaks
    assert exit_code == 0, serve.output()
