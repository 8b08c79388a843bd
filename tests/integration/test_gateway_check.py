"""securemail gateway check: the preflight of a gateway home, through the real CLI.

A home made by ``gateway init`` and joined to a federation (tests/support/homes.py) passes; then
each problem is made for real (a key file opened to others, a certificate expired or for another
name or key, a manifest without this gateway or with a DKIM key it no longer has, a tampered or
rolled-back manifest, a port held by another socket, a database that does not answer or lacks a
table, an office MTA that does not answer) and the check names it, says how to fix it and exits 1;
where the fix is a command, running it makes the check pass again.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import sqlite3
import time
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller, UnixSocketController
from aiosmtpd.lmtp import LMTP
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from securemail.admin.check_services import delivery_checks, lmtp_target, probe
from securemail.config import GatewayConfig
from securemail.home import Home
from tests.support import federation, free_port, ok, run_cli

A, B = "interieur.gouv.fr", "justice.gouv.fr"


@pytest.fixture
def gw(tmp_path):
    """A gateway home of A, in a federation of A alone, its manifest installed."""
    _, homes = federation(tmp_path, (A,))
    return homes[A]


def report(home: Path) -> tuple[int, dict]:
    """``gateway check --json``: its exit status and the document (ok, checks)."""
    res = run_cli(home, "gateway", "check", "--json")
    data = json.loads(res.stdout)
    assert data["ok"] == (res.exit_code == 0) and res.exit_code in (0, 1), res.output
    assert all(set(c) == {"name", "ok", "detail", "fix"} for c in data["checks"]), data
    return res.exit_code, data


def passes(home: Path) -> list[dict]:
    """Every check ok, in both outputs, exit 0; the checks."""
    res = run_cli(home, "gateway", "check")
    assert res.exit_code == 0, res.output
    assert res.stdout and all(line.startswith("ok ") for line in res.stdout.splitlines()), res.stdout
    status, data = report(home)
    assert status == 0 and data["ok"] and all(c["ok"] for c in data["checks"]), data
    return data["checks"]


def problem(home: Path, name: str, detail: str, fix: str, word: str = "PROBLEM") -> dict:
    """The check ``name`` fails with ``detail`` and ``fix`` (regular expressions), in the human output
    (``WORD name detail`` then ``  fix: ...``) and in --json; exit 1."""
    res = run_cli(home, "gateway", "check")
    assert res.exit_code == 1, res.output
    lines = res.stdout.splitlines()
    at = [i for i, line in enumerate(lines) if line.startswith(f"{word} {name} ")]
    assert len(at) == 1, res.stdout
    assert re.search(detail, lines[at[0]]) and lines[at[0] + 1].startswith("  fix: "), res.stdout
    assert re.search(fix, lines[at[0] + 1]), res.stdout
    status, data = report(home)
    found = [c for c in data["checks"] if c["name"] == name]
    assert status == 1 and not data["ok"] and len(found) == 1 and not found[0]["ok"], data
    assert re.search(detail, found[0]["detail"]) and re.search(fix, found[0]["fix"]), found
    return found[0]


def names_ok(home: Path) -> dict[str, bool]:
    return {c["name"]: c["ok"] for c in report(home)[1]["checks"]}


# --- a good home ----------------------------------------------------------------------------------
def test_a_good_home_passes_every_check_and_prints_no_secret(gw):
    checks = passes(gw.home)
    assert [c["name"] for c in checks] == [
        "config", "permissions home", "permissions securemail.toml", "permissions securemail.db",
        "permissions tls/key.pem", f"permissions dkim/{A}.sm-ed25519.pem", f"permissions dkim/{A}.sm-rsa.pem",
        "tls certificate", "tls name", "tls key", "listener relay", "listener submission", "listener wkd",
        "listener metrics", "database", "database schema", "federation signature", "federation serial",
        "federation age", "federation expiry", f"federation entry {A}"]
    detail = {c["name"]: c["detail"] for c in checks}
    assert re.fullmatch(r"serial 1 expires \S+: (30\.0|29\.9) days left", detail["federation expiry"])
    assert re.fullmatch(r"valid until \d{4}-\d\d-\d\d \d\d:\d\d UTC: 82[45] days left", detail["tls certificate"])
    assert detail["listener relay"] == f"127.0.0.1:{gw.relay}"
    assert re.fullmatch(r"serial 1 signed by the authority [0-9A-F]{40}", detail["federation signature"])
    assert re.fullmatch(r"created \S+: 0 days old", detail["federation age"])
    out = run_cli(gw.home, "gateway", "check").output + json.dumps(checks)
    for pem in [gw.key.read_text(), *(p.read_text() for p in (gw.home / "dkim").glob("*.pem"))]:
        assert "PRIVATE KEY" in pem and pem.splitlines()[1] not in out
    assert "PRIVATE" not in out


def test_a_home_not_yet_in_a_federation_passes_and_says_so(tmp_path):
    home = tmp_path / "gw"
    ok(run_cli(home, "gateway", "init", "--domain", A, "--listen", f"127.0.0.1:{free_port()}",
               "--submission", "none", "--wkd", "none"))
    checks = passes(home)
    fed = [c for c in checks if c["name"].startswith("federation")]
    assert [c["name"] for c in fed] == ["federation"] and "not in a federation yet" in fed[0]["detail"]


# --- secret files ---------------------------------------------------------------------------------
@pytest.mark.parametrize("relative", ["tls/key.pem", f"dkim/{A}.sm-ed25519.pem", "securemail.db", "securemail.toml"])
def test_a_secret_file_open_to_others_is_a_problem(gw, relative):
    path = gw.home / relative
    path.chmod(0o644)
    problem(gw.home, f"permissions {relative}", r"mode 0644: open to group and others",
            rf"chmod 600 {re.escape(str(path))}$")
    path.chmod(0o600)  # the fix
    passes(gw.home)


def test_a_home_directory_open_to_others_and_a_missing_dkim_key(gw):
    gw.home.chmod(0o755)
    problem(gw.home, "permissions home", r"mode 0755: open to group and others", rf"chmod 700 {gw.home}$")
    gw.home.chmod(0o700)
    (gw.home / "dkim" / f"{A}.sm-rsa.pem").unlink()
    problem(gw.home, f"permissions dkim/{A}.sm-rsa.pem", r"missing \(a DKIM private key\)", "restore it from a backup")
    problem(gw.home, "federation entry", rf"this gateway's entry cannot be made: cannot read .*/dkim/{A}\.sm-rsa\.pem",
            "correct the keys and")


# --- the TLS certificate --------------------------------------------------------------------------
def write_certificate(path: Path, key, names: list[str], start: datetime, end: datetime) -> None:
    """A self-signed certificate for ``key`` naming ``names``, valid from ``start`` to ``end``."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
            .sign(key, hashes.SHA256()))
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def own_key(gw):
    return serialization.load_pem_private_key(gw.key.read_bytes(), password=None)


