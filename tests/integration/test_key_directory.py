"""The key directory between two real gateways on loopback: WKD served and looked up (by securemail
and by GnuPG), publication refused unless authenticated and proven, key changes held until accepted,
revocations honoured, and two fresh users exchanging encrypted mail with no manual key import."""

from __future__ import annotations

import json
import shutil
import smtplib
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from securemail.keys import publish as PUB
from securemail.keys.wkd import advanced_url, direct_path, policy_path, wkd_hash
from tests.conftest import run_cli

from tests.support import GatewayHome, Running, federation, free_port, install_manifest, ok, wait_for

A, B = "interieur.gouv.fr", "justice.gouv.fr"
OFFICE = "127.0.0.3"
MARKER = "DIRECTORY-MARKER-51c2"
GPG_WKS = Path("/usr/lib/gnupg/gpg-wks-client")


def directory_federation(tmp: Path, domains=(A, B)) -> tuple[dict[str, GatewayHome], dict[str, int], str]:
    """``federation`` with a one-second manifest refresh; each entry names its key directory (--wkd)."""
    authority, homes = federation(tmp, domains, trusted=f"{OFFICE}/32", tune={"refresh_seconds": "1"})
    for d, g in homes.items():
        entry = json.loads((tmp / f"{d}.json").read_text())
        assert entry[0]["wkd"] == f"127.0.0.1:{g.wkd}"
    fpr = json.loads(ok(run_cli(authority, "keys", "list", "--json")).stdout)[0]["fingerprint"]
    return homes, {d: g.wkd for d, g in homes.items()}, fpr


class Fed:
    def __init__(self, tmp: Path, homes, wkd, fpr) -> None:
        self.tmp, self.homes, self.wkd, self.fpr = tmp, homes, wkd, fpr
        self.pw = tmp / "pw"
        self.pw.write_text("correct horse battery\n")

    def person(self, address: str) -> Path:
        """A fresh person: a key, the federation manifest, a submission account at their gateway."""
        home = self.tmp / f"person-{address}"
        ok(run_cli(home, "keys", "generate", "--uid", f"{address.split('@')[0].title()} <{address}>",
                   "--no-passphrase"), "generate")
        install_manifest(home, self.tmp, self.fpr)
        return home

    def gw(self, address: str) -> GatewayHome:
        return self.homes[address.rpartition("@")[2]]

    def publish(self, home: Path, address: str, password_file: Path | None = None):
        g = self.gw(address)
        return run_cli(home, "keys", "publish", "--server", f"127.0.0.1:{self.wkd[g.domain]}",
                       "--cafile", str(g.cert), "--username", address,
                       "--password-file", str(password_file or self.pw))

    def send(self, home: Path, sender: str, rcpt: str, subject: str):
        body = self.tmp / "body.txt"
        body.write_text(f"{subject}: {MARKER}\n")
        g = self.gw(sender)
        return run_cli(home, "send", "--from", sender, "--to", rcpt, "--subject", subject,
                       "--body-file", str(body), "--server", f"127.0.0.1:{g.submission}", "--starttls",
                       "--cafile", str(g.cert), "--username", sender, "--password-file", str(self.pw))

    def fpr_of(self, home: Path, address: str) -> str:
        keys = json.loads(ok(run_cli(home, "keys", "list", "--json")).stdout)
        return max((k for k in keys if address in k["addresses"] and k["secret"]),
                   key=lambda k: k["created"])["fingerprint"]

    def get(self, domain: str, path: str, host: str | None = None) -> tuple[int, bytes]:
        ctx = ssl.create_default_context(cafile=str(self.homes[domain].cert))
        req = urllib.request.Request(f"https://127.0.0.1:{self.wkd[domain]}{path}",
                                     headers={"Host": host} if host else {})
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=30) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, b""


USERS = ("alice@interieur.gouv.fr", "bruno@justice.gouv.fr", "carole@justice.gouv.fr",
         "denise@justice.gouv.fr", "erwan@justice.gouv.fr")


@pytest.fixture(scope="module")
def fed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("directory")
    homes, wkd, fpr = directory_federation(tmp)
    f = Fed(tmp, homes, wkd, fpr)
    for address in USERS:
        ok(run_cli(f.gw(address).home, "gateway", "user", "add", address, "--password-file", str(f.pw)))
    f.people = {a: f.person(a) for a in USERS}
    with Running(*homes.values()) as running:
        f.running = running
        yield f


def maildir(g: GatewayHome, address: str) -> list[Path]:
    d = g.home / "Maildir" / address / "new"
    return sorted(d.iterdir()) if d.exists() else []


