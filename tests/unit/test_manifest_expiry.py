"""Manifest expiry: the signed ``expires``, installing, what a stale manifest defers (intake rule, delivery
pre-send check), ``gateway check``'s expiry line and the ``[federation] url`` settings. Real keys, no network."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from securemail.manifest_source import ManifestSource

from securemail import federation as F
from securemail.admin.check_federation import expiry_check
from securemail.audit import AuditLog
from securemail.config import GatewayConfig, Retry
from securemail.config_ops import anchoring, manifest_fetch
from securemail.crypto import openpgp
from securemail.crypto.dkim import generate_dkim_key
from securemail.crypto.keys import Key
from securemail.db import make_engine
from securemail.delivery.keycheck import MANIFEST_EXPIRED, KeyCheck
from securemail.delivery.worker import DeliveryWorker
from securemail.errors import ConfigError
from securemail.keys.store import KeyStore
from securemail.policy import rules
from securemail.policy.facts import gather
from securemail.queue import Queue
from securemail.schema import create_schema
from securemail.transform.hops import relay_hop, smtp_hop
from tests.unit.test_delivery_worker import OK, Clock, FakeNet
from tests.unit.test_policy import ENC, env

T0 = float(int(time.time()) + 3600)  # after the keys made below: they are valid then
MEMBER = "justice.gouv.fr"


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds")


@pytest.fixture(scope="module")
def authority() -> Key:
    return Key(openpgp.generate("Federation Authority <authority@federation.gouv.fr>", "ed25519", None, None))


@pytest.fixture(scope="module")
def entry() -> dict:
    key = Key(openpgp.generate(f"securemail gateway <gateway@{MEMBER}>", "ed25519", None, None))
    return {"domain": MEMBER, "gateway": f"gw.{MEMBER}:25", "tls_pin": hashlib.sha256(b"j").hexdigest(),
            "openpgp_key": key.public().armored().decode(),
            "dkim": [{"selector": "ed1", "public_key": generate_dkim_key("ed25519").public_txt}]}


def signed(entry, authority, serial=1, expires: float | None = T0 + 30 * 86400) -> bytes:
    m = {"serial": serial, "created": iso(T0), "members": [entry]}
    if expires is not None:
        m["expires"] = iso(expires)
    return F.sign_manifest(m, authority, now=T0)


@pytest.fixture
def db(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'g.db'}")
    create_schema(engine)
    yield engine
    engine.dispose()


# --- the signed field ---------------------------------------------------------------------------
def test_expires_is_signed_and_read(entry, authority):
    m = F.verify_manifest(signed(entry, authority), authority.fingerprint, authority.public(), now=T0)
    assert m.expires == iso(T0 + 30 * 86400) and m.expires_at == T0 + 30 * 86400
    old = F.verify_manifest(signed(entry, authority, expires=None), authority.fingerprint, authority.public(),
                            now=T0)
    assert old.expires is None and old.expires_at is None  # made before manifests expired: still valid


@pytest.mark.parametrize("bad", [iso(T0 - 1), iso(T0), "tomorrow", "2026-13-45T09:00:00+00:00", int(T0) + 60],
                         ids=["before-created", "at-created", "not-a-time", "not-a-date", "a-number"])
def test_expires_must_be_a_time_after_created(entry, authority, bad):
    m = {"serial": 1, "created": iso(T0), "expires": bad, "members": [entry]}
    with pytest.raises(F.ManifestInvalid, match="manifest expires must be"):
        F.sign_manifest(m, authority, now=T0)


def test_expires_cannot_be_changed_after_signing(entry, authority):
    doc = json.loads(signed(entry, authority, expires=T0 + 86400))
    doc["manifest"]["expires"] = iso(T0 + 365 * 86400)  # a directory stretching a stale manifest
    with pytest.raises(F.ManifestRefused, match="not signed by the federation authority"):
        F.verify_manifest(json.dumps(doc).encode(), authority.fingerprint, authority.public(), now=T0)


def test_install_refuses_an_expired_manifest_and_audits_expiry(entry, authority, tmp_path, db):
    path, audit = tmp_path / "federation.json", AuditLog(db)
    data = signed(entry, authority, expires=T0 + 3600)
    with pytest.raises(F.ManifestRefused, match=re.escape(f"serial 1 expired at {iso(T0 + 3600)}")):
        F.install(data, path, authority.fingerprint, authority, audit, now=T0 + 3600)
    assert not path.exists()
    F.install(data, path, authority.fingerprint, authority, audit, now=T0 + 3599, source="https://a.test/f")
    [rec] = [r for r in audit.records() if r.kind == "manifest-change"]
    assert rec.fields["expires"] == iso(T0 + 3600) and rec.fields["source"] == "https://a.test/f"


def test_manifest_source_counts_down_to_expiry(entry, authority, tmp_path):
    path, clock = tmp_path / "federation.json", Clock()
    source = ManifestSource(path, clock)
    assert source.seconds_to_expiry() is None and not source.expired()  # nothing installed
    path.write_bytes(signed(entry, authority, expires=T0 + 100))
    clock.t = T0 + 40
    assert source.seconds_to_expiry() == 60 and not source.expired()
    clock.t = T0 + 100
    assert source.seconds_to_expiry() == 0 and source.expired()
    path.write_bytes(signed(entry, authority, serial=2, expires=None))
    assert source.seconds_to_expiry() is None and not source.expired()


# --- intake: the policy rule --------------------------------------------------------------------
def facts(e, *, trusted, expired):
    return gather(e, listener="relay", trusted=trusted, own_domains=("interieur.gouv.fr",),
                  members=frozenset({MEMBER}), encryption=ENC, dkim_status="pass",
                  dkim_domains=frozenset({MEMBER}), cert_domains=frozenset({MEMBER}),
                  manifest_expired=expired)


def test_expired_manifest_defers_mail_to_members():
    office = env("alice@interieur.gouv.fr", rcpts=(f"bruno@{MEMBER}",))
    v = rules.evaluate(facts(office, trusted=True, expired=True))
    assert (v.rule, v.reply, v.temporary) == ("manifest_current", rules.replies.MANIFEST_EXPIRED, True)
    assert v.reply.startswith("451 4.7.0 ")
    assert rules.evaluate(facts(office, trusted=True, expired=False)) is None


def test_expired_manifest_defers_mail_from_members():
    inbound = env()  # bruno@justice.gouv.fr -> alice@interieur.gouv.fr, encrypted, DKIM, its certificate
    assert rules.evaluate(facts(inbound, trusted=False, expired=False)) is None
    assert rules.evaluate(facts(inbound, trusted=False, expired=True)).rule == "manifest_current"


def test_expired_manifest_leaves_mail_inside_the_domain_alone():
    local = env("alice@interieur.gouv.fr", rcpts=("chloe@interieur.gouv.fr",))
    f = facts(local, trusted=True, expired=True)
    assert rules.manifest_current(f) is None and rules.evaluate(f) is None


# --- delivery: the pre-send check ---------------------------------------------------------------
def test_queued_member_mail_is_deferred_while_the_manifest_is_expired(entry, authority, tmp_path, db):
    clock = Clock()
    clock.t = T0 + 50
    path = tmp_path / "federation.json"
    path.write_bytes(signed(entry, authority, expires=T0 + 100))
    queue = Queue(db, clock, audit_log=AuditLog(db, clock))
    check = KeyCheck(KeyStore(db, clock), ManifestSource(path, clock), clock)
    hop = smtp_hop(f"gw.{MEMBER}", 25, entry["tls_pin"])
    queue.enqueue("a@interieur.gouv.fr", [(f"bruno@{MEMBER}", hop), ("x@y.test", relay_hop("mx", 25))],
                  b"Subject: s\r\n\r\nsealed\r\n")
    bounces, net = [], FakeNet(OK)
    worker = DeliveryWorker(queue, owner="w", helo="gw.a", clock=clock, deliver_smtp=net, lease_seconds=120,
                            timeout=10, retry=Retry(60, 600, 3600), pre_send=check.veto,
                            bounce_sender=lambda dsn, rcpt: bounces.append(rcpt))
    clock.t = T0 + 100  # expired
    asyncio.run(worker.run_once())
    assert [c[2] for c in net.calls] == ["x@y.test"] and bounces == []  # the relay hop is not the manifest's
    row = next(r for r in queue.list() if r["recipient"] == f"bruno@{MEMBER}")
    assert (row["state"], row["last_error"]) == ("queued", "federation manifest expired; waiting for a fresh one")
    assert row["next_attempt_at"] == clock.t + 60
    [deferred] = [r for r in queue.audit_log.records() if r.kind == "deferred"]
    assert deferred.fields["rcpt_domain"] == MEMBER and deferred.fields["code"] is None
    path.write_bytes(signed(entry, authority, serial=2, expires=T0 + 86400))  # renewed
    clock.t += 60
    asyncio.run(worker.run_once())
    assert [c[2] for c in net.calls] == ["x@y.test", f"bruno@{MEMBER}"]
    assert {r["state"] for r in queue.list()} == {"delivered"}


def test_a_key_gone_for_good_bounces_even_when_the_manifest_expired(entry, authority, tmp_path, db):
    """The body is already encrypted to that key: a fresh manifest would not make it deliverable."""
    clock = Clock()
    clock.t = T0 + 200
    path = tmp_path / "federation.json"
    path.write_bytes(signed(entry, authority, expires=T0 + 100))
    check = KeyCheck(KeyStore(db, clock), ManifestSource(path, clock), clock)

    class Claim:
        next_hop = str(smtp_hop("gw.gone.gouv.fr", 25, entry["tls_pin"]))
        recipient = "x@gone.gouv.fr"  # a domain the manifest does not list: no key to send to
    assert check.veto(Claim()) == "the recipient domain's key was revoked or expired while the message waited"
    Claim.recipient = f"bruno@{MEMBER}"
    assert check.veto(Claim()) is MANIFEST_EXPIRED


# --- gateway check -----------------------------------------------------------------------------
@pytest.fixture
def config(tmp_path) -> GatewayConfig:
    return GatewayConfig.from_dict({"gateway": {"domains": ["interieur.gouv.fr"]}}, tmp_path)


def manifest_expiring(expires: float | None) -> F.Manifest:
    return F.Manifest(3, iso(T0), {}, "", None if expires is None else iso(expires))


def test_check_passes_with_time_left_warns_near_expiry_and_fails_after(config):
    fine = expiry_check(config, manifest_expiring(T0 + 20 * 86400), T0)
    assert (fine.ok, fine.label) == (True, "ok") and "20.0 days left" in fine.detail
    near = expiry_check(config, manifest_expiring(T0 + 3 * 86400), T0)
    assert (near.ok, near.label) == (True, "WARNING") and "3.0 days left (fewer than 7)" in near.detail
    assert "federation install FILE" in near.fix
    gone = expiry_check(config, manifest_expiring(T0 + 10), T0 + 10)
    assert (gone.ok, gone.label) == (False, "PROBLEM") and "deferred (451)" in gone.detail


def test_check_warns_about_a_manifest_without_expiry(config):
    c = expiry_check(config, manifest_expiring(None), T0)
    assert (c.ok, c.label) == (True, "WARNING") and "has no expiry" in c.detail
    assert "--valid-for" in c.fix


def test_check_names_the_fetch_url_when_one_is_set(tmp_path):
    config = GatewayConfig.from_dict({"gateway": {"domains": ["interieur.gouv.fr"]},
                                      "federation": {"url": "https://fed.test/f.json", "url_pin": "ab" * 32}},
                                     tmp_path)
    c = expiry_check(config, manifest_expiring(T0 + 10), T0 + 20)
    assert "fetches https://fed.test/f.json every 3600 s" in c.fix


# --- settings -----------------------------------------------------------------------------------
def test_fetch_settings():
    assert manifest_fetch({}) is None
    f = manifest_fetch({"url": "https://fed.test:8443/f.json", "url_pin": "AB:" * 31 + "AB",
                        "fetch_interval": "15m"})
    assert (f.url, f.pin, f.interval) == ("https://fed.test:8443/f.json", "ab" * 32, 900.0)


@pytest.mark.parametrize("table, error", [
    ({"url": "http://fed.test/f.json", "url_pin": "ab" * 32}, "must be an https:// URL"),
    ({"url": "https://fed.test/f.json"}, "url_pin is needed"),
    ({"url": "https://fed.test/f.json", "url_pin": "ab" * 31}, "url_pin is needed"),
    ({"url_pin": "ab" * 32}, "without federation.url"),
    ({"url": "https://fed.test/f.json", "url_pin": "ab" * 32, "fetch_interval": 0}, "above zero"),
    ({"url": 7}, "must be a non-empty string"),
])
def test_fetch_settings_refused(table, error):
    with pytest.raises(ConfigError, match=error):
        manifest_fetch(table)


def test_anchoring_settings(tmp_path):
    a = anchoring({}, tmp_path)
    assert (a.interval, a.directory, a.send, a.to) == (None, tmp_path / "checkpoints", False, None)
    a = anchoring({"checkpoint_interval": "1d", "checkpoint_dir": "/var/cp", "checkpoint_send": True,
                   "checkpoint_to": "audit@federation.gouv.fr"}, tmp_path)
    assert (a.interval, a.directory, a.send, a.to) == (86400.0, Path("/var/cp"), True, "audit@federation.gouv.fr")
    with pytest.raises(ConfigError, match="checkpoint_send must be true or false"):
        anchoring({"checkpoint_send": "yes"}, tmp_path)
