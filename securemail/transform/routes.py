"""The gateway's crypto stage: what each route does to a message before it is queued.

Outbound to a member, only the fields of ``mail.crossing.CLEAR_HEADERS`` and the
gateway's own skeleton cross in clear around one OpenPGP message. Mail the sender
encrypted is rebuilt from its packets (its wrapper, preamble, epilogue and armor
headers dropped); if its header block carries content outside the list (a real
Subject, X-*, ...), it is sealed: encrypted whole, as plain office mail is.
Plain office mail is encrypted (recipient key, from the key store or
found in the member's key directory, else the recipient domain's key) and
signed with our domain key; a changed recipient key raises KeyChanged. Inbound
mail encrypted to our domain key is decrypted here and re-encrypted to the local
user's key (the sender's signature kept), or queued encrypted for the office MTA,
or for the LMTP server when the user has no key (domain-key mode), and decrypted
at delivery (open_for_office); the gateway's status headers
replace the sender's (transform/status.py); a signer's key not known here is looked up
by the From shown through the gateway's directory client (``locate``), and used
only if it issued the signature (``signer_located``).
Every body that leaves for another domain is DKIM-signed last.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import replace
from typing import Callable

from ..crypto import message as M
from ..crypto.keys import Key
from ..errors import KeyUnusable, MalformedMessage, PolicyRefusal, SecureMailError, TemporaryFailure
from ..mail import signer as S
from ..mail.compose import pgp_inline, pgp_mime
from ..mail.crossing import COPIED, TRANSPORT_HEADERS, rearmor, seal_reasons
from ..mail.headers import HeaderBlock
from ..policy.encryption import EncryptionCheck
from ..policy.facts import Facts
from ..smtp import replies
from . import status as ST

OWN_KEY_UNUSABLE = "the gateway's signing key is unusable; try again later"
_ARMOR = re.compile(rb"-----BEGIN PGP MESSAGE-----.*?-----END PGP MESSAGE-----", re.S)
log = logging.getLogger(__name__)


def split_message(raw: bytes) -> tuple[bytes, int]:
    """The header block (with its last CRLF) and where the body starts; the body is not copied."""
    end = raw.find(b"\r\n\r\n")
    return (raw, len(raw)) if end < 0 else (raw[:end + 2], end + 4)


def with_body(head: bytes, raw: bytes, body_start: int) -> bytes:
    """``head`` (no final CRLF), the empty line and the body of ``raw``: the body copied once."""
    return b"".join((head, b"\r\n\r\n", memoryview(raw)[body_start:]))


def _kept_head(head: bytes, names) -> bytes:
    """The header block without the named fields and their continuation lines, no final CRLF."""
    out, skipping = [], False
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t"):
            if not skipping:
                out.append(line)
            continue
        name = line.split(b":", 1)[0].strip().lower().decode("latin-1")
        skipping = name in names
        if not skipping:
            out.append(line)
    return b"\r\n".join(out).rstrip(b"\r\n")


def strip_headers(raw: bytes, names=TRANSPORT_HEADERS, block: HeaderBlock | None = None) -> bytes:
    """Remove whole header fields (with continuation lines) by name; body untouched.
    ``block`` is the one parse of ``raw``'s header block, when the caller has it (not parsed again)."""
    if block is not None:
        return with_body(block.head(without=names)[:-2], raw, block.body_start)
    head, body_start = split_message(raw)
    return with_body(_kept_head(head, names), raw, body_start)


def add_headers(raw: bytes, headers: list[tuple[str, str]]) -> bytes:
    """Prepend header fields (values must be single-line, no CR/LF)."""
    lines = b"".join(f"{n}: {' '.join(v.split())}\r\n".encode() for n, v in headers)
    return lines + raw


def header_fields(head: bytes) -> list[tuple[str, bytes]]:
    """(lower-case name, whole field with its continuation lines) for a CRLF header block."""
    fields: list[tuple[str, bytes]] = []
    for line in head.split(b"\r\n"):
        if not line:
            continue
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] = (fields[-1][0], fields[-1][1] + b"\r\n" + line)
        else:
            fields.append((line.split(b":", 1)[0].strip().lower().decode("latin-1"), line))
    return fields


def top_headers(raw: bytes, names=COPIED, fields: list[tuple[str, bytes]] | None = None) -> dict[str, str]:
    """The first value of each named header, unfolded (no MIME parse: bytes in, text out);
    ``fields`` are those of ``raw`` when the caller has them already."""
    wanted = {n.lower(): n for n in names}
    out: dict[str, str] = {}
    for lname, field_bytes in header_fields(split_message(raw)[0]) if fields is None else fields:
        if lname in wanted and wanted[lname] not in out:
            value = field_bytes.split(b":", 1)[1].decode("utf-8", "replace")
            out[wanted[lname]] = " ".join(value.split())
    return {n: out[n] for n in names if n in out}