NOW = datetime.now(timezone.utc)


def test_an_expired_certificate(gw):
    write_certificate(gw.cert, own_key(gw), [f"gw.{A}"], NOW - timedelta(days=400), NOW - timedelta(days=3, hours=1))
    problem(gw.home, "tls certificate", r"expired on \d{4}-\d\d-\d\d \d\d:\d\d UTC \(4 days ago\)",
            rf"put a certificate for gw\.{A} at \[tls\] cert and its key at \[tls\] key")
    state = names_ok(gw.home)
    assert state["tls name"] and state["tls key"] and state[f"federation entry {A}"]  # same key: same pin


def test_a_certificate_near_its_end_and_one_not_yet_valid(gw):
    write_certificate(gw.cert, own_key(gw), [f"gw.{A}"], NOW - timedelta(days=80), NOW + timedelta(days=5, hours=1))
    problem(gw.home, "tls certificate", r"expires on \S+ \S+ UTC: 5 days left \(under 14\)", "put a certificate")
    write_certificate(gw.cert, own_key(gw), [f"gw.{A}"], NOW + timedelta(days=2), NOW + timedelta(days=90))
    problem(gw.home, "tls certificate", "not valid before", "check this host's clock")


def test_a_certificate_for_another_name(gw):
    write_certificate(gw.cert, own_key(gw), ["mail.example.org", "*.example.org"], NOW - timedelta(days=1),
                      NOW + timedelta(days=300))
    problem(gw.home, "tls name", rf"names mail\.example\.org, \*\.example\.org, not gw\.{A}",
            rf"subjectAltName names gw\.{A}, or set gateway.hostname")
    gw.config.write_text(gw.config.read_text().replace(f'hostname = "gw.{A}"', 'hostname = "gw.example.org"'))
    assert names_ok(gw.home)["tls name"]  # the wildcard covers it


