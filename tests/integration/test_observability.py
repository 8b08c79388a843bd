"""A real `securemail serve` (2 crypto worker processes and a delivery process) scraped every second by a
real Prometheus: after a known batch of mail, the counters Prometheus holds equal what was sent and
refused, and a crypto worker killed on purpose shows as one restart. The same run's log (`[log] format =
"json"`, addresses hashed) is JSON lines with the schema, and holds no body, no subject, no local part.
"""

from __future__ import annotations

import json
import os
import signal
import smtplib
import subprocess
import urllib.request
from pathlib import Path

import pytest

from securemail.logs import SCHEMA
from securemail.smtp import replies
from tests.support import (OFFICE, Prometheus, Serve, federation, office_send, require_prometheus, wait_for,
                           wait_listening)

A, B = "interieur.gouv.fr", "justice.gouv.fr"
LOCAL, MEMBER, REFUSED, RCPT_REFUSED = 4, 1, 3, 2      # what the batch holds
MARKER, SUBJECT = "PLAINTEXT-MARKER-7f3a", "SUBJECT-SECRET-91c2"


def message(i: int, to: str) -> bytes:
    return (f"From: alice.martin@{A}\r\nTo: {to}\r\nSubject: {SUBJECT} {i}\r\n"
            f"Message-ID: <obs-{i}@{A}>\r\n\r\n{MARKER} {i}\r\n").encode()


def refused_at_data(port: int, i: int) -> int:
    """From a client outside the office, mail claiming our own domain: refused after DATA."""
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as s:
        s.ehlo()
        assert s.mail(f"alice.martin@{A}")[0] == 250
        assert s.rcpt(f"bruno.durand@{A}")[0] == 250
        code, _ = s.data(message(100 + i, f"bruno.durand@{A}"))
        return code


def refused_at_rcpt(port: int) -> int:
    """From a client outside the office, a relay attempt: refused at RCPT."""
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as s:
        s.ehlo()
        assert s.mail(f"alice.martin@{A}")[0] == 250
        return s.rcpt("someone@example.org")[0]


def children(pid: int) -> dict[int, str]:
    """The live children of ``pid`` and their command lines (one that ends while it is read is left out:
    the killed crypto worker goes between pgrep and /proc)."""
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    found = {}
    for p in out:
        try:
            found[int(p)] = Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
    return found


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    require_prometheus()
    tmp = tmp_path_factory.mktemp("observe")
    _, homes = federation(tmp, trusted=OFFICE + "/32")
    a = homes[A]                                   # B stays down: its mail waits, deferred
    a.tune(format='"json"', cpu_workers="2", give_up_after="3600")
    serve = Serve(a).start()
    prom = None
    try:
        wait_listening(a.metrics, 60, alive=serve._alive)
        prom = Prometheus(tmp / "prometheus", [f"127.0.0.1:{a.metrics}"]).start()
        for i in range(LOCAL):
            office_send(a.relay, f"alice.martin@{A}", [f"bruno.durand@{A}"], message(i, f"bruno.durand@{A}"))
        office_send(a.relay, f"alice.martin@{A}", [f"carla.rossi@{B}"], message(50, f"carla.rossi@{B}"))
        assert [refused_at_data(a.relay, i) for i in range(REFUSED)] == [replies.OWN_DOMAIN_FROM_OUTSIDE.code] * REFUSED
        assert [refused_at_rcpt(a.relay) for _ in range(RCPT_REFUSED)] == [replies.RELAY_DENIED.code] * RCPT_REFUSED
        crypto = [p for p, cmd in children(serve.proc.pid).items() if "securemail.roles.crypto" in cmd]
        assert len(crypto) == 2, children(serve.proc.pid)
        os.kill(crypto[0], signal.SIGKILL)           # the supervisor starts it again: one restart
        wait_for(lambda: len([p for p, cmd in children(serve.proc.pid).items()
                              if "securemail.roles.crypto" in cmd and p not in crypto]) == 1, 60,
                 "the crypto worker to be started again")
        yield a, serve, prom
    finally:
        if prom is not None:
            prom.stop()
        serve.stop()


