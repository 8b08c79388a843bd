"""securemail audit: verify and show the hash-chained audit log."""

from __future__ import annotations

import json
import sys

import click

from .context import iso_or_dash


def _log(obj):
    return obj.core.audit  # [database] url: the same engine the queue writes it with


@click.group()
def audit() -> None:
    """The hash-chained audit log of decisions (metadata, never content)."""


@audit.command(name="verify")
@click.pass_obj
def audit_verify(obj):
    log = _log(obj)
    r = log.verify()
    if r.ok:
        click.echo(f"audit log intact: {r.count} records")
        return
    click.echo(f"audit log BROKEN at record {r.first_bad_seq}: {r.reason}", err=True)
    sys.exit(1)


@audit.command(name="show")
@click.option("--since", type=int, help="Only records after this sequence number.")
@click.option("--limit", type=int, default=None)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def audit_show(obj, since, limit, as_json):
    log = _log(obj)
    recs = log.records(since=since, limit=limit)
    if as_json:
        click.echo(json.dumps([{"seq": r.seq, "at": r.at, "kind": r.kind, "fields": r.fields} for r in recs],
                              indent=2))
        return
    for r in recs:
        click.echo(f"{r.seq:6d} {iso_or_dash(r.at)} {r.kind:10s} {json.dumps(r.fields, sort_keys=True)}")
