"""Key bindings without sockets (issue 10, finding 3): a key is used for an address only when the
operator, the owner's publication or the directory of that address's own domain bound it there."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
import sqlalchemy as sa

from securemail.db import make_engine, transaction
from securemail.errors import UsageError
from securemail.keys import binding as B
from securemail.keys import publish as PUB
from securemail.keys import wkd as W
from securemail.keys.directory import Directory
from securemail.keys.locate import Locator
from securemail.keys.store import KeyStore
from securemail.schema import create_schema
from tests.unit.test_wkd import new_key, revoked, with_uid

BRUNO, CEO, ALICE = "bruno@justice.gouv.fr", "ceo@culture.gouv.fr", "alice@interieur.gouv.fr"
MINISTER = "minister@interieur.gouv.fr"


def multi(first: str, *more: str):
    key = new_key(f"First <{first}>")
    for a in more:
        key = with_uid(key, f"Other <{a}>")
    return key


# --- the rule -----------------------------------------------------------------------------------
def test_who_may_bind_what():
    claimed = (BRUNO, "carole@justice.gouv.fr", CEO)
    assert B.bindable(B.OPERATOR, claimed) == claimed                      # the operator's choice
    assert B.bindable(B.OPERATOR, claimed, [CEO]) == (CEO,)
    assert B.bindable(B.PUBLISH, claimed, [BRUNO]) == (BRUNO,)             # the authenticated address
    assert B.bindable(B.directory_source("justice.gouv.fr"), claimed, [BRUNO]) == (BRUNO,)
    assert B.bindable(B.directory_source("justice.gouv.fr"), claimed, [CEO]) == ()  # not its domain
    assert B.bindable(B.directory_source("Justice.gouv.fr."), claimed, claimed) == claimed[:2]
    assert B.bindable(None, claimed, claimed) == ()
    with pytest.raises(UsageError):
        B.bindable(B.PUBLISH, claimed)                                     # must name its address
    with pytest.raises(UsageError):
        B.bindable("directory:", claimed, claimed)
    assert B.legacy_source("wkd:justice.gouv.fr") == "directory:justice.gouv.fr"
    assert B.legacy_source("directory:publish") is None and B.legacy_source("generated") == B.OPERATOR


def test_the_directory_serves_and_keeps_only_the_exact_address():
    key = multi(BRUNO, "carole@justice.gouv.fr", CEO)
    cut = W.served_key(key, BRUNO, time.time())
    assert cut.status.addresses == (BRUNO,) and b"carole" not in cut.binary() and b"culture" not in cut.binary()
    kept, dropped = W.keys_for(key.public().binary(), BRUNO)
    assert [k.status.addresses for k in kept] == [(BRUNO,)] and not dropped
    assert kept[0].fingerprint == key.fingerprint and kept[0].status.encryption_keys(time.time())
    assert W.keys_for(key.public().binary(), CEO)[0][0].status.addresses == (CEO,)  # the caller checks the domain


# --- the store ------------------------------------------------------------------------------------
@pytest.fixture
def store(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'db'}")
    create_schema(engine)
    return KeyStore(engine)


def test_a_directory_binds_only_its_own_domain(store):
    key = multi(BRUNO, CEO, ALICE)
    r = store.add(key, source="wkd:justice.gouv.fr", bind=B.directory_source("justice.gouv.fr"),
                  only=(BRUNO, CEO, ALICE))
    assert r.bound == (BRUNO,)
    assert [k.fingerprint for k in store.find(BRUNO)] == [key.fingerprint]
    assert store.find(CEO) == [] and store.usable_for(CEO) is None and store.trusted_for(ALICE) is None
    assert (store.pinned(BRUNO), store.pinned(CEO), store.pinned(ALICE)) == (key.fingerprint, None, None)
    with pytest.raises(UsageError, match="not bound"):
        store.pin(CEO, key.fingerprint, "accepted")                        # a pin needs a binding
    with pytest.raises(UsageError, match="not bound"):
        store.accept(ALICE, key.fingerprint)


def test_an_update_binds_only_what_its_source_could(store):
    key = new_key(f"Bruno <{BRUNO}>")
    store.add(key.public(), source="wkd:justice.gouv.fr", bind=B.directory_source("justice.gouv.fr"),
              only=(BRUNO,))
    update = with_uid(key, f"CEO <{CEO}>").public()                        # same key, one more user ID
    r = store.add(update, source="wkd:justice.gouv.fr", bind=B.directory_source("justice.gouv.fr"),
                  only=(BRUNO, CEO))
    assert (r.outcome, r.bound) == ("updated", ())
    assert CEO in store.get(key.fingerprint).status.addresses and store.find(CEO) == []
    r = store.add(update, source="publish", bind=B.PUBLISH, only=(BRUNO,))
    assert (r.outcome, r.bound) == ("unchanged", ()) and store.find(CEO) == []
    r = store.add(update, source="import")                                 # the operator vouches for it
    assert (r.outcome, r.bound) == ("unchanged", (CEO,))
    assert store.usable_for(CEO).fingerprint == key.fingerprint == store.pinned(CEO)
    assert {(a, s) for a, _, s in store.bindings(key.fingerprint)} == {
        (BRUNO, "directory:justice.gouv.fr"), (CEO, "import")}


def test_a_located_key_is_cut_to_the_address_asked_for(store):
    key = multi(BRUNO, CEO, ALICE, "carole@justice.gouv.fr")
    member = SimpleNamespace(wkd=("127.0.0.1", 9), tls_pin="cd" * 32, tls_pins=("cd" * 32,))
    manifest = SimpleNamespace(member=lambda d: member if d in ("justice.gouv.fr", "culture.gouv.fr") else None)
    loc = Locator(store, lambda: manifest, fetch=lambda url, pin: key.public().binary())
    assert loc.locate(BRUNO).key.fingerprint == key.fingerprint
    stored = store.get(key.fingerprint)
    assert stored.status.addresses == (BRUNO,)                             # the other user IDs never stored
    assert store.find(CEO) == [] and store.find("carole@justice.gouv.fr") == []
    assert store.pinned(CEO) is None and store.pinned(ALICE) is None
    # culture's directory (here the same hostile bytes) may bind ceo@culture, and only that
    assert loc.locate(CEO).key.fingerprint == key.fingerprint
    assert {a for a, _, _ in store.bindings()} == {BRUNO, CEO}


def test_publication_binds_the_published_address_only(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'db'}")
    create_schema(engine)
    keys = KeyStore(engine)
    d = Directory(engine, keys, ["interieur.gouv.fr"])
    key = multi(ALICE, MINISTER, CEO)
    d.publish(ALICE, key, "publish")
    assert keys.bindings() == [(ALICE, key.fingerprint, "publish")]
    assert keys.find(MINISTER) == [] and keys.pinned(MINISTER) is None
    served = W.load_key(d.served(ALICE))
    assert served.status.addresses == (ALICE,)
    with pytest.raises(UsageError):
        d.publish(MINISTER, multi("x@interieur.gouv.fr"), "publish")       # no user ID for it


def test_the_publish_endpoint_refuses_other_user_ids():
    now = time.time()
    key = multi(ALICE, MINISTER, CEO)
    doc = PUB.build_request(key, ALICE, now=now)
    with pytest.raises(PUB.PublishRefused) as e:
        PUB.check_request(doc, ALICE, ["interieur.gouv.fr"], now)
    assert e.value.status == 400
    assert e.value.message == (f"key has user IDs for other addresses ({CEO}, {MINISTER}); "
                               f"publish a key whose only user ID is {ALICE}")
    alone = new_key(f"Alice <{ALICE}>")
    assert PUB.check_request(PUB.build_request(alone, ALICE, now=now), ALICE, ["interieur.gouv.fr"],
                             now)[1].fingerprint == alone.fingerprint
    gone = revoked(key)                                                     # a revocation still travels
    assert PUB.check_request(PUB.build_request(gone, ALICE, now=now, sign=False), ALICE,
                             ["interieur.gouv.fr"], now)[1].state_at(now) == "revoked"
    many = multi(ALICE, *(f"u{i}@interieur.gouv.fr" for i in range(7)))
    with pytest.raises(PUB.PublishRefused, match=r"and 2 more\)"):
        PUB.check_request(PUB.build_request(many, ALICE, now=now), ALICE, ["interieur.gouv.fr"], now)


# --- a home made before bindings ------------------------------------------------------------------
def test_migration_of_a_home_made_before_bindings(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'db'}")
    create_schema(engine)
    keys = KeyStore(engine)
    fetched = multi(BRUNO, CEO, "carole@justice.gouv.fr")          # a justice directory's key, kept whole
    imported = multi("paul@example.org", "paul@other.example")     # the operator's
    published = multi(ALICE, MINISTER)                              # published with an extra user ID
    keys.add(fetched.public(), source="wkd:justice.gouv.fr", bind=None)
    keys.add(imported.public(), source="import", bind=None)
    keys.add(published.public(), source="directory:publish", bind=None)
    d = Directory(engine, keys, ["interieur.gouv.fr"])
    now = time.time()
    with transaction(engine) as conn:                               # as the old store left them
        conn.execute(sa.text("DELETE FROM key_bindings"))
        d_table = sa.table("directory", *(sa.column(c) for c in ("address", "fingerprint", "published_at",
                                                                 "source", "domain", "hu")))
        conn.execute(d_table.insert().values(address=ALICE, fingerprint=published.fingerprint,
                                             published_at=now, source="publish",
                                             domain="interieur.gouv.fr", hu=W.wkd_hash("alice")))
        pins = sa.table("pins", *(sa.column(c) for c in ("address", "fingerprint", "pinned_at", "source",
                                                         "superseded")))
        for k in (fetched, imported, published):
            for a in k.status.addresses:
                conn.execute(pins.insert().values(address=a, fingerprint=k.fingerprint, pinned_at=now,
                                                  source="old", superseded="[]"))
        conn.execute(sa.text("DROP TABLE key_bindings"))
    create_schema(engine)                                           # as opening the home does
    migrated = KeyStore(engine)
    assert {(a, s) for a, _, s in migrated.bindings()} == {
        (BRUNO, "directory:justice.gouv.fr"), ("carole@justice.gouv.fr", "directory:justice.gouv.fr"),
        ("paul@example.org", "import"), ("paul@other.example", "import"), (ALICE, "publish")}
    assert migrated.find(CEO) == [] and migrated.find(MINISTER) == []
    assert migrated.pinned(CEO) is None and migrated.pinned(MINISTER) is None   # dropped: no binding
    assert migrated.pinned(BRUNO) == fetched.fingerprint and migrated.pinned(ALICE) == published.fingerprint
    create_schema(engine)
    assert KeyStore(engine).bindings() == migrated.bindings()                   # once only
    assert d.served(ALICE) is not None
