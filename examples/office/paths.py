"""The five paths of the office scenario; each returns what it checked, or raises Failed saying what did not hold.

1. plain mail from a standard client (swaks) through both offices' Postfix and gateways, read with
   mbsync and imaplib, decrypted by justice's gateway (domain key), marked Securemail-Status and
   handed straight to justice's Dovecot over LMTP; the answer goes the other way, through
   interieur's gateway, relay_to its Postfix, to a Dovecot that encrypts it at rest (mail_crypt);
2. PGP/MIME made by GnuPG, end to end: it arrives encrypted with the packets GnuPG wrote, and
   `securemail read` and gpg both decrypt and verify it;
3. mail the gateway refuses: Postfix bounces it and the sender finds the DSN, with the gateway's
   reason, in her own Dovecot mailbox;
4. the gateway stopped: Postfix keeps the mail (neomutt sent it) and, flushed once the gateway is
   back, delivers it exactly once;
5. what crossed between the gateways, both ways (read at the taps): no marker, no office Received line.
"""

from __future__ import annotations

import base64
import json
import os
import re
import time
from email.utils import make_msgid
from pathlib import Path

from securemail.smtp import replies

from .clients import imap, mbsync, neomutt, parse, swaks
from .instances import InstanceError
from .scenario import A, B, GATEWAY_SIZE_LIMIT, World, sm


class Failed(AssertionError):
    """A path did not do what it should; the message says what."""


def check(ok: object, what: str) -> None:
    if not ok:
        raise Failed(what)


def wait_for(pred, what: str, timeout: float = 60, every: float = 0.2):
    end = time.monotonic() + timeout
    while not (got := pred()):
        if time.monotonic() > end:
            raise Failed(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)
    return got


def stored(w: World, address: str, needle: str) -> list[Path]:
    """The files of ``address``'s Dovecot Maildir (INBOX) that contain ``needle``."""
    d = w.ministries[address.split("@")[1]].dovecot.maildir(address)
    files = [f for sub in ("new", "cur") for f in sorted((d / sub).glob("*"))] if d.exists() else []
    return [f for f in files if needle.encode() in f.read_bytes()]


def arrived(w: World, address: str, needle: str, timeout: float = 60) -> bytes:
    files = wait_for(lambda: stored(w, address, needle), f"{needle} in {address}'s mailbox", timeout)
    return files[0].read_bytes()


def hops(w: World, domain: str) -> set[str]:
    """The next hops of the deliveries ``domain``'s gateway made (its audit log)."""
    records = json.loads(sm(w.ministries[domain].gateway.home, "audit", "show", "--json"))
    return {r["fields"].get("hop", "") for r in records if r["kind"] == "delivered"}


# --- 1 ---------------------------------------------------------------------------------------------
def plain_mail(w: World) -> str:
    paul, bruno = w.person("paul@" + A), w.person("bruno@" + B)
    marker, msgid = w.marker(1), make_msgid("chemin1", A)
    swaks(paul, bruno.address, headers={"Subject": f"Note de service {marker}", "Message-Id": msgid},
          body=f"Bruno,\nla reunion est avancee a 9h. {marker}\nPaul")
    w.say(f"   paul -> Postfix {A} submission (swaks, STARTTLS, AUTH) -> gateway (TLS, pinned) -> gateway -> "
          f"Dovecot {B} (LMTP socket)")
    arrived(w, bruno.address, msgid)
    hop = f"Verified TLS connection established to 127.0.0.1[127.0.0.1]:{w.ministries[A].gateway.relay}"
    check(hop in w.ministries[A].postfix.log.read_text(), "Postfix did not reach its gateway over pinned TLS")
    # the mailbox shows the message as soon as Dovecot has it; the gateway audits the delivery when
    # it settles, a moment later
    wait_for(lambda: "lmtp:unix" in hops(w, B), "justice's gateway to record its LMTP delivery", 30)
    synced = [m for m in mbsync(bruno) if msgid.encode() in m]
    read = [m for m in imap(bruno) if msgid.encode() in m]
    check(len(synced) == 1 and len(read) == 1, f"mbsync found {len(synced)}, imaplib {len(read)} copies")
    msg = parse(read[0])
    status = msg.get("Securemail-Status", "")
    check(status.startswith("encrypted=yes") and "signature=valid" in status, f"Securemail-Status: {status!r}")
    check(marker in msg["Subject"] and marker in msg.get_body(("plain",)).get_content(),
          "the text was not decrypted for the office")
    # The same message: mbsync stores it with LF line ends (IMAP gives CRLF) and adds its own
    # X-TUID field (how it finds a message it uploaded again); nothing else differs.
    check(re.sub(rb"(?m)^X-TUID: [^\n]*\n", b"", synced[0]) == read[0].replace(b"\r\n", b"\n"),
          "mbsync and imaplib read different messages")
    w.say(f"   bruno reads it with mbsync and imaplib: Subject {msg['Subject']!r}")
    w.say(f"   Securemail-Status: {status}")
    answer(w, msgid)
    return status


