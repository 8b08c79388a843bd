"""securemail queue: inspect and operate the delivery queue."""

from __future__ import annotations

import json

import click

from securemail.errors import UsageError

from .context import iso_or_dash


def _queue(obj):
    return obj.core.queue()  # [database] url: the same for the key store, queue and audit log


@click.group()
def queue() -> None:
    """Inspect and operate the delivery queue."""


@queue.command(name="list")
@click.option("--state", type=click.Choice(["queued", "delivered", "bounced", "held"]))
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def queue_list(obj, state, as_json):
    q = _queue(obj)
    rows = q.list(state=state)
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    for r in rows:
        click.echo(f"{r.get('message_id', r.get('id'))} {r.get('state', '')} {r.get('recipient', '')} "
                   f"attempts={r.get('attempts', 0)} next={iso_or_dash(r.get('next_attempt_at'))} "
                   f"{(r.get('last_error') or '')[:80]}")


@queue.command(name="show")
@click.argument("message_id")
@click.pass_obj
def queue_show(obj, message_id):
    q = _queue(obj)
    info = q.show(message_id)
    if info is None:
        raise UsageError(f"no message {message_id}")
    click.echo(json.dumps(info, indent=2, default=str))


@queue.command(name="retry")
@click.argument("ident")
@click.pass_obj
def queue_retry(obj, ident):
    """Retry a delivery or every delivery of a message now (also held or bounced ones)."""
    q = _queue(obj)
    n = q.retry(ident, audit=("retry", {"by": "operator"}))
    click.echo(f"{n} deliveries requeued")


@queue.command(name="delete")
@click.argument("message_id")
@click.pass_obj
def queue_delete(obj, message_id):
    q = _queue(obj)
    if not q.delete(message_id, audit=("deleted", {"by": "operator"})):
        raise UsageError(f"no message {message_id}")
    q.checkpoint()  # the WAL frames with its body go too (SQLite)
    click.echo(f"deleted {message_id}")


@queue.command(name="purge")
@click.option("--older-than", default="0", show_default=True,
              help="Only messages whose deliveries all settled longer ago than this: seconds, "
                   "or 30d, 12h, 15m; 0 = every finished message.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def queue_purge(obj, older_than, as_json):
    """Remove finished messages now (every delivery delivered or bounced), with their deliveries,
    and any body a finished message still has. Mail still to deliver is never touched; the
    audit log is kept."""
    from securemail.config import parse_duration
    from securemail.errors import ConfigError
    from securemail.queue.retention import purge_all
    try:
        age = parse_duration(older_than, "--older-than")
    except ConfigError as e:
        raise UsageError(e.message) from None
    q = _queue(obj)
    out = purge_all(q, age, audit=("purged", {"by": "operator"}))
    if as_json:
        click.echo(json.dumps({"rows": out.rows, "messages": out.messages,
                               "deliveries": out.deliveries, "bodies": out.bodies}))
        return
    click.echo(f"removed {out.rows} rows ({out.messages} messages, {out.deliveries} deliveries) "
               f"and {out.bodies} leftover bodies")
