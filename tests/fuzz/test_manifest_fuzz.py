"""Fuzzing the federation manifest: parse_member, parse_manifest and verify_manifest on generated JSON.

A real manifest (two members with real OpenPGP certificates and DKIM keys) is
signed once by a real authority key; then its entries, its manifest object and
its signed file are mutated, and arbitrary JSON and bytes are offered. Only
SecureMailError subclasses may come out; a manifest whose signed content was
changed in any way is never accepted; pathological JSON (nested thousands deep,
huge numbers) is refused in bounded time.
"""

from __future__ import annotations

import copy
import functools
import json
import string

from hypothesis import example, given
from hypothesis import strategies as st

from securemail.crypto import openpgp
from securemail.crypto.dkim import generate_dkim_key
from securemail.crypto.keys import Key
from securemail.errors import SecureMailError
from securemail.federation import (Manifest, ManifestInvalid, canonical, parse_manifest, parse_member,
                                   sign_manifest, verify_manifest)

from . import fuzz, only_ours

JSON = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=30),
                              st.floats(allow_nan=False, allow_infinity=False)),
                    lambda inner: st.one_of(st.lists(inner, max_size=4),
                                            st.dictionaries(st.text(max_size=10), inner, max_size=4)),
                    max_leaves=12)


@functools.cache
def world() -> tuple[Key, dict, bytes]:
    """(authority key, manifest object, signed federation.json bytes)."""
    authority = Key(openpgp.generate("Autorite <federation@gouv.fr>", "ed25519", None, None))
    members = []
    for i, domain in enumerate(("interieur.gouv.fr", "justice.gouv.fr")):
        cert = Key(openpgp.generate(f"Passerelle <gateway@{domain}>", "ed25519", None, None)).public()
        members.append({"domain": domain, "gateway": f"gw.{domain}:25", "tls_pin": f"{i:x}" * 64,
                        "openpgp_key": cert.armored().decode("ascii"),
                        "dkim": [{"selector": "sm-ed25519", "public_key": generate_dkim_key("ed25519").public_txt}]})
    manifest = {"serial": 7, "created": "2026-11-27T08:00:00Z", "members": members}
    with authority.pgp.unlocked(None):
        signed = sign_manifest(manifest, authority)
    return authority, manifest, signed


def verify(data: bytes) -> Manifest | None:
    authority, _, _ = world()
    return only_ours(verify_manifest, data, authority.fingerprint, authority)


def test_the_real_manifest_verifies():
    authority, manifest, signed = world()
    got = verify(signed)
    assert got is not None and set(got.members) == {"interieur.gouv.fr", "justice.gouv.fr"}
    assert only_ours(parse_manifest, manifest) is not None


# --- entries --------------------------------------------------------------------------------------
_ODD = st.one_of(JSON, st.sampled_from(["", "gw:0", "gw:65536", "[::1]:25", "a..b:25", "x" * 300 + ":25",
                                        "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\n-----END PGP PUBLIC KEY BLOCK-----",
                                        "v=DKIM1; k=rsa; p=AAAA", "v=DKIM1; k=ed25519; p=", "k=x;k=y",
                                        "caf\u00e9.gouv.fr", "INTERIEUR.GOUV.FR"]))


@st.composite
def mutated_entry(draw):
    entry = copy.deepcopy(draw(st.sampled_from(world()[1]["members"])))
    for _ in range(draw(st.integers(1, 3))):
        field = draw(st.sampled_from(["domain", "gateway", "tls_pin", "openpgp_key", "dkim", "dkim.selector",
                                      "dkim.public_key", "extra"]))
        value = draw(_ODD)
        if field.startswith("dkim.") and isinstance(entry.get("dkim"), list) and entry["dkim"] \
                and isinstance(entry["dkim"][0], dict):
            entry["dkim"][0][field[5:]] = value
        elif draw(st.booleans()) and field in entry:
            del entry[field]
        else:
            entry[field] = value
    return entry


