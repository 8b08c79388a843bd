"""Reading mail: PGP/MIME, inline PGP, PGP/MIME signed, or plain; one explicit result per message.

Nothing from the email module or the crypto layer escapes as an exception: a
message that cannot be read safely becomes a result with ``error`` set and no
plaintext. A message that is not encrypted is reported as such, never as
encrypted, even when it wears a multipart/encrypted costume.

A valid signature is shown as ``valid`` only when its key speaks for the From
shown (the protected inner From when there is one), else ``signer-mismatch``
(mail/signer.py). ``Securemail-Status`` and ``Authentication-Results`` found
inside an encrypted or signed part were written by the sender, never by a
gateway: they are ignored, and named in ``warning``.

A signature by a key not known here (``unknown-key``) is checked again with the
key ``signer_key`` finds for the From shown (the federation's directory, for the
CLI: the key ``send`` would use), if that key or one of its subkeys issued it;
otherwise it stays ``unknown-key`` and ``warning`` says why.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Callable
from email import policy
from email.message import EmailMessage

from ..crypto import armor as A
from ..crypto import message as M
from ..crypto import packets as P
from ..crypto.keys import Key
from ..errors import (LimitExceeded, MalformedMessage, NotEncrypted, SecureMailError)
from . import shell
from .mimeparse import MAX_MIME_DEPTH, EachOnce, count_parts
from .mimeparse import parse as parse_mime
from . import signer as S

MAX_MESSAGE = 64 << 20
_PGP_BLOCK = re.compile(rb"-----BEGIN PGP MESSAGE-----.*?-----END PGP MESSAGE-----", re.S)
STATUS_FIELDS = ("securemail-status", "authentication-results")
# From address -> (the key to trust for it, or None; why there is none)
SignerKey = Callable[[str], "tuple[Key | None, str]"]


class Given:
    """A message given to ``read_message`` by a caller that keeps no other reference to it (the
    bridge's reader processes): on the PGP/MIME path that needs no MIME parse, ``data`` is let go
    (set to None) once the encrypted payload is found, and the message's bytes go once the payload
    is dearmored, not after the message is shown. A 25 MiB attachment is a 49 MB message."""
    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data: bytes | None = data


@dataclass
class ReadResult:
    file: str
    encrypted: bool = False
    decrypted: bool = False
    signature: str = "none"
    signer: str | None = None
    sender: str = ""
    subject: str = ""
    body: str = ""
    attachments: list[dict] = field(default_factory=list)
    error: str | None = None
    format: str = "plain"          # pgp/mime | inline | signed | plain
    signature_reason: str = ""
    warning: str = ""
    # what the signature binding needs, not part of the JSON: the reported signature, the From
    # headers as they came (outer; inner when the encrypted or signed part has one)
    _sig: M.SignatureResult | None = field(default=None, repr=False)
    _outer_from: str = field(default="", repr=False)
    _inner_from: str | None = field(default=None, repr=False)
    _reverify: Callable[[Key], tuple] | None = field(default=None, repr=False)  # key -> signature results
    # the MIME entity shown (decrypted, or the signed part; inline: the decrypted text), for a client
    # that displays it (the bridge); None for plain mail and whenever the message was refused
    _content: bytes | None = field(default=None, repr=False)
    _check: S.SenderCheck | None = field(default=None, repr=False)  # the signature bound to the From shown
    _policy: policy.EmailPolicy = field(default_factory=lambda: policy.default.clone(header_factory=EachOnce()),
                                        repr=False)

    def to_json(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if not k.startswith("_")}
        d["from"] = d.pop("sender")
        return d

    def warn(self, text: str) -> None:
        self.warning = f"{self.warning}; {text}" if self.warning else text


def _text(value) -> str:
    return str(value) if value is not None else ""


def _fill_content(res: ReadResult, msg: EmailMessage) -> None:
    """Body text and attachment names from a (decrypted or plain) MIME entity."""
    body_part = None
    for part in msg.walk():
        if part.is_multipart():
            continue
        name = part.get_filename()
        if name or part.get_content_disposition() == "attachment":
            payload = part.get_payload(decode=True) or b""
            res.attachments.append({"name": name or "unnamed", "size": len(payload)})
        elif body_part is None and part.get_content_type() == "text/plain":
            body_part = part
    if body_part is not None:
        try:
            text = body_part.get_content()
        except Exception:  # noqa: BLE001 - unknown charset and friends
            text = (body_part.get_payload(decode=True) or b"").decode("utf-8", "replace")
        res.body = text.replace("\r\n", "\n")


def _signed_parts(raw: bytes, msg: EmailMessage) -> tuple[bytes, bytes]:
    """(exact bytes of the signed part, signature bytes) of a multipart/signed message."""
    boundary = msg.get_boundary()
    if not boundary:
        raise MalformedMessage("multipart/signed without boundary")
    sep = b"\n--" + boundary.encode() 
    body = raw.replace(b"\r\n", b"\n")
    start = body.find(sep)
    if start < 0:
        raise MalformedMessage("broken multipart/signed boundary")
    start = body.find(b"\n", start + len(sep)) + 1
    end = body.find(sep, start)
    if start <= 0 or end < 0:
        raise MalformedMessage("broken multipart/signed boundary")
    signed = body[start:end].replace(b"\n", b"\r\n")
    parts = list(msg.iter_parts())
    if len(parts) != 2:
        raise MalformedMessage("multipart/signed must have two parts")
    return signed, parts[1].get_payload(decode=True) or b""


def _verify(res: ReadResult, data: bytes, sig: bytes, lookup) -> None:
    binary = A.unarmor_if_needed(sig)
    sigs = [p.raw for p in P.read_packets(binary) if p.tag == P.SIG]
    results = M.verify_signatures(data, sigs, lookup)
    _set_signature(res, results, lambda key: S.reverify(data, sigs, results, key))


def _set_signature(res: ReadResult, results, reverify=None) -> None:
    best = next((s for s in results if s.status == "valid"), next(iter(results), None))
    if best is not None:
        res.signature, res.signer, res.signature_reason = best.status, best.signer, best.reason
        res._sig, res._reverify = best, reverify


def _locate_signer(res: ReadResult, signer_key: SignerKey) -> None:
    """An ``unknown-key`` signature checked again with the key found for the From shown, if it issued it."""
    shown = S.from_address(res._inner_from if res._inner_from is not None else res._outer_from)
    if shown is None:
        res.warn("signer key not found: the From shown is not exactly one address")
        return
    key, why = signer_key(shown)
    if key is None:
        res.warn(f"signer key not found: {why}")
        return
    issuer = res.signer or res._sig.keyid
    _set_signature(res, res._reverify(key))
    if res.signature == "unknown-key":
        res.warn(f"signer key not found: the key for {shown} ({key.fingerprint}) did not make this "
                 f"signature (issuer {issuer})")


def _from_inner(res: ReadResult, inner_raw: bytes, lookup) -> None:
    inner = parse_mime(inner_raw, res._policy)
    if inner.get_content_type() == "multipart/signed":  # RFC 3156 §6.1: signed, then encrypted
        _sender_status(res, inner)
        data, sig = _signed_parts(inner_raw, inner)
        _verify(res, data, sig, lookup)
        inner, inner_raw = next(iter(inner.iter_parts())), data
    _protected_headers(res, inner)
    _fill_content(res, inner)
    res._content = inner_raw


def _from_inner_head(res: ReadResult, inner_raw: bytes, lookup) -> None:
    """``_from_inner`` for a reader that shows the entity as it is (content=False): only its header
    block is parsed. Signed inside, nested deeper than MAX_MIME_DEPTH could be, or a header block
    that is not clean: the whole entity is parsed, as ``_from_inner`` does."""
    found = shell.head_only(inner_raw, res._policy) if count_parts(inner_raw) <= MAX_MIME_DEPTH else None
    if found is None or found[0].get_content_type() == "multipart/signed":
        _from_inner(res, inner_raw, lookup)
        return
    _protected_headers(res, found[0])
    res._content = inner_raw


def _protected_headers(res: ReadResult, inner: EmailMessage) -> None:
    """Subject and From of a decrypted or signed entity (RFC 9788) replace the outer ones."""
    _sender_status(res, inner)
    res.subject = _text(inner.get("Subject")) or res.subject
    if inner.get("From") is not None and _text(inner.get("From")):
        res._inner_from = _text(inner.get("From"))
        res.sender = res._inner_from


def _sender_status(res: ReadResult, part: EmailMessage) -> None:
    """Status headers inside a protected part are the sender's words, not a gateway's: named, ignored."""
    found = sorted({k.lower() for k in part.keys()} & set(STATUS_FIELDS))
    if found and "status headers" not in res.warning:
        res.warn(f"the protected part carries status headers written by its sender ({', '.join(found)}); "
                 "they are not a gateway's and were ignored")


def _bind_sender(res: ReadResult) -> None:
    """``valid`` only when the signer speaks for the From shown; a protected From unlike the outer one."""
    sig = res._sig
    uids = sig.uids if sig is not None else ()
    shown = res._inner_from if res._inner_from is not None else res._outer_from
    check = S.check_sender(res.signature, uids, shown, res._outer_from,
                           S.gateway_uid_vouches(filter(None, map(S.uid_address, uids))))
    res._check = check
    if check.signature != res.signature:
        res.signature = check.signature
        res.warn(f"signed by {res.signer} ({', '.join(check.signer_addresses) or 'no address'}), "
                 f"which has no valid user ID for the From address shown "
                 f"({check.shown or 'not exactly one address'})")
    if check.from_mismatch:
        res.warn(f"the protected From ({check.shown or 'not exactly one address'}) differs from "
                 f"the outer From ({check.outer or 'not exactly one address'})")


def read_message(raw: bytes | Given, secret_keys: list[Key], lookup, *, file: str = "",
                 limits: M.Limits = M.Limits(), signer_key: SignerKey | None = None,
                 content: bool = True) -> ReadResult:
    """Read one message; secret keys must already be unlocked. ``signer_key``: where a signer's key
    not known to ``lookup`` is looked for by the From shown (None: nowhere, as ``--offline``).
    ``content=False`` (the bridge, which shows the entity itself): the text and attachments of a
    MIME entity are not extracted, and a canonical PGP/MIME message is read without parsing its
    MIME (mail/shell.py). ``raw`` may be ``Given``: then that path lets the message go once it is
    dearmored, and a bytearray is decoded, decrypted and its literal data left over its own
    memory (armor.dearmor over=True, message.Handed over=True)."""
    res = ReadResult(file=file)
    given, raw = (raw, raw.data) if isinstance(raw, Given) else (None, raw)
    try:
        if len(raw) > MAX_MESSAGE:
            raise LimitExceeded("message too large")
        fast = None if content else shell.encrypted_payload(raw, res._policy)
        if fast is not None:
            _outer_fields(res, fast[0])
            res.format = "pgp/mime"
            payload = [fast[1]]   # a part of raw, not a copy: _decrypt_into holds the only binary
            del fast
            over = given is not None and isinstance(raw, bytearray)   # decoded over the message itself
            if given is not None:   # no frame but _decrypt_into's holds the message now
                given.data = raw = None
            _decrypt_into(res, payload, secret_keys, lookup, limits, mime=True, content=False, over=over)
        else:
            _read_parsed(res, raw, secret_keys, lookup, limits, content)
    except SecureMailError as e:
        _refuse(res, e.message)
    except Exception:  # noqa: BLE001 - never let a parser bug show plaintext or a traceback
        _refuse(res, "message cannot be read")
    if signer_key is not None and res.signature == "unknown-key" and res._reverify and not res.error:
        try:
            _locate_signer(res, signer_key)
        except SecureMailError as e:
            res.warn(f"signer key not found: {e.message}")
    _bind_sender(res)
    return res


def _outer_fields(res: ReadResult, msg: EmailMessage) -> None:
    res.sender, res.subject = _text(msg.get("From")), _text(msg.get("Subject"))
    res._outer_from = res.sender


def _read_parsed(res: ReadResult, raw: bytes, secret_keys, lookup, limits, content: bool) -> None:
    """The general path: the whole message parsed by the email parser, whatever its shape."""
    msg = parse_mime(raw, res._policy)
    _outer_fields(res, msg)
    ctype = msg.get_content_type()
    if ctype == "multipart/encrypted":
        res.format = "pgp/mime"
        parts = list(msg.iter_parts())
        if len(parts) != 2 or parts[0].get_content_type() != "application/pgp-encrypted":
            raise MalformedMessage("multipart/encrypted is not PGP/MIME")
        _decrypt_into(res, parts[1].get_payload(decode=True) or b"", secret_keys, lookup,
                      limits, mime=True, content=content)
    elif ctype == "multipart/signed":
        res.format = "signed"
        data, sig = _signed_parts(raw, msg)
        _verify(res, data, sig, lookup)
        signed = parse_mime(data, res._policy)
        _protected_headers(res, signed)
        if content:
            _fill_content(res, signed)
        res._content = data
    elif ctype == "text/plain" and _PGP_BLOCK.search(msg.get_payload(decode=True) or b""):
        res.format = "inline"
        block = _PGP_BLOCK.search(msg.get_payload(decode=True) or b"").group(0)
        _decrypt_into(res, block, secret_keys, lookup, limits, mime=False)
    elif content:
        _fill_content(res, msg)


def _refuse(res: ReadResult, reason: str) -> None:
    res.error = reason
    res.body, res.attachments, res.decrypted, res._content = "", [], False, None
    if res.encrypted:
        res.subject = ""


def _binary(data: bytes | shell.Payload, limits: M.Limits, over: bool = False) -> bytes:
    """The OpenPGP message ``data`` carries (a payload read in place), within the size limit,
    dearmored once (the packet check and the decryption read the same packets)."""
    whole, start, end = data if isinstance(data, shell.Payload) else (data, 0, len(data))
    if end - start > limits.max_message:
        raise LimitExceeded("message exceeds the size limit")
    # a big one decoded into one bytearray; ``over``: into the message's own, given up (read.Given)
    return A.unarmor_if_needed(whole, start, end, buffer=True, over=over)


def _decrypt_into(res, data, secret_keys, lookup, limits, *, mime: bool, content: bool = True,
                  over: bool = False) -> None:
    """``data``: the payload (in a list: taken from it, so that the caller holds it no longer);
    ``over``: a part of a bytearray given up, read over itself (see crypto.message.decrypt)."""
    data = _binary(data.pop() if isinstance(data, list) else data, limits, over)
    try:
        shape = M.check_encrypted(data)
    except NotEncrypted as e:
        res.encrypted = False
        res.warning = f"claims to be encrypted but is not: {e.message}; shown as plaintext"
        _show_disguised(res, data, limits)
        return
    res.encrypted = True
    # ours alone: for the bridge (content=False), a bytearray is decrypted where it lies
    handed = M.Handed(data, shape, over=not content)
    del data, shape   # decrypt reads the packets checked here, and lets them go once decrypted
    out = M.decrypt(handed, secret_keys, lookup, limits=limits)
    res.decrypted = True
    plain, sigs, results = out.data, list(out.sig_packets), out.signatures
    del out   # the decrypted packet stream: the result keeps the content and the signatures only
    _set_signature(res, results, lambda key: S.reverify(plain, sigs, results, key))
    if mime:
        (_from_inner if content else _from_inner_head)(res, plain, lookup)
    else:
        res.body = plain.decode("utf-8", "replace").replace("\r\n", "\n")
        res._content = plain


def _show_disguised(res: ReadResult, data: bytes, limits: M.Limits) -> None:
    """A literal (maybe compressed) packet posing as encrypted: plaintext, labelled so."""
    try:
        content, _, _, _ = M.parse_inner(A.unarmor_if_needed(data), limits)
        res.body = content.decode("utf-8", "replace")
    except SecureMailError:
        res.body = ""