EXPECTED = {   # PromQL -> what the batch above must give
    'sum(securemail_messages_total{verdict="accepted"})': LOCAL + MEMBER,
    'sum(securemail_messages_total{verdict="refused"})': REFUSED,
    'securemail_messages_total{listener="relay",verdict="refused",reason="sender"}': REFUSED,
    'sum(securemail_recipients_refused_total{reason="relay"})': RCPT_REFUSED,
    'sum(securemail_time_to_250_seconds_count)': LOCAL + MEMBER,
    f'securemail_deliveries_total{{outcome="delivered",domain="{A}"}}': LOCAL,
    f'securemail_time_to_delivered_seconds_count{{domain="{A}"}}': LOCAL,
    'securemail_crypto_seconds_count{operation="local"}': LOCAL,
    'securemail_crypto_seconds_count{operation="outbound"}': MEMBER,
    'securemail_dkim_seconds_count{operation="sign"}': MEMBER,
    'sum(securemail_queue_deliveries)': MEMBER,       # B's, queued or deferred
    'securemail_process_restarts_total{role="crypto"}': 1,
    'securemail_processes{role="crypto"}': 2,          # the killed one is not counted
    'securemail_processes{role="delivery"}': 1,
    'securemail_manifest_serial': 1,
    'up{job="securemail"}': 1,
}


def test_prometheus_counts_what_was_sent_and_refused(run):
    a, serve, prom = run

    def settled():
        return {expr: prom.value(expr) for expr in EXPECTED}
    try:
        wait_for(lambda: settled() == EXPECTED, 90, "Prometheus to scrape the batch")
    except AssertionError:
        raise AssertionError(f"{settled()} != {EXPECTED}\n{serve.output()}") from None
    assert prom.value(f'securemail_deliveries_total{{outcome="deferred",domain="{B}"}}') >= 1
    assert prom.value('securemail_tls_certificate_expiry_seconds{file="cert.pem"}') > 86400 * 700
    assert prom.value("securemail_queue_oldest_seconds") > 0
    result = prom.query("securemail_messages_total")
    report = json.dumps(result, indent=1)
    print(f"\nPrometheus /api/v1/query?query=securemail_messages_total\n{report}")
    (Path(serve.home.home).parent / "prometheus-result.json").write_text(report)
    assert sum(float(r["value"][1]) for r in result) == LOCAL + MEMBER + REFUSED


def test_readyz_of_the_running_gateway(run):
    a, _, _ = run

    def ready():
        with urllib.request.urlopen(f"http://127.0.0.1:{a.metrics}/readyz", timeout=10) as r:
            body = json.load(r)
        checks = {c["name"]: c for c in body["checks"]}
        # the restarted crypto worker counts once it has said ready (building its stage takes a moment)
        return (r.status, body, checks) if checks["crypto workers"]["detail"] == "2 running" else None
    status, body, checks = wait_for(ready, 60, "the restarted crypto worker to be ready")
    assert status == 200 and body["ready"] is True, body
    assert checks["crypto workers"]["detail"] == "2 running", body
    assert checks["delivery workers"]["ok"] and checks["manifest"]["detail"].startswith("serial 1"), body


def test_json_log_lines_have_the_schema_and_no_content(run):
    a, serve, _ = run
    text = serve.log.read_text()
    lines = [json.loads(line) for line in text.splitlines()]     # every line is one JSON object
    assert all(list(obj)[:len(SCHEMA)] == list(SCHEMA) for obj in lines)
    events = {}
    for obj in lines:
        events.setdefault(obj["event"], []).append(obj)
    accepted, refused = events["accepted"], events["refused"]
    assert len(accepted) == LOCAL + MEMBER and len(refused) == REFUSED and len(events["rcpt-refused"]) == RCPT_REFUSED
    for obj in accepted:
        assert obj["role"] == "serve" and obj["listener"] == "relay" and obj["peer"] == OFFICE
        assert obj["verdict"] == "accepted" and obj["reply_code"] == 250 and obj["duration"] >= 0
        assert len(obj["queue_id"]) == 32 and obj["from_domain"] == A and obj["to_domains"] in ([A], [B])
        assert obj["from"].startswith("hmac-") and obj["from"].endswith(f"@{A}")
    for obj in refused:
        assert obj["verdict"] == "refused" and obj["reason"] == "remote_sender"
        assert obj["reply_code"] == replies.OWN_DOMAIN_FROM_OUTSIDE.code
        assert obj["peer"] == "127.0.0.1" and obj["queue_id"] is None and obj["to_domains"] == [A]
    delivered = events["delivered"]
    assert len(delivered) == LOCAL and {d["role"] for d in delivered} == {"delivery"}
    assert {d["queue_id"] for d in delivered} == {o["queue_id"] for o in accepted if o["to_domains"] == [A]}
    assert {obj["role"] for obj in lines} >= {"serve", "crypto", "delivery"}
    for secret in (MARKER, SUBJECT, "alice.martin", "bruno.durand", "carla.rossi"):
        assert secret not in text, secret
