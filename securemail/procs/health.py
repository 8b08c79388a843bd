"""Is the gateway ready for mail? Each probe is a small function of what it is given, returning a Probe.

``/readyz`` (procs/monitor.py) answers 200 when every probe passes, else 503 naming the first
that failed. Ready means: the database answers; its schema is this version's; each served domain
has its secret key loaded and usable; the installed federation manifest loads, lists our
domains and has not expired; the crypto workers and the delivery workers are running. A probe's
detail is for an operator: no secret, no database URL.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Callable

import sqlalchemy as sa

from ..crypto.keys import Key
from ..db import transaction
from ..errors import SecureMailError
from ..schema import gaps


@dataclass(frozen=True)
class Probe:
    name: str
    ok: bool
    detail: str


def answer(probes: list[Probe]) -> tuple[int, dict]:
    """The HTTP status and JSON body of ``/readyz``: ``reason`` is the first failed probe's."""
    failed = next((p for p in probes if not p.ok), None)
    return (200 if failed is None else 503), {
        "ready": failed is None, "reason": "" if failed is None else f"{failed.name}: {failed.detail}",
        "checks": [asdict(p) for p in probes]}


def database(engine) -> list[Probe]:
    """The database answers, then its schema has every table and column of this version."""
    try:
        with transaction(engine, write=False) as conn:
            conn.execute(sa.text("SELECT 1"))
            tables, columns = gaps(sa.inspect(conn))
    except SecureMailError as e:
        return [Probe("database", False, f"does not answer ({e.detail or e.message})"),
                Probe("schema", False, "not read: the database does not answer")]
    missing = [f"table {t}" for t in tables] + [f"column {c}" for c in columns]
    return [Probe("database", True, "answers"),
            Probe("schema", not missing, f"missing {', '.join(missing)}" if missing else "current")]


def keys(domain_keys: dict[str, Key], domains, now: float) -> Probe:
    """Each served domain's secret key is loaded, not expired, not revoked."""
    for d in domains:
        key = domain_keys.get(d)
        if key is None or not key.is_secret:
            return Probe("keys", False, f"no secret key loaded for {d}")
        state = key.state_at(now)
        if state != "valid":
            return Probe("keys", False, f"the key of {d} ({key.fingerprint}) is {state}")
    return Probe("keys", True, f"{len(domain_keys)} domain key(s) loaded")


def timestamp(value) -> float | None:
    """A manifest time (ISO 8601 text, or seconds) as seconds since the epoch; None if absent."""
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    t = datetime.fromisoformat(str(value))
    return (t if t.tzinfo else t.replace(tzinfo=timezone.utc)).timestamp()


def manifest(source: Callable[[], object], domains, now: float) -> Probe:
    """The installed manifest loads, lists every domain served here, and has not expired
    (``expires``, when the manifest has one)."""
    try:
        m = source()
    except SecureMailError as e:
        return Probe("manifest", False, f"cannot be read: {e.message}")
    if m is None:
        return Probe("manifest", False, "none installed (securemail federation install)")
    missing = [d for d in domains if not m.is_member(d)]
    if missing:
        return Probe("manifest", False, f"serial {m.serial} does not list {', '.join(missing)}")
    try:
        expires = timestamp(getattr(m, "expires", None))
    except ValueError:
        return Probe("manifest", False, f"serial {m.serial} has an unreadable expiry time")
    if expires is not None and expires <= now:
        return Probe("manifest", False, f"serial {m.serial} expired at {_utc(expires)}")
    return Probe("manifest", True, f"serial {m.serial}" + (f", expires at {_utc(expires)}" if expires else ""))


def _utc(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds")


class Readiness:
    """Every probe of one serve process; ``processes()`` gives those of its workers (procs/gateway.py).
    ``probes`` blocks (database, files): the monitor runs it in a thread."""

    def __init__(self, *, engine, manifest: Callable[[], object], domains, domain_keys: dict[str, Key],
                 processes: Callable[[], list[Probe]] = list, clock: Callable[[], float] = time.time) -> None:
        self.engine, self.manifest, self.domains = engine, manifest, tuple(domains)
        self.domain_keys, self.processes, self.clock = domain_keys, processes, clock

    def probes(self) -> list[Probe]:
        now = self.clock()
        return [*database(self.engine), keys(self.domain_keys, self.domains, now),
                manifest(self.manifest, self.domains, now), *self.processes()]
