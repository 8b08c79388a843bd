"""tests/support/corpus.py regenerates the interop corpus: the shared manifest's shape and categories."""

from __future__ import annotations

import json
import os
import re

import pytest

from tests.support import corpus as gen

VERDICTS = ("expect", "gateway", "encrypted", "decryptable", "signature", "format")


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    if gen.missing_peers():
        if os.environ.get("CI"):
            pytest.fail(f"cannot generate the corpus: {', '.join(gen.missing_peers())} missing")
        pytest.skip(f"cannot generate the corpus: {', '.join(gen.missing_peers())} missing")
    out = tmp_path_factory.mktemp("generated")
    assert gen.main([str(out)]) == 0
    return out, json.loads((out / "manifest.json").read_text())


def test_manifest_shape(made):
    out, m = made
    assert m["reader"] == "alice@interieur.gouv.fr" and m["reader_secret_key"] == "keys/alice.sec.asc"
    assert (out / m["reader_secret_key"]).read_bytes().startswith(b"-----BEGIN PGP PRIVATE KEY BLOCK-----")
    assert sorted(m["keys"]) == ["alice", "bruno", "carole", "denis", "emma"]
    for name, k in m["keys"].items():
        assert re.fullmatch(r"[0-9A-F]{40}", k["fingerprint"]) and k["made_by"] in ("gpg", "sqop")
        assert k["role"] in ("reader", "peer", "stranger", "revoked") and "@" in k["address"]
        assert (out / "keys" / f"{name}.pub.asc").read_bytes().startswith(b"-----BEGIN PGP PUBLIC KEY BLOCK-----")
    fprs, senders = {k["fingerprint"] for k in m["keys"].values()}, {k["address"] for k in m["keys"].values()}
    assert [e["file"] for e in m["mail"]] == list(gen.FILES)
    for e in m["mail"]:
        raw = (out / e["file"]).read_bytes()
        assert e["expect"] in ("show", "refuse", "plaintext") and e["gateway"] in ("accept", "reject", "either")
        assert e.get("signature", "none") in ("valid", "invalid", "none") and e["sender"] in senders
        assert e.get("signer", next(iter(fprs))) in fprs
        assert isinstance(e["encrypted"], bool) and isinstance(e["decryptable"], bool)
        assert raw.startswith(b"From: ") and b"\r\n\r\n" in raw and b"\n" not in raw.replace(b"\r\n", b"")
        if e.get("must_not_show"):
            assert e["must_not_show"].encode() not in raw, e["file"]


def test_every_category_the_tests_rely_on(made):
    _, m = made
    by_file = {e["file"].split("/")[1].removesuffix(".eml"): e for e in m["mail"]}
    keys = m["keys"]
    for peer, who in (("gpg", "bruno"), ("sqop", "carole")):  # PGP/MIME, encrypted and signed, by each peer
        e = next(e for e in m["mail"] if e["made_by"] == peer and e["expect"] == "show" and e.get("attachments"))
        assert e["signature"] == "valid" and e["signer"] == keys[who]["fingerprint"] and e["subject"]
    assert keys["emma"]["role"] == "revoked" and by_file["signed-by-revoked-key"]["signature"] == "invalid"
    assert by_file["encrypted-unsigned"]["signature"] == "none"
    assert by_file["inline-pgp"]["format"] == "inline"
    assert by_file["signed-not-encrypted"]["signature"] == "valid"
    assert {by_file[n]["expect"] for n in ("plain", "fake-encrypted", "signed-not-encrypted")} == {"plaintext"}
    assert all(by_file[n]["expect"] == "refuse" for n in ("tampered", "no-mdc", "encrypted-to-other",
                                                          "compression-bomb"))
    assert by_file["no-mdc"]["gateway"] == "reject" and by_file["compression-bomb"]["gateway"] == "accept"


@pytest.mark.skipif(not (gen.SHARED / "manifest.json").exists(), reason="no shared corpus to compare with")
def test_same_verdicts_as_the_shared_corpus(made):
    """Equivalent: per file, what a reader and a gateway must conclude is what the shared manifest says."""
    _, m = made
    shared = json.loads((gen.SHARED / "manifest.json").read_text())
    assert {n: k["role"] for n, k in m["keys"].items()} == {n: k["role"] for n, k in shared["keys"].items()}
    assert {n: k["made_by"] for n, k in m["keys"].items()} == {n: k["made_by"] for n, k in shared["keys"].items()}
    ours = {e["file"]: e for e in m["mail"]}
    assert sorted(ours) == sorted(e["file"] for e in shared["mail"])
    for e in shared["mail"]:
        o = ours[e["file"]]
        assert {k: o.get(k) for k in VERDICTS} == {k: e.get(k) for k in VERDICTS}, e["file"]
        assert (o["sender"], o.get("subject"), o.get("body_contains"), o.get("attachments"),
                o.get("must_not_show")) == (e["sender"], e.get("subject"), e.get("body_contains"),
                                             e.get("attachments"), e.get("must_not_show")), e["file"]
