"""The relay-decrypt and lmtp-decrypt hops over a real SQLite queue: opened in memory for the office
MTA or the office's LMTP server, never stored so.

A fake office MTA (or LMTP server) records the bytes it is handed; ``open_sealed`` stands for
``Transformer.open_for_office``. What the queue keeps (and what a DSN quotes) is
the sealed body; a message that cannot be opened bounces; a worker without the
domain keys holds it aside.
"""

from __future__ import annotations

import asyncio

import pytest

from securemail.audit import AuditLog
from securemail.config import Retry
from securemail.db import make_engine
from securemail.schema import create_schema
from securemail.delivery.outcome import Outcome
from securemail.delivery.worker import DeliveryWorker
from securemail.transform.hops import lmtp_hop, relay_hop
from securemail.errors import DecryptionFailed
from securemail.queue import Queue

SEALED = b"From: bruno@justice.gouv.fr\r\nSubject: ...\r\n\r\n-----BEGIN PGP MESSAGE-----\r\n...\r\n"
OPENED = b"Securemail-Status: encrypted=yes\r\nFrom: bruno@justice.gouv.fr\r\n\r\nPLAINTEXT\r\n"


@pytest.fixture(params=[relay_hop("127.0.0.1", 2525, decrypt=True), lmtp_hop("/run/dovecot/lmtp", decrypt=True)],
                ids=str)
def hop(request):
    return request.param


@pytest.fixture
def setup(tmp_path, hop):
    engine = make_engine(f"sqlite:///{tmp_path / 'q.db'}")
    create_schema(engine)
    queue = Queue(engine, lambda: 5_000.0, audit_log=AuditLog(engine))
    handed: list[bytes] = []
    bounces: list[bytes] = []

    async def office(to, mail_from, rcpt, body, **kw):
        assert to == hop
        handed.append(body)
        return Outcome("delivered", 250, "2.0.0 ok")

    def worker(**kw):
        return DeliveryWorker(queue, owner="w", helo="gw.interieur.gouv.fr", clock=lambda: 5_000.0,
                              deliver_smtp=office, deliver_lmtp=office, lease_seconds=120, timeout=10, retry=Retry(60, 600, 3600),
                              bounce_sender=lambda dsn, rcpt: bounces.append(dsn), **kw)
    yield queue, worker, handed, bounces
    engine.dispose()


def _state(queue) -> str:
    [row] = queue.list()
    return row["state"]


def test_the_office_gets_the_opened_message_and_the_queue_only_ever_had_the_sealed_one(setup, hop):
    queue, worker, handed, _ = setup
    mid = queue.enqueue("bruno@justice.gouv.fr", [("alice@interieur.gouv.fr", hop)], SEALED)
    opened: list[bytes] = []
    asyncio.run(worker(open_sealed=lambda b: opened.append(b) or OPENED).run_once())
    assert opened == [SEALED] and handed == [OPENED] and _state(queue) == "delivered"
    assert queue.body(mid) in (SEALED, None)  # None: the body went with the last settle


def test_a_message_that_cannot_be_opened_bounces_with_the_sealed_headers_only(setup, hop):
    queue, worker, handed, bounces = setup
    queue.enqueue("bruno@justice.gouv.fr", [("alice@interieur.gouv.fr", hop)], SEALED)

    def broken(body):
        raise DecryptionFailed("message is not encrypted to any of our keys")
    asyncio.run(worker(open_sealed=broken).run_once())
    assert handed == [] and _state(queue) == "bounced"
    assert len(bounces) == 1 and b"could not be decrypted for the office" in bounces[0]
    assert b"PLAINTEXT" not in bounces[0]


def test_a_worker_without_the_domain_keys_holds_it(setup, hop):
    queue, worker, handed, _ = setup
    queue.enqueue("bruno@justice.gouv.fr", [("alice@interieur.gouv.fr", hop)], SEALED)
    asyncio.run(worker().run_once())
    assert handed == [] and _state(queue) == "held"