def answer(w: World, msgid: str) -> None:
    """bruno answers: justice's Postfix -> justice's gateway -> interieur's gateway -> relay_to
    interieur's Postfix -> its Dovecot (LMTP), which stores it encrypted (mail_crypt)."""
    paul, bruno = w.person("paul@" + A), w.person("bruno@" + B)
    marker, reply = w.marker(1), make_msgid("chemin1-reponse", B)
    swaks(bruno, paul.address, headers={"Subject": f"Re: Note de service {marker}", "Message-Id": reply,
                                        "In-Reply-To": msgid}, body=f"Paul,\nbien note. {marker}\nBruno")
    w.say(f"   bruno answers (swaks) -> Postfix {B} -> gateway -> gateway -> relay_to Postfix {A} -> Dovecot (LMTP)")
    raw = wait_for(lambda: next((m for m in imap(paul) if reply.encode() in m), None), "the answer in paul's mailbox")
    msg = parse(raw)
    status = msg.get("Securemail-Status", "")
    check(status.startswith("encrypted=yes") and "signature=valid" in status, f"Securemail-Status: {status!r}")
    check(marker in msg.get_body(("plain",)).get_content(), "the answer was not decrypted for the office")
    received = " ".join(msg.get_all("Received", []))
    check(f"by {w.ministries[A].office.hostname} (Postfix)" in received, "the answer did not come through Postfix")
    wait_for(lambda: any(h.startswith("relay") for h in hops(w, A)), "interieur's gateway to record its relay", 30)
    maildir = w.ministries[A].dovecot.maildir(paul.address)
    files = [f for sub in ("new", "cur") for f in (maildir / sub).glob("*")]
    check(files and all(f.read_bytes().startswith(b"CRYPTED") and marker.encode() not in f.read_bytes()
                        for f in files), "paul's mailbox is not encrypted at rest")
    w.say(f"   paul reads it with imaplib; Securemail-Status: {status}")
    w.say(f"   on disk, paul's {len(files)} message file(s) begin with CRYPTED (mail_crypt), no marker")