def office(port: int, rcpt: str, subject: str) -> tuple[int, bytes]:
    msg = (f"From: Agent <agent@{A}>\r\nTo: {rcpt}\r\nSubject: {subject}\r\n"
           f"Message-ID: <{subject}@{A}>\r\n\r\nTexte {MARKER}.\r\n").encode()
    with smtplib.SMTP("127.0.0.1", port, source_address=(OFFICE, 0), timeout=60) as s:
        s.ehlo()
        s.mail(f"agent@{A}")
        assert s.rcpt(rcpt)[0] == 250
        return s.data(msg)


def accepted_to(g: GatewayHome, subject: str) -> list[str]:
    """The fingerprints the gateway encrypted the office message ``subject`` to (audit 'accepted')."""
    recs = json.loads(ok(run_cli(g.home, "audit", "show", "--json", "--limit", "1000")).stdout)
    return next(r["fields"]["encrypted_to"] for r in reversed(recs) if r["kind"] == "accepted"
                and r["fields"].get("recipient_domains") == [B] and r["fields"]["encrypted_to"])


def audit_kinds(g: GatewayHome, kind: str) -> list[dict]:
    recs = json.loads(ok(run_cli(g.home, "audit", "show", "--json", "--limit", "1000")).stdout)
    return [r["fields"] for r in recs if r["kind"] == kind]


# --- serving ---------------------------------------------------------------------------------
def test_wkd_served_only_for_published_addresses(fed):
    bruno = "bruno@justice.gouv.fr"
    assert fed.get(B, policy_path(B)) == (200, b"")
    assert fed.get(B, policy_path(A))[0] == 404                  # not a domain served there
    assert fed.get(B, "/.well-known/openpgpkey/" + B + "/hu/" + wkd_hash("bruno"))[0] == 404
    ok(fed.publish(fed.people[bruno], bruno), "publish")
    status, key = fed.get(B, advanced_url("x", bruno).split("x", 1)[1])
    assert status == 200 and bruno.encode() in key and b"PRIVATE" not in key
    assert fed.get(B, direct_path(bruno), host=B) == (200, key)  # direct method: domain from Host
    listing = json.loads(ok(run_cli(fed.homes[B].home, "directory", "list", "--json")).stdout)
    assert {"address": bruno, "source": "publish",
            "fingerprint": fed.fpr_of(fed.people[bruno], bruno)}.items() <= listing[0].items()
    path = advanced_url("x", bruno).split("x", 1)[1]
    ok(run_cli(fed.homes[B].home, "directory", "remove", bruno), "directory remove")
    assert fed.get(B, path)[0] == 404
    ok(run_cli(fed.homes[B].home, "directory", "add", bruno), "directory add ADDR")  # the stored key
    assert fed.get(B, path) == (200, key)


def test_gnupg_reads_the_directory(fed, tmp_path):
    """GnuPG computes the same WKD hash and imports what is served (only the domain's user ID)."""
    bruno = "bruno@justice.gouv.fr"
    if not shutil.which("gpg") or not GPG_WKS.exists():
        pytest.skip("GnuPG (gpg, gpg-wks-client) not installed")
    out = subprocess.run([str(GPG_WKS), "--print-wkd-hash", "Bruno.Petit@Justice.gouv.fr"],
                         capture_output=True, text=True, check=True).stdout
    assert out.split()[0] == wkd_hash("Bruno.Petit")
    status, key = fed.get(B, advanced_url("x", bruno).split("x", 1)[1])
    assert status == 200
    gpg = ["gpg", "--homedir", str(tmp_path), "--batch", "--with-colons"]
    try:
        subprocess.run([*gpg, "--import"], input=key, capture_output=True, check=True)
        listing = subprocess.run([*gpg, "--list-keys", bruno], capture_output=True, text=True,
                                 check=True).stdout
    finally:
        subprocess.run(["gpgconf", "--homedir", str(tmp_path), "--kill", "all"], check=False)
    assert f"fpr:::::::::{fed.fpr_of(fed.people[bruno], bruno)}:" in listing
    assert [ln.split(":")[9] for ln in listing.splitlines() if ln.startswith("uid")] == [f"Bruno <{bruno}>"]