def test_a_certificate_of_another_key_also_changes_the_pin(gw):
    write_certificate(gw.cert, ec.generate_private_key(ec.SECP256R1()), [f"gw.{A}"], NOW - timedelta(days=1),
                      NOW + timedelta(days=300))
    problem(gw.home, "tls key", "tls/key.pem is not the key of tls/cert.pem", r"put the certificate's own key")
    problem(gw.home, f"federation entry {A}", r"tls_pin [0-9a-f]{16}\.\.\. here, [0-9a-f]{16}\.\.\. listed",
            "send `securemail --home .* federation entry` to the federation authority")


# --- the federation -------------------------------------------------------------------------------
def sign_and_install(tmp: Path, gw_home: Path, *authority_args: str) -> None:
    authority = tmp / "authority"
    for args in authority_args:
        ok(run_cli(authority, *args.split()))
    ok(run_cli(authority, "federation", "sign", "--output", str(tmp / "federation.json")))
    ok(run_cli(gw_home, "federation", "install", str(tmp / "federation.json")))


def test_a_manifest_without_this_gateway(tmp_path):
    _, homes = federation(tmp_path, (A, B))
    sign_and_install(tmp_path, homes[A].home, f"federation remove {A}")
    problem(homes[A].home, f"federation entry {A}", rf"{A} is not in the installed manifest \(serial 2\)",
            "send `securemail --home .* federation entry` to the federation authority, then install")
    assert names_ok(homes[B].home)[f"federation entry {B}"]