# --- 2 ---------------------------------------------------------------------------------------------
def pgp_mime(w: World) -> str:
    alice, claire = w.person("alice@" + A), w.person("claire@" + B)
    marker, msgid = w.marker(2), make_msgid("chemin2", A)
    inner = (f'Content-Type: text/plain; charset="utf-8"; protected-headers="v1"\r\n'
             f"From: {alice.name} <{alice.address}>\r\nTo: {claire.name} <{claire.address}>\r\n"
             f"Subject: Projet de decret {marker}\r\n\r\nClaire,\r\nvoici le projet. {marker}\r\nAlice\r\n")
    armored, _ = w.gpg[alice.address]("--encrypt", "--sign", "--armor", "--local-user", w.fpr[alice.address],
                                      "--recipient", w.fpr[claire.address], "--recipient", w.fpr[alice.address],
                                      stdin=inner.encode())
    data = w.work / "chemin2.eml"
    data.write_bytes(wrap(alice, claire, msgid, armored))
    swaks(alice, claire.address, data=data)
    w.say("   alice -> Postfix (swaks --data: PGP/MIME by GnuPG, protected headers, Subject '...') -> ... -> Dovecot")
    raw = arrived(w, claire.address, msgid)
    check(marker.encode() not in raw and parse(raw).get_content_type() == "multipart/encrypted",
          "it is not PGP/MIME in claire's mailbox, or the marker is readable there")
    check(packets(raw) == packets(armored), "the OpenPGP packets are not those GnuPG wrote")
    status = parse(raw).get("Securemail-Status", "")
    check(status.startswith("encrypted=yes"), f"Securemail-Status: {status!r}")
    path = w.work / "chemin2-recu.eml"
    path.write_bytes(raw)
    r = json.loads(sm(claire.home / "securemail", "read", "--json", "--offline", str(path)))[0]
    check(r["decrypted"] and r["signature"] == "valid" and r["signer"] == w.fpr[alice.address]
          and marker in r["body"] and marker in r["subject"], f"securemail read: {r}")
    plain, st = w.gpg[claire.address]("--decrypt", stdin=armor_of(raw))
    check("DECRYPTION_OKAY" in st and "GOODSIG" in st and f"VALIDSIG {w.fpr[alice.address]}" in st
          and marker.encode() in plain,
          "gpg did not decrypt and verify it")
    w.say(f"   arrives encrypted, the packets GnuPG wrote; Securemail-Status: {status}")
    w.say(f"   securemail read: decrypted, signature {r['signature']}, subject {r['subject']!r}; gpg: GOODSIG")
    return status


def wrap(frm, to, msgid: str, armored: bytes) -> bytes:
    """RFC 3156 PGP/MIME around ``armored``, as an OpenPGP mail client writes it; CRLF."""
    boundary = "alice-" + msgid.strip("<>").split("@")[0].replace(".", "")
    head = [f"From: {frm.name} <{frm.address}>", f"To: {to.name} <{to.address}>", "Subject: ...",
            f"Date: {time.strftime('%a, %d %b %Y %H:%M:%S +0000', time.gmtime())}", f"Message-ID: {msgid}",
            "MIME-Version: 1.0", f'Content-Type: multipart/encrypted; protocol="application/pgp-encrypted";\r\n'
            f' boundary="{boundary}"', "", "This is an OpenPGP/MIME encrypted message (RFC 4880 and 3156)",
            f"--{boundary}", "Content-Type: application/pgp-encrypted", "Content-Description: PGP/MIME version "
            "identification", "", "Version: 1", "", f"--{boundary}",
            'Content-Type: application/octet-stream; name="encrypted.asc"', "Content-Description: OpenPGP "
            "encrypted message", 'Content-Disposition: inline; filename="encrypted.asc"', "",
            *armored.decode().strip().splitlines(), "", f"--{boundary}--", ""]
    return "\r\n".join(head).encode()


def armor_of(raw: bytes) -> bytes:
    m = re.search(rb"-----BEGIN PGP MESSAGE-----.*?-----END PGP MESSAGE-----", raw, re.S)
    if m is None:
        raise Failed("no armored OpenPGP message in it")
    return m.group(0)