GPG_IN_NAMESPACE = r"""
set -e
mount --bind "$1/hosts" /etc/hosts
mount --bind "$1/cert.pem" /etc/ssl/certs/ca-certificates.crt
ip link set lo up 2>/dev/null || true
py=$2
shift 2
exec "$py" -c '
import asyncio, ssl, subprocess, sys
from securemail.db import make_engine
from securemail.keys.wkd_server import WkdServer
from securemail.keys.directory import Directory
from securemail.keys.publish import Nonces
from securemail.keys.store import KeyStore
from securemail.schema import create_schema
work, url, domain, address = sys.argv[1:5]
engine = make_engine(url)
create_schema(engine)
ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
ctx.load_cert_chain(work + "/cert.pem", work + "/key.pem")
server = WkdServer("127.0.0.1", 443, ctx, Directory(engine, KeyStore(engine), [domain]), Nonces(engine),
                   lambda u, p: False)
async def main():
    await server.start()
    gpg = await asyncio.create_subprocess_exec("gpg", "--homedir", work + "/gnupg", "--batch",
        "--auto-key-locate", "clear,wkd", "--locate-external-keys", address)
    code = await gpg.wait()
    subprocess.run(["gpgconf", "--homedir", work + "/gnupg", "--kill", "all"], check=False)
    await server.stop()
    return code
sys.exit(asyncio.run(main()))
' "$@"
"""


def test_gnupg_locates_the_key_by_wkd(fed, tmp_path):
    """gpg --locate-external-keys, inside a user+mount+network namespace where the domain resolves to
    127.0.0.1 (its own /etc/hosts) and the directory's certificate is the only trusted CA."""
    import sys
    from securemail.admin.setup import self_signed_cert
    bruno = "bruno@justice.gouv.fr"
    if not shutil.which("gpg") or not shutil.which("unshare"):
        pytest.skip("gpg or unshare not installed")
    if not Path("/etc/ssl/certs/ca-certificates.crt").exists():
        pytest.skip("no /etc/ssl/certs/ca-certificates.crt to stand in for")
    self_signed_cert(f"openpgpkey.{B}", tmp_path / "cert.pem", tmp_path / "key.pem")
    (tmp_path / "hosts").write_text(f"127.0.0.1 localhost openpgpkey.{B} {B}\n")
    (tmp_path / "gnupg").mkdir(mode=0o700)
    (tmp_path / "gnupg" / "dirmngr.conf").write_text("standard-resolver\n")  # getaddrinfo: /etc/hosts
    url = f"sqlite:///{fed.homes[B].home / 'securemail.db'}"
    res = subprocess.run(["unshare", "-rmn", "sh", "-c", GPG_IN_NAMESPACE, "sh", str(tmp_path), sys.executable,
                          str(tmp_path), url, B, bruno], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[2])
    if res.returncode and "unshare" in res.stderr and "Operation not permitted" in res.stderr:
        pytest.skip(f"no user namespaces here: {res.stderr.strip()[:200]}")
    assert res.returncode == 0, res.stderr
    try:
        listing = subprocess.run(["gpg", "--homedir", str(tmp_path / "gnupg"), "--batch", "--with-colons",
                                  "--list-keys", bruno], capture_output=True, text=True, check=True).stdout
    finally:
        subprocess.run(["gpgconf", "--homedir", str(tmp_path / "gnupg"), "--kill", "all"], check=False)
    assert f"fpr:::::::::{fed.fpr_of(fed.people[bruno], bruno)}:" in listing


# --- publication -------------------------------------------------------------------------------
def test_unauthenticated_or_unproven_publication_is_refused(fed):
    carole, home = "carole@justice.gouv.fr", fed.people["carole@justice.gouv.fr"]
    wrong = fed.tmp / "wrong-pw"
    wrong.write_text("not the password\n")
    res = fed.publish(home, carole, wrong)
    assert res.exit_code == 1 and "refused (401)" in res.stderr
    from securemail.app import open_home
    core = open_home(home)
    try:
        key = core.keys.find(carole)[0]
        intruder = open_home(fed.people["denise@justice.gouv.fr"])
        other = intruder.keys.find("denise@justice.gouv.fr")[0]
        with key.pgp.unlocked(None), other.pgp.unlocked(None):
            good = PUB.build_request(key, carole)
            forged = {**good, "signature": PUB.build_request(other, carole)["signature"]}
            stale = PUB.build_request(key, carole, now=time.time() + 1000)  # the key is too new for -1000
        intruder.close()
    finally:
        core.close()
    server, cafile = f"127.0.0.1:{fed.wkd[B]}", str(fed.homes[B].cert)

    def post(doc, user=carole):
        return PUB.post(server, doc, user, "correct horse battery", cafile=cafile)
    assert post(forged).status == 403 and "not signed by the key" in post(forged).text
    assert post(stale).status == 403 and "time" in post(stale).text
    assert post(good, user="bruno@justice.gouv.fr").status == 403   # another user's credentials
    assert fed.get(B, advanced_url("x", carole).split("x", 1)[1])[0] == 404  # nothing stored
    assert post(good).status == 200
    replay = post(good)
    assert replay.status == 403 and "nonce" in replay.text
    reasons = {r["reason"] for r in audit_kinds(fed.homes[B], "key-publish-refused")}
    assert {"authentication required", "request not signed by the key",
            "nonce already used (replayed request)"} <= reasons
    assert carole in {r["address"] for r in audit_kinds(fed.homes[B], "key-published")}