@fuzz(150)
@given(st.one_of(mutated_entry(), JSON))
def test_parse_member_raises_only_securemail_errors(entry):
    member = only_ours(parse_member, entry)
    if member is not None:
        assert member.domain == entry["domain"] and 0 < member.gateway[1] < 65536


# --- the manifest object and the signed file -----------------------------------------------------------
@st.composite
def mutated_manifest(draw):
    m = copy.deepcopy(world()[1])
    how = draw(st.sampled_from(["serial", "created", "members", "entry", "extra", "drop-member", "dup-member"]))
    if how == "serial":
        m["serial"] = draw(JSON)
    elif how == "created":
        m["created"] = draw(st.one_of(JSON, st.just("2026-11-27T08:00:00"), st.just("2026-13-45T99:00:00Z")))
    elif how == "members":
        m["members"] = draw(JSON)
    elif how == "entry":
        m["members"][draw(st.integers(0, 1))] = draw(mutated_entry())
    elif how == "extra":
        m[draw(st.text(max_size=8))] = draw(JSON)
    elif how == "drop-member":
        m["members"].pop()
    else:
        m["members"].append(copy.deepcopy(m["members"][0]))
    return m


@fuzz(120)
@given(mutated_manifest())
def test_parse_manifest_raises_only_securemail_errors(m):
    got = only_ours(parse_manifest, m)
    if got is not None:
        assert got.serial == m["serial"] and len(got.members) == len(m["members"])


@fuzz(60)
@given(mutated_manifest())
def test_a_changed_manifest_under_the_old_signature_is_refused(m):
    _, manifest, signed = world()
    doc = json.loads(signed)
    doc["manifest"] = m
    got = verify(json.dumps(doc).encode())
    if canonical(m) != canonical(manifest):
        assert got is None, "a manifest the authority did not sign was accepted"


@fuzz(100)
@given(st.integers(0, 20_000), st.sampled_from(["flip", "cut", "insert"]), st.binary(min_size=1, max_size=6))
def test_mutated_signed_file_raises_only_securemail_errors(at, how, junk):
    _, manifest, signed = world()
    at %= len(signed)
    data = {"flip": signed[:at] + bytes([signed[at] ^ 0x20]) + signed[at + 1:], "cut": signed[:at],
            "insert": signed[:at] + junk + signed[at:]}[how]
    got = verify(data)
    if got is not None:  # only whitespace or an equivalent JSON spelling may have changed
        assert canonical(json.loads(data)["manifest"]) == canonical(manifest)


@fuzz(150)
@given(st.one_of(JSON.map(lambda v: json.dumps(v).encode()), st.binary(max_size=300),
                 st.builds(lambda s, sig: json.dumps({"manifest": s, "signature": sig}).encode(), JSON,
                           st.text(alphabet=string.printable, max_size=200))))
def test_arbitrary_json_and_bytes_are_refused(data):
    assert verify(data) is None


def _pathological(n: int, shape: str) -> bytes:
    if shape == "open":          # [[[[... never closed
        return b"[" * n
    if shape == "objects":       # {"a":{"a":... never closed
        return b'{"a":' * n
    if shape == "closed":        # a manifest whose members are arrays nested n deep
        return b'{"manifest": {"serial": 1, "members": ' + b"[" * n + b"]" * n + b'}, "signature": "x"}'
    return b'{"manifest": {"serial": 1' + b"0" * n + b'}, "signature": "x"}'  # a huge number


@fuzz(20)
@given(st.integers(1, 200_000), st.sampled_from(["open", "objects", "closed", "number"]))
@example(100_000, "open")      # was a RecursionError out of json.loads, not a ManifestInvalid
@example(5_000, "objects")
@example(3_000, "closed")
def test_pathological_json_is_refused(n, shape):
    try:
        verify_manifest(_pathological(n, shape), world()[0].fingerprint, world()[0])
    except ManifestInvalid:
        pass
    except SecureMailError as e:  # refused as not signed by the authority: also a refusal
        assert e.code >= 500
    else:
        raise AssertionError("accepted")