def packets(raw: bytes) -> list[tuple[int, bytes]]:
    """The OpenPGP packets (tag, body) inside the first armor of ``raw``. Their framing may differ:
    the gateway re-armors with new-format headers and definite lengths, GnuPG writes old-format
    headers and partial lengths; the packets themselves must be the same."""
    text = armor_of(raw).decode().replace("\r\n", "\n").split("\n")
    data = base64.b64decode("".join(x for x in text[text.index("") + 1:-1] if not x.startswith("=")))
    out, pos = [], 0
    while pos < len(data):
        ctb = data[pos]
        if ctb & 0x40:                          # new format: one-, two-, five-octet or partial lengths
            tag, pos, body = ctb & 0x3F, pos + 1, b""
            while True:
                o = data[pos]
                if o < 192:
                    n, pos = o, pos + 1
                elif o < 224:
                    n, pos = ((o - 192) << 8) + data[pos + 1] + 192, pos + 2
                elif o == 255:
                    n, pos = int.from_bytes(data[pos + 1:pos + 5], "big"), pos + 5
                else:                           # a partial length: more chunks follow
                    n = 1 << (o & 0x1F)
                    body, pos = body + data[pos + 1:pos + 1 + n], pos + 1 + n
                    continue
                body, pos = body + data[pos:pos + n], pos + n
                break
        else:                                   # old format: 1, 2 or 4 length octets
            tag, size = (ctb >> 2) & 0x0F, (1, 2, 4)[ctb & 3]
            n = int.from_bytes(data[pos + 1:pos + 1 + size], "big")
            body, pos = data[pos + 1 + size:pos + 1 + size + n], pos + 1 + size + n
        out.append((tag, body))
    return out


