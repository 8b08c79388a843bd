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
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from securemail.errors import ConfigError

from .dkim_signing import MIN_RSA_BITS, OVERSIGNED, SIGNED_HEADERS, DkimSigner  # noqa: F401


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


def system_dnsfunc(name: bytes) -> bytes | None:
    """The real DNS, through dkimpy's resolver (dnspython); a fallback for manifest_dnsfunc."""
    return dkim.get_txt(name)


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


def verify_dkim(message: bytes, dnsfunc: DnsFunc, *, clock: Callable[[], float] = time.time,
                max_signatures: int = 8) -> DkimResult:
    """Verify every DKIM-Signature header (up to ``max_signatures``) against ``dnsfunc``.

    ``status`` is "pass" if any signature passes (use :func:`aligned` for From),
    else temperror, fail, permerror in that order of precedence, "none" if unsigned.
    """
    try:
        verifier = dkim.DKIM(message, minkey=MIN_RSA_BITS)
    except Exception as exc:  # dkimpy raises several unrelated types on bad input
        log.info("DKIM: unparseable message: %s", exc)
        return DkimResult("permerror", reason=f"unparseable message: {exc}")
    sigs = [value for name, value in verifier.headers if name.lower() == b"dkim-signature"]
    if not sigs:
        return DkimResult("none")
    results = tuple(_verify_one(verifier, i, value, dnsfunc, int(clock()))
                    for i, value in enumerate(sigs[:max_signatures]))
    reason = f"{len(sigs) - max_signatures} signatures beyond the limit ignored" \
        if len(sigs) > max_signatures else ""
    statuses = {r.status for r in results}
    status = next(s for s in ("pass", "temperror", "fail", "permerror") if s in statuses)
    return DkimResult(status, results, reason)


def _verify_one(verifier: dkim.DKIM, idx: int, header: bytes, dnsfunc: DnsFunc,
                now: int) -> SigResult:
    def result(status: Status, reason: str = "") -> SigResult:
        if status != "pass":
            log.info("DKIM signature %d (d=%s s=%s): %s %s", idx, domain, selector, status, reason)
        return SigResult(domain, selector, algorithm, status, reason)

    domain = selector = algorithm = ""
    try:
        tags = dkim.util.parse_tag_value(header)
        domain, selector, algorithm = (tags.get(t, b"").decode("ascii", "replace").lower()
                                       for t in (b"d", b"s", b"a"))
    except Exception as exc:
        return result("permerror", f"malformed signature: {type(exc).__name__}: {exc}")
    refusal = _refuse(tags, now)  # before dkimpy's checks, which would call these malformed
    if refusal:
        return result("fail", refusal)
    try:
        dkim.validate_signature_fields(tags)
    except Exception as exc:
        return result("permerror", f"malformed signature: {type(exc).__name__}: {exc}")
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
        ok = verifier.verify(idx=idx, dnsfunc=lambda _name, timeout=5: txt)
    except dkim.ValidationError as exc:  # body hash mismatch
        return result("fail", str(exc))
    except Exception as exc:
        return result("permerror", f"{type(exc).__name__}: {exc}")
    return result("pass") if ok is True else result("fail", "signature does not verify")


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
