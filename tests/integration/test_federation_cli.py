"""securemail federation, end to end: an authority home and two gateway homes, through the CLI."""

from __future__ import annotations

import json
import tomllib
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from cli.main import cli
from securemail import membership as M
from securemail.app import open_home
from securemail.audit import AuditLog
from securemail.config import GatewayConfig
from securemail.crypto import openpgp
from securemail.crypto.dkim import generate_dkim_key
from securemail.crypto.keys import Key
from securemail.home import Home


def run(home: Path, *args: str):
    return CliRunner().invoke(cli, ["--home", str(home), *args], catch_exceptions=False)


def ok(home: Path, *args: str) -> str:
    r = run(home, *args)
    assert r.exit_code == 0, r.output
    return r.stdout


def write_cert(home: Path, host: str) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    start = datetime.now(timezone.utc) - timedelta(minutes=5)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(start + timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
            .sign(key, hashes.SHA256()))
    (home / "tls").mkdir()
    (home / "tls" / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (home / "tls" / "key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))


def make_gateway(home: Path, domain: str, port: int, federation_table: bool) -> dict:
    """A minimal gateway home: config, TLS cert, domain key in the store, Ed25519 + RSA DKIM keys."""
    core = open_home(home)
    key = Key(openpgp.generate(f"Gateway <postmaster@{domain}>", "ed25519", None, None))
    core.keys.add(key, source="generated")
    core.close()
    write_cert(home, f"mx.{domain}")
    dkim = {"ed1": generate_dkim_key("ed25519"), "rsa1": generate_dkim_key("rsa2048")}
    for sel, k in dkim.items():
        (home / f"dkim-{sel}.pem").write_bytes(k.private_pem)
    (home / "securemail.toml").write_text(f"""\
[gateway]
domains = ["{domain}"]
hostname = "mx.{domain}"

[listeners.relay]
listen = "127.0.0.1:{port}"

[tls]
cert = "tls/cert.pem"
key = "tls/key.pem"
{'''
[federation]  # the authority line is added under this header
manifest = "federation.json"
''' if federation_table else ""}
[keys.openpgp]
"{domain}" = "{key.fingerprint}"

[[keys.dkim]]
domain = "{domain}"
selector = "ed1"
algorithm = "ed25519"
private_key = "dkim-ed1.pem"

[[keys.dkim]]
domain = "{domain}"
selector = "rsa1"
algorithm = "rsa2048"
private_key = "dkim-rsa1.pem"
""")
    return {"key": key, "dkim": dkim}


@pytest.fixture
def homes(tmp_path):
    auth, gw_a, gw_b = tmp_path / "authority", tmp_path / "gw-a", tmp_path / "gw-b"
    return auth, (gw_a, make_gateway(gw_a, "a.gouv.fr", 2525, True)), \
        (gw_b, make_gateway(gw_b, "b.gouv.fr", 2526, False))


def test_entry_prints_this_gateways_entries(homes):
    _, (gw_a, a), _ = homes
    entries = json.loads(ok(gw_a, "federation", "entry"))
    assert len(entries) == 1
    e = entries[0]
    assert set(e) == {"domain", "gateway", "tls_pin", "openpgp_key", "dkim"}
    assert e["domain"] == "a.gouv.fr" and e["gateway"] == "127.0.0.1:2525"
    assert e["tls_pin"] == M.tls_pin_of_cert((gw_a / "tls" / "cert.pem").read_bytes())
    assert e["openpgp_key"] == a["key"].public().armored().decode()
    assert e["dkim"] == [{"selector": s, "public_key": k.public_txt} for s, k in a["dkim"].items()]
    core = open_home(gw_a)
    try:
        assert M.own_entries(GatewayConfig.load(Home(gw_a)), core.keys.get) == entries
    finally:
        core.close()


def test_full_flow_authority_and_gateways(homes, tmp_path):
    auth, (gw_a, _), (gw_b, b) = homes
    fpr = ok(auth, "federation", "init", "--no-passphrase").strip()
    assert len(fpr) == 40

    # gateway A hands over its entry file; gateway B's fields are typed in by hand
    (tmp_path / "a.json").write_text(ok(gw_a, "federation", "entry"))
    assert ok(auth, "federation", "add", "--entry", str(tmp_path / "a.json")) == "added a.gouv.fr\n"
    b_entry = json.loads(ok(gw_b, "federation", "entry"))[0]
    (tmp_path / "b.asc").write_bytes(b["key"].public().armored())
    (tmp_path / "b-ed1.txt").write_text(f'ed1._domainkey IN TXT "{b_entry["dkim"][0]["public_key"]}"\n')
    out = ok(auth, "federation", "add", "--domain", "B.gouv.fr", "--gateway", b_entry["gateway"],
             "--tls-pin", b_entry["tls_pin"].upper(), "--openpgp-key", str(tmp_path / "b.asc"),
             "--dkim", f"ed1:{tmp_path / 'b-ed1.txt'}")
    assert out == "added b.gouv.fr\n"
    assert "b.gouv.fr" in ok(auth, "federation", "show")

    one = tmp_path / "federation-1.json"
    assert "serial 1 with 2 members" in ok(auth, "federation", "sign", "--output", str(one))
    out = ok(auth, "federation", "verify", str(one))
    assert "valid manifest serial 1" in out and fpr in out and "a.gouv.fr" in out and "b.gouv.fr" in out
    ok(auth, "keys", "export", fpr, "--output", str(tmp_path / "authority.asc"))

    # the gateway needs the authority named once, out of band; then it is in its config
    r = run(gw_a, "federation", "install", str(one))
    assert r.exit_code == 2 and "give --authority FPR" in r.stderr
    out = ok(gw_a, "federation", "install", str(one), "--authority", fpr,
             "--authority-key", str(tmp_path / "authority.asc"))
    assert "installed manifest serial 1 (2 members)" in out and "recorded in securemail.toml" in out
    toml = tomllib.loads((gw_a / "securemail.toml").read_text())
    assert toml["federation"] == {"authority": fpr, "manifest": "federation.json"}
    assert GatewayConfig.load(Home(gw_a)).federation_authority == fpr
    assert "already installed" in ok(gw_a, "federation", "install", str(one))
    out = ok(gw_a, "federation", "show")
    assert "installed manifest serial 1" in out and "b.gouv.fr" in out
    assert "valid manifest serial 1" in ok(gw_a, "federation", "verify", str(one))

    # gateway B has no [federation] table: it is appended
    ok(gw_b, "federation", "install", str(one), "--authority", fpr,
       "--authority-key", str(tmp_path / "authority.asc"))
    assert GatewayConfig.load(Home(gw_b)).federation_authority == fpr

    # the next serial replaces it; the old one can no longer come back
    assert ok(auth, "federation", "remove", "b.gouv.fr") == "removed b.gouv.fr\n"
    two = tmp_path / "federation-2.json"
    for bad in ("0", "soon", "-3d"):
        r = run(auth, "federation", "sign", "--output", str(two), "--valid-for", bad)
        assert r.exit_code == 2 and "--valid-for" in r.stderr and not two.exists(), r.output
    assert "serial 2 with 1 members" in ok(auth, "federation", "sign", "--output", str(two), "--valid-for", "12h")
    m2 = json.loads(two.read_bytes())["manifest"]
    assert datetime.fromisoformat(m2["expires"]) - datetime.fromisoformat(m2["created"]) == timedelta(hours=12)
    assert f"expires {m2['expires']}, signed by" in ok(gw_a, "federation", "verify", str(two))
    m1 = json.loads(one.read_bytes())["manifest"]  # signed with the default lifetime
    assert datetime.fromisoformat(m1["expires"]) - datetime.fromisoformat(m1["created"]) == timedelta(days=30)
    assert "serial 2 (1 members), replacing serial 1" in ok(gw_a, "federation", "install", str(two))
    r = run(gw_a, "federation", "install", str(one))
    assert r.exit_code == 1 and "serial 1 is older than the installed serial 2" in r.stderr
    assert json.loads((gw_a / "federation.json").read_bytes())["manifest"]["serial"] == 2

    core = open_home(gw_a)
    try:
        kinds = [(r.kind, r.fields["serial"]) for r in AuditLog(core.engine).records() if r.kind == "manifest-change"]
    finally:
        core.close()
    assert kinds == [("manifest-change", 1), ("manifest-change", 2)]


def test_refusals_are_one_clear_line(homes, tmp_path):
    auth, (gw_a, a), _ = homes
    fpr = ok(auth, "federation", "init", "--no-passphrase").strip()
    (tmp_path / "a.asc").write_bytes(a["key"].public().armored())
    (tmp_path / "ed1.txt").write_text(a["dkim"]["ed1"].public_txt)
    r = run(auth, "federation", "add", "--domain", "a.gouv.fr", "--gateway", "mx.a.gouv.fr:25",
            "--tls-pin", "not-a-pin", "--openpgp-key", str(tmp_path / "a.asc"),
            "--dkim", f"ed1:{tmp_path / 'ed1.txt'}")
    assert r.exit_code == 1
    assert r.stderr.strip().splitlines() == [
        "securemail: a.gouv.fr: tls_pin must be the SHA-256 of the TLS certificate's "
        "SubjectPublicKeyInfo, 64 lower-case hex digits"]
    assert "a.gouv.fr" not in ok(auth, "federation", "show")  # the draft is unchanged
    (tmp_path / "garbage.asc").write_bytes(b"\x99\x00\x03abc")
    r = run(auth, "federation", "add", "--domain", "a.gouv.fr", "--gateway", "mx.a.gouv.fr:25",
            "--tls-pin", "ab" * 32, "--openpgp-key", str(tmp_path / "garbage.asc"),
            "--dkim", f"ed1:{tmp_path / 'ed1.txt'}")
    assert r.exit_code == 1 and r.stderr.startswith(f"securemail: {tmp_path / 'garbage.asc'}: ")

    r = run(auth, "federation", "sign", "--output", str(tmp_path / "f.json"))
    assert r.exit_code == 2 and "no members" in r.stderr

    (tmp_path / "a.json").write_text(ok(gw_a, "federation", "entry"))
    ok(auth, "federation", "add", "--entry", str(tmp_path / "a.json"))
    ok(auth, "federation", "sign", "--output", str(tmp_path / "f.json"))
    doc = json.loads((tmp_path / "f.json").read_text())
    doc["manifest"]["members"][0]["gateway"] = "evil.example.net:25"
    (tmp_path / "tampered.json").write_text(json.dumps(doc))
    r = run(auth, "federation", "verify", str(tmp_path / "tampered.json"))
    assert r.exit_code == 1 and "not signed by the federation authority" in r.stderr

    # a gateway without the authority's certificate says what to do
    r = run(gw_a, "federation", "install", str(tmp_path / "f.json"), "--authority", fpr)
    assert r.exit_code == 1 and "give --authority-key FILE" in r.stderr
    assert GatewayConfig.load(Home(gw_a)).federation_authority is None

    # and a second init on the authority home is refused
    r = run(auth, "federation", "init", "--no-passphrase")
    assert r.exit_code == 2 and fpr in r.stderr


def test_protected_authority_key(homes, tmp_path):
    auth, (gw_a, _), _ = homes
    (tmp_path / "pass").write_text("correct horse\n")
    ok(auth, "federation", "init", "--passphrase-file", str(tmp_path / "pass"))
    (tmp_path / "a.json").write_text(ok(gw_a, "federation", "entry"))
    ok(auth, "federation", "add", "--entry", str(tmp_path / "a.json"))
    r = run(auth, "federation", "sign", "--output", str(tmp_path / "f.json"))
    assert r.exit_code == 1 and "passphrase" in r.stderr
    ok(auth, "federation", "sign", "--output", str(tmp_path / "f.json"),
       "--passphrase-file", str(tmp_path / "pass"))
    assert "serial 1" in ok(auth, "federation", "verify", str(tmp_path / "f.json"))
