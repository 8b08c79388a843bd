"""gateway backup under load, restore into a fresh home: what was queued at backup time is delivered.

A real ``securemail serve`` takes mail from the office without pause and hands it to the office
MTA (``delivery.local = "relay"``, an aiosmtpd server here), which takes fast@ at once and answers
451 to slow@, so a backlog of deferred mail builds up while mail flows. ``securemail gateway
backup`` runs as its own process in the middle of it. The gateway is stopped; the backup is
restored into a new home (and, on PostgreSQL, a new database); the office MTA now takes everything,
and the restored gateway, run as ``securemail serve``, delivers every delivery that the backup
holds as still to make, each exactly once. Every message acknowledged with 250 before the backup
began is in it. Secret files come back 0600.
"""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from contextlib import ExitStack, contextmanager

import pytest
import sqlalchemy as sa
from aiosmtpd.controller import Controller

from tests.support import (OFFICE, PG_URL, REPO, Serve, audit_records, federation, free_port, fresh_schemas, ok,
                           office_send, require_pg, run_cli, wait_for)
from tests.support.dumps import message_id, pending

D = "interieur.gouv.fr"
FAST, SLOW = f"fast@{D}", f"slow@{D}"


class OfficeMta:
    """The office MTA behind the gateway: records (Message-ID, recipient); slow@ waits (451)."""

    def __init__(self) -> None:
        self.arrived: list[tuple[str, str]] = []
        self.hold_slow = True

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if self.hold_slow and address == SLOW:
            return "451 4.2.1 mailbox busy, try later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        mid = message_id(envelope.original_content or envelope.content)
        self.arrived.extend((mid, r) for r in envelope.rcpt_tos)
        return "250 OK"


