"""securemail directory: the gateway operator's view of its key directory (WKD): add, remove, list."""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import click

from securemail.errors import KeyNotFound, UsageError

from .context import read_input


def _directory(obj):
    return obj.core.directory()


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds")


@click.group()
def directory() -> None:
    """The gateway's key directory: which key is served (WKD) for each address of its domains."""


@directory.command()
@click.argument("source")
@click.pass_obj
def add(obj, source) -> None:
    """Publish the keys in SOURCE (a file, '-' for stdin), or the stored key of an address.

    Each key is published for its addresses in the domains served here, and
    those addresses (only those) are bound and pinned to it. A revoked key updates the stored copy and
    is then served as a revocation. Exit 1 if anything was refused.
    """
    d, now = _directory(obj), time.time()
    if "@" in source and not Path(source).exists():
        from securemail.mail.outgoing import addr
        address = addr(source)
        found = [k for k in obj.core.keys.find(address) if k.status.encryption_keys(now)]
        if not found:
            raise KeyNotFound(f"no valid key for {address} in the key store; give a key file")
        key = max(found, key=lambda k: k.status.created)
        e = d.publish(address, key, "operator")
        click.echo(f"published {e.fingerprint} for {e.address}")
        return
    refused = 0
    # stored without binding: each address is bound as it is published (Directory.publish)
    for r in obj.core.keys.import_bytes(read_input(source), source="directory:operator", bind=None):
        if r.outcome == "refused":
            refused += 1
            click.echo(f"refused {r.fingerprint or source}: {r.reason}", err=True)
            continue
        ours = [a for a in r.key.status.addresses if a.rpartition("@")[2] in d.domains]
        if r.key.state_at(now) == "revoked":
            click.echo(f"{r.outcome} {r.fingerprint} [revoked]: served as a revocation")
            continue
        if not ours:
            refused += 1
            click.echo(f"refused {r.fingerprint}: no user ID in {', '.join(d.domains)}", err=True)
        for a in ours:
            try:
                e = d.publish(a, r.key, "operator")
            except UsageError as err:
                refused += 1
                click.echo(f"refused {r.fingerprint} for {a}: {err.message}", err=True)
                continue
            click.echo(f"published {e.fingerprint} for {e.address}")
    if refused:
        sys.exit(1)


@directory.command()
@click.argument("address")
@click.pass_obj
def remove(obj, address) -> None:
    """Stop serving a key for ADDRESS (the key stays in the key store)."""
    if not _directory(obj).unpublish(address):
        raise UsageError(f"{address} is not in the directory")
    click.echo(f"removed {address.strip().lower()}")


@directory.command(name="list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def list_(obj, as_json) -> None:
    """The published addresses: fingerprint, state, when and how published."""
    now, rows = time.time(), []
    for e in _directory(obj).entries():
        try:
            state = obj.core.keys.get(e.fingerprint).state_at(now)
        except KeyNotFound:
            state = "missing"
        rows.append({"address": e.address, "fingerprint": e.fingerprint, "state": state,
                     "published_at": _iso(e.published_at), "source": e.source})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        click.echo(f"{r['address']} {r['fingerprint']} [{r['state']}] {r['source']} {r['published_at']}")
