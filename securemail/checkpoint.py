"""Audit anchoring: a checkpoint signs the audit chain's head; verifying it proves the log still holds it.

A checkpoint is ``{"checkpoint": {"domain", "seq", "hash", "time", "signer"}, "signature": armored}``:
the head ``(seq, hash)`` of the hash-chained audit log (audit.py) at ``time`` (ISO 8601, UTC), with
a detached OpenPGP signature over its canonical JSON (as the federation manifest is signed) by the
domain key of ``domain``, whose fingerprint is ``signer``. Kept where the gateway's admin cannot
reach it (sent to the federation authority, copied off the host), it anchors the chain: whoever
truncates the log, or rewrites, removes or reorders records up to ``seq`` and then recomputes every
hash and the head so that ``audit verify`` alone passes, cannot make record ``seq`` hash to
``hash`` again (SHA-256).

``verify`` checks each checkpoint's signature, walks the chain once and names, per checkpoint, what
it finds: ``holds``, ``truncated`` (the log ends before ``seq``), ``rewritten`` (record ``seq`` has
another hash: records between the last checkpoint that holds and ``seq`` were changed), ``broken``
(the chain itself is broken before ``seq``: the walk's reason), ``forged`` (the signature is not the
domain key's) or ``unreadable``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import formatdate
from pathlib import Path

from .audit import AuditLog, AuditReport
from .crypto.armor import unarmor_if_needed
from .crypto.keys import Key
from .crypto.message import sign_detached, verify_signatures
from .crypto.packets import SIG, read_packets
from .errors import Permanent
from .federation import canonical
from .home import write_atomic
from .periodic import every

log = logging.getLogger(__name__)

MAX_CHECKPOINT = 64 << 10
HOLDS, TRUNCATED, REWRITTEN, BROKEN, FORGED, UNREADABLE = (
    "holds", "truncated", "rewritten", "broken", "forged", "unreadable")


@dataclass(frozen=True)
class Checkpoint:
    domain: str
    seq: int
    hash: str
    time: str
    signer: str


@dataclass(frozen=True)
class Finding:
    """What ``verify`` found for one checkpoint (``name``: the file it came from)."""
    name: str
    verdict: str                    # HOLDS, TRUNCATED, REWRITTEN, BROKEN, FORGED or UNREADABLE
    detail: str
    checkpoint: Checkpoint | None = None

    @property
    def ok(self) -> bool:
        return self.verdict == HOLDS


def make(audit: AuditLog, domain: str, key: Key, now: float) -> tuple[Checkpoint, bytes]:
    """The checkpoint of the chain's current head, signed with ``domain``'s unlocked key, and its file."""
    seq, digest = audit.head()
    when = datetime.fromtimestamp(now, timezone.utc).isoformat(timespec="seconds")
    cp = Checkpoint(domain, seq, digest, when, key.fingerprint)
    body = {"domain": domain, "seq": seq, "hash": digest, "time": when, "signer": key.fingerprint}
    signature = sign_detached(canonical(body), key, now=now, armor=True).decode("ascii")
    doc = {"checkpoint": body, "signature": signature}
    return cp, json.dumps(doc, indent=2, sort_keys=True).encode() + b"\n"


def read(data: bytes, key_for: Callable[[str], Key | None]) -> Checkpoint:
    """The checkpoint in ``data`` if it is well formed and signed by its ``signer``, a key of
    ``key_for(fingerprint)`` with the address ``gateway@DOMAIN``; else ``Invalid``."""
    if len(data) > MAX_CHECKPOINT:
        raise Invalid(UNREADABLE, "larger than a checkpoint")
    try:
        doc = json.loads(data, parse_constant=lambda c: {}[c])
        body, signature = doc["checkpoint"], doc["signature"]
        cp = Checkpoint(*(body[f] for f in ("domain", "seq", "hash", "time", "signer")))
        datetime.fromisoformat(cp.time)
        ok = (type(cp.seq) is int and cp.seq >= 0 and isinstance(cp.hash, str) and len(cp.hash) == 64
              and all(isinstance(v, str) for v in (cp.domain, cp.signer, signature)) and set(body) ==
              {"domain", "seq", "hash", "time", "signer"})
    except (ValueError, KeyError, TypeError, RecursionError):
        ok = False
    if not ok:
        raise Invalid(UNREADABLE, "not a securemail audit checkpoint")
    key = key_for(cp.signer)
    if key is None or f"gateway@{cp.domain}".lower() not in key.status.addresses:
        raise Invalid(FORGED, f"signer {cp.signer} is not a domain key of {cp.domain} in this key store")
    why = _signature_problem(canonical(body), signature, key)
    if why:
        raise Invalid(FORGED, f"signature by {cp.signer} does not verify: {why}")
    return cp


class Invalid(Permanent):
    """A checkpoint that cannot be used: unreadable, or not signed by its domain key."""

    def __init__(self, verdict: str, message: str) -> None:
        super().__init__(message)
        self.verdict = verdict


def _signature_problem(data: bytes, signature: str, cert: Key) -> str | None:
    """None when a valid signature by ``cert`` covers ``data``, else why not."""
    cert = cert.public()
    try:
        sigs = [p.raw for p in read_packets(unarmor_if_needed(signature.encode("ascii"))) if p.tag == SIG]
        results = verify_signatures(data, sigs, lambda kid, fpr: cert if kid in cert.keyids or
                                    fpr == cert.fingerprint else None)
    except Exception:  # noqa: BLE001 - PGPy raises many types on hostile input
        return "the signature is unreadable"
    if any(r.status == "valid" and r.signer == cert.fingerprint for r in results):
        return None
    return next((r.reason for r in results), "no signature")


def verify(audit: AuditLog, files: list[tuple[str, bytes]],
           key_for: Callable[[str], Key | None]) -> tuple[AuditReport, list[Finding]]:
    """The chain's own report and one Finding per checkpoint file ``(name, data)``, in seq order."""
    read_ok: list[tuple[str, Checkpoint]] = []
    findings: list[Finding] = []
    for name, data in files:
        try:
            read_ok.append((name, read(data, key_for)))
        except Invalid as e:
            findings.append(Finding(name, e.verdict, e.message))
    report = audit.verify(at={cp.seq for _, cp in read_ok})
    held = 0  # the highest checkpointed seq found intact so far
    for name, cp in sorted(read_ok, key=lambda item: item[1].seq):
        finding = judge(name, cp, report, held)
        held = cp.seq if finding.ok else held
        findings.append(finding)
    return report, findings


