"""The pre-send key checks: a message queued for a member is not sent if the key it was
encrypted to was revoked or expired while it waited (``DeliveryWorker(pre_send=...)``), nor while
the installed federation manifest is past its ``expires`` (deferred until a fresh one arrives), and
it is sent to the certificate pins the manifest lists now (``DeliveryWorker(member_pins=...)``)."""

from __future__ import annotations

from collections.abc import Callable

from ..manifest_source import ManifestSource
from .outcome import Outcome, temporary
from ..keys.store import KeyStore
from ..policy.address import domain_of
from ..transform.hops import SmtpHop, smtp_hop


MANIFEST_EXPIRED = temporary("federation manifest expired; waiting for a fresh one")


class KeyCheck:
    """Before sending to a member: the recipient's key (or its domain's) must still be valid."""

    def __init__(self, keys: KeyStore, manifest: ManifestSource, clock) -> None:
        self.keys, self.manifest, self.clock = keys, manifest, clock
        self._known: dict[str, tuple[tuple, list]] = {}  # address -> (store generation, keys)

    def veto(self, claim) -> str | Outcome | None:
        """None: send; a reason: bounce (the key it was encrypted to is gone for good: a fresh
        manifest would not change that); an Outcome: deferred (the manifest expired)."""
        if not claim.next_hop.startswith("smtp:"):
            return None
        why = self._key_problem(claim.recipient, self.clock())
        if why is None and self.manifest.expired():  # keys and pins no longer vouched for: retry later
            return MANIFEST_EXPIRED
        return why

    def _key_problem(self, recipient: str, now: float) -> str | None:
        gen = self.keys.generation()
        hit = self._known.get(recipient)
        if hit is None or hit[0] != gen:
            if len(self._known) > 10_000:
                self._known.clear()
            hit = self._known[recipient] = (gen, self.keys.find(recipient))
        known = hit[1]
        if known:
            if any(k.status.encryption_keys(now) for k in known):
                return None
            return "the recipient's key was revoked or expired while the message waited"
        key = self.manifest.member_key(domain_of(recipient) or "")
        if key is None or not key.status.encryption_keys(now):
            return "the recipient domain's key was revoked or expired while the message waited"
        return None


def listed_pins(manifest: ManifestSource) -> Callable[[SmtpHop], SmtpHop]:
    """A member hop with the pins the installed manifest lists now for its gateway's address: a
    member that rotated its certificate while the message waited is reached with today's pins, and
    a pin the manifest dropped is no longer taken. The queued pins when no member has that address."""
    def refresh(hop: SmtpHop) -> SmtpHop:
        m = manifest()
        pins = [p for x in (m.members.values() if m else ()) if x.gateway == (hop.host, hop.port)
                for p in x.tls_pins]
        return smtp_hop(hop.host, hop.port, tuple(dict.fromkeys(pins))) if pins else hop
    return refresh
