"""securemail serve with two processes on one SQLite database: both accept on one port, each message once,
and either answers /metrics with the counts of both."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import urllib.request

import pytest

from tests.conftest import REPO

from tests.support import OFFICE, Running, federation, office_send, person, wait_for, wait_listening


@pytest.fixture(scope="module")
def fed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("procs")
    _, homes = federation(tmp, trusted=OFFICE + "/32")
    a, b = homes["interieur.gouv.fr"], homes["justice.gouv.fr"]
    person(tmp, "bruno@justice.gouv.fr", b)
    a.tune(processes="2")
    return a, b


def scrape_when(port: int, wanted: str) -> str | None:
    """``/metrics`` of a new connection (any of the serve processes may answer), once it shows ``wanted``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return text if wanted in text else None


def test_two_processes_share_the_port_and_deliver_each_message_once(fed):
    a, b = fed
    log = open(a.home / "serve.log", "ab")
    parent = subprocess.Popen([sys.executable, "-m", "cli.main", "--home", str(a.home), "serve"],
                              cwd=REPO, stdout=log, stderr=log)
    try:
        wait_listening(a.relay, 60, alive=lambda: parent.poll() is None)
        children = subprocess.run(["pgrep", "-P", str(parent.pid)], capture_output=True, text=True)
        assert len(children.stdout.split()) == 2, children.stdout
        with Running(b):
            ids = []
            lock = threading.Lock()

            def send(start: int) -> None:
                for i in range(start, start + 15):
                    msg = (f"From: alice@interieur.gouv.fr\r\nTo: bruno@justice.gouv.fr\r\n"
                           f"Message-ID: <multi-{i}@interieur.gouv.fr>\r\nSubject: n{i}\r\n\r\nbody {i}\r\n")
                    qid = office_send(a.relay, "alice@interieur.gouv.fr", ["bruno@justice.gouv.fr"],
                                      msg.encode())
                    with lock:
                        ids.append(qid)
            threads = [threading.Thread(target=send, args=(k * 100,)) for k in range(3)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            box = b.home / "Maildir" / "bruno@justice.gouv.fr" / "new"
            files = wait_for(lambda: (list(box.iterdir()) if box.exists() and
                                      len(list(box.iterdir())) >= 45 else None), 120, "45 deliveries")
            ids_seen = [f.read_bytes().split(b"Message-ID: <", 1)[1].split(b">", 1)[0] for f in files]
            assert len(ids) == 45 and len(set(ids)) == 45
            assert sorted(ids_seen) == sorted({*ids_seen}) and len(ids_seen) == 45  # each exactly once
            # the metrics port is shared too: whichever process answers, it sums every process's counts
            for _ in range(6):
                text = wait_for(lambda: scrape_when(a.metrics, 'outcome="delivered"} 45.0'), 30, "the settles")
                assert 'securemail_messages_total{listener="relay",reason="",verdict="accepted"} 45.0' in text
                assert 'securemail_processes{role="serve"} 2.0' in text, text
                assert 'securemail_processes{role="supervisor"} 1.0' in text, text
    finally:
        parent.send_signal(signal.SIGTERM)
        code = parent.wait(60)
        log.close()
    assert code == 0, (a.home / "serve.log").read_text()[-3000:]
