"""The delivery stage in a child process (procs/delivery.py, roles/delivery.py): it delivers, it is started again
when it dies, it stops with its serve process, and it exits when that process is killed."""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.support import OFFICE, Running, Serve, federation, office_send, person, wait_for

MARKER = "PLAINTEXT-MARKER-d41f"


def plain(n: int) -> bytes:
    return (f"From: alice@interieur.gouv.fr\r\nTo: bruno@justice.gouv.fr\r\nSubject: d {n}\r\n"
            f"Message-ID: <dproc-{n}@x>\r\n\r\n{MARKER} {n}\r\n").encode()


def maildir(home):
    d = home / "Maildir" / "bruno@justice.gouv.fr" / "new"
    return sorted(d.iterdir()) if d.exists() else []


def children_of(pid: int) -> set[int]:
    out = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.add(int(entry))
            except OSError:
                pass
    return out


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture(scope="module")
def fed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dproc")
    _, homes = federation(tmp, trusted=OFFICE + "/32")
    a, b = homes["interieur.gouv.fr"], homes["justice.gouv.fr"]
    person(tmp, "bruno@justice.gouv.fr", b, "Bruno Petit")
    for h in (a, b):  # one crypto worker, and the delivery stage in a process of its own
        cfg = h.home / "securemail.toml"
        text = cfg.read_text().replace("[delivery]\n", "[delivery]\nprocess = true\n", 1)
        assert "process = true" in text
        cfg.write_text(text)
    return a, b


def test_mail_is_delivered_by_the_child_which_is_replaced_when_it_dies(fed):
    a, b = fed
    with Running(a, b, cpu_workers=1) as running:
        gw = running.gateways[0]
        assert gw.workers == [] and gw.delivery is not None
        first = gw.delivery.proc.pid
        assert first in children_of(os.getpid())
        before = len(maildir(b.home))
        office_send(a.relay, "alice@interieur.gouv.fr", ["bruno@justice.gouv.fr"], plain(1))
        wait_for(lambda: len(maildir(b.home)) > before, what="delivery by the child")
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: gw.delivery.proc.pid != first and gw.delivery.proc.returncode is None,
                 what="a new delivery process")
        office_send(a.relay, "alice@interieur.gouv.fr", ["bruno@justice.gouv.fr"], plain(2))
        wait_for(lambda: len(maildir(b.home)) > before + 1, what="delivery by the new child")
        last = gw.delivery.proc
    assert last.returncode == 0  # stopped with SIGTERM: finished its work and exited cleanly


def test_the_children_exit_when_their_serve_process_is_killed(fed):
    a, _ = fed
    serve = Serve(a).start()
    try:
        def cmd(pid):
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                return f.read()
        kids = wait_for(lambda: (k := children_of(serve.proc.pid))
                        and any(b"securemail.roles.delivery" in cmd(p) for p in k) and k,
                        what="the delivery child")  # and the crypto workers, on a machine with 2+ cores
        serve.proc.kill()
        serve.proc.wait()
        end = time.monotonic() + 30
        while any(alive(p) for p in kids) and time.monotonic() < end:
            time.sleep(0.1)
        assert not any(alive(p) for p in kids), "a child outlived its serve process"
    finally:
        serve.stop()