class Sender(threading.Thread):
    """The office: one message after another (fast@ and slow@ in turn), each 250 recorded."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port, self.stop, self.acked = port, threading.Event(), []  # (queue id, time of its 250)
        self.failure: BaseException | None = None

    def run(self) -> None:
        i = 0
        try:
            while not self.stop.is_set():
                to = SLOW if i % 2 else FAST
                msg = (f"From: agent@{D}\r\nTo: {to}\r\nSubject: load {i}\r\nMessage-ID: <load-{i}@{D}>\r\n"
                       f"\r\nMessage {i}, sent while the gateway is backed up.\r\n").encode()
                qid = office_send(self.port, f"agent@{D}", [to], msg)
                self.acked.append((qid, time.time()))
                i += 1
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.failure = e


@contextmanager
def fresh_database(tag: str):
    """A new PostgreSQL database (a fresh server's, for the restore), dropped after."""
    name = f"smrestore_{tag}_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield sa.engine.make_url(PG_URL).set(database=name)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def gateway_home(stack: ExitStack, tmp_path, kind: str, office_port: int):
    urls = None
    if kind == "postgresql":
        require_pg()
        schema = stack.enter_context(fresh_schemas("load", prefix="smbak"))["load"]
        urls = {D: sa.engine.make_url(PG_URL).update_query_dict({"options": f"-csearch_path={schema}"})
                .render_as_string(hide_password=False)}
    _, homes = federation(tmp_path, (D,), trusted=f"{OFFICE}/32", database_urls=urls)
    g = homes[D]
    text = g.config.read_text().replace('local = "maildir"', 'local = "relay"')
    g.config.write_text(text.replace('# relay_to = "127.0.0.1:25"', f'relay_to = "127.0.0.1:{office_port}"'))
    g.tune(cpu_workers="0")
    return g, (urls or {}).get(D)


def queued(url: str) -> int:
    return len(pending(url))


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_a_backup_under_load_restored_delivers_what_was_queued(tmp_path, kind):
    office = OfficeMta()
    controller = Controller(office, hostname="127.0.0.1", port=free_port())
    controller.start()
    with ExitStack() as stack:
        stack.callback(controller.stop)
        g, pg_url = gateway_home(stack, tmp_path, kind, controller.port)
        serve, sender = Serve(g).start(), Sender(g.relay)
        try:
            sender.start()
            wait_for(lambda: len(sender.acked) >= 30 and len(office.arrived) >= 10 or sender.failure, 120,
                     "mail flowing through the gateway")
            began = time.time()
            taken = subprocess.run([sys.executable, "-m", "cli.main", "--home", str(g.home), "gateway", "backup",
                                    str(tmp_path / "backup")], cwd=REPO, capture_output=True, text=True, timeout=120)
            assert taken.returncode == 0, taken.stderr
            time.sleep(0.5)                                 # mail goes on after the copy, into the old gateway
        finally:
            sender.stop.set()
            sender.join(60)
            assert serve.stop() == 0, serve.output()
        assert sender.failure is None, sender.failure
        acked_before = {qid for qid, at in sender.acked if at < began}
        assert len(acked_before) >= 30 and len(sender.acked) > len(acked_before)

        restored = tmp_path / "restored"
        args = ["gateway", "restore", str(tmp_path / "backup")]
        if kind == "postgresql":
            target = stack.enter_context(fresh_database("load"))
            args += ["--database-url", target.update_query_dict(
                {"options": sa.engine.make_url(pg_url).query["options"]}).render_as_string(hide_password=False)]
        out = ok(run_cli(restored, *args)).stdout
        assert "deliveries to make" in out
        url = args[-1] if kind == "postgresql" else f"sqlite:///{restored / 'securemail.db'}"
        for secret in ("securemail.toml", "tls/key.pem", *(f"dkim/{p.name}" for p in (g.home / "dkim").iterdir()),
                       *(["securemail.db"] if kind == "sqlite" else [])):
            assert stat.S_IMODE((restored / secret).stat().st_mode) == 0o600, secret
        engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
        with engine.connect() as conn:
            in_backup = set(conn.execute(sa.text("SELECT id FROM messages")).scalars())
        engine.dispose()
        assert acked_before <= in_backup                     # every 250 before the backup is in it
        owed = pending(url)
        assert sum(p["recipient"] == SLOW for p in owed) >= 10  # a backlog, not an empty queue

        office.hold_slow, mark = False, len(office.arrived)
        node = Serve(type(g)(g.domain, restored, g.relay, g.submission, g.wkd)).start()
        try:
            wait_for(lambda: queued(url) == 0, 120, "the restored gateway to deliver its queue")
        finally:
            assert node.stop() == 0, node.output()
        assert Counter(office.arrived[mark:]) == Counter((p["message_id"], p["recipient"]) for p in owed)
        restored_at = audit_records(restored, "restored")
        assert len(restored_at) == 1 and restored_at[0]["fields"]["backup_home"] == str(g.home)
        ok(run_cli(restored, "audit", "verify"))


def test_backup_and_restore_refuse_what_they_must_and_keep_outside_files(tmp_path):
    _, homes = federation(tmp_path, (D,), trusted=f"{OFFICE}/32")
    g = homes[D]
    pki = tmp_path / "pki"                                    # the ministry's certificate, outside the home
    pki.mkdir()
    for name in ("cert.pem", "key.pem"):
        (g.home / "tls" / name).rename(pki / name)
    g.tune(cert=f'"{pki / "cert.pem"}"', key=f'"{pki / "key.pem"}"')
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    assert "not an empty directory" in run_cli(g.home, "gateway", "backup", str(tmp_path / "full")).output
    ok(run_cli(g.home, "gateway", "backup", str(tmp_path / "bk")))
    manifest = json.loads((tmp_path / "bk" / "backup.json").read_text())
    assert {e["original"] for e in manifest["outside"]} == {str(pki / "cert.pem"), str(pki / "key.pem")}
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in (tmp_path / "bk").rglob("*") if p.is_file())
    refused = run_cli(g.home, "gateway", "restore", str(tmp_path / "bk"))
    assert refused.exit_code == 2 and "is not a fresh home" in refused.output
    (pki / "key.pem").unlink()
    key = tmp_path / "bk" / "outside" / str(pki / "key.pem").lstrip("/")
    data = key.read_bytes()
    key.write_bytes(data[:-2] + b"X\n")
    damaged = run_cli(tmp_path / "new", "gateway", "restore", str(tmp_path / "bk"))
    assert damaged.exit_code == 2 and "key.pem is missing or damaged" in damaged.output
    assert not (tmp_path / "new" / "securemail.toml").exists()   # nothing written
    key.write_bytes(data)
    ok(run_cli(tmp_path / "new", "gateway", "restore", str(tmp_path / "bk")))
    assert (pki / "key.pem").read_bytes() == data and stat.S_IMODE((pki / "key.pem").stat().st_mode) == 0o600
    checked = json.loads(run_cli(tmp_path / "new", "gateway", "check", "--json").stdout)
    assert {c["name"]: c["ok"] for c in checked["checks"]}["database schema"]
    assert str(tmp_path / "new" / "securemail.db") in (tmp_path / "new" / "securemail.toml").read_text()
