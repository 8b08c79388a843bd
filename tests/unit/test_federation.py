"""Federation manifest: real OpenPGP signatures, real certificates and DKIM keys, no network."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import time
from datetime import datetime, timedelta, timezone

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from securemail import federation as F
from securemail import membership as M
from securemail.audit import AuditLog
from securemail.crypto import openpgp
from securemail.crypto.dkim import DkimSigner, generate_dkim_key, manifest_dnsfunc, verify_dkim
from securemail.crypto.keys import Key
from securemail.db import make_engine
from securemail.schema import create_schema

def new_key(uid: str, lifetime: timedelta | None = None) -> Key:
    return Key(openpgp.generate(uid, "ed25519", lifetime, None))


def self_signed(host: str) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    start = datetime.now(timezone.utc) - timedelta(minutes=5)
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(start + timedelta(days=30))
            .sign(key, hashes.SHA256()))


@pytest.fixture(scope="module")
def authority() -> Key:
    return new_key("Federation Authority <authority@federation.gouv.fr>")


@pytest.fixture(scope="module")
def impostor() -> Key:
    return new_key("Federation Authority <authority@federation.gouv.fr>")


@pytest.fixture(scope="module")
def dkim_keys():
    return {"a.gouv.fr": generate_dkim_key("ed25519"), "b.gouv.fr": generate_dkim_key("ed25519")}


@pytest.fixture(scope="module")
def entries(dkim_keys) -> dict[str, dict]:
    out = {}
    for i, domain in enumerate(("a.gouv.fr", "b.gouv.fr")):
        key = new_key(f"Gateway <postmaster@{domain}>")
        out[domain] = {"domain": domain, "gateway": f"mx.{domain}:25",
                       "tls_pin": hashlib.sha256(bytes([i])).hexdigest(),
                       "openpgp_key": key.public().armored().decode(),
                       "dkim": [{"selector": "ed1", "public_key": dkim_keys[domain].public_txt}]}
    return out


def manifest(entries, serial: int = 1, domains=("a.gouv.fr", "b.gouv.fr")) -> dict:
    return {"serial": serial, "created": "2025-01-01T09:00:00+00:00",
            "members": [copy.deepcopy(entries[d]) for d in domains]}


def signed(entries, key: Key, serial: int = 1, **kw) -> bytes:
    return F.sign_manifest(manifest(entries, serial, **kw), key)


# --- signing and verifying ------------------------------------------------------------------
def test_sign_then_verify(entries, authority, dkim_keys):
    m = F.verify_manifest(signed(entries, authority), authority.fingerprint, authority.public())
    assert m.serial == 1 and set(m.members) == {"a.gouv.fr", "b.gouv.fr"}
    assert m.is_member("A.gouv.fr.") and not m.is_member("c.gouv.fr") and m.member("c.gouv.fr") is None
    a = m.member("a.gouv.fr")
    assert a.gateway == ("mx.a.gouv.fr", 25) and a.tls_pin == entries["a.gouv.fr"]["tls_pin"]
    assert a.dkim == (("ed1", dkim_keys["a.gouv.fr"].public_txt),)
    assert m.dkim_records() == {f"ed1._domainkey.{d}.": dkim_keys[d].public_txt for d in dkim_keys}
    assert m.digest == hashlib.sha256(F.canonical(manifest(entries))).hexdigest()


def test_signature_covers_the_canonical_json_not_the_layout(entries, authority):
    doc = json.loads(signed(entries, authority))
    assert doc["signature"].startswith("-----BEGIN PGP SIGNATURE-----")
    compact = json.dumps({"signature": doc["signature"], "manifest": doc["manifest"]}).encode()
    assert F.verify_manifest(compact, authority.fingerprint, authority).serial == 1


@pytest.mark.parametrize("tamper", [
    lambda m: m["members"][0].update(gateway="evil.example.net:25"),
    lambda m: m["members"].pop(),
    lambda m: m.update(serial=99),
    lambda m: m["members"][1]["dkim"][0].update(selector="ed2"),
])
def test_tampered_manifest_is_refused(entries, authority, tamper):
    doc = json.loads(signed(entries, authority))
    tamper(doc["manifest"])
    with pytest.raises(F.ManifestRefused, match="signature does not match the content"):
        F.verify_manifest(json.dumps(doc).encode(), authority.fingerprint, authority)


def test_manifest_signed_by_another_key_is_refused(entries, authority, impostor):
    data = signed(entries, impostor)
    with pytest.raises(F.ManifestRefused, match="not signed by the federation authority"):
        F.verify_manifest(data, authority.fingerprint, authority)
    # the impostor's certificate cannot stand in for the configured authority either
    with pytest.raises(F.ManifestRefused, match="not the federation authority"):
        F.verify_manifest(data, authority.fingerprint, impostor)


def test_signature_swapped_in_from_another_manifest_is_refused(entries, authority):
    one, two = json.loads(signed(entries, authority)), json.loads(signed(entries, authority, 2))
    one["signature"] = two["signature"]
    with pytest.raises(F.ManifestRefused):
        F.verify_manifest(json.dumps(one).encode(), authority.fingerprint, authority)


@pytest.mark.parametrize("data, match", [
    (b"not json", "not valid JSON"),
    (b'{"manifest": {}}', "must be"),
    (b'{"manifest": {"serial": NaN}, "signature": ""}', "not valid JSON"),
    (b'{"manifest": {}, "signature": "-----BEGIN PGP SIGNATURE-----\\n\\n!!\\n-----END PGP SIGNATURE-----"}',
     "unreadable"),
])
def test_garbage_is_refused_clearly(authority, data, match):
    with pytest.raises((F.ManifestInvalid, F.ManifestRefused), match=match):
        F.verify_manifest(data, authority.fingerprint, authority)


# --- entries ---------------------------------------------------------------------------
def _bad(entries, **changes) -> dict:
    e = copy.deepcopy(entries["a.gouv.fr"])
    e.update(changes)
    return e


@pytest.mark.parametrize("changes, match", [
    ({"tls_pin": "abc"}, r"a\.gouv\.fr: tls_pin must be the SHA-256"),
    ({"tls_pin": "AB" * 32}, r"a\.gouv\.fr: tls_pin .* lower-case"),
    ({"gateway": "mx.a.gouv.fr"}, r"a\.gouv\.fr: gateway must be HOST:PORT"),
    ({"gateway": "mx.a.gouv.fr:0"}, r"a\.gouv\.fr: gateway must be HOST:PORT"),
    ({"gateway": "bad host:25"}, r"a\.gouv\.fr: gateway must be HOST:PORT"),
    ({"openpgp_key": "garbage"}, r"a\.gouv\.fr: openpgp_key refused"),
    ({"dkim": []}, r"a\.gouv\.fr: dkim must be a non-empty list"),
    ({"dkim": [{"selector": "ed1", "public_key": "v=DKIM1; k=ed25519; p=AAAA"}]},
     r"a\.gouv\.fr: DKIM selector ed1: p= is not a valid public key"),
    ({"dkim": [{"selector": "ed1", "public_key": "v=DKIM1; k=ed25519; p="}]},
     r"a\.gouv\.fr: DKIM selector ed1: needs v=DKIM1 and a public key"),
    ({"dkim": [{"selector": "bad selector", "public_key": "v=DKIM1; p=x"}]},
     r"a\.gouv\.fr: invalid or repeated DKIM selector"),
    ({"domain": "A.gouv.fr"}, r"invalid domain 'A\.gouv\.fr'"),
    ({"domain": "localhost"}, r"invalid domain 'localhost'"),
])
def test_invalid_entry_names_the_domain(entries, changes, match):
    with pytest.raises(F.ManifestInvalid, match=match):
        F.parse_member(_bad(entries, **changes))


def test_missing_field_is_named(entries):
    e = _bad(entries)
    del e["tls_pin"]
    with pytest.raises(F.ManifestInvalid, match=r"a\.gouv\.fr: missing tls_pin"):
        F.parse_member(e)


def test_small_rsa_dkim_key_is_refused(entries):
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()
    der = small.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    txt = f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"
    with pytest.raises(F.ManifestInvalid, match="at least 2048 bits"):
        F.parse_member(_bad(entries, dkim=[{"selector": "r", "public_key": txt}]))
    assert F.dkim_txt_problem(generate_dkim_key("rsa2048").public_txt) is None


def test_openpgp_key_must_be_a_valid_certificate_that_can_encrypt(entries):
    short, now = new_key("Gateway <postmaster@a.gouv.fr>", timedelta(hours=1)), time.time()
    e = _bad(entries, openpgp_key=short.public().armored().decode())
    assert F.parse_member(e, now=now).domain == "a.gouv.fr"
    with pytest.raises(F.ManifestInvalid, match=r"a\.gouv\.fr: openpgp_key [0-9A-F]{40} is expired"):
        F.parse_member(e, now=now + 7200)
    with pytest.raises(F.ManifestInvalid, match=r"a\.gouv\.fr: openpgp_key [0-9A-F]{40} has no valid"):
        F.parse_member(e, now=now - 3600)  # not yet valid
    assert F.parse_member(e, now=now + 7200, check_keys=False).domain == "a.gouv.fr"
    with pytest.raises(F.ManifestInvalid, match="secret key material"):
        F.parse_member(_bad(entries, openpgp_key=short.armored().decode()))


def test_authority_never_signs_an_invalid_manifest(entries, authority):
    m = manifest(entries)
    m["members"].append(copy.deepcopy(m["members"][0]))
    with pytest.raises(F.ManifestInvalid, match=r"a\.gouv\.fr: listed twice"):
        F.sign_manifest(m, authority)
    m = manifest(entries)
    m["members"][0]["tls_pin"] = "zz"
    with pytest.raises(F.ManifestInvalid, match=r"a\.gouv\.fr: tls_pin"):
        F.sign_manifest(m, authority)


def test_member_round_trips_through_to_dict(entries):
    for e in entries.values():
        assert F.parse_member(e).to_dict() == e
    v6 = _bad(entries, gateway="[2001:db8::25]:25")
    assert F.parse_member(v6).gateway == ("2001:db8::25", 25)
    assert F.parse_member(v6).to_dict()["gateway"] == "[2001:db8::25]:25"


# --- installing -----------------------------------------------------------------------------
@pytest.fixture
def audit_log(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path}/audit.db")
    create_schema(engine)
    yield AuditLog(engine)
    engine.dispose()


def test_install_moves_forward_only(tmp_path, entries, authority, audit_log):
    path = tmp_path / "federation.json"
    assert F.load_installed(path) is None
    two = signed(entries, authority, 2)
    r = F.install(two, path, authority.fingerprint, authority, audit_log)
    assert r.changed and r.previous is None and path.read_bytes() == two
    assert F.load_installed(path, authority.fingerprint, authority).serial == 2

    with pytest.raises(F.ManifestRefused, match="serial 1 is older than the installed serial 2"):
        F.install(signed(entries, authority, 1), path, authority.fingerprint, authority, audit_log)
    with pytest.raises(F.ManifestRefused, match="serial 2 is already installed with different content"):
        F.install(signed(entries, authority, 2, domains=("a.gouv.fr",)), path,
                  authority.fingerprint, authority, audit_log)
    assert not F.install(two, path, authority.fingerprint, authority, audit_log).changed

    three = signed(entries, authority, 3, domains=("a.gouv.fr",))
    r = F.install(three, path, authority.fingerprint, authority, audit_log)
    assert r.changed and r.previous.serial == 2 and path.read_bytes() == three
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audit.db", "audit.db-shm", "audit.db-wal",
                                                          "federation.json", "federation.json.lock"]
    changes = [r.fields for r in audit_log.records() if r.kind == "manifest-change"]
    assert [(c["serial"], c["previous_serial"], c["added"], c["removed"]) for c in changes] == [
        (2, None, ["a.gouv.fr", "b.gouv.fr"], []), (3, 2, [], ["b.gouv.fr"])]
    assert audit_log.verify().ok


def test_install_refuses_a_manifest_from_another_key(tmp_path, entries, authority, impostor):
    path = tmp_path / "federation.json"
    with pytest.raises(F.ManifestRefused):
        F.install(signed(entries, impostor, 5), path, authority.fingerprint, authority)
    assert not path.exists()


def test_failed_audit_leaves_the_installed_manifest_alone(tmp_path, entries, authority):
    path = tmp_path / "federation.json"
    F.install(signed(entries, authority, 1), path, authority.fingerprint, authority)
    before = path.read_bytes()

    class Broken:
        def append(self, kind, **fields):
            raise OSError("disk full")

    with pytest.raises(OSError):
        F.install(signed(entries, authority, 2), path, authority.fingerprint, authority, Broken())
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


# --- this gateway's entries: pins and DKIM records ---------------------------------------
def test_tls_pin_is_sha256_of_the_subject_public_key_info():
    cert = self_signed("mx.a.gouv.fr")
    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    pem, der = cert.public_bytes(serialization.Encoding.PEM), cert.public_bytes(serialization.Encoding.DER)
    assert M.tls_pin_of_cert(pem) == M.tls_pin_of_cert(der) == hashlib.sha256(spki).hexdigest()
    assert M.tls_pin_of_cert(pem.decode()) == hashlib.sha256(spki).hexdigest()
    with pytest.raises(F.ConfigError, match="not an X.509 certificate"):
        M.tls_pin_of_cert(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")


@pytest.mark.parametrize("algorithm", ["ed25519", "rsa2048"])
def test_dkim_public_txt_matches_what_generate_publishes(algorithm):
    key = generate_dkim_key(algorithm)
    assert M.dkim_public_txt(key.private_pem) == key.public_txt
    assert F.dkim_txt_problem(key.public_txt) is None


def test_manifest_dkim_records_verify_real_mail(entries, authority, dkim_keys):
    m = F.verify_manifest(signed(entries, authority), authority.fingerprint, authority)
    msg = (b"From: Alice <alice@a.gouv.fr>\r\nTo: bob@b.gouv.fr\r\nSubject: hi\r\n"
           b"Date: Mon, 1 Jan 2024 10:00:00 +0000\r\nMessage-ID: <m1@a.gouv.fr>\r\n\r\nHello\r\n")
    signer = DkimSigner("a.gouv.fr", [("ed1", dkim_keys["a.gouv.fr"].private_pem, "ed25519")])
    assert verify_dkim(signer.sign(msg), manifest_dnsfunc(m.dkim_records())).status == "pass"
    forged = DkimSigner("a.gouv.fr", [("ed1", generate_dkim_key("ed25519").private_pem, "ed25519")])
    assert verify_dkim(forged.sign(msg), manifest_dnsfunc(m.dkim_records())).status == "fail"
