"""Federation: the signed list of member domains, their gateways, TLS pins and keys.

``federation.json`` is ``{"manifest": {"serial", "created", "expires", "members": [{"domain",
"gateway": "host:port", "tls_pin": sha256(cert SPKI DER) hex, "openpgp_key": armored,
"dkim": [{"selector", "public_key": "v=DKIM1; k=...; p=..."}], optional "wkd": "host:port"
of its key directory (HTTPS, same certificate as ``tls_pin``), optional "retiring": {"tls_pin",
"openpgp_key"} (either or both: the member's previous certificate and key during a rotation, still
accepted, see rotation.py)}]}, "signature": armored}``;
the signature is a detached OpenPGP signature over ``canonical(manifest)``. A gateway
installs a manifest only if the signature is valid by the configured authority's
primary fingerprint, the serial moves forward and it has not expired (``expires``; past it, member
mail is deferred; a manifest made before expiry existed has none). Entries are checked when signing,
verifying and installing; every error names the domain.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import re
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from .crypto.armor import unarmor_if_needed
from .crypto.dkim_signing import dkim_txt_problem
from .crypto.keys import Key, load_key
from .crypto.message import sign_detached, verify_signatures
from .crypto.packets import SIG, read_packets
from .errors import ConfigError, PolicyRefusal, SecureMailError
from .home import write_atomic
from .net import join_hostport, split_hostport
from .policy.address import is_domain

if TYPE_CHECKING:
    from .audit import AuditLog

log = logging.getLogger(__name__)

MAX_MANIFEST = 16 << 20
FIELDS = ("domain", "gateway", "tls_pin", "openpgp_key", "dkim")
_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_HOST = re.compile(rf"(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*|[0-9a-f:.]+")  # a name or an IP
_SELECTOR = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*")
_ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:\d\d)")
_PIN = re.compile(r"[0-9a-f]{64}")
_FPR = re.compile(r"[0-9A-F]{40}|[0-9A-F]{64}")


class ManifestRefused(PolicyRefusal):
    """Not signed by the authority, or it would move the federation backwards."""
    default_message = "federation manifest refused"


class ManifestInvalid(ConfigError):
    """The manifest or one of its entries is malformed; the message names the domain."""
    default_message = "invalid federation manifest"


@dataclass(frozen=True)
class Member:
    domain: str
    gateway: tuple[str, int]
    tls_pin: str
    openpgp_key: bytes                      # armored certificate
    dkim: tuple[tuple[str, str], ...]       # (selector, TXT record value)
    wkd: tuple[str, int] | None = None      # the key directory's HTTPS listener, if any
    retiring_pin: str | None = None         # during a rotation: the previous certificate's pin...
    retiring_key: bytes | None = None       # ...and the previous OpenPGP certificate, still accepted

    @property
    def tls_pins(self) -> tuple[str, ...]:
        """Every pin accepted for its gateway: ``tls_pin``, and the retiring one during a rotation."""
        return (self.tls_pin, self.retiring_pin) if self.retiring_pin else (self.tls_pin,)

    def to_dict(self) -> dict:
        out = {"domain": self.domain, "gateway": join_hostport(*self.gateway), "tls_pin": self.tls_pin,
               "openpgp_key": self.openpgp_key.decode("ascii"),
               "dkim": [{"selector": s, "public_key": t} for s, t in self.dkim]}
        if self.wkd is not None:
            out["wkd"] = join_hostport(*self.wkd)
        retiring = {"tls_pin": self.retiring_pin, "openpgp_key": (self.retiring_key or b"").decode("ascii")}
        if any(retiring.values()):
            out["retiring"] = {k: v for k, v in retiring.items() if v}
        return out


@dataclass(frozen=True)
class Manifest:
    serial: int
    created: str
    members: dict[str, Member]
    digest: str = ""                        # SHA-256 of canonical(manifest), hex
    expires: str | None = None              # ISO 8601; None: signed before manifests expired

    @property
    def expires_at(self) -> float | None:
        return None if self.expires is None else datetime.fromisoformat(self.expires).timestamp()

    def is_member(self, domain: str) -> bool:
        return domain.lower().rstrip(".") in self.members

    def member(self, domain: str) -> Member | None:
        """The member entry of ``domain``, None when it is not in the federation."""
        return self.members.get(domain.lower().rstrip("."))

    def pinned_domains(self, pin: str | None) -> frozenset[str]:
        """The member domains whose gateway's ``tls_pin`` is ``pin`` (one gateway may serve several)."""
        return frozenset(d for d, m in self.members.items() if pin and pin in m.tls_pins)

    def dkim_records(self) -> dict[str, str]:
        """``selector._domainkey.domain.`` -> TXT value, for crypto.dkim.manifest_dnsfunc."""
        return {f"{sel}._domainkey.{m.domain}.": txt
                for m in self.members.values() for sel, txt in m.dkim}