# --- lookup and mail ----------------------------------------------------------------------------
def test_two_fresh_users_exchange_mail_without_importing_keys(fed):
    alice, bruno = "alice@interieur.gouv.fr", "bruno@justice.gouv.fr"
    ok(fed.publish(fed.people[alice], alice), "publish alice")
    ok(fed.publish(fed.people[bruno], bruno), "publish bruno")      # idempotent
    before = len(maildir(fed.homes[B], bruno))
    res = ok(fed.send(fed.people[alice], alice, bruno, "Aller"), "send alice -> bruno")
    assert f"found {fed.fpr_of(fed.people[bruno], bruno)} for {bruno}" in res.stderr
    got = wait_for(lambda: maildir(fed.homes[B], bruno)[before:], what="delivery to bruno")
    out = json.loads(ok(run_cli(fed.people[bruno], "read", "--json", str(got[0]))).stdout)[0]
    assert out["decrypted"] and MARKER in out["body"] and out["subject"] == "Aller"
    before = len(maildir(fed.homes[A], alice))
    ok(fed.send(fed.people[bruno], bruno, alice, "Retour"), "send bruno -> alice")
    got = wait_for(lambda: maildir(fed.homes[A], alice)[before:], what="delivery to alice")
    out = json.loads(ok(run_cli(fed.people[alice], "read", "--json", str(got[0]))).stdout)[0]
    assert out["decrypted"] and out["signature"] == "valid" and out["subject"] == "Retour"
    located = json.loads(ok(run_cli(fed.people[alice], "keys", "locate", bruno, "--json")).stdout)
    assert located["status"] in ("cached", "fetched") and located["source"] == f"wkd:{B}"


def test_gateway_encrypts_office_mail_to_the_located_user_key(fed):
    carole = "carole@justice.gouv.fr"            # published by her own request (test above) or here
    cert = ok(run_cli(fed.people[carole], "keys", "export", carole)).stdout_bytes
    ok(run_cli(fed.homes[B].home, "directory", "add", "-", input=cert), "directory add")
    before = len(maildir(fed.homes[B], carole))
    code, text = office(fed.homes[A].relay, carole, "office-carole")
    assert code == 250, text
    assert accepted_to(fed.homes[A], "office-carole") == [fed.fpr_of(fed.people[carole], carole)]
    got = wait_for(lambda: maildir(fed.homes[B], carole)[before:], what="delivery to carole")
    out = json.loads(ok(run_cli(fed.people[carole], "read", "--json", str(got[0]))).stdout)[0]
    assert out["decrypted"] and MARKER in out["body"]
    cached = [k for k in json.loads(ok(run_cli(fed.homes[A].home, "keys", "list", "--json")).stdout)
              if carole in k["addresses"]]
    assert [(k["source"], k["uids"]) for k in cached] == [(f"wkd:{B}", [f"Carole <{carole}>"])]
    assert cached[0]["bound"] == {carole: f"directory:{B}"}      # bound by her own domain's directory


def test_the_tls_pin_is_checked_before_anything_is_trusted(fed):
    from securemail.keys.locate import LocateError, fetch_wkd
    from securemail.membership import tls_pin_of_cert
    url = f"https://127.0.0.1:{fed.wkd[B]}" + advanced_url("x", "bruno@justice.gouv.fr").split("x", 1)[1]
    assert fetch_wkd(url, tls_pin_of_cert(fed.homes[B].cert.read_bytes()))  # the right pin: the key
    with pytest.raises(LocateError, match="does not match the federation's TLS pin"):
        fetch_wkd(url, tls_pin_of_cert(fed.homes[A].cert.read_bytes()))      # never a fallback