def protected_inner(raw: bytes, block: HeaderBlock | None = None, without=()) -> bytes:
    """The plain message as an inner entity for encryption: transport headers (and the fields
    named in ``without``) gone, hp="cipher".

    Done on the header bytes only: the body (and its MIME structure) is kept
    byte for byte, and a 25 MB message is not parsed and regenerated. ``block`` is the one
    parse of ``raw``'s header block, when the caller has it (not parsed again).
    """
    names = TRANSPORT_HEADERS + ("mime-version",) + tuple(without)
    if block is not None:
        fields = [(x.name, x.raw) for x in block.fields if x.name not in names]
        body_start = block.body_start
    else:
        head, body_start = split_message(raw)
        fields = header_fields(_kept_head(head, names))
    for i, (lname, field_bytes) in enumerate(fields):
        if lname == "content-type":
            if b"hp=" not in field_bytes.lower():
                fields[i] = (lname, field_bytes.rstrip(b"; \t") + b'; hp="cipher"')
            break
    else:
        fields.append(("content-type", b'Content-Type: text/plain; charset="us-ascii"; hp="cipher"'))
    return with_body(b"\r\n".join(f for _, f in fields), raw, body_start)


def fields_of(raw: bytes, f: Facts, without=()) -> list[tuple[str, bytes]]:
    """(lower-case name, whole field) of ``raw``'s header block, less the fields named in ``without``:
    the one parse of the facts if made."""
    fields = [(x.name, x.raw) for x in f.block.fields] if f.block is not None \
        else header_fields(split_message(raw)[0])
    return [(n, fb) for n, fb in fields if n not in without] if without else fields


def rebuilt(raw: bytes, enc: EncryptionCheck, fields: list[tuple[str, bytes]]) -> bytes:
    """A sender-encrypted message as it crosses: the list's fields of ``raw`` and the gateway's own
    skeleton (RFC 3156, or inline) around the packets the check parsed, re-armored."""
    armored = rearmor(enc.packets)
    build = pgp_inline if enc.format == "inline" else pgp_mime
    return build(top_headers(raw, fields=fields), armored)


def usable_signer(signer: Key, now: float) -> None:
    """Our own signing key must be usable now; if it is not, the fault is ours: 4xx, nothing unsigned."""
    try:
        signer.require_signing_key(now)
    except KeyUnusable as e:
        log.error("own signing key %s is unusable (%s): mail is deferred until it is renewed",
                  signer.fingerprint, e.message)
        raise TemporaryFailure(OWN_KEY_UNUSABLE, detail=e.message) from None


