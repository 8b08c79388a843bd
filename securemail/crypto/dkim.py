"""DKIM for the gateway: keys, signing (dkim_signing.DkimSigner) and verification; the only
module that imports dkimpy.

Signing lives in dkim_signing.py: one pass over the message, dkimpy's output byte
for byte, no dkimpy on that path (tests verify it with dkimpy). It is re-exported here.

Verification checks every DKIM-Signature header and returns explicit result
objects; no dkimpy exception escapes. Local policy refuses ``l=``, expired
``x=``, SHA-1, RSA keys under 2048 bits and signatures that do not sign From.
Both directions are CPU work: call them off the event loop.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import time
from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from securemail.errors import ConfigError
from securemail.mail.headers import HEADER_FIELDS, HeaderBlock

from .dkim_signing import MIN_RSA_BITS, OVERSIGNED, SIGNED_HEADERS, DkimSigner, relaxed_body_hash  # noqa: F401

# Bounds on verification, checked before dkimpy is called (its h= matching is quadratic): a
# signature our own gateways make has about 25 h= entries and is under 1 KiB.
MAX_SIGNATURES = 4            # verified per message; the others are ignored
MAX_SIGNED_NAMES = 64         # h= entries of one signature
MAX_SIGNATURE_BYTES = 8192    # one DKIM-Signature field


class _Dkimpy:
    """dkimpy, imported on first verification: processes that only sign (the SMTP process, the
    delivery process) never load it (about 15 MiB each)."""

    def __getattr__(self, name: str):
        import dkim
        import dkim.util
        globals()["dkim"] = dkim
        return getattr(dkim, name)


dkim = _Dkimpy()

log = logging.getLogger(__name__)

Status = Literal["pass", "fail", "none", "temperror", "permerror"]
DnsFunc = Callable[[bytes], "bytes | str | None"]


class _NoTruth:
    """Results must be read through .status, never as booleans (STYLE habit 10)."""

    def __bool__(self) -> bool:
        raise TypeError(f"{type(self).__name__} has no truth value; read .status")


@dataclass(frozen=True)
class DkimKey(_NoTruth):
    algorithm: str
    private_pem: bytes = field(repr=False)
    public_txt: str


@dataclass(frozen=True)
class SigResult(_NoTruth):
    domain: str
    selector: str
    algorithm: str
    status: Status
    reason: str = ""


@dataclass(frozen=True)
class DkimResult(_NoTruth):
    status: Status
    signatures: tuple[SigResult, ...] = ()
    reason: str = ""

    @property
    def passing_domains(self) -> frozenset[str]:
        return frozenset(s.domain for s in self.signatures if s.status == "pass")


def generate_dkim_key(algorithm: Literal["ed25519", "rsa2048"]) -> DkimKey:
    """A new signing key and the value of its ``selector._domainkey`` TXT record."""
    if algorithm == "ed25519":
        key = ed25519.Ed25519PrivateKey.generate()
        raw = key.public_key().public_bytes(serialization.Encoding.Raw,
                                            serialization.PublicFormat.Raw)
        ktag = "ed25519"
    elif algorithm == "rsa2048":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        raw = key.public_key().public_bytes(serialization.Encoding.DER,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
        ktag = "rsa"
    else:
        raise ConfigError(f"unknown DKIM algorithm {algorithm!r}")
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    return DkimKey(algorithm, pem, f"v=DKIM1; k={ktag}; p={base64.b64encode(raw).decode()}")


def _dns_key(name: bytes | str) -> str:
    text = name.decode("ascii", "replace") if isinstance(name, bytes) else name
    return text.strip().lower().rstrip(".")


def manifest_dnsfunc(records: dict[str, str], fallback: DnsFunc | None = None) -> DnsFunc:
    """A dnsfunc answering ``selector._domainkey.domain`` from the federation manifest.

    For a domain that has any record in the manifest the manifest is authoritative:
    unknown selectors of that domain get no answer rather than a DNS lookup, so DNS
    spoofing cannot add keys to a member domain. Other names go to ``fallback``.
    """
    table = {_dns_key(k): v for k, v in records.items()}
    members = {k.partition("._domainkey.")[2] for k in table} - {""}

    def lookup(name: bytes) -> bytes | str | None:
        key = _dns_key(name)
        if key in table:
            return table[key]
        if key.partition("._domainkey.")[2] in members or fallback is None:
            return None
        return fallback(name)

    return lookup


def verify_dkim(message: bytes, dnsfunc: DnsFunc, *, block: HeaderBlock | None = None,
                domains: Collection[str] | None = None, clock: Callable[[], float] = time.time,
                max_signatures: int = MAX_SIGNATURES) -> DkimResult:
    """Verify the DKIM-Signature headers of ``message`` against ``dnsfunc``, at a bounded cost.

    ``block`` is the message's one header-block parse (mail/headers.py; the gateway always passes
    it); without it dkimpy parses the message (LF line ends, mbox From lines) under the same field
    limit. Only signatures whose d= is in ``domains`` (all if None) are verified, at most
    ``max_signatures``; one longer than MAX_SIGNATURE_BYTES or with more than MAX_SIGNED_NAMES h=
    entries is a permerror before dkimpy sees it. dkimpy is handed only the fields a signature
    signs, and each body hash is computed once, so no input makes its cost quadratic.
    ``status`` is "pass" if any signature passes (use :func:`aligned` for From),
    else temperror, fail, permerror in that order of precedence, "none" if none was verified.
    """
    try:
        signed = _Signed.of(message, block)
    except Exception as exc:  # dkimpy raises several unrelated types on bad input
        log.info("DKIM: unparseable message: %s", exc)
        return DkimResult("permerror", reason=f"unparseable message: {exc}")
    sigs = [(name, value) for name, value in signed.fields if name.lower() == b"dkim-signature"]
    wanted = None if domains is None else {d.lower().rstrip(".").encode("ascii", "replace") for d in domains}
    now, results, skipped, beyond = int(clock()), [], 0, 0
    for name, value in sigs:
        if wanted is not None and len(value) <= MAX_SIGNATURE_BYTES and _d_tag(value) not in wanted:
            skipped += 1  # an oversized one is not parsed for its d=: it counts, as a permerror
        elif len(results) == max_signatures:
            beyond += 1
        else:
            results.append(_verify_one(signed, (name, value), dnsfunc, now))
    reason = "; ".join(r for r in (f"{beyond} signatures beyond the limit ignored" if beyond else "",
                                   f"{skipped} signatures of other domains ignored" if skipped else "") if r)
    statuses = {r.status for r in results}
    status = next((s for s in ("pass", "temperror", "fail", "permerror") if s in statuses), "none")
    return DkimResult(status, tuple(results), reason)


@dataclass
class _Signed:
    """The message as verification reads it: its fields as dkimpy holds them ([name, value with its
    CRLF]), the body (bytes, where it starts: the message itself, not copied), body hashes computed."""
    verifier: object
    fields: list
    body: tuple[bytes, int]
    body_hashes: dict = field(default_factory=dict)

    @classmethod
    def of(cls, message: bytes, block: HeaderBlock | None) -> "_Signed":
        """From ``block`` (already within the configured limits); without one, by dkimpy's own parse
        of ``message``, with at most HEADER_FIELDS fields."""
        if block is None:
            verifier = dkim.DKIM(message, minkey=MIN_RSA_BITS)
            if len(verifier.headers) > HEADER_FIELDS:
                raise ValueError(f"more than {HEADER_FIELDS} header fields")
            return cls(verifier, verifier.headers, (verifier.body, 0))
        fields = [[f.raw[:len(f.name)], f.value + b"\r\n"] for f in block.fields]
        return cls(dkim.DKIM(None, minkey=MIN_RSA_BITS), fields, (message, block.body_start))

    def signed_fields(self, include: list[bytes]) -> list:
        """The fields dkimpy may pick for h= ``include``, in their order: for each name, the last
        (its count in h=, plus one: dkimpy adds a From) fields of that name. dkimpy picks from the
        bottom up, so its choice is the same as over every field, found in time linear in the fields
        instead of h= entries times fields."""
        left = Counter(include)
        kept = []
        for f in reversed(self.fields):
            name = f[0].lower()
            if left[name] >= 0 and name in left:
                left[name] -= 1
                kept.append(f)
        kept.reverse()
        return kept


def _d_tag(value: bytes) -> bytes | None:
    """The d= of a signature field, lower case, or None when it is malformed."""
    try:
        return dkim.util.parse_tag_value(value).get(b"d", b"").strip().lower().rstrip(b".")
    except Exception:  # noqa: BLE001 - malformed: no domain
        return None


def _verify_one(signed: _Signed, field: tuple[bytes, bytes], dnsfunc: DnsFunc, now: int) -> SigResult:
    """One signature (``field``: its name and value as dkimpy holds them)."""
    def result(status: Status, reason: str = "") -> SigResult:
        if status != "pass":
            log.info("DKIM signature (d=%s s=%s): %s %s", domain, selector, status, reason)
        return SigResult(domain, selector, algorithm, status, reason)

    tags, status, reason = _screened(field[1], now)
    domain, selector, algorithm = (tags.get(t, b"").decode("ascii", "replace").lower() for t in (b"d", b"s", b"a"))
    if status:
        return result(status, reason)
    name = tags[b"s"] + b"._domainkey." + tags[b"d"] + b"."
    try:
        txt = dnsfunc(name)
    except Exception as exc:
        return result("temperror", f"key lookup failed: {type(exc).__name__}: {exc}")
    if not txt:
        return result("permerror", "no key record")
    try:
        _, bits, ktag, _ = dkim.evaluate_pk(name, txt)
    except Exception as exc:
        return result("permerror", f"bad key record: {exc}")
    if ktag is None or not algorithm.startswith(ktag.decode()):
        return result("permerror", f"key type {ktag!r} does not match a={algorithm}")
    if ktag == b"rsa" and bits < MIN_RSA_BITS:
        return result("fail", f"RSA key too small: {bits} bits")
    try:
        if _body_hash(signed, tags) != base64.b64decode(re.sub(rb"\s+", b"", tags[b"bh"])):
            return result("fail", "body hash mismatch")
        ok = _header_hash_verifies(signed, tags, field, txt)
    except Exception as exc:
        return result("permerror", f"{type(exc).__name__}: {exc}")
    return result("pass") if ok is True else result("fail", "signature does not verify")


def _header_hash_verifies(signed: _Signed, tags: dict[bytes, bytes], field, txt) -> bool:
    """dkimpy's check of the header hash and the signature, over the fields h= may pick; the body
    hash (checked once per canonicalization by _body_hash) is left out of the tags it is given."""
    include = [h.lower() for h in re.split(rb"\s*:\s*", tags[b"h"])]
    signed.verifier.headers = signed.signed_fields(include)
    return signed.verifier.verify_sig({k: v for k, v in tags.items() if k != b"bh"}, include, field,
                                      lambda _name, timeout=5: txt)


def _screened(header: bytes, now: int) -> tuple[dict[bytes, bytes], str, str]:
    """(tags, status, reason) of a signature field before any key or hash: status is "" when it may
    be verified, else why not (our bounds, local policy, dkimpy's field checks)."""
    if len(header) > MAX_SIGNATURE_BYTES:
        return {}, "permerror", f"signature field over {MAX_SIGNATURE_BYTES} bytes"
    try:
        tags = dkim.util.parse_tag_value(header)
    except Exception as exc:
        return {}, "permerror", f"malformed signature: {type(exc).__name__}: {exc}"
    if tags.get(b"h", b"").count(b":") >= MAX_SIGNED_NAMES:  # dkimpy matches h= against every field
        return tags, "permerror", f"more than {MAX_SIGNED_NAMES} h= entries"
    refusal = _refuse(tags, now)  # before dkimpy's checks, which would call these malformed
    if refusal:
        return tags, "fail", refusal
    try:
        dkim.validate_signature_fields(tags)
    except Exception as exc:
        return tags, "permerror", f"malformed signature: {type(exc).__name__}: {exc}"
    return tags, "", ""


def _body_hash(signed: _Signed, tags: dict[bytes, bytes]) -> bytes:
    """The hash of the body canonicalized as c= says, with a='s hash: once per message for each
    (canonicalization, hash). relaxed/SHA-256 (every signature we make) by dkim_signing's one-pass
    hash, byte for byte dkimpy's result and about ten times faster."""
    policy = dkim.CanonicalizationPolicy.from_c_value(tags.get(b"c", b"simple/simple"))
    key = (policy.body_algorithm.name, tags[b"a"])
    if key not in signed.body_hashes:
        hasher, (raw, start) = dkim.HASH_ALGORITHMS[tags[b"a"]], signed.body
        if key[0] == b"relaxed" and hasher is hashlib.sha256:
            signed.body_hashes[key] = relaxed_body_hash(raw, start)
        else:
            signed.body_hashes[key] = hasher(policy.canonicalize_body(raw[start:])).digest()
    return signed.body_hashes[key]


def _refuse(tags: dict[bytes, bytes], now: int) -> str:
    """Local policy on top of RFC 6376: the reason to refuse a signature, or ''."""
    if b"l" in tags:
        return "l= body length limit refused: it lets content be appended"
    if tags.get(b"a", b"").lower() == b"rsa-sha1":
        return "SHA-1 signatures refused"
    if tags.get(b"x", b"").isdigit() and int(tags[b"x"]) < now:  # no clock slop
        return "signature expired (x=)"
    if b"h" in tags and b"from" not in {h.strip().lower() for h in tags[b"h"].split(b":")}:
        return "From is not signed"
    return ""


def aligned(result: DkimResult, from_domain: str) -> bool:
    """True if a passing signature's d= equals the From domain exactly (strict alignment)."""
    want = from_domain.strip().lower().rstrip(".")
    return any(s.status == "pass" and s.domain == want for s in result.signatures)