@dataclass(frozen=True)
class Installed:
    manifest: Manifest
    previous: Manifest | None
    changed: bool                           # False: this exact manifest was already installed


def canonical(manifest: dict) -> bytes:
    """The signed bytes: sorted keys, no spaces, UTF-8."""
    return json.dumps(manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def normalize_fpr(fpr: str) -> str:
    text = str(fpr).replace(" ", "").upper()
    if not _FPR.fullmatch(text):
        raise ConfigError(f"not an OpenPGP fingerprint: {fpr!r} (40 or 64 hex digits)")
    return text


# --- entries ---------------------------------------------------------------------------
def _ensure(ok, message: str) -> None:
    if not ok:
        raise ManifestInvalid(message)


def parse_member(entry, *, now: float | None = None, check_keys: bool = True) -> Member:
    """A checked Member from one JSON entry; ManifestInvalid naming the domain otherwise.

    ``check_keys`` requires the OpenPGP key to be valid now with an encryption
    subkey (on signing and installing; off when reloading the installed file).
    """
    domain = entry.get("domain") if isinstance(entry, dict) else None
    _ensure(isinstance(domain, str) and is_domain(domain) and domain == domain.lower(),
            f"member entry: invalid domain {domain!r} (lower-case A-labels)")
    missing = [f for f in FIELDS if f not in entry]
    _ensure(not missing, f"{domain}: missing {', '.join(missing)}")
    gw, pin, armored, dkim = (entry[f] for f in FIELDS[1:])
    host, port = _hostport(gw, f"{domain}: gateway")
    wkd = _wkd(entry, domain)
    _ensure(isinstance(pin, str) and _PIN.fullmatch(pin), f"{domain}: tls_pin must be the SHA-256 "
            "of the TLS certificate's SubjectPublicKeyInfo, 64 lower-case hex digits")
    t = time.time() if now is None else now
    _certificate(armored, f"{domain}: openpgp_key", t, check_keys)
    _ensure(isinstance(dkim, list) and dkim, f"{domain}: dkim must be a non-empty list of "
            "{selector, public_key}")
    records: dict[str, str] = {}
    for d in dkim:
        sel, txt = (d.get("selector"), d.get("public_key")) if isinstance(d, dict) else (None, None)
        _ensure(isinstance(sel, str) and _SELECTOR.fullmatch(sel) and sel not in records,
                f"{domain}: invalid or repeated DKIM selector {sel!r}")
        why = dkim_txt_problem(txt) if isinstance(txt, str) else "public_key must be a string"
        _ensure(not why, f"{domain}: DKIM selector {sel}: {why}")
        records[sel] = txt
    retiring_pin, retiring_key = _retiring(entry, domain, t, check_keys)
    return Member(domain, (host, port), pin, armored.encode("ascii"), tuple(records.items()), wkd,
                  retiring_pin, retiring_key)


def _certificate(armored, what: str, t: float, check_keys: bool) -> None:
    """An armored OpenPGP certificate, valid at ``t`` with an encryption subkey when ``check_keys``."""
    try:
        key = load_key(armored.encode("ascii") if isinstance(armored, str) else b"")
    except Exception as e:  # noqa: BLE001 - PGPy raises many types on hostile input
        why = e.message if isinstance(e, SecureMailError) else "not a readable certificate"
        raise ManifestInvalid(f"{what} refused: {why}") from None
    _ensure(not key.is_secret, f"{what} holds secret key material; give the certificate")
    if check_keys:
        _ensure(key.state_at(t) == "valid", f"{what} {key.fingerprint} is {key.state_at(t)}")
        _ensure(key.status.encryption_keys(t), f"{what} {key.fingerprint} has no valid encryption subkey")


def _retiring(entry: dict, domain: str, t: float, check_keys: bool) -> tuple[str | None, bytes | None]:
    """The optional ``retiring`` field: the pin and the OpenPGP certificate a rotation is retiring."""
    if "retiring" not in entry:
        return None, None
    r = entry["retiring"]
    _ensure(isinstance(r, dict) and r and set(r) <= {"tls_pin", "openpgp_key"},
            f"{domain}: retiring must be an object with tls_pin, openpgp_key or both")
    pin, armored = r.get("tls_pin"), r.get("openpgp_key")
    _ensure(pin is None or (isinstance(pin, str) and _PIN.fullmatch(pin) and pin != entry["tls_pin"]),
            f"{domain}: retiring tls_pin must be another SHA-256 pin, 64 lower-case hex digits")
    if armored is not None:
        _certificate(armored, f"{domain}: retiring openpgp_key", t, check_keys)
    return pin, armored.encode("ascii") if armored is not None else None


def _wkd(entry: dict, domain: str) -> tuple[str, int] | None:
    """The optional ``wkd`` field: HOST:PORT of the member's key directory."""
    if "wkd" not in entry:
        return None
    return _hostport(entry["wkd"], f"{domain}: wkd")


def _hostport(text, what: str) -> tuple[str, int]:
    """A member's HOST:PORT field: a name or an IP, and a port above 0."""
    hostport = split_hostport(text) if isinstance(text, str) else None
    host, port = hostport or ("", 0)
    _ensure(port and _HOST.fullmatch(host), f"{what} must be HOST:PORT, not {text!r}")
    return host, port


def _iso(text) -> datetime | None:
    try:  # an ISO 8601 time with its zone, else None
        return datetime.fromisoformat(text) if isinstance(text, str) and _ISO.fullmatch(text) else None
    except ValueError:
        return None


def parse_manifest(m, *, now: float | None = None, check_keys: bool = True) -> Manifest:
    """A checked Manifest from the ``manifest`` object (signature not checked here)."""
    get = m.get if isinstance(m, dict) else {}.get
    serial, created, members = get("serial"), get("created"), get("members")
    _ensure(type(serial) is int and serial > 0, "manifest serial must be a positive integer")
    _ensure(isinstance(created, str) and _ISO.fullmatch(created),
            f"manifest created must be an ISO 8601 time with zone, not {created!r}")
    expires, start = get("expires"), _iso(created)
    _ensure(expires is None or (start is not None and (_iso(expires) or start) > start),
            f"manifest expires must be an ISO 8601 time with zone after created, not {expires!r}")
    _ensure(isinstance(members, list), "manifest members must be a list")
    out: dict[str, Member] = {}
    for entry in members:
        member = parse_member(entry, now=now, check_keys=check_keys)
        if out.setdefault(member.domain, member) is not member:
            raise ManifestInvalid(f"{member.domain}: listed twice")
    return Manifest(serial, created, out, hashlib.sha256(canonical(m)).hexdigest(), expires)


# --- signing and verifying ------------------------------------------------------------------
def sign_manifest(manifest: dict, authority_key: Key, *, now: float | None = None) -> bytes:
    """The bytes of ``federation.json``: ``manifest`` checked, then signed by the unlocked key."""
    parse_manifest(manifest, now=now)
    sig = sign_detached(canonical(manifest), authority_key, now=now, armor=True)
    doc = {"manifest": manifest, "signature": sig.decode("ascii")}
    return json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False).encode() + b"\n"