class Transformer:
    """Holds what the crypto stage needs, built once by the composition root."""

    def __init__(self, *, hostname: str, domain_keys: dict[str, Key],
                 user_key: Callable[[str], Key | None], member_key: Callable[[str], Key | None],
                 lookup: M.CertLookup, dkim_sign: Callable[[bytes, str], bytes],
                 clock: Callable[[], float] = time.time,
                 locate: Callable[[str], Key | None] | None = None,
                 member_keys: Callable[[str], list[Key]] | None = None) -> None:
        self.hostname = hostname
        self.domain_keys = domain_keys          # domain -> unlocked secret Key (rotation.DomainKeys:
        #                                         get() the one that signs now, values() all of ours)
        self.user_key = user_key                # address -> valid Key or None (key store)
        self.member_key = member_key            # member domain -> Key from the manifest
        self.member_keys = member_keys or (lambda d: [k for k in [member_key(d)] if k])  # + retiring
        self.locate = locate                    # address -> pinned Key found in the federation's
        #                                         directory (or the store); raises KeyChanged
        self.lookup = lookup
        self.dkim_sign = dkim_sign
        self.clock = clock

    # --- outbound -----------------------------------------------------------------
    def outbound(self, raw: bytes, domain: str, rcpts: list[str], *, sender_domain: str | None,
                 encryption: EncryptionCheck | None = None,
                 fields: list[tuple[str, bytes]] | None = None,
                 block: HeaderBlock | None = None) -> tuple[bytes, dict]:
        """The body to send to member ``domain`` for ``rcpts``, always encrypted and DKIM-signed:
        the sender's packets in the gateway's wrapper, or the whole message encrypted here.

        Only what it reads is passed: ``sender_domain`` (the From domain: whose key signs, whose
        DKIM), ``encryption`` (what the check found; None for a message written here, such as a
        DSN), ``fields`` (those of ``raw``'s header block when already parsed: ``fields_of``) and
        ``block`` (that parse itself, so the inner entity is not split again)."""
        sealed: dict = {}
        fields = header_fields(split_message(raw)[0]) if fields is None else fields
        if encryption is not None and encryption.encrypted:
            reasons = seal_reasons(fields)
            if not reasons:
                return self.dkim_sign(rebuilt(raw, encryption, fields), sender_domain or ""), {
                    "encrypted_by": "sender", "encrypted_to": [], "dropped": list(encryption.outside)}
            log.info("sender-encrypted mail has %s in clear: encrypted whole", "; ".join(reasons))
            sealed = {"sealed": list(reasons)}
        now = self.clock()
        targets, used = [], []
        for r in rcpts:
            key = (self.locate or self.user_key)(r)
            if key is None:
                key = self.member_key(domain)
            if key is None:
                raise PolicyRefusal(reply=replies.no_key_for(r))
            targets.append((key, r))
            used.append(key.fingerprint)
        signer = self.domain_keys.get(sender_domain or "")
        if signer is None:
            raise PolicyRefusal(reply=replies.NO_SIGNING_KEY)
        usable_signer(signer, now)
        try:
            armored = M.encrypt(protected_inner(raw, block), targets, signer=signer, now=now)
        except KeyUnusable as e:
            raise PolicyRefusal(reply=replies.unusable_key(e.message)) from None
        body = pgp_mime(top_headers(raw, fields=fields), armored)
        del armored  # not kept alive while DKIM signs (1.4x the message)
        return self.dkim_sign(body, sender_domain or ""), {"encrypted_by": "gateway", "encrypted_to": sorted(set(used)),
                                      "signed_by": signer.fingerprint, **sealed}

    # --- inbound --------------------------------------------------------------------
    def _ours(self, f: Facts) -> Key | None:
        ids = set(f.encryption.recipient_keyids)
        return next((k for k in self.domain_keys.values() if ids & k.keyids), None)

    def _domain_signer(self, fpr: str | None) -> Callable[[str], bool]:
        """domain -> is ``fpr`` that domain's gateway key (ours, or the member's in the manifest)?"""
        def vouches(domain: str) -> bool:
            ours = self.domain_keys.get(domain)
            keys = [ours] if ours is not None else self.member_keys(domain)  # a member's, retiring too
            return fpr is not None and any(k.fingerprint == fpr for k in keys)
        return vouches

    def signer_located(self, decrypted: M.Decrypted, outer_from: str | None) -> tuple[M.Decrypted, str]:
        """``decrypted`` with an ``unknown-key`` signature checked again against the key of the From
        shown that the directory client gives (pinned, bound, not revoked; the lookup is bounded and
        remembered per address), if that key issued it; else as it was, and why (for the log)."""
        sig = decrypted.signature
        if sig is None or sig.status != "unknown-key" or self.locate is None:
            return decrypted, ""
        address = S.from_address(ST.inner_from(decrypted.data) or outer_from)
        if address is None:
            return decrypted, "the From shown is not exactly one address"
        try:
            key = self.locate(address)
        except SecureMailError as e:  # a key change held for review, the directory, the database
            return decrypted, e.message
        if key is None:
            return decrypted, f"no usable key for {address} here or in its domain's directory"
        sigs = M.parse_inner(decrypted.packets, M.Limits())[3]
        out = replace(decrypted, signatures=S.reverify(decrypted.data, sigs, decrypted.signatures, key))
        if out.signature.status == "unknown-key":
            return out, f"the key for {address} ({key.fingerprint}) did not make the signature"
        return out, ""

    def _checked(self, decrypted: M.Decrypted, outer_from: str | None) -> M.Decrypted:
        out, why = self.signer_located(decrypted, outer_from)
        if why:
            log.info("signer key not found for mail from %s: %s", S.from_address(outer_from) or "?", why)
        return out

    def sender_status(self, decrypted: M.Decrypted, outer_from: str | None, *,
                      removed: bool = False) -> tuple[str, str]:
        """Securemail-Status of mail decrypted here: its signature bound to the From shown."""
        sig = decrypted.signature
        shown = ST.inner_from(decrypted.data) or outer_from
        check = S.check_sender(sig.status if sig else "none", sig.uids if sig else (), shown,
                               outer_from, self._domain_signer(sig.signer if sig else None))
        return ST.securemail_status(True, check, sig, decrypted=True, removed=removed)

    def status_headers(self, f: Facts, decrypted: M.Decrypted | None) -> list[tuple[str, str]]:
        ar = ST.auth_results(self.hostname, f.dkim_status, f.from_domain)
        if decrypted is None:
            return [ar, ST.securemail_status(f.encryption.encrypted, None, None, decrypted=False)]
        return [ar, self.sender_status(decrypted, _one(f.headers.from_values))]

    def inbound(self, raw: bytes, f: Facts, rcpt: str, mode: str) -> tuple[bytes, dict]:
        """Mail from a member gateway for local ``rcpt``: ``mode`` maildir, lmtp or relay to the office.

        The status headers that came with it are removed, outside and in the decrypted message,
        before ours are added. Mail for our domain key is re-encrypted to the user's key; in relay
        mode, and in lmtp mode for a user without a key (the office reads it in domain-key mode),
        it is queued as it came (re-wrapped) and decrypted only at delivery, in memory
        (``open_for_office``). In maildir mode a user without a key is refused.
        """
        outer = strip_headers(raw, ST.STATUS_FIELDS, f.block)
        kept = fields_of(raw, f, without=ST.STATUS_FIELDS)  # the fields of outer
        domain_key = self._ours(f) if f.encryption.encrypted else None
        if domain_key is None:  # end-to-end to the user (or plain, where policy allowed it)
            if f.encryption.encrypted:  # what the reader sees as encrypted is only the packets
                outer = rebuilt(raw, f.encryption, fields_of(raw, f))
            return add_headers(outer, self.status_headers(f, None)), {"decrypted": False}
        user = None if mode == "relay" else self.user_key(rcpt)
        if mode == "relay" or (mode == "lmtp" and user is None):
            sealed = pgp_mime(top_headers(outer, fields=kept), rearmor(f.encryption.packets))
            ar = ST.auth_results(self.hostname, f.dkim_status, f.from_domain)
            return add_headers(sealed, [ar]), {"decrypted": False, "decrypt_at_delivery": True}
        if user is None:
            raise PolicyRefusal(reply=replies.no_local_key(rcpt))
        out = self._checked(M.decrypt(f.encryption.payload, [domain_key], self.lookup),
                            _one(f.headers.from_values))
        clean = ST.without_status(out.data)
        if clean is None:  # the sender's packets as they came, signature kept
            armored = M.encrypt_packets(out.packets, [(user, rcpt)], now=self.clock())
        else:  # its signature covered the sender's status headers: it cannot stay without them
            armored = M.encrypt(clean, [(user, rcpt)], now=self.clock())
        status = self.sender_status(out, _one(f.headers.from_values), removed=clean is not None)
        ar = ST.auth_results(self.hostname, f.dkim_status, f.from_domain)
        body = add_headers(pgp_mime(top_headers(outer, fields=kept), armored), [ar, status])
        sig = out.signature
        return body, {"decrypted": True, "signature": sig.status if sig else "none",
                      "signer": sig.signer if sig else None, "reencrypted_to": user.fingerprint}

    def open_for_office(self, sealed: bytes) -> bytes:
        """At delivery, in memory: what ``inbound`` queued for the office, decrypted with our domain
        key, the sender's status headers removed, ours on top. Nothing of it is ever stored."""
        block = _ARMOR.search(sealed)
        if block is None:
            raise MalformedMessage("the queued message for the office is not encrypted")
        out = self._checked(M.decrypt(block.group(0), list(self.domain_keys.values()), self.lookup),
                            top_headers(sealed).get("From"))
        clean = ST.without_status(out.data)
        status = self.sender_status(out, top_headers(sealed).get("From"), removed=clean is not None)
        ours = [fb for name, fb in header_fields(split_message(sealed)[0])
                if name == "authentication-results"]  # every other one was removed by inbound
        return b"".join(fb + b"\r\n" for fb in ours) + add_headers(out.data if clean is None else clean,
                                                                   [status])

    def local(self, raw: bytes, f: Facts, rcpt: str, mode: str) -> tuple[bytes, dict]:
        """Office mail for a colleague on a domain served here; nobody's status headers pass."""
        stripped = strip_headers(raw, ST.STATUS_FIELDS, f.block)
        if mode == "relay" or f.encryption.encrypted:
            return stripped, {}
        user = self.user_key(rcpt)
        signer = self.domain_keys.get(f.from_domain or "")
        if user is None or signer is None:
            return stripped, {"encrypted_by": None}
        usable_signer(signer, self.clock())
        inner = protected_inner(raw, f.block, ST.STATUS_FIELDS) if f.block else protected_inner(stripped)
        armored = M.encrypt(inner, [(user, rcpt)], signer=signer, now=self.clock())
        del inner  # not kept alive while the wrapper is built
        return pgp_mime(top_headers(stripped, fields=fields_of(raw, f, ST.STATUS_FIELDS)), armored), {
            "encrypted_by": "gateway", "encrypted_to": [user.fingerprint]}


def _one(values: tuple[str, ...]) -> str | None:
    """The From value when there is exactly one From field."""
    return values[0] if len(values) == 1 else None