# --- 3 ---------------------------------------------------------------------------------------------
def refused(w: World) -> str:
    paul, bruno = w.person("paul@" + A), w.person("bruno@" + B)
    big, spoof = make_msgid("chemin3-taille", A), make_msgid("chemin3-expediteur", A)
    annexe = w.work / "annexe.pdf"
    annexe.write_bytes(b"%PDF-1.4\n" + os.urandom(GATEWAY_SIZE_LIMIT // 4 * 3))  # base64: the whole limit
    swaks(paul, bruno.address, headers={"Subject": "Annexe volumineuse", "Message-Id": big},
          body=f"Voir l'annexe. {w.marker(3)}", attach=annexe)
    swaks(paul, bruno.address, body=f"Signe pour le cabinet. {w.marker(3)}",
          headers={"Subject": "Au nom du cabinet", "Message-Id": spoof,
                   "From": "Cabinet du Premier ministre <cabinet@premier-ministre.gouv.fr>"})
    w.say(f"   paul sends a {annexe.stat().st_size >> 10} KiB attachment (base64: over the gateway's "
          f"{GATEWAY_SIZE_LIMIT >> 10} KiB), and a message whose From is not his domain")
    # Too large: Postfix reads the gateway's EHLO SIZE and bounces without sending (its own words, the
    # gateway's limit). From another domain: the gateway's 550 5.7.1 after DATA, quoted by Postfix.
    expected = {big: ("5.3.4", f"exceeds size limit {GATEWAY_SIZE_LIMIT} of server"),
                spoof: ("5.7.1", str(replies.SENDER_MISALIGNED))}
    reasons = []
    for msgid, (status, words) in expected.items():
        dsn = wait_for(lambda: next((m for m in imap(paul) if msgid.encode() in m and b"multipart/report" in m), None),
                       f"the DSN for {msgid} in paul's mailbox", every=0.5)
        why = dsn_field(dsn, "Diagnostic-Code")
        check(dsn_field(dsn, "Status") == status and words in why, f"the DSN says {why!r}, not {words!r}")
        reasons.append(why)
        w.say(f"   DSN in paul's mailbox (IMAP): Status {status}; {why}")
    check(not stored(w, bruno.address, big) and not stored(w, bruno.address, spoof), "a refused mail arrived")
    return " | ".join(reasons)


def dsn_field(dsn: bytes, name: str) -> str:
    """A field of the DSN's per-recipient part (RFC 3464), unfolded."""
    m = re.search(rb"(?m)^" + name.encode() + rb": ([^\r\n]*(?:\r?\n[ \t][^\r\n]*)*)", dsn)
    return " ".join(m.group(1).decode().split()) if m else f"(no {name})"


# --- 4 ---------------------------------------------------------------------------------------------
def gateway_down(w: World) -> str:
    paul, bruno = w.person("paul@" + A), w.person("bruno@" + B)
    gw, postfix = w.ministries[A].gateway, w.ministries[A].postfix
    gw.stop()
    marker = w.marker(4)
    neomutt(paul, bruno.address, f"Pendant la maintenance {marker}", f"Bruno,\ntexte envoye pendant l'arret. {marker}\n")
    w.say(f"   gateway of {A} stopped; paul sends with neomutt")
    queued = wait_for(lambda: [q for q in postfix.queued() if q["queue_name"] == "deferred"],
                      "Postfix to defer the mail", every=0.3)
    reason = queued[0]["recipients"][0].get("delay_reason", "")
    w.say(f"   Postfix keeps it: queue {queued[0]['queue_id']} deferred ({reason})")
    gw.start()
    postfix.flush()
    w.say("   gateway started again; postqueue -f")
    arrived(w, bruno.address, marker)
    # Nothing left that could send a second copy: Postfix's queue empty (the gateway's 250 was read),
    # nothing queued at either gateway, nor at justice's Postfix.
    wait_for(lambda: not postfix.queued() and not w.ministries[B].postfix.queued()
             and not any(json.loads(sm(m.gateway.home, "queue", "list", "--json", "--state", "queued"))
                         for m in w.ministries.values()), "every queue to be empty")
    copies = [m for m in imap(bruno) if marker.encode() in m]
    check(len(copies) == 1 and len(stored(w, bruno.address, marker)) == 1, f"{len(copies)} copies arrived")
    w.say("   arrived exactly once (IMAP and the Maildir: one copy)")
    return reason


# --- 5 ---------------------------------------------------------------------------------------------
def crossing(w: World) -> list[bytes]:
    bodies = [b for tap in w.taps.values() for b in tap.messages()]
    office_hosts = [f"mail.{A}".encode(), f"mail.{B}".encode()]
    counts = {d: len(tap.messages()) for d, tap in w.taps.items()}
    check(counts[B] >= 3 and counts[A] >= 1, f"too few messages crossed the taps: {counts}")
    check(all(tap.all_tls() for tap in w.taps.values()), "a message crossed outside TLS")
    for body in bodies:
        head = body.split(b"\r\n\r\n", 1)[0]
        check(not any(m.encode() in body for m in w.markers), "a plaintext marker crossed")
        check(not re.search(rb"(?im)^received:", head), "a Received line crossed")
        check(not any(h in body for h in office_hosts), "an office host name crossed")
        check(b"multipart/encrypted" in head and b"-----BEGIN PGP MESSAGE-----" in body, "not PGP/MIME")
    w.say(f"   {len(bodies)} messages crossed ({counts[B]} to {B}, {counts[A]} to {A}), all in TLS: no marker "
          f"of the {len(w.markers)} sent, no Received line, no office host name")
    return bodies


PATHS = [
    ("1. plain mail: swaks -> Postfix -> gateways -> LMTP -> Dovecot; mbsync and imaplib read it; "
     "the answer: ... -> relay_to -> Postfix -> Dovecot (mail_crypt)", plain_mail),
    ("2. PGP/MIME from GnuPG, end to end, unchanged; securemail read and gpg verify it", pgp_mime),
    ("3. refused by the gateway: Postfix bounces, the DSN is in the sender's mailbox", refused),
    ("4. gateway stopped: Postfix queues; started again: delivered exactly once", gateway_down),
    ("5. what crossed between the gateways, both ways: no plaintext marker, no office Received line", crossing),
]


def run_paths(w: World) -> list[tuple[str, bool, float, str]]:
    """Every path in order: (title, worked, seconds, what it found or why it failed)."""
    results = []
    for title, path in PATHS:
        w.say(f"\n== {title}")
        t0 = time.monotonic()
        try:
            found, ok = path(w), True
        except (Failed, InstanceError) as e:  # a program that failed fails the path
            found, ok = str(e), False
            w.say(f"   FAILED: {e}")
        results.append((title, ok, time.monotonic() - t0, found if isinstance(found, str) else ""))
        w.say(f"   ({time.monotonic() - t0:.1f} s)")
    return results