def judge(name: str, cp: Checkpoint, report: AuditReport, held: int = 0) -> Finding:
    """What the chain walk ``report`` says of checkpoint ``cp``; ``held``: the last seq that held."""
    at = f"record {cp.seq} of {cp.time}"
    if cp.seq == 0:
        return Finding(name, HOLDS, f"{at}: the empty log", cp)
    if cp.seq in report.hashes:
        if report.hashes[cp.seq] == cp.hash:
            return Finding(name, HOLDS, f"{at} is in the log with its hash", cp)
        return Finding(name, REWRITTEN, f"{at} has another hash in the log: records {held + 1} to "
                       f"{cp.seq} were rewritten, removed or reordered and the chain recomputed", cp)
    if report.read_all:  # the chain is whole (maybe bar its head) and ends before seq
        return Finding(name, TRUNCATED, f"{at} is gone: the log ends at record {report.count} "
                       "(truncated, or records removed)", cp)
    return Finding(name, BROKEN, f"{at} cannot be confirmed: the chain is broken at record "
                   f"{report.first_bad_seq} ({report.reason})", cp)


def write(directory: Path, cp: Checkpoint, data: bytes) -> Path:
    """Store a checkpoint in ``directory`` (the home's ``checkpoints/``), named by its seq and time."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    stamp = cp.time.replace("-", "").replace(":", "").replace("+0000", "Z")
    path = directory / f"audit-{cp.seq:012d}-{stamp}.json"
    write_atomic(path, data, 0o644)
    return path


def message(cp: Checkpoint, data: bytes, rcpt: str, now: float) -> bytes:
    """The mail that carries checkpoint file ``data`` to ``rcpt`` (the authority), from
    ``gateway@DOMAIN``: the gateway queues it like a DSN, encrypted and signed to a member domain."""
    lines = [f"From: securemail audit <gateway@{cp.domain}>", f"To: <{rcpt}>",
             f"Subject: audit checkpoint {cp.domain} record {cp.seq}",
             f"Date: {formatdate(now, usegmt=True)}", f"Message-ID: <{uuid.uuid4().hex}@{cp.domain}>",
             "Auto-Submitted: auto-generated", "MIME-Version: 1.0",
             "Content-Type: text/plain; charset=us-ascii", "Content-Transfer-Encoding: 7bit", "",
             f"The audit log of {cp.domain} held record {cp.seq} with this hash at {cp.time}.",
             "Keep this signed checkpoint; 'securemail audit verify --checkpoint FILE' on the gateway",
             "proves the log still holds it.", ""]
    return "\r\n".join(lines).encode("ascii") + data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def authority_address(key: Key) -> str | None:
    """Where checkpoints go by default: the first address of the federation authority key's user IDs."""
    return next(iter(key.status.addresses), None)


Send = Callable[[bytes, str], bool]  # (message, recipient) -> queued; delivery/bounces.py Bounces.send


class Checkpointer:
    """Makes checkpoints of one domain: into ``directory`` (the CLI: a file or stdout instead) and,
    with ``send`` and ``to``, queued to that address. Each is audited ``audit-checkpoint``."""

    def __init__(self, audit: AuditLog, domain: str, key: Key, *, directory: Path | None = None,
                 send: Send | None = None, to: str | None = None, clock: Callable[[], float] = time.time) -> None:
        self.audit, self.domain, self.key, self.directory = audit, domain, key, directory
        self.send, self.to, self.clock = send, to, clock

    def once(self, output: Path | None = None) -> tuple[Checkpoint, bytes, Path | None]:
        """One checkpoint: written to ``output`` (else into ``directory``, if any) and sent if set up;
        the checkpoint, its file's bytes and where it was written."""
        now = self.clock()
        cp, data = make(self.audit, self.domain, self.key, now)
        if output is not None:
            write_atomic(output, data, 0o644)
        elif self.directory is not None:
            output = write(self.directory, cp, data)
        queued = self.send(message(cp, data, self.to, now), self.to) if self.send and self.to else None
        self.audit.append("audit-checkpoint", seq=cp.seq, hash=cp.hash, domain=self.domain, signer=cp.signer,
                          file=output.name if output else None,
                          sent_to_domain=self.to.rpartition("@")[2].lower() if queued else None)
        if queued is False:
            raise Unroutable(f"no route to {self.to} from this gateway: a member domain, a domain served "
                             "here, or delivery.relay_to with non_member_policy = \"allow-plain\"")
        return cp, data, output

    async def run(self, stop, interval: float, lock: Path | None = None) -> None:
        """A checkpoint now and every ``interval`` seconds until ``stop`` (one process of the home)."""
        async def job() -> None:
            cp, _, path = await asyncio.to_thread(self.once)
            log.info("audit checkpoint of record %d written to %s", cp.seq, path)
        await every(interval, stop, job, what="audit checkpoint", lock=lock)


class Unroutable(Permanent):
    """The checkpoint's address cannot be reached from this gateway (not queued; a file, if any, was written)."""
