"""securemail audit: verify and show the hash-chained audit log; anchor it with signed checkpoints.

``checkpoint`` signs the chain's head with the domain key (securemail/checkpoint.py) and writes it
(standard output, ``--output F``), or queues it to the federation authority's address (``--send``,
``--to``) for the running gateway to deliver. ``verify --checkpoint F...`` proves the log still holds
every checkpointed head, and names a truncation or a rewrite when it does not.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from securemail.errors import KeyNotFound

from .context import iso_or_dash, read_input


def _log(obj):
    return obj.core.audit  # [database] url: the same engine the queue writes it with


@click.group()
def audit() -> None:
    """The hash-chained audit log of decisions (metadata, never content)."""


@audit.command(name="verify")
@click.option("--checkpoint", "checkpoints", multiple=True, type=click.Path(dir_okay=False),
              help="A checkpoint from 'audit checkpoint' (repeat, or a shell glob): the log must still hold it.")
@click.pass_obj
def audit_verify(obj, checkpoints):
    """Walk the hash chain; with --checkpoint, prove it still holds every checkpointed head."""
    log = _log(obj)
    if not checkpoints:
        r = log.verify()
        findings = []
    else:
        from securemail import checkpoint as C
        r, findings = C.verify(log, [(f, read_input(f)) for f in checkpoints], _key_for(obj))
    if r.ok:
        click.echo(f"audit log intact: {r.count} records")
    else:
        click.echo(f"audit log BROKEN at record {r.first_bad_seq}: {r.reason}", err=True)
    for f in findings:
        click.echo(f"checkpoint {f.name}: {'ok' if f.ok else f.verdict.upper()}: {f.detail}",
                   err=not f.ok)
    if not r.ok or not all(f.ok for f in findings):
        sys.exit(1)


def _key_for(obj):
    def key_for(fpr: str):
        try:
            return obj.core.keys.get(fpr)
        except KeyNotFound:
            return None
    return key_for


@audit.command(name="checkpoint")
@click.option("--output", type=click.Path(dir_okay=False), help="Write it to this file (default: standard output).")
@click.option("--send", is_flag=True, help="Also queue it to the federation authority's address (its key's user ID).")
@click.option("--to", "to", metavar="ADDRESS", help="Queue it to ADDRESS instead (implies --send).")
@click.option("--domain", help="Sign with this served domain's key (default: the first).")
@click.pass_obj
def audit_checkpoint(obj, output, send, to, domain):
    """Sign the audit chain's head (sequence number, hash, time) with the domain key.

    Keep it out of this host's reach: with --send (or --to) it is queued like a DSN, with the null
    sender and From gateway@DOMAIN, and the running gateway delivers it: encrypted and signed to a
    member domain, locally to a domain served here, or through delivery.relay_to when
    non_member_policy allows plain mail."""
    from securemail.app import open_checkpointer
    checkpointer = open_checkpointer(obj.core, domain, send=send or bool(to), to=to)
    cp, data, _ = checkpointer.once(Path(output) if output else None)
    if output is None:
        click.echo(data.decode("ascii"), nl=False)
    where = [output] if output else []
    if checkpointer.to:
        where.append(f"queued to {checkpointer.to}")
    click.echo(f"checkpoint of record {cp.seq} ({cp.hash[:16]}...) signed by {cp.signer}"
               + (f": {', '.join(where)}" if where else ""), err=output is None)


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
