"""securemail gateway / serve / queue / audit: set up and operate a gateway home."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from datetime import datetime, timezone

import click

from securemail.errors import UsageError

from .context import read_secret_file


def _iso(ts) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds") if ts else "-"


@click.group()
def gateway() -> None:
    """Set up a gateway home and its submission users."""


@gateway.command()
@click.option("--domain", "domains", multiple=True, required=True, help="A domain served (repeatable).")
@click.option("--listen", default="127.0.0.1:2525", show_default=True, help="Relay listener HOST:PORT.")
@click.option("--submission", default="127.0.0.1:5870", show_default=True,
              help="Submission listener HOST:PORT (AUTH after STARTTLS); 'none' for no submission.")
@click.option("--wkd", default="127.0.0.1:8443", show_default=True,
              help="Key directory (WKD, key publication) HTTPS listener HOST:PORT; 'none' for no directory.")
@click.option("--hostname", help="EHLO name and TLS certificate name (default gateway.<first domain>).")
@click.option("--trusted-network", "trusted", multiple=True, help="Office network that may relay (repeatable).")
@click.option("--database-url", help="SQLAlchemy URL (default: SQLite file in the home).")
@click.option("--relay-to", help="Office MTA HOST:PORT for local delivery instead of Maildirs.")
@click.option("--tls-cert", type=click.Path(dir_okay=False), help="Real certificate (default: self-signed).")
@click.option("--tls-key", type=click.Path(dir_okay=False), help="Its private key.")
@click.pass_obj
def init(obj, domains, listen, submission, wkd, hostname, trusted, database_url, relay_to, tls_cert, tls_key):
    """Write a documented config, domain OpenPGP keys, DKIM keys and a TLS certificate."""
    from securemail.gateway.setup import InitOptions, init_gateway
    if bool(tls_cert) != bool(tls_key):
        raise UsageError("--tls-cert and --tls-key go together")
    ctx = click.get_current_context()
    movable = frozenset(name for name, param in (("relay", "listen"), ("submission", "submission"), ("wkd", "wkd"))
                        if ctx.get_parameter_source(param) is click.core.ParameterSource.DEFAULT)
    opts = InitOptions(domains=list(domains), listen=listen,
                       submission=None if submission == "none" else submission,
                       wkd=None if wkd == "none" else wkd, hostname=hostname,
                       database_url=database_url, relay_to=relay_to, tls_cert=tls_cert, tls_key=tls_key,
                       movable=movable)
    if trusted:
        opts.trusted_networks = list(trusted)
    if database_url:  # the domain keys belong in the database serve will use
        from securemail.app import open_core
        core = open_core(obj.core.home.path, database_url=database_url)
        try:
            out = init_gateway(core.home.path, core.keys, opts)
        finally:
            core.close()
    else:
        out = init_gateway(obj.core.home.path, obj.core.keys, opts)
    click.echo(f"wrote {out['config']}")
    for li in out["listeners"]:
        click.echo(f"listener {li['name']}: {li['listen']}" + (f"  ({li['note']})" if li["note"] else ""))
    for d, fpr in out["openpgp"].items():
        click.echo(f"{d}: OpenPGP key {fpr}")
    for k in out["dkim"]:
        click.echo(f"{k['domain']}: DKIM {k['selector']}._domainkey TXT \"{k['public_key'][:40]}...\"")
    click.echo("next: securemail federation entry  (send it to the federation authority)")


@gateway.command()
@click.pass_obj
def check(obj):
    """Check the config's listeners: a port two listeners share, or that another process holds."""
    from securemail.config import GatewayConfig
    from securemail.gateway.ports import collisions
    config = GatewayConfig.load(obj.core.home)
    listeners = [(li.name, li.host, li.port) for li in config.listeners]
    problems = dict(collisions(listeners))
    for name, host, port in listeners:
        click.echo(f"{'COLLISION' if name in problems else 'ok'} listener {name} {host}:{port}"
                   + (f": {problems[name]}" if name in problems else ""))
    if problems:
        sys.exit(1)


@gateway.group()
def user() -> None:
    """Submission users (AUTH LOGIN/PLAIN after STARTTLS)."""


def _users(obj):
    from securemail.config import GatewayConfig
    from securemail.gateway.users import Users
    return Users(GatewayConfig.load(obj.core.home).passwords_file)