def test_a_dkim_key_that_differs_from_the_manifest_entry_until_the_authority_lists_it(tmp_path):
    _, homes = federation(tmp_path, (A,))
    gw = homes[A]
    path = gw.home / "dkim" / f"{A}.sm-ed25519.pem"
    path.write_bytes(ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    problem(gw.home, f"federation entry {A}", "differs from the manifest: DKIM selector sm-ed25519 lists another key$",
            "send `securemail --home .* federation entry` to the federation authority")
    (tmp_path / "new.json").write_text(ok(run_cli(gw.home, "federation", "entry")).stdout)  # the fix
    sign_and_install(tmp_path, gw.home, f"federation add --entry {tmp_path / 'new.json'}")
    passes(gw.home)


def tamper_signature(doc: dict) -> None:
    """Change one character in the middle of the armored signature's base64 (its CRC line kept)."""
    lines = doc["signature"].split("\n")
    body = lines.index("") + 1
    middle = len(lines[body]) // 2
    lines[body] = lines[body][:middle] + ("A" if lines[body][middle] != "A" else "B") + lines[body][middle + 1:]
    doc["signature"] = "\n".join(lines)


@pytest.mark.parametrize("part", ["members", "signature"])
def test_a_tampered_manifest(gw, tmp_path, part):
    installed = gw.home / "federation.json"
    doc = json.loads(installed.read_text())
    if part == "members":
        doc["manifest"]["members"][0]["gateway"] = "203.0.113.9:25"  # under the old signature
    else:
        tamper_signature(doc)
    installed.write_text(json.dumps(doc))
    problem(gw.home, "federation signature", "manifest (not signed by the federation authority [0-9A-F]{40}"
            "|signature is unreadable)",
            rf"move {re.escape(str(installed))} aside .* `securemail --home .* federation install FILE`")
    assert [n for n in names_ok(gw.home) if n.startswith("federation")] == ["federation signature"]
    installed.rename(tmp_path / "tampered.json")  # the fix
    ok(run_cli(gw.home, "federation", "install", str(tmp_path / "federation.json")))
    passes(gw.home)


def test_a_manifest_rolled_back_by_hand(gw, tmp_path):
    shutil.copy(tmp_path / "federation.json", tmp_path / "serial1.json")
    sign_and_install(tmp_path, gw.home)
    shutil.copy(tmp_path / "serial1.json", gw.home / "federation.json")  # signed, but older
    problem(gw.home, "federation serial", r"1 is older than serial 2, installed .* the file was rolled back",
            "install the authority's latest manifest")
    assert names_ok(gw.home)["federation signature"]


def test_a_manifest_whose_authority_key_is_gone(gw):
    with sqlite3.connect(gw.home / "securemail.db") as db:
        db.execute("PRAGMA foreign_keys=OFF")
        db.execute("DELETE FROM keys WHERE source = 'federation-authority'")
    problem(gw.home, "federation signature", "the authority key [0-9A-F]{40} is not in the key store",
            "federation install FILE --authority-key")


# --- listeners ------------------------------------------------------------------------------------
def test_a_port_taken_by_another_socket_keeps_the_collision_words(gw):
    with socket.socket() as held:
        held.bind(("127.0.0.1", gw.submission))
        held.listen()
        problem(gw.home, "listener submission", rf"127\.0\.0\.1:{gw.submission}: 127\.0\.0\.1:{gw.submission} is in use",
                rf"stop what holds 127\.0\.0\.1:{gw.submission}", word="COLLISION")
    passes(gw.home)


def test_a_listener_on_an_address_this_host_lacks(gw):
    gw.config.write_text(gw.config.read_text().replace(f'"127.0.0.1:{gw.wkd}"', f'"192.0.2.1:{gw.wkd}"'))
    problem(gw.home, "listener wkd", rf"192\.0\.2\.1:{gw.wkd}: cannot listen there: Cannot assign requested address",
            r"an address of this host")


# --- the database ---------------------------------------------------------------------------------
def test_a_database_that_does_not_answer(gw):
    port = free_port()
    gw.tune(url=f'"postgresql+psycopg://gw:s3cret@127.0.0.1:{port}/securemail"')
    started = time.monotonic()
    problem(gw.home, "database", rf"postgresql\+psycopg://gw:\*\*\*@127\.0\.0\.1:{port}/securemail does not answer",
            "start the database server, or correct database.url")
    assert time.monotonic() - started < 15
    assert "s3cret" not in run_cli(gw.home, "gateway", "check").output + json.dumps(report(gw.home)[1])
    problem(gw.home, "federation signature", "not verified: the database, which holds the authority key, "
            "does not answer", "see the database check")


def test_a_missing_table_and_a_missing_column(gw):
    with sqlite3.connect(gw.home / "securemail.db") as db:
        db.execute("DROP TABLE publish_nonces")
    problem(gw.home, "database schema", "tables missing: publish_nonces$",
            "`securemail --home .* serve` creates the missing tables")
    ok(run_cli(gw.home, "audit", "verify"))  # the fix the check names
    passes(gw.home)
    with sqlite3.connect(gw.home / "securemail.db") as db:
        db.execute("ALTER TABLE messages DROP COLUMN peer")
    problem(gw.home, "database schema", "columns missing: messages.peer$", "made by another securemail version")


def test_a_sqlite_database_file_that_is_gone(gw):
    (gw.home / "securemail.db").rename(gw.home / "elsewhere.db")
    problem(gw.home, "database", "securemail.db: no such file", "correct database.url")
    assert not (gw.home / "securemail.db").exists()  # the check creates nothing


# --- relay_to and LMTP ----------------------------------------------------------------------------
class Sink:
    async def handle_DATA(self, server, session, envelope):
        return "250 OK"  # never reached: a probe sends no mail


def set_relay_to(gw, port: int) -> None:
    text = gw.config.read_text().replace('# relay_to = "127.0.0.1:25"', f'relay_to = "127.0.0.1:{port}"')
    assert f'relay_to = "127.0.0.1:{port}"' in text
    gw.config.write_text(text)


def test_relay_to_answering_then_not(gw):
    port = free_port()
    set_relay_to(gw, port)
    office = Controller(Sink(), hostname="127.0.0.1", port=port, server_hostname="office.test")
    office.start()
    try:
        (relay,) = [c for c in passes(gw.home) if c["name"] == "relay_to"]
        assert relay["detail"].startswith(f"127.0.0.1:{port} answered: 220 office.test "), relay
    finally:
        office.stop()
    problem(gw.home, "relay_to", rf"127\.0\.0\.1:{port} refused the connection: nothing listens there",
            r"start the office MTA, or correct delivery\.relay_to")


def test_a_silent_server_is_given_up_within_the_timeout():
    with socket.socket() as silent:  # accepts (the backlog), never greets
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        started = time.monotonic()
        fine, detail = probe(silent.getsockname(), "gw.test", timeout=0.5)
        assert not fine and detail == f"127.0.0.1:{silent.getsockname()[1]} did not answer within 0.5 s"
        assert time.monotonic() - started < 2


class LmtpController(Controller):
    def factory(self):
        return LMTP(self.handler)


class LmtpUnixController(UnixSocketController):
    def factory(self):
        return LMTP(self.handler)


def test_the_lmtp_probe_speaks_lhlo_over_tcp_and_a_unix_socket(tmp_path):
    port = free_port()
    servers = [LmtpController(Sink(), hostname="127.0.0.1", port=port),
               LmtpUnixController(Sink(), unix_socket=str(tmp_path / "lmtp.sock"))]
    for s in servers:
        s.start()
    try:
        for target in (lmtp_target(f"127.0.0.1:{port}"), lmtp_target(tmp_path / "lmtp.sock")):
            fine, detail = probe(target, "gw.test", lmtp=True, timeout=3)
            assert fine and " answered: 220 " in detail, detail
        fine, detail = probe(("127.0.0.1", port), "gw.test", timeout=3)  # EHLO is not LMTP's
        assert not fine and detail.startswith(f"127.0.0.1:{port} answered EHLO with 500"), detail
    finally:
        for s in servers:
            s.stop()
    fine, detail = probe(str(tmp_path / "lmtp.sock"), "gw.test", lmtp=True, timeout=3)
    assert not fine and detail == f"{tmp_path / 'lmtp.sock'} refused the connection: nothing listens there"
    fine, detail = probe(str(tmp_path / "none.sock"), "gw.test", lmtp=True, timeout=3)
    assert not fine and detail == f"{tmp_path / 'none.sock'}: No such file or directory"
    assert lmtp_target(("::1", 24)) == ("::1", 24) and lmtp_target("[::1]:24") == ("::1", 24)
    assert lmtp_target("lmtp") is None and lmtp_target(24) is None


def test_delivery_lmtp_is_checked_when_the_config_has_it(gw, tmp_path):
    """``delivery.local = "lmtp"``: the LMTP server named by ``delivery.lmtp`` must answer."""
    config = GatewayConfig.load(Home(gw.home))
    assert [c.name for c in delivery_checks(config)] == []
    with_lmtp = replace(config, local_delivery="lmtp", lmtp=str(tmp_path / "no.sock"))
    (check,) = delivery_checks(with_lmtp, timeout=1)
    assert check.name == "lmtp" and not check.ok and "start the LMTP server" in check.fix


# --- usage ----------------------------------------------------------------------------------------
def test_usage_errors_exit_2(tmp_path):
    res = run_cli(tmp_path / "gw", "gateway", "check", "--no-such-option")
    assert res.exit_code == 2 and "No such option" in res.output
    res = run_cli(tmp_path / "nowhere", "gateway", "check")
    assert res.exit_code == 2 and "is not a gateway home: no such directory" in res.output
    assert not (tmp_path / "nowhere").exists()
    person = tmp_path / "person"
    ok(run_cli(person, "keys", "generate", "--uid", f"Alice <alice@{A}>", "--no-passphrase"))
    res = run_cli(person, "gateway", "check", "--json")
    assert res.exit_code == 2 and "is not a gateway home: it has no securemail.toml" in res.output
    (person / "securemail.toml").write_text('[federation]\nauthority = "00"\n')
    res = run_cli(person, "gateway", "check")
    assert res.exit_code == 2 and "its securemail.toml has no [gateway]" in res.output


def test_a_config_that_does_not_parse_is_one_problem(gw):
    gw.tune(processes="0")
    problem(gw.home, "config", "gateway.processes must be between 1 and 64",
            rf"edit {re.escape(str(gw.config))} \(every setting is described in the README")
    assert list(names_ok(gw.home)) == ["config"]
    gw.config.write_text("[gateway\n")
    problem(gw.home, "config", "securemail.toml: ", "edit ")