def _split(data: bytes) -> tuple[dict, str]:
    _ensure(len(data) <= MAX_MANIFEST, "federation manifest is too large")
    try:
        doc = json.loads(data, parse_constant=lambda c: {}[c])  # no NaN, no Infinity
    except (ValueError, KeyError, RecursionError):  # RecursionError: arrays nested thousands deep
        raise ManifestInvalid("federation manifest is not valid JSON") from None
    _ensure(isinstance(doc, dict) and isinstance(doc.get("manifest"), dict)
            and isinstance(doc.get("signature"), str),
            'federation manifest must be {"manifest": {...}, "signature": "..."}')
    return doc["manifest"], doc["signature"]


def verify_manifest(data: bytes, authority_fpr: str, authority_cert: Key, *,
                    now: float | None = None, check_keys: bool = True) -> Manifest:
    """The checked Manifest if a valid signature by the authority covers it; else ManifestRefused."""
    fpr = normalize_fpr(authority_fpr)
    if authority_cert.fingerprint != fpr:
        raise ManifestRefused(f"the certificate given is {authority_cert.fingerprint}, "
                              f"not the federation authority {fpr}")
    manifest, signature = _split(data)
    cert = authority_cert.public()  # the only key the signature is checked against
    fprs = {c.fingerprint for c in (cert.status.primary, *cert.status.subkeys)}
    try:
        sigs = [p.raw for p in read_packets(unarmor_if_needed(signature.encode("ascii")))
                if p.tag == SIG]
        results = verify_signatures(canonical(manifest), sigs,
                                    lambda kid, sfpr: cert if kid in cert.keyids or sfpr in fprs else None)
    except Exception:  # noqa: BLE001 - PGPy raises many types on hostile input
        raise ManifestRefused("the manifest signature is unreadable") from None
    if not any(r.status == "valid" and r.signer == fpr for r in results):
        why = next((r.reason for r in results), "no signature")
        raise ManifestRefused(f"manifest not signed by the federation authority {fpr}: {why}")
    return parse_manifest(manifest, now=now, check_keys=check_keys)


