"""Key directory decisions without sockets: z-base-32 and WKD URLs, key filtering, publication
checks, the federation's ``wkd`` field, and the locator's caching, pinning and change detection."""

from __future__ import annotations

import time
import warnings
from types import SimpleNamespace

import pgpy
import pytest
from pgpy.constants import HashAlgorithm, KeyFlags

from securemail import federation as F
from securemail.crypto import merge, openpgp
from securemail.crypto.dkim import generate_dkim_key
from securemail.crypto.keys import Key
from securemail.db import make_engine
from securemail.errors import KeyChanged
from securemail.keys import publish as PUB
from securemail.keys import wkd as W
from securemail.keys.locate import Locator
from securemail.keys.store import KeyStore
from securemail.schema import create_schema

DOMAIN = "interieur.gouv.fr"
ALICE = f"alice@{DOMAIN}"


def new_key(uid: str = f"Alice <{ALICE}>", lifetime=None) -> Key:
    return Key(openpgp.generate(uid, "ed25519", lifetime, None))


def with_uid(key: Key, uid: str) -> Key:
    """``key`` (secret, unprotected) with one more self-signed user ID."""
    k = pgpy.PGPKey.from_blob(key.binary())[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        k.add_uid(pgpy.PGPUID.new(uid), usage={KeyFlags.Sign, KeyFlags.Certify},
                  hashes=[HashAlgorithm.SHA512])
    return Key(openpgp.parse_keys(bytes(k))[0])


def revoked(key: Key) -> Key:
    sig = openpgp.revoke(key.pgp, None, "none", "")  # a hard revocation: at any time
    return Key(openpgp.parse_keys(merge.add_signature(key.binary(), sig))[0])


# --- z-base-32 and URLs ------------------------------------------------------------------
def test_zbase32_vectors():
    assert W.wkd_hash("Joe.Doe") == "iy9q119eutrkn8s1mk4r39qejnbu3n5q"  # the draft's test vector
    assert W.wkd_hash("joe.doe") == W.wkd_hash("JOE.DOE")
    assert W.zbase32(bytes([0xF0, 0xBF, 0xC7])) == "6n9hq"             # the z-base-32 spec's examples
    assert W.zbase32(bytes([0xD4, 0x7A, 0x04])) == "4t7ye"
    assert W.zbase32(b"") == ""


def test_urls():
    url = W.advanced_url("127.0.0.1:8443", "Joe.Doe@Example.ORG")
    assert url == ("https://127.0.0.1:8443/.well-known/openpgpkey/example.org/hu/"
                   "iy9q119eutrkn8s1mk4r39qejnbu3n5q?l=Joe.Doe")
    assert W.direct_path("joe.doe@example.org").startswith("/.well-known/openpgpkey/hu/iy9q119eut")
    assert W.policy_path("Example.org") == "/.well-known/openpgpkey/example.org/policy"
    assert W.HASH_RE.fullmatch(W.wkd_hash("a+b"))
    with pytest.raises(Exception):
        W.split_address("no-at-sign")


# --- what is served -----------------------------------------------------------------------
def test_filter_keeps_only_the_domains_user_ids():
    key = with_uid(new_key(), "Alice Privée <alice@example.org>")
    assert set(key.status.addresses) == {ALICE, "alice@example.org"}
    cut = W.served_key(key, ALICE, time.time())
    assert cut is not None and cut.fingerprint == key.fingerprint and not cut.is_secret
    assert cut.status.addresses == (ALICE,)
    assert b"example.org" not in cut.binary()
    assert cut.status.encryption_keys(time.time())           # the subkey and its binding are kept
    other = W.served_key(key, "alice@example.org", time.time())
    assert other.status.addresses == ("alice@example.org",) and DOMAIN.encode() not in other.binary()
    assert W.served_key(key, f"bruno@{DOMAIN}", time.time()) is None  # no user ID for that address
    assert W.filter_key(key.public().binary(), "justice.gouv.fr") == b""


def test_secret_material_is_never_served():
    key = new_key()
    with pytest.raises(Exception):
        W.filter_key(key.binary(), DOMAIN)
    assert W.served_key(key, ALICE, time.time()).is_secret is False  # served_key cuts the certificate


def test_only_valid_keys_are_served():
    from datetime import timedelta
    now = time.time()
    expired = new_key(lifetime=timedelta(days=1))
    assert W.served_key(expired, ALICE, now + 3 * 86400) is None
    gone = revoked(new_key())
    assert W.served_key(gone, ALICE, now).state_at(now) == "revoked"  # served: the revocation travels
    # the domain's user ID was revoked: nothing valid is left for the domain once filtered
    key = with_uid(new_key("Alice <alice@example.org>"), f"Alice <{ALICE}>")
    k = pgpy.PGPKey.from_blob(key.binary())[0]
    uid = next(u for u in k.userids if ALICE in u.userid)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        uid |= k.revoke(uid)
    cut_uid = Key(openpgp.parse_keys(bytes(k))[0])
    assert cut_uid.status.addresses == ("alice@example.org",)
    assert W.served_key(cut_uid, ALICE, now) is None
    assert W.served_key(cut_uid, "alice@example.org", now) is not None


def test_keys_for_keeps_keys_with_the_address():
    a, b = new_key(), new_key("Bruno <bruno@justice.gouv.fr>")
    keys, dropped = W.keys_for(a.public().binary() + b.public().binary(), ALICE)
    assert [k.fingerprint for k in keys] == [a.fingerprint] and len(dropped) == 1
    assert W.keys_for(b"\x00garbage", ALICE) == ([], ["unreadable key data"])


# --- publication requests -------------------------------------------------------------------
def test_publication_checks():
    key, now = new_key(), time.time()
    doc = PUB.build_request(key, ALICE, now=now)
    assert PUB.check_request(doc, ALICE, (DOMAIN,), now)[1].fingerprint == key.fingerprint

    def refused(d, user=ALICE, domains=(DOMAIN,), at=now):
        with pytest.raises(PUB.PublishRefused) as e:
            PUB.check_request(d, user, domains, at)
        return e.value.status, e.value.message

    assert refused(doc, user=f"bruno@{DOMAIN}")[0] == 403
    assert refused(doc, domains=("justice.gouv.fr",))[0] == 403
    assert refused(doc, at=now + 301) == (403, "request time too far from the gateway's clock")
    other = PUB.build_request(new_key(), ALICE, now=now)
    forged = {**doc, "signature": other["signature"]}          # signed by another key
    assert refused(forged) == (403, "request not signed by the key")
    assert refused({**doc, "nonce": "zz"})[0] == 400
    assert refused({**doc, "time": "now"})[0] == 400
    assert refused({**doc, "key": other["key"]})[0] == 403     # the signature covers the key
    bruno = PUB.build_request(new_key("Bruno <bruno@justice.gouv.fr>"), ALICE, now=now)
    assert refused(bruno) == (400, "key has no valid user ID for the address")
    assert refused({**doc, "key": key.armored().decode()})[0] == 400  # a secret key is not taken
    unsigned = PUB.build_request(key, ALICE, now=now, sign=False)
    assert refused(unsigned) == (403, "request not signed by the key")


def test_nonces_are_single_use(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'db'}")
    create_schema(engine)
    nonces = PUB.Nonces(engine)
    assert nonces.claim("ab" * 8, 1000.0) and not nonces.claim("ab" * 8, 1001.0)
    assert nonces.claim("ab" * 8, 1000.0 + PUB.NONCE_TTL + 1)  # expired, forgotten


# --- the federation's wkd field -------------------------------------------------------------
def _entry(**extra) -> dict:
    return {"domain": DOMAIN, "gateway": "gw.interieur.gouv.fr:25", "tls_pin": "ab" * 32,
            "openpgp_key": new_key(f"gw <gateway@{DOMAIN}>").public().armored().decode(),
            "dkim": [{"selector": "s", "public_key": generate_dkim_key("ed25519").public_txt}], **extra}


def test_member_wkd_field_is_optional():
    without = F.parse_member(_entry())
    assert without.wkd is None and "wkd" not in without.to_dict()
    member = F.parse_member(_entry(wkd="gw.interieur.gouv.fr:8443"))
    assert member.wkd == ("gw.interieur.gouv.fr", 8443)
    assert F.parse_member(member.to_dict()) == member
    with pytest.raises(F.ManifestInvalid, match="wkd must be HOST:PORT"):
        F.parse_member(_entry(wkd="no port"))


# --- the locator: cache, pins, changes, revocations ------------------------------------------
class Directory:
    """A fake remote directory: what fetch returns for the URL, and how often it was asked."""

    def __init__(self) -> None:
        self.keys: list[Key] = []
        self.calls = 0

    def fetch(self, url: str, pin: str):
        assert url.startswith("https://127.0.0.1:9/.well-known/openpgpkey/justice.gouv.fr/hu/")
        assert pin == "cd" * 32
        self.calls += 1
        return b"".join(k.public().binary() for k in self.keys) or None


@pytest.fixture
def located(tmp_path):
    now = [time.time()]
    engine = make_engine(f"sqlite:///{tmp_path / 'db'}")
    create_schema(engine)
    store = KeyStore(engine, clock=lambda: now[0])
    member = SimpleNamespace(wkd=("127.0.0.1", 9), tls_pin="cd" * 32, tls_pins=("cd" * 32,))
    manifest = SimpleNamespace(member=lambda d: member if d == "justice.gouv.fr" else None)
    remote = Directory()
    loc = Locator(store, lambda: manifest, clock=lambda: now[0], fetch=remote.fetch,
                  refresh_seconds=3600)
    return SimpleNamespace(store=store, loc=loc, remote=remote, now=now)


def test_locate_pins_caches_and_refreshes(located):
    L, bruno = located, "bruno@justice.gouv.fr"
    k1 = new_key(f"Bruno <{bruno}>")
    assert L.loc.locate(bruno).status == "not-found"
    L.remote.keys = [k1]
    assert L.loc.locate(bruno).status == "cached"            # the negative answer is still fresh
    r = L.loc.locate(bruno, refresh=True)
    assert (r.status, r.key.fingerprint, r.pinned, r.source) == ("fetched", k1.fingerprint,
                                                                 k1.fingerprint, "wkd:justice.gouv.fr")
    calls = L.remote.calls
    assert L.loc.ensure(bruno) is None and L.remote.calls == calls  # usable and fresh: no fetch
    L.now[0] += 3601
    assert L.loc.ensure(bruno).status == "fetched" and L.remote.calls == calls + 1
    assert L.loc.locate("carole@other.example").status == "no-directory"


def test_a_changed_key_is_refused_until_accepted(located):
    L, bruno = located, "bruno@justice.gouv.fr"
    k1, k2 = new_key(f"Bruno <{bruno}>"), new_key(f"Bruno <{bruno}>")
    L.remote.keys = [k1]
    L.loc.locate(bruno)
    L.remote.keys = [k2]
    r = L.loc.locate(bruno, refresh=True)
    assert (r.status, r.key, r.pinned, r.offered) == ("changed", None, k1.fingerprint, k2.fingerprint)
    assert L.store.usable_for(bruno).fingerprint == k1.fingerprint   # the pinned key, never the new one
    with pytest.raises(KeyChanged) as e:
        L.loc.key_for(bruno)
    assert f"securemail keys accept {bruno} {k2.fingerprint}" in e.value.message
    L.store.accept(bruno, k2.fingerprint)
    assert L.loc.key_for(bruno).fingerprint == k2.fingerprint


def test_a_fetched_revocation_is_honoured(located):
    L, bruno = located, "bruno@justice.gouv.fr"
    k1 = new_key(f"Bruno <{bruno}>")
    L.remote.keys = [k1]
    assert L.loc.key_for(bruno).fingerprint == k1.fingerprint
    L.remote.keys = [revoked(k1)]
    r = L.loc.locate(bruno, refresh=True)
    assert (r.status, r.key) == ("unusable", None)
    assert L.store.get(k1.fingerprint).state_at(time.time()) == "revoked"
    assert L.loc.key_for(bruno) is None                       # the gateway falls back to the domain key


def test_a_failing_directory_keeps_the_cached_key_and_is_left_alone(located):
    from securemail.keys.locate import LocateError
    L, bruno = located, "bruno@justice.gouv.fr"
    k1 = new_key(f"Bruno <{bruno}>")
    L.remote.keys = [k1]
    L.loc.locate(bruno)

    def down(url, pin):
        L.remote.calls += 1
        raise LocateError("key directory certificate does not match the federation's TLS pin")
    L.loc.fetch, calls = down, L.remote.calls
    r = L.loc.locate(bruno, refresh=True)
    assert (r.status, r.key.fingerprint) == ("failed", k1.fingerprint) and "TLS pin" in r.detail
    assert L.loc.locate(bruno, refresh=True).status == "failed" and L.remote.calls == calls + 1
    L.now[0] += 61
    L.loc.locate(bruno, refresh=True)
    assert L.remote.calls == calls + 2                         # tried again after retry_seconds
