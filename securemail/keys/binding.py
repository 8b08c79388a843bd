"""Key bindings: which addresses a key may be used for, and who vouched for each.

A user ID is only a claim: anyone can put ``ceo@culture.gouv.fr`` on a key they
made. A *binding* is that claim vouched for by someone entitled to make it:

- ``import``: the operator of this home (``keys import``, ``keys generate``,
  ``directory add``, ``gateway init``): any address, by the operator's choice;
- ``publish``: the address's owner, through a proven request to the publish
  endpoint: the authenticated address only;
- ``directory:<domain>``: the key directory of ``<domain>`` in the federation:
  only the address that was asked for, and only when it is in ``<domain>``
  (the WKD of justice.gouv.fr speaks for @justice.gouv.fr, for nobody else).

The key store serves a key for an address, and pins it, only when the key has a
valid user ID for the address *and* a binding for it (table ``key_bindings``).
An update merged into a stored key binds only what its own source could bind.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

import sqlalchemy as sa

from ..errors import UsageError

OPERATOR = "import"
PUBLISH = "publish"
DIRECTORY = "directory:"

metadata = sa.MetaData()
bindings_table = sa.Table(
    "key_bindings", metadata,
    sa.Column("address", sa.String(320), primary_key=True),
    sa.Column("fingerprint", sa.String(40), primary_key=True),
    sa.Column("source", sa.String(260), nullable=False),   # import | publish | directory:<domain>
    sa.Column("bound_at", sa.Float, nullable=False),
)


def directory_source(domain: str) -> str:
    """The binding source of the key directory of ``domain``."""
    return DIRECTORY + domain.strip().lower().rstrip(".")


def domain_part(address: str) -> str:
    return address.rpartition("@")[2].lower().rstrip(".")


def bindable(source: str | None, claimed: Iterable[str], only: Iterable[str] | None = None) -> tuple[str, ...]:
    """The addresses among ``claimed`` (a key's valid user IDs) that ``source`` may bind.

    ``only`` is what the source vouches for: required for a publication (the
    authenticated address) and a directory (the address asked for); for the
    operator, None means every claimed address. ``source`` None binds nothing
    (e.g. a revocation merged into a key already published).
    """
    if not source:
        return ()
    wanted = None if only is None else {a.strip().lower() for a in only}
    if source == OPERATOR:
        return tuple(a for a in claimed if wanted is None or a in wanted)
    if wanted is None:
        raise UsageError(f"a binding by {source} names its address")
    if source == PUBLISH:
        return tuple(a for a in claimed if a in wanted)
    if source.startswith(DIRECTORY) and len(source) > len(DIRECTORY):
        domain = source[len(DIRECTORY):]
        return tuple(a for a in claimed if a in wanted and domain_part(a) == domain)
    raise UsageError(f"unknown binding source {source!r}")


def legacy_source(key_source: str) -> str | None:
    """The binding a key stored before bindings existed gets, from where it came from.

    Fetched keys (``wkd:<domain>``) are bound by that directory for its own domain;
    keys stored by a publication are bound from the directory table (the published
    address only); every other key was put there by the operator.
    """
    if key_source.startswith("wkd:"):
        return directory_source(key_source[4:])
    if key_source in ("directory:publish", "publish"):
        return None
    return OPERATOR


def migrate(conn, keys_table: sa.Table, pins_table: sa.Table, now: float) -> list[tuple[str, str]]:
    """Bind the keys of a home made before bindings existed; drop the pins no binding supports.

    Runs once, in the transaction that creates ``key_bindings``. Returns the
    (address, fingerprint) pins dropped: a pin made from an address a key only
    claimed (e.g. a directory's key for another domain) is not kept.
    """
    rows: dict[tuple[str, str], str] = {}
    claimed: dict[str, list[str]] = {}
    for r in conn.execute(sa.select(keys_table.c.fingerprint, keys_table.c.source, keys_table.c.addresses)):
        claimed[r.fingerprint] = json.loads(r.addresses or "[]")
        source = legacy_source(r.source or "")
        only = None if source == OPERATOR else claimed[r.fingerprint]
        for a in bindable(source, claimed[r.fingerprint], only):
            rows.setdefault((a, r.fingerprint), source)
    if sa.inspect(conn).has_table("directory"):  # keys/directory.py: what was published, for which address
        for d in conn.execute(sa.text("SELECT address, fingerprint, source FROM directory")):
            if d.address in claimed.get(d.fingerprint, ()):
                rows.setdefault((d.address, d.fingerprint), PUBLISH if d.source == "publish" else OPERATOR)
    for (address, fpr), source in rows.items():
        conn.execute(bindings_table.insert().values(address=address, fingerprint=fpr, source=source,
                                                    bound_at=now))
    dropped = [(p.address, p.fingerprint) for p in conn.execute(sa.select(pins_table))
               if (p.address, p.fingerprint) not in rows]
    for address, fpr in dropped:
        conn.execute(pins_table.delete().where(pins_table.c.address == address,
                                               pins_table.c.fingerprint == fpr))
    return dropped
