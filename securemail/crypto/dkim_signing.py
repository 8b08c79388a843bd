"""DKIM signing (RFC 6376, relaxed/relaxed; RFC 8463 Ed25519) in one pass over the message.

What dkimpy's ``dkim.sign`` writes, byte for byte (tests compare the two and
verify with dkimpy), at a fraction of its cost and memory:

* the body is canonicalised and hashed once, in chunks cut at line ends, for
  all keys: no list of lines, no joined or canonicalised copy of a 25 MB body;
* only the header block is parsed (as ``dkim.rfc822_parse`` does), and the
  signed header fields are selected and canonicalised once for all keys;
* the DKIM-Signature header is folded as ``dkim.fold`` folds it and the b= value
  emptied as ``dkim.RE_BTAG`` does, then hashed with the signed fields;
* each key's ``cryptography`` object is built once, when the signer is made.

No dkimpy import here: crypto/dkim.py (verification) is the only module that
imports it, and re-exports DkimSigner.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa, utils

from securemail.errors import ConfigError, KeyRefused, KeyUnusable, MalformedMessage

MIN_RSA_BITS = 2048
SIGNED_HEADERS = (b"from", b"to", b"cc", b"subject", b"date", b"message-id", b"mime-version",
                  b"content-type", b"reply-to", b"in-reply-to", b"references")
# Every signed name is listed once more in h= than the message has it (oversigning, RFC 6376
# 8.15): a field of any of these names added later, present before or not, breaks the signature.
OVERSIGNED = SIGNED_HEADERS
CHUNK = 1 << 20          # body bytes canonicalised at a time (cut at a line end)

_NAME = b"DKIM-Signature"
_BLANK_LINE = re.compile(rb"\n\r?\n")          # the end of the header block
_LINE_END = re.compile(rb"\r?\n")
_FIELD_NAME = re.compile(rb"([\x21-\x7e]+?):")
_WSP = re.compile(rb"[\t ]+")
_SPACES = re.compile(rb"  +")
_BARE_LF = re.compile(rb"\n(?<!\r\n)")      # a literal first: these two scan like find()
_SPACE_SPACE_OR_CR = re.compile(rb" [ \r]")
_FWS = rb"(?:(?:\s*\r?\n)?\s+)?"
_BTAG = re.compile(rb"([;\s]b" + _FWS + rb"=)(?:" + _FWS + rb"[a-zA-Z0-9+/=])*(?:\r?\n\Z)?")
_CRLFS = memoryview(b"\r\n" * 32768)


# --- the message -----------------------------------------------------------------------------
def split_message(message: bytes) -> tuple[list[list[bytes]], int]:
    """([name, value] header fields, offset of the body), as ``dkim.rfc822_parse`` reads them.

    Values keep their folding, each line ending normalised to CRLF. Only the header
    block is split into lines; the body is left where it is.
    """
    if message[:1] == b"\n" or message[:2] == b"\r\n":
        return [], message.index(b"\n") + 1
    m = _BLANK_LINE.search(message)
    block, start = (message[:m.start() + 1], m.end()) if m else (message, len(message))
    fields: list[list[bytes]] = []
    for line in _LINE_END.split(block):
        if not line:
            break
        if line[0] in (0x09, 0x20):
            if not fields:
                raise MalformedMessage("cannot DKIM-sign a message that starts with a continuation")
            fields[-1][1] += line + b"\r\n"
            continue
        name = _FIELD_NAME.match(line)
        if name is not None:
            fields.append([name.group(1), line[name.end():] + b"\r\n"])
        elif not line.startswith(b"From "):
            raise MalformedMessage("cannot DKIM-sign a malformed message",
                                   detail="unexpected characters in a header line")
    return fields, start


def relaxed_value(value: bytes) -> bytes:
    """Relaxed header value (RFC 6376 3.4.2): unfolded, WSP runs as one space, trimmed."""
    value = value.replace(b"\r\n", b"").replace(b"\n", b"")   # = re.sub(\r?\n, "")
    if b"\t" in value or b"  " in value:
        value = _WSP.sub(b" ", value)
    return value.strip()


def select_fields(fields: list[list[bytes]], include: Iterable[bytes]) -> list[list[bytes]]:
    """The fields named in ``include``, each name taken from the bottom up (RFC 6376 5.4.2)."""
    names = [f[0].lower() for f in fields]
    out, last = [], {}
    for h in include:
        i = last.get(h, len(fields))
        while i > 0:
            i -= 1
            if names[i] == h:
                out.append(fields[i])
                break
        last[h] = i
    return out


def _relaxed_chunk(chunk: bytes) -> bytes:
    """Relaxed body canonicalisation of whole lines, but for the trailing empty lines.

    Scans that run at memchr speed come first: an armored body (CRLF, no tab, no
    space before a space or a CR) is returned as is, without a copy.
    """
    if _BARE_LF.search(chunk):
        chunk = chunk.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")  # = re.sub(\r?\n, \r\n)
    if b"\t" in chunk:
        chunk = chunk.replace(b"\t", b" ")
    if _SPACE_SPACE_OR_CR.search(chunk):
        # Compress, then drop the one space left before a CRLF: the same as dkimpy's
        # strip-then-compress, since no space can precede the one dropped.
        chunk = _SPACES.sub(b" ", chunk).replace(b" \r\n", b"\r\n")
    return chunk


def relaxed_body_hash(message: bytes, start: int = 0, chunk: int = CHUNK) -> bytes:
    """SHA-256 of the relaxed canonical body (RFC 6376 3.4.4) of ``message[start:]``.

    Line ends are normalised to CRLF (as dkimpy reads the message); empty lines at
    the end are held back and dropped, and one CRLF ends a non-empty body.
    """
    h = hashlib.sha256()
    held = 0          # CRLFs not hashed yet: they may be trailing empty lines
    seen = False
    pos, n = start, len(message)
    while pos < n:
        end = n
        if n - pos > chunk:
            cut = message.rfind(b"\n", pos, pos + chunk)
            if cut < 0:
                cut = message.find(b"\n", pos + chunk)
            end = n if cut < 0 else cut + 1
        part = _relaxed_chunk(message[pos:end])
        pos = end
        text = len(part.rstrip(b"\r\n"))
        keep = len(part)
        if part.endswith(b"\n"):   # CRLF pairs after the last lone CR or text are held back
            lone = part.rfind(b"\r\r", text)
            keep = lone + 1 if lone >= 0 else text
        if keep:
            while held:
                k = min(held, len(_CRLFS) // 2)
                h.update(_CRLFS[:2 * k])
                held -= k
            h.update(memoryview(part)[:keep])
            seen = True
        held += (len(part) - keep) // 2
    if seen:
        h.update(b"\r\n")
    return h.digest()


def fold(header: bytes, namelen: int = 0, linesep: bytes = b"\r\n") -> bytes:
    """``dkim.fold`` byte for byte: lines under 72 columns, broken at the last space if any."""
    maxleng = 72 - namelen
    if len(header) <= maxleng:
        return header
    if len(header) - header.rfind(b"\r\n") == 2 and len(header) <= maxleng + 2:
        return header
    out, pos = [], 0
    i = header.rfind(b"\r\n ")
    if i != -1:
        out.append(header[:i + 3])
        pos = i + 3
    while len(header) - pos > maxleng:
        i = header.rfind(b" ", pos, pos + maxleng)
        if i == -1:
            out += (header[pos:pos + maxleng], linesep, b" ")
            pos += maxleng
        else:
            out += (header[pos:i], linesep, b" ")
            pos = i + 1
        maxleng = 71
    out.append(header[pos:])
    return b"".join(out)


# --- the signer -------------------------------------------------------------------------------
@dataclass(frozen=True)
class _SigningKey:
    selector: bytes
    a_tag: bytes
    sign_digest: Callable[[bytes], bytes]  # SHA-256 digest -> signature (RFC 6376 / RFC 8463)


def _ascii(value: str, what: str) -> bytes:
    try:
        return value.strip().lower().encode("ascii")
    except UnicodeEncodeError:
        raise ConfigError(f"DKIM {what} must be ASCII (A-label form): {value!r}") from None


def _load_key(selector: str, private_pem: bytes, algorithm: str) -> _SigningKey:
    try:
        key = serialization.load_pem_private_key(private_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyRefused("DKIM private key unreadable",
                         detail=f"selector {selector}: {exc}") from None
    sel = _ascii(selector, "selector")
    if algorithm == "ed25519" and isinstance(key, ed25519.Ed25519PrivateKey):
        return _SigningKey(sel, b"ed25519-sha256", key.sign)
    if algorithm.startswith("rsa") and isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < MIN_RSA_BITS:
            raise KeyRefused("DKIM RSA key too small", detail=f"{selector}: {key.key_size} bits")
        prehashed = utils.Prehashed(hashes.SHA256())
        return _SigningKey(sel, b"rsa-sha256",
                           lambda digest: key.sign(digest, padding.PKCS1v15(), prehashed))
    raise KeyRefused("DKIM key does not match its algorithm",
                     detail=f"selector {selector}: {algorithm!r} vs {type(key).__name__}")


class DkimSigner:
    """Signs outgoing mail for one domain with one or more keys (e.g. Ed25519 plus RSA)."""

    def __init__(self, domain: str, keys: Iterable[tuple[str, bytes, str]], *,
                 clock: Callable[[], float] = time.time, expire_after: int | None = None) -> None:
        self.domain = _ascii(domain, "domain")
        self._keys = [_load_key(sel, pem, alg) for sel, pem, alg in keys]
        if not self._keys:
            raise ConfigError("DkimSigner needs at least one key")
        self._clock = clock
        self._expire_after = expire_after

    def sign(self, message: bytes) -> bytes:
        """The message with one DKIM-Signature header per key prepended, first key on top."""
        fields, body_start = split_message(message)
        names = [f[0].lower() for f in fields]
        if b"from" not in names:
            raise MalformedMessage("cannot DKIM-sign a message without From")
        include = [n for n in names if n in SIGNED_HEADERS] + list(OVERSIGNED)
        signed = b"".join(f[0].lower() + b":" + relaxed_value(f[1]) + b"\r\n"
                          for f in select_fields(fields, include))
        bodyhash = base64.b64encode(relaxed_body_hash(message, body_start))
        now = int(self._clock())
        expires = now + self._expire_after if self._expire_after is not None else None
        linesep = b"\n" if message[-2:] != b"\r\n" and message[-1:] == b"\n" else b"\r\n"
        return b"".join([*(self._header(k, signed, include, bodyhash, now, expires, linesep)
                           for k in self._keys), message])

    def _header(self, key: _SigningKey, signed: bytes, include: list[bytes], bodyhash: bytes,
                now: int, expires: int | None, linesep: bytes) -> bytes:
        # dkimpy's DKIM.sign: tag order, a folded b= placeholder emptied for the hash, then
        # the header folded again with the real b=.
        fields = [(b"v", b"1"), (b"a", key.a_tag), (b"c", b"relaxed/relaxed"), (b"d", self.domain),
                  (b"i", b"@" + self.domain), (b"q", b"dns/txt"), (b"s", key.selector),
                  (b"t", b"%d" % now)]
        if expires is not None:
            fields.append((b"x", b"%d" % expires))
        fields += [(b"h", b" : ".join(include)), (b"bh", bodyhash), (b"b", b"0" * 60)]
        value = _BTAG.sub(b"\\1", fold(b"; ".join(b"=".join(f) for f in fields), len(_NAME)))
        digest = hashlib.sha256(signed + b"dkim-signature:" + relaxed_value(b" " + value)).digest()
        fields[-1] = (b"b", base64.b64encode(key.sign_digest(digest)))
        value = b"; ".join(b"=".join(f) for f in fields) + linesep
        return _NAME + b": " + fold(value, len(_NAME), linesep)


def dkim_txt_problem(txt: str) -> str | None:
    """Why ``txt`` is not a usable DKIM key record (Ed25519, or RSA >= 2048); None if it is."""
    parts = [p.strip().partition("=") for p in txt.split(";") if p.strip()]
    tags = {n.strip(): "".join(v.split()) for n, _, v in parts}
    if len(tags) != len(parts) or not all(eq for _, eq, _ in parts):
        return "malformed or repeated tag"
    if tags.get("v", "DKIM1") != "DKIM1" or not tags.get("p"):
        return "needs v=DKIM1 and a public key in p="
    try:
        raw, kind = base64.b64decode(tags["p"], validate=True), tags.get("k", "rsa")
        if kind == "ed25519":
            ed25519.Ed25519PublicKey.from_public_bytes(raw)
        elif kind == "rsa":
            key = serialization.load_der_public_key(raw)
            if not isinstance(key, rsa.RSAPublicKey) or key.key_size < MIN_RSA_BITS:
                return f"RSA key must be at least {MIN_RSA_BITS} bits"
        else:
            return f"unknown key type k={kind}"
    except (binascii.Error, ValueError):
        return "p= is not a valid public key"
    return None


def dkim_signers(config) -> dict[str, DkimSigner]:
    """Each served domain's DKIM signer; a domain without a usable key stops the start (never unsigned)."""
    by_domain: dict[str, list] = {}
    files: dict[str, list[str]] = {}
    for d in config.dkim_keys:
        try:
            pem = d.private_key.read_bytes()
        except OSError as e:
            raise ConfigError(f"cannot read DKIM key {d.private_key.name}: {e.strerror}") from None
        by_domain.setdefault(d.domain, []).append((d.selector, pem, d.algorithm))
        files.setdefault(d.domain, []).append(d.private_key.name)
    missing = [dom for dom in config.domains if dom not in by_domain]
    if missing:
        raise ConfigError(f"no DKIM key configured for {', '.join(missing)} ([[keys.dkim]]); "
                          "mail must not leave unsigned")
    signers = {}
    for dom, ks in by_domain.items():
        try:
            signers[dom] = DkimSigner(dom, ks)
        except KeyRefused as e:
            raise ConfigError(f"{e.message} ({', '.join(files[dom])})", detail=e.detail) from None
    return signers


def dkim_sign_fn(signers: dict[str, DkimSigner]):
    def sign(body: bytes, domain: str) -> bytes:
        signer = signers.get(domain)
        if signer is None:
            raise KeyUnusable(f"no DKIM key for {domain}; nothing is sent unsigned")
        return signer.sign(body)
    return sign