# --- installing -----------------------------------------------------------------------------
def load_installed(path, authority_fpr: str | None = None,
                   authority_cert: Key | None = None) -> Manifest | None:
    """The installed manifest or None; member keys are parsed, not judged (they may have expired).

    install() verified the file; pass the authority to verify its signature again.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ConfigError(f"cannot read {path.name}: {e.strerror}") from None
    if authority_cert is not None:
        return verify_manifest(data, authority_fpr or "", authority_cert, check_keys=False)
    return parse_manifest(_split(data)[0], check_keys=False)


def install(data: bytes, path, authority_fpr: str, authority_cert: Key,
            audit: AuditLog | None = None, *, now: float | None = None, source: str = "file") -> Installed:
    """Verify ``data``; make it the installed manifest if its serial moves forward and it has not
    expired; audit it (``source``: "file" for ``federation install``, else the URL it came from)."""
    new = verify_manifest(data, authority_fpr, authority_cert, now=now)
    if new.expires_at is not None and new.expires_at <= (time.time() if now is None else now):
        raise ManifestRefused(f"manifest serial {new.serial} expired at {new.expires}")
    path = Path(path)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one installer at a time: serial check and rename together
        try:
            old = load_installed(path)
        except ConfigError as e:
            raise ConfigError(f"installed {path.name} is unreadable ({e.message}); "
                              "move it aside to install a new one") from None
        if old is not None and new.serial < old.serial:
            raise ManifestRefused(f"manifest serial {new.serial} is older than the installed "
                                  f"serial {old.serial}")
        if old is not None and new.serial == old.serial:
            if new.digest != old.digest:
                raise ManifestRefused(f"manifest serial {new.serial} is already installed with "
                                      "different content; the authority must sign a new serial")
            return Installed(new, old, False)
        before = old.members if old else {}

        def record() -> None:  # before the rename: it may name a change a crash prevented, never the reverse
            if audit is not None:
                audit.append("manifest-change", serial=new.serial, digest=new.digest,
                             previous_serial=old.serial if old else None, expires=new.expires,
                             source=source, authority=normalize_fpr(authority_fpr),
                             added=sorted(new.members.keys() - before.keys()),
                             removed=sorted(before.keys() - new.members.keys()),
                             changed=sorted(d for d in new.members.keys() & before.keys()
                                            if new.members[d] != before[d]))
        write_atomic(path, data, before_rename=record)
    return Installed(new, old, True)