@user.command(name="add")
@click.argument("address")
@click.option("--password-file", required=True, type=click.Path(dir_okay=False))
@click.pass_obj
def user_add(obj, address, password_file):
    """Add ADDRESS (or change its password)."""
    _users(obj).set(address, read_secret_file(password_file) or "")
    click.echo(f"user {address} set")


@user.command(name="remove")
@click.argument("address")
@click.pass_obj
def user_remove(obj, address):
    if not _users(obj).remove(address):
        raise UsageError(f"no user {address}")
    click.echo(f"user {address} removed")


@user.command(name="list")
@click.pass_obj
def user_list(obj):
    for name in _users(obj).names():
        click.echo(name)


@click.command()
@click.option("--processes", type=click.IntRange(1, 64),
              help="Serve processes sharing the ports and the queue (default: gateway.processes).")
@click.pass_obj
def serve(obj, processes):
    """Run the gateway: listeners and delivery workers until SIGTERM/SIGINT.

    With several processes (one per core), each runs listeners (SO_REUSEPORT)
    and delivery workers on the same database; SIGTERM stops them all.
    """
    from securemail.config import GatewayConfig
    from securemail.gateway.multi import serve_processes
    from securemail.gateway.service import build
    n = processes or GatewayConfig.load(obj.core.home).processes
    child = os.environ.get(CHILD_ENV) == "1"
    if n > 1 and not child:
        sys.exit(serve_processes(obj.core.home.path, n, CHILD_ENV))
    gw = build(obj.core.home, reuse_port=n > 1 or child)
    asyncio.run(gw.run_until_signal())


CHILD_ENV = "SECUREMAIL_SERVE_CHILD"


# --- operators --------------------------------------------------------------------------
def _queue(obj):
    from securemail.audit import AuditLog
    from securemail.queue import Queue
    engine = obj.core.engine  # [database] url: the same for the key store, queue and audit log
    audit = AuditLog(engine)
    return Queue(engine, audit_log=audit), audit


@click.group()
def queue() -> None:
    """Inspect and operate the delivery queue."""


@queue.command(name="list")
@click.option("--state", type=click.Choice(["queued", "delivered", "bounced", "held"]))
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def queue_list(obj, state, as_json):
    q, _ = _queue(obj)
    rows = q.list(state=state)
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    for r in rows:
        click.echo(f"{r.get('message_id', r.get('id'))} {r.get('state', '')} {r.get('recipient', '')} "
                   f"attempts={r.get('attempts', 0)} next={_iso(r.get('next_attempt_at'))} "
                   f"{(r.get('last_error') or '')[:80]}")


@queue.command(name="show")
@click.argument("message_id")
@click.pass_obj
def queue_show(obj, message_id):
    q, _ = _queue(obj)
    info = q.show(message_id)
    if info is None:
        raise UsageError(f"no message {message_id}")
    click.echo(json.dumps(info, indent=2, default=str))


@queue.command(name="retry")
@click.argument("ident")
@click.pass_obj
def queue_retry(obj, ident):
    """Retry a delivery or every delivery of a message now (also held or bounced ones)."""
    q, _ = _queue(obj)
    n = q.retry(ident, audit=("retry", {"by": "operator"}))
    click.echo(f"{n} deliveries requeued")


@queue.command(name="delete")
@click.argument("message_id")
@click.pass_obj
def queue_delete(obj, message_id):
    q, _ = _queue(obj)
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
    q, _ = _queue(obj)
    out = purge_all(q, age, audit=("purged", {"by": "operator"}))
    if as_json:
        click.echo(json.dumps({"rows": out.rows, "messages": out.messages,
                               "deliveries": out.deliveries, "bodies": out.bodies}))
        return
    click.echo(f"removed {out.rows} rows ({out.messages} messages, {out.deliveries} deliveries) "
               f"and {out.bodies} leftover bodies")


@click.group()
def audit() -> None:
    """The hash-chained audit log of decisions (metadata, never content)."""


@audit.command(name="verify")
@click.pass_obj
def audit_verify(obj):
    _, log = _queue(obj)
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
    _, log = _queue(obj)
    recs = log.records(since=since, limit=limit)
    if as_json:
        click.echo(json.dumps([{"seq": r.seq, "at": r.at, "kind": r.kind, "fields": r.fields} for r in recs],
                              indent=2))
        return
    for r in recs:
        click.echo(f"{r.seq:6d} {_iso(r.at)} {r.kind:10s} {json.dumps(r.fields, sort_keys=True)}")


def register(cli) -> None:
    for cmd in (gateway, serve, queue, audit):
        cli.add_command(cmd)
