"""Threat agent: a compromised or malicious member gateway (its own TLS certificate, DKIM keys and directory).

Every test drives the real gateways of the conftest as this agent would and
asserts a promise of docs/security-target.md.
"""

from __future__ import annotations

import pytest

from tests.hostile import ALICE, BRUNO, GATEWAY_PEER, JUSTICE, OFFICE, OWN, STRANGER  # noqa: F401

pytestmark = pytest.mark.timeout(300)


# --- issue 10, finding 8: no body at rest once delivered ---------------------------------------
def test_member_mail_leaves_no_body_in_the_queue_database_files(gw):
    """A member sends domain-key encrypted mail with a plaintext marker inside to alice (maildir
    mode). Once it is delivered, A's SQLite database, -wal and -shm hold neither the marker nor
    any line of the armored message A queued and delivered: the body is gone, not only its
    plaintext (the settle removes it, secure_delete zeroes it, the WAL is truncated)."""
    import re
    import uuid

    from securemail.crypto import message as M
    from securemail.crypto.keys import load_key
    from tests.hostile.test_message_hostile import from_member, pgp_mime
    from tests.support import ok, run_cli, wait_for

    tag = uuid.uuid4().hex
    marker = f"HIDDEN-AT-REST-{tag}".encode()
    domain_key = load_key(ok(run_cli(gw.a.home, "keys", "export", f"gateway@{OWN}")).stdout_bytes)
    inner = (f"From: Bruno Petit <{BRUNO}>\r\nTo: <{ALICE}>\r\nSubject: Note\r\n"
             f"Content-Type: text/plain; charset=utf-8\r\n\r\nTexte {marker.decode()} confidentiel.\r\n")
    sent = M.encrypt(inner.encode(), [(domain_key, f"gateway@{OWN}")])
    reply, added = from_member(gw, pgp_mime(sent).replace(b"Message-ID: <", f"Message-ID: <{tag}.".encode(), 1))
    assert reply.startswith("250 2.0.0"), reply
    [qid] = added

    box = gw.a.home / "Maildir" / ALICE / "new"
    [delivered] = wait_for(lambda: [p for p in box.iterdir() if tag.encode() in p.read_bytes()]
                           if box.exists() else [], what="delivery to alice's mailbox")
    armor = re.search(rb"-----BEGIN PGP MESSAGE-----(.*?)-----END PGP MESSAGE-----",
                      delivered.read_bytes(), re.S).group(1)
    lines = [ln.strip() for ln in armor.splitlines() if len(ln.strip()) >= 60]  # what A stored
    lines += [ln.strip() for ln in sent.splitlines() if len(ln.strip()) >= 60]  # what J sent
    assert len(lines) >= 8 and marker not in delivered.read_bytes()

    db = gw.a.home / "securemail.db"
    files = [db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")]

    def at_rest() -> list[str]:
        found = []
        for f in files:
            data = f.read_bytes() if f.exists() else b""
            found += [f"{f.name}: {n[:24]!r}" for n in [marker, *lines] if n in data]
        return found

    wait_for(lambda: not at_rest(), timeout=30, what="the body to leave A's database files")
    # the search reads the right database: the message's metadata is still there, as it should be
    assert any(qid.encode() in f.read_bytes() for f in files if f.exists())


# --- issue 10, findings 2, 5, 8: status headers, the signer, no plaintext queued -----------------
from tests.adversarial.relay_office import relay_gw  # noqa: E402,F401 - fixture


def _member_sends(world, data: bytes) -> None:
    from tests.hostile.test_message_hostile import accepted, from_member
    reply, added = from_member(world, data)
    accepted(reply, added)


def test_member_status_headers_forged_outside_and_inside_never_reach_the_reader(gw):
    """J puts Securemail-Status and Authentication-Results claiming a valid signature and a DKIM
    pass in its outer headers and inside the message it encrypts to A's domain key (maildir mode).
    Alice's Maildir file carries A's own two headers only, and the message she decrypts none."""
    from tests.adversarial import relay_office as R
    text, msgid = R.marker(), f"{R.marker()}@{JUSTICE}"
    j_key = R.secret_key(gw.j.home, R.domain_fpr(gw.j))
    data = R.sealed(R.inner(f"Bruno Petit <{BRUNO}>", ALICE, text, R.FORGED),
                    [(R.cert(gw.a.home, f"gateway@{OWN}"), ALICE)], j_key,
                    frm=f"Bruno Petit <{BRUNO}>", msgid=msgid, outer=R.FORGED)
    _member_sends(gw, data)
    path = R.maildir_file(gw.a, ALICE, msgid)
    msg = R.parsed(path.read_bytes())
    assert R.values(msg, "Securemail-Status") == [
        f"encrypted=yes; signature=valid; signer={j_key.fingerprint}; warning=sender-status-removed"]
    assert R.values(msg, "Authentication-Results") == [f"gw.{OWN}; dkim=pass header.d={JUSTICE}"]
    assert b"FORGED" not in path.read_bytes() and b"forged" not in path.read_bytes()
    out = R.read_json(R.person_home(gw.tmp, ALICE), path)
    assert out["decrypted"] and text in out["body"] and out["from"] == f"Bruno Petit <{BRUNO}>"
    assert "status headers" not in out["warning"]  # nothing of the sender's status was left inside
    assert R.at_rest(gw.a.home, text) == []


def test_member_signing_as_our_minister_is_signer_mismatch_for_gateway_and_reader(gw):
    """J's domain key speaks for justice.gouv.fr only: its valid signature over a protected From
    "Le Ministre <ministre@interieur.gouv.fr>" is signer-mismatch in A's Securemail-Status and in
    what alice reads, with the signer's fingerprint and address, and the From mismatch named."""
    from tests.adversarial import relay_office as R
    from tests.support import ok, run_cli
    text, msgid = R.marker(), f"{R.marker()}@{JUSTICE}"
    j_key = R.secret_key(gw.j.home, R.domain_fpr(gw.j))
    data = R.sealed(R.inner(R.OUR_MINISTER, ALICE, text), [(R.cert(gw.a.home, f"gateway@{OWN}"), ALICE)],
                    j_key, frm=f"Bruno Petit <{BRUNO}>", msgid=msgid)
    _member_sends(gw, data)
    path = R.maildir_file(gw.a, ALICE, msgid)
    assert R.values(R.parsed(path.read_bytes()), "Securemail-Status") == [
        f"encrypted=yes; signature=signer-mismatch; signer={j_key.fingerprint}; "
        f"signer-addresses=gateway@{JUSTICE}; warning=from-mismatch"]
    alice = R.person_home(gw.tmp, ALICE)
    ok(run_cli(alice, "keys", "import", "-", input=j_key.public().armored()), "alice knows J's key")
    out = R.read_json(alice, path)
    assert out["from"] == R.OUR_MINISTER and text in out["body"]
    assert out["signature"] == "signer-mismatch" and out["signer"] == j_key.fingerprint
    assert f"gateway@{JUSTICE}" in out["warning"] and f"ministre@{OWN}" in out["warning"]
    assert "differs from the outer From" in out["warning"]


def test_member_status_headers_forged_for_the_office_are_replaced_and_nothing_plain_is_queued(relay_gw):
    """Relay mode: the office MTA gets the decrypted message with A's two status headers only.
    While the office MTA defers it, the queue's database and WAL hold no byte of its plaintext:
    A decrypts at delivery, in its delivery process, and nowhere else."""
    from tests.adversarial import relay_office as R
    from tests.support import wait_for
    w = relay_gw
    text, msgid = R.marker(), f"{R.marker()}@{JUSTICE}"
    j_key = R.secret_key(w.hostile.j.home, R.domain_fpr(w.hostile.j))
    data = R.sealed(R.inner(f"Bruno Petit <{BRUNO}>", ALICE, text, R.FORGED),
                    [(R.cert(w.a.home, f"gateway@{OWN}"), ALICE)], j_key,
                    frm=f"Bruno Petit <{BRUNO}>", msgid=msgid, outer=R.FORGED)
    w.office.reply = "451 4.3.0 try again later"
    try:
        tried = w.office.attempts
        _member_sends(w.hostile, data)
        wait_for(lambda: w.office.attempts > tried, 60, "a first delivery attempt")
        assert R.at_rest(w.a.home, text) == []  # queued, and only as ciphertext
    finally:
        w.office.reply = "250 2.0.0 OK"
    got = w.office.get(text)
    msg = R.parsed(got)
    assert R.values(msg, "Securemail-Status") == [
        f"encrypted=yes; signature=valid; signer={j_key.fingerprint}; warning=sender-status-removed"]
    assert R.values(msg, "Authentication-Results") == [f"gw.{OWN}; dkim=pass header.d={JUSTICE}"]
    assert b"FORGED" not in got and b"forged" not in got
    assert str(msg["From"]) == f"Bruno Petit <{BRUNO}>"
    assert R.at_rest(w.a.home, text) == []


@pytest.mark.parametrize("shown, status", [
    ("Le Ministre <ministre@justice.gouv.fr>",
     "signature=signer-mismatch; signer={fpr}; signer-addresses=bruno@justice.gouv.fr; warning=from-mismatch"),
    ("B. Petit <BRUNO@justice.gouv.fr>", "signature=valid; signer={fpr}"),
], ids=["as-the-minister", "as-himself"])
def test_member_user_signing_as_the_minister_is_signer_mismatch_for_the_office(relay_gw, shown, status):
    """Bruno's valid key (known to A) signs a protected From: only his own address, in any case and
    with any display name, makes it `valid` in the Securemail-Status the office receives."""
    from tests.adversarial import relay_office as R
    w = relay_gw
    text, msgid = R.marker(), f"{R.marker()}@{JUSTICE}"
    bruno = R.secret_key(R.person_home(w.hostile.tmp, BRUNO))
    data = R.sealed(R.inner(shown, ALICE, text), [(R.cert(w.a.home, f"gateway@{OWN}"), ALICE)], bruno,
                    frm=f"Bruno Petit <{BRUNO}>", msgid=msgid)
    _member_sends(w.hostile, data)
    msg = R.parsed(w.office.get(text))
    assert R.values(msg, "Securemail-Status") == [f"encrypted=yes; {status.format(fpr=bruno.fingerprint)}"]
    assert msg["From"].addresses[0].addr_spec == shown.split("<")[1].rstrip(">")  # the From it judged


# --- issue 10, finding 6: a member speaks for its own domains only; its replays are dropped ----------
import re as _f6_re  # noqa: E402
import sqlite3 as _f6_sqlite3  # noqa: E402
import uuid as _f6_uuid  # noqa: E402

from securemail.smtp import replies as _f6_replies  # noqa: E402
from tests.hostile import crlf as _f6_crlf  # noqa: E402
from tests.hostile.test_message_hostile import QUEUED as _F6_QUEUED  # noqa: E402
from tests.hostile.test_message_hostile import armored_of as _f6_armored, from_member as _f6_from_member  # noqa: E402
from tests.hostile.test_message_hostile import pgp_mime as _f6_pgp_mime  # noqa: E402
from tests.support import Running as _F6Running, audit_records as _f6_audit  # noqa: E402
from tests.support import federation as _f6_federation, wait_for as _f6_wait_for  # noqa: E402
from tests.integration.refusal_helpers import queued_messages as _f6_queued, signer_for as _f6_signer  # noqa: E402
from tests.integration.refusal_helpers import transact as _f6_transact  # noqa: E402

_F6_CULTURE = "culture.gouv.fr"


@pytest.fixture(scope="module")
def f6_three(tmp_path_factory):
    """A federation of interieur (A, running), justice and culture; the tests play J's and C's gateways
    with their own certificates and DKIM keys."""
    tmp = tmp_path_factory.mktemp("three-members")
    _, homes = _f6_federation(tmp, domains=(OWN, JUSTICE, _F6_CULTURE), trusted=OFFICE + "/32")
    with _F6Running(homes[OWN]):
        yield homes


@pytest.mark.parametrize("sender", [f"ministre@{_F6_CULTURE}", ""], ids=["envelope-sender", "bounce"])
def test_justices_certificate_cannot_carry_another_members_mail(gw, f6_three, record, sender):
    """J, with its real certificate, hands A a message from culture.gouv.fr that carries culture's
    own valid DKIM signature (as from a bounce, the From decides): 550 5.7.1, nothing queued, the
    refusal audited. The same bytes over culture's certificate are accepted (the control)."""
    homes = f6_three
    a = homes[OWN]
    data = _f6_signer(homes[_F6_CULTURE]).sign(_f6_crlf(_f6_pgp_mime(
        _f6_armored(gw), frm=f"Le Ministre <ministre@{_F6_CULTURE}>")))
    before, audited = _f6_queued(a), len(_f6_audit(a.home, "refused"))
    r = _f6_transact(a.relay, sender, [ALICE], data, cert=homes[JUSTICE], helo=f"gw.{JUSTICE}")
    record(f"culture's mail over justice's certificate ({sender or 'null sender'})", f"{r.code} {r.text}")
    assert f"{r.code} {r.text}" == _f6_replies.MEMBER_CERT_MISMATCH
    assert _f6_queued(a) == before
    [line] = _f6_audit(a.home, "refused")[audited:]
    assert line["fields"]["rule"] == "member_cert"
    assert line["fields"]["reason"] == f"client certificate of {JUSTICE}, not {_F6_CULTURE}"
    r = _f6_transact(a.relay, sender, [ALICE], data, cert=homes[_F6_CULTURE], helo=f"gw.{_F6_CULTURE}")
    assert (r.code, r.enhanced) == (250, "2.0.0"), str(r)
    assert len(_f6_queued(a) - before) == 1


def _f6_with_id(message: bytes, tag: str) -> bytes:
    """``message`` with the Message-ID <tag@justice.gouv.fr>."""
    return _f6_re.sub(rb"(?m)^Message-ID: <[^>]*>", f"Message-ID: <{tag}@{JUSTICE}>".encode(), message, count=1)


def _f6_alice_copies(gw, tag: str) -> list:
    box = gw.a.home / "Maildir" / ALICE / "new"
    return [p for p in box.iterdir() if tag.encode() in p.read_bytes()] if box.exists() else []


def test_a_replayed_message_id_is_accepted_and_delivered_once(gw, record):
    """J sends a message, then the same bytes again (its 250 was lost, or it replays on purpose),
    then other content under the same Message-ID: every copy gets 250, only the first is queued
    and reaches alice's mailbox, and each dropped copy is audited `replay`."""
    tag = _f6_uuid.uuid4().hex
    data = gw.signed(_f6_with_id(_f6_pgp_mime(_f6_armored(gw)), tag))
    first, added = _f6_from_member(gw, data, sign=False)
    assert _F6_QUEUED.fullmatch(first) and len(added) == 1, first
    changed = gw.signed(_f6_with_id(_f6_pgp_mime(_f6_armored(gw), headers="Keywords: changed\r\n"), tag))
    audited = len(_f6_audit(gw.a.home, "replay"))
    for copy, case in ((data, "same bytes"), (changed, "other content, same Message-ID")):
        again, added = _f6_from_member(gw, copy, sign=False)
        record(f"replayed Message-ID from a member ({case})", again)
        assert _F6_QUEUED.fullmatch(again) and again != first, again
        assert added == set(), f"a replay was queued ({case})"
    replays = _f6_audit(gw.a.home, "replay")[audited:]
    assert [r["fields"]["sender_domain"] for r in replays] == [JUSTICE, JUSTICE]
    assert len({r["fields"]["replay_of"] for r in replays}) == 1
    _f6_wait_for(lambda: _f6_alice_copies(gw, tag), what="the first copy in alice's mailbox")
    assert len(_f6_alice_copies(gw, tag)) == 1


def test_a_copy_refused_with_451_is_not_a_replay_when_retried(gw, record):
    """A's queue cannot commit (its database is locked past the busy timeout): J gets 451 and
    nothing is recorded as seen, so J's retry of the same bytes is queued, not dropped as a replay."""
    tag = _f6_uuid.uuid4().hex
    data = gw.signed(_f6_with_id(_f6_pgp_mime(_f6_armored(gw)), tag))
    before = gw.queued()
    lock = _f6_sqlite3.connect(gw.a.home / "securemail.db", timeout=30, isolation_level=None)
    try:
        lock.execute("BEGIN IMMEDIATE")  # A's next write waits its busy timeout, then gives up
        r = _f6_transact(gw.a.relay, BRUNO, [ALICE], data, cert=gw.j)
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    failed = f"{r.code} {r.text}"
    record("member mail while A's queue cannot commit", failed)
    assert failed.startswith("451 4.") and gw.queued() == before, failed
    retried, added = _f6_from_member(gw, data, sign=False)
    assert _F6_QUEUED.fullmatch(retried) and len(added) == 1, retried
    _f6_wait_for(lambda: _f6_alice_copies(gw, tag), what="the retried copy in alice's mailbox")


# --- issue 10, finding 4: a member's DKIM bomb is verified at a bounded cost ---------------------------
def _f4_bombed(gw) -> bytes:
    """Encrypted member mail with two hostile signatures of justice's domain and its real selector and
    body hash: 16,000 names in h= (over the signature size bound) and 65 names (over the h= bound)."""
    import base64

    from securemail.crypto.dkim_signing import relaxed_body_hash
    from tests.adversarial.test_anonymous_sender import _f4_names
    from tests.hostile import crlf
    from tests.hostile.test_message_hostile import armored_of, pgp_mime

    message = crlf(pgp_mime(armored_of(gw)))
    bh = base64.b64encode(relaxed_body_hash(message, message.index(b"\r\n\r\n") + 4))

    def signature(names: int) -> bytes:
        h = [b"from"] + _f4_names(names - 1)
        lines = [b":".join(h[i:i + 150]) for i in range(0, len(h), 150)]
        return (b"DKIM-Signature: v=1; a=ed25519-sha256; c=relaxed/relaxed; d=justice.gouv.fr; s=sm-ed25519;\r\n"
                b" h=" + b":\r\n ".join(lines) + b";\r\n bh=" + bh + b";\r\n b=" + b"A" * 86 + b"==\r\n")

    return signature(16000) + signature(65) + message


def test_a_members_dkim_bomb_costs_little_and_a_real_signature_still_passes(gw, record):
    from tests.adversarial.test_anonymous_sender import _F4_CPU_BOUND, _f4_tree_cpu
    from tests.hostile.test_message_hostile import DKIM_REFUSED, accepted, from_member, refused

    data = _f4_bombed(gw)
    start = _f4_tree_cpu()
    reply, added = from_member(gw, data, sign=False)
    cpu = _f4_tree_cpu() - start
    record("DKIM bomb from a member gateway (16,000 and 65 names in h=), unsigned", reply)
    refused(reply, added, DKIM_REFUSED)
    assert cpu < _F4_CPU_BOUND, f"{cpu:.2f} s of CPU"
    reply, added = from_member(gw, data, sign=True)  # justice's gateway adds its real signature on top
    record("DKIM bomb from a member gateway, with the member's real signature", reply)
    accepted(reply, added)


# --- issue 10, findings 1 and 2 on the receiving side: end-to-end mail reaches the reader rebuilt ---
def test_member_end_to_end_mail_reaches_the_mailbox_as_its_packets_only(gw):
    """J passes on bruno's end-to-end mail to alice (encrypted to her own key, which A cannot open)
    with text in the PGP/MIME preamble and epilogue and a content-carrying header. The Maildir file
    alice gets holds the packets in A's own wrapper with A's status headers: none of J's bytes
    outside the packets, and alice still decrypts the original."""
    import re
    import uuid

    from tests.adversarial import relay_office as R
    from tests.hostile.test_message_hostile import accepted, from_member

    tag = uuid.uuid4().hex
    hidden = [f"PREAMBLE-{tag}", f"EPILOGUE-{tag}", f"XHEADER-{tag}"]
    msg = gw.encrypted.replace(b"\r\n", b"\n")
    boundary = re.search(rb'boundary="([^"]+)"', msg).group(1)
    head, body = msg.split(b"\n\n", 1)
    body = (hidden[0].encode() + b"\n" + body.rstrip(b"\n") + b"\n" + hidden[1].encode() + b"\n")
    head, n = re.subn(rb"(?mi)^Message-ID: .*$", f"Message-ID: <{tag}@{JUSTICE}>".encode(), head)
    assert n == 1
    head += f"\nX-Note: {hidden[2]}".encode()
    assert body.count(b"--" + boundary + b"--") == 1
    reply, added = from_member(gw, head + b"\n\n" + body)
    accepted(reply, added)

    path = R.maildir_file(gw.a, ALICE, f"{tag}@{JUSTICE}")
    delivered = path.read_bytes()
    assert not [h for h in hidden if h.encode() in delivered], "bytes of J outside the packets reached alice"
    assert R.values(R.parsed(delivered), "Securemail-Status") == ["encrypted=yes; signature=unchecked"]
    out = R.read_json(R.person_home(gw.tmp, ALICE), path)
    assert out["decrypted"] and "Texte chiffre de bout en bout." in out["body"], out
