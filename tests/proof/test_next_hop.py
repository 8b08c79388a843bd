"""Next-hop faults: refused, 4xx, tarpit, hang at DATA, drop after DATA (deferred, on schedule), 5xx (DSN).

Gateway A (built in this process, retries every 1 s doubling to 2 s, an SMTP
step timeout of 2 s from its 8 s lease) sends to B's address while B is down,
while a tarpit holds B's port, then while B (in this process) misbehaves per
message. Each deferred message must be retried no earlier than its schedule
says and not much later, and delivered exactly once when the fault ends; the
5xx one must bounce with a headers-only DSN to alice and never reach B.
"""

from __future__ import annotations

import email
import time
from email import policy

import pytest

from tests.support import Running, audit_records, office_send, queue_rows, wait_for

from .figures import runs
from .leaks import Scan
from .sides import ALICE, BRUNO, Receiver, Tarpit, office_mail, probe
from .world import mailbox, world

LEASE, TIMEOUT = 8, 2.0          # lease_seconds = 8 gives the worker a 2 s SMTP step timeout
FIRST, CAP = 1.0, 2.0            # tests.support.FAST
MIN_TRIES = runs(2, 4)


def _tries(home, qid: str) -> list[dict]:
    return [r for r in audit_records(home, "deferred") if r["fields"]["message_id"] == qid]


def _schedule(records: list[dict]) -> tuple[float, float]:
    """(smallest, largest) time from a retry's due time to the end of that try, in seconds.

    Each deferral must also have set its retry time by the schedule: ``first`` doubling up to ``cap``.
    """
    gaps = []
    for prev, nxt in zip(records, records[1:]):
        want = min(CAP, FIRST * 2 ** max(0, prev["fields"]["attempts"] - 1))
        assert abs(prev["fields"]["retry_at"] - prev["at"] - want) < 0.5, (prev, want)
        gaps.append(nxt["at"] - prev["fields"]["retry_at"])
    return min(gaps), max(gaps)


@pytest.mark.timeout(600)
def test_next_hop_faults_defer_on_schedule_and_5xx_bounces(tmp_path, figures, logs):
    began = time.monotonic()
    w = world(tmp_path, lease_seconds=str(LEASE))
    receiver = Receiver()
    faults = {"refused": None, "tarpit": None, "4xx": Receiver.TEMP, "hang at DATA": Receiver.HANG,
              "drop after DATA": Receiver.DROP}
    qids, errors, probes = {}, {}, []

    def send(name: str) -> None:
        qids[name] = office_send(w.a.relay, ALICE, [BRUNO], office_mail(f"hop-{name.replace(' ', '-')}"))

    def tried(name: str, n: int = MIN_TRIES) -> None:
        wait_for(lambda: len(_tries(w.a.home, qids[name])) >= n, 90, f"{n} tries of {name}")
        rows = queue_rows(w.a.home, qids[name])
        assert [r["state"] for r in rows] == ["queued"], rows
        errors[name] = rows[0]["last_error"]

    with Running(w.a):
        send("refused")                                  # B is down: connection refused
        tried("refused")
        probes.append(probe(w.a.relay))
        with Tarpit(w.b.relay) as pit:                   # B's port accepts and never answers
            send("tarpit")
            tried("tarpit")
        probes.append(probe(w.a.relay))
        for name in ("4xx", "hang at DATA", "drop after DATA", "5xx"):
            receiver.faults[f"hop-{name.replace(' ', '-')}"] = faults.get(name, Receiver.PERM)
        with Running(w.b, wrap=receiver.install):
            for name in ("4xx", "hang at DATA", "drop after DATA", "5xx"):
                send(name)
            for name in ("4xx", "hang at DATA", "drop after DATA"):
                tried(name)
            wait_for(lambda: [r["state"] for r in queue_rows(w.a.home, qids["5xx"])] == ["bounced"],
                     60, "the 5xx bounce")
            dsn = wait_for(lambda: mailbox(w.a, ALICE), 60, "the DSN to alice")
            receiver.faults.clear()
            receiver.release.set()
            wait_for(lambda: all([r["state"] for r in queue_rows(w.a.home, q)] == ["delivered"]
                                 for n, q in qids.items() if n != "5xx"), 60, "every deferred delivery")
            probes.append(probe(w.a.relay))

    results = {}
    for name, qid in qids.items():
        tries = _tries(w.a.home, qid)
        msgid = f"hop-{name.replace(' ', '-')}"
        early, late = _schedule(tries) if name != "5xx" else (0.0, 0.0)
        results[name] = {"tries": len(tries), "early": round(early, 2), "late": round(late, 2),
                         "accepted": receiver.accepted[msgid]}
    raw = dsn[0].read_bytes()
    scan = Scan()
    scan.replies([line for _, got in probes for line in got])
    scan.wire(receiver.received)
    scan.dsn(raw)
    scan.log(logs.text(), "gateway log")
    report = email.message_from_bytes(raw, policy=policy.compat32).get_payload()[1].as_string()
    diagnostic = " ".join(line.strip() for line in report.splitlines()
                          if line.startswith(("Status:", "Diagnostic-Code:")))
    for name, r in results.items():
        figures.record(group="next hop", name=name, backend="sqlite", runs=1, acked=1,
                       delivered=int(r["accepted"] > 0), duplicated=max(0, r["accepted"] - 1),
                       lost=int(name != "5xx" and r["accepted"] == 0), bounced=int(name == "5xx"), tries=r["tries"],
                       **({} if name == "5xx" else {"retry_early_s": r["early"], "retry_late_s": r["late"]}),
                       outcome=(f"bounced; DSN: {diagnostic}" if name == "5xx"
                                else f"deferred ({errors[name]}), then delivered once"))
    figures.record(group="next hop", name="all faults: leak and probe checks", backend="sqlite",
                   probes=len(probes), probes_ok=sum(ok for ok, _ in probes),
                   seconds=round(time.monotonic() - began, 1), **scan.figures())

    assert pit.accepted >= 1
    for name, r in results.items():
        if name == "5xx":
            assert r["accepted"] == 0 and r["tries"] == 0, r
            continue
        assert r["tries"] >= MIN_TRIES and r["accepted"] == 1, (name, r)
        assert r["early"] > 0, (name, r)                         # never retried before it was due
        assert r["late"] < 4 * TIMEOUT + 3, (name, r)            # nor much after
    assert "Status: 5.7.1" in report and "Diagnostic-Code: smtp; 554 5.7.1" in report, report
    assert all(ok for ok, _ in probes), probes
    assert scan.count == 0, scan.leaks