def test_key_change_is_held_and_refused_until_accepted(fed):
    alice, erwan = "alice@interieur.gouv.fr", "erwan@justice.gouv.fr"
    home = fed.people[erwan]
    ok(fed.publish(home, erwan), "publish erwan")
    old = fed.fpr_of(home, erwan)
    ok(fed.send(fed.people[alice], alice, erwan, "avant"), "send before the change")
    assert office(fed.homes[A].relay, erwan, "office-erwan-1")[0] == 250
    ok(run_cli(home, "keys", "generate", "--uid", f"Erwan <{erwan}>", "--no-passphrase"))
    new = fed.fpr_of(home, erwan)
    assert new != old
    ok(fed.publish(home, erwan), "publish the new key")
    located = run_cli(fed.people[alice], "keys", "locate", erwan, "--refresh", "--json")
    assert located.exit_code == 1 and json.loads(located.stdout)["status"] == "changed"
    res = fed.send(fed.people[alice], alice, erwan, "apres")
    assert res.exit_code == 1
    assert f"securemail keys accept {erwan} {new}" in res.stderr and old in res.stderr
    time.sleep(1.1)                                           # the gateway's refresh_seconds = 1
    code, text = office(fed.homes[A].relay, erwan, "office-erwan-2")
    assert (code, text) == (451, b"4.7.1 recipient key changed; held for operator review")
    held = audit_kinds(fed.homes[A], "key-change-held")[-1]
    assert (held["address"], held["pinned"], held["offered"]) == (erwan, old, new)
    ok(run_cli(fed.people[alice], "keys", "accept", erwan, new), "accept")
    ok(fed.send(fed.people[alice], alice, erwan, "apres"), "send after accepting")
    ok(run_cli(fed.homes[A].home, "keys", "accept", erwan, new), "operator accepts")
    time.sleep(0.3)  # the running gateway sees another process's key store change within 0.25 s
    assert office(fed.homes[A].relay, erwan, "office-erwan-3")[0] == 250
    assert accepted_to(fed.homes[A], "office-erwan-3") == [new]
    assert {"address": erwan, "fingerprint": new, "previous": old} in audit_kinds(fed.homes[A], "key-accepted")


def test_a_revoked_key_is_never_used_after_a_refresh(fed):
    alice, denise = "alice@interieur.gouv.fr", "denise@justice.gouv.fr"
    home = fed.people[denise]
    ok(fed.publish(home, denise), "publish denise")
    fpr = fed.fpr_of(home, denise)
    ok(fed.send(fed.people[alice], alice, denise, "avant"), "send before the revocation")
    assert office(fed.homes[A].relay, denise, "office-denise-1")[0] == 250
    assert accepted_to(fed.homes[A], "office-denise-1") == [fpr]
    ok(run_cli(home, "keys", "revoke", fpr, "--reason", "compromised"), "revoke")
    res = ok(fed.publish(home, denise), "publish the revocation")
    assert f"published the revocation of {fpr}" in res.stdout
    located = run_cli(fed.people[alice], "keys", "locate", denise, "--refresh", "--json")
    assert located.exit_code == 1 and json.loads(located.stdout)["status"] == "unusable"
    res = fed.send(fed.people[alice], alice, denise, "apres")
    assert res.exit_code == 1 and "revoked" in res.stderr
    time.sleep(1.1)
    assert office(fed.homes[A].relay, denise, "office-denise-2")[0] == 250
    to = accepted_to(fed.homes[A], "office-denise-2")
    assert fpr not in to                                      # the domain key instead, never the revoked one
    domain_key = json.loads(ok(run_cli(fed.homes[B].home, "keys", "list", "--json")).stdout)
    assert to == [k["fingerprint"] for k in domain_key if f"gateway@{B}" in k["addresses"]]


def test_directory_add_binds_only_what_it_publishes(tmp_path):
    """The operator's `directory add FILE` binds the key to the addresses it publishes (the served
    domain's), not to the other addresses its user IDs claim."""
    from tests.unit.test_wkd import new_key, with_uid
    home = tmp_path / "gw"
    ok(run_cli(home, "gateway", "init", "--domain", A, "--listen", f"127.0.0.1:{free_port()}",
               "--wkd", "none"), "gateway init")
    key = with_uid(new_key(f"Alice <alice@{A}>"), "Alice <alice@culture.gouv.fr>")
    res = ok(run_cli(home, "directory", "add", "-", input=key.public().armored()), "directory add")
    assert f"published {key.fingerprint} for alice@{A}" in res.stdout
    listing = json.loads(ok(run_cli(home, "keys", "list", "--json")).stdout)
    assert [k["bound"] for k in listing if k["fingerprint"] == key.fingerprint] == [{f"alice@{A}": "import"}]
    assert run_cli(home, "keys", "export", "alice@culture.gouv.fr").exit_code != 0   # never used for it
