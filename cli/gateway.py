"""securemail gateway: set up a gateway home (config, keys, certificate) and check it before serving."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from securemail.errors import UsageError

from .users import user


@click.group()
def gateway() -> None:
    """Set up a gateway home and its submission users."""


gateway.add_command(user)


@gateway.command()
@click.option("--domain", "domains", multiple=True, required=True, help="A domain served (repeatable).")
@click.option("--listen", default="127.0.0.1:2525", show_default=True, help="Relay listener HOST:PORT.")
@click.option("--submission", default="127.0.0.1:5870", show_default=True,
              help="Submission listener HOST:PORT (AUTH after STARTTLS); 'none' for no submission.")
@click.option("--wkd", default="127.0.0.1:8443", show_default=True,
              help="Key directory (WKD, key publication) HTTPS listener HOST:PORT; 'none' for no directory.")
@click.option("--metrics", default="127.0.0.1:9464", show_default=True,
              help="Metrics and health HTTP listener HOST:PORT (/metrics, /healthz, /readyz); 'none' for none.")
@click.option("--hostname", help="EHLO name and TLS certificate name (default gateway.<first domain>).")
@click.option("--trusted-network", "trusted", multiple=True, help="Office network that may relay (repeatable).")
@click.option("--database-url", help="SQLAlchemy URL (default: SQLite file in the home).")
@click.option("--relay-to", help="Office MTA HOST:PORT for local delivery instead of Maildirs.")
@click.option("--lmtp", help="Local delivery over LMTP (Dovecot) instead of Maildirs: HOST:PORT or a unix socket path.")
@click.option("--tls-cert", type=click.Path(dir_okay=False), help="Real certificate (default: self-signed).")
@click.option("--tls-key", type=click.Path(dir_okay=False), help="Its private key.")
@click.pass_obj
def init(obj, domains, listen, submission, wkd, metrics, hostname, trusted, database_url, relay_to, lmtp,
         tls_cert, tls_key):
    """Write a documented config, domain OpenPGP keys, DKIM keys and a TLS certificate."""
    from securemail.admin.setup import InitOptions, init_gateway
    if bool(tls_cert) != bool(tls_key):
        raise UsageError("--tls-cert and --tls-key go together")
    ctx = click.get_current_context()
    movable = frozenset(name for name, param in (("relay", "listen"), ("submission", "submission"), ("wkd", "wkd"),
                                                 ("metrics", "metrics"))
                        if ctx.get_parameter_source(param) is click.core.ParameterSource.DEFAULT)
    opts = InitOptions(domains=list(domains), listen=listen,
                       submission=None if submission == "none" else submission,
                       wkd=None if wkd == "none" else wkd, metrics=None if metrics == "none" else metrics,
                       hostname=hostname,
                       database_url=database_url, relay_to=relay_to, lmtp=lmtp, tls_cert=tls_cert, tls_key=tls_key,
                       movable=movable)
    if trusted:
        opts.trusted_networks = list(trusted)
    if database_url:  # the domain keys belong in the database serve will use
        from securemail.app import open_home
        core = open_home(obj.core.home.path, database_url=database_url)
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
@click.pass_context
def migrate(ctx):
    """Upgrade the database schema to this version's (Alembic revisions, under a lock).

    Stop the gateway and back it up first (`securemail gateway backup DIR`). Safe to run again:
    a schema already current is left as it is."""
    from securemail.app import migrate_database
    before, after = migrate_database(ctx.find_root().params["home"])
    if before.up_to_date:
        click.echo(f"schema already at revision {after.current}: nothing to do")
    else:
        click.echo(f"schema migrated: {before.describe()} -> revision {after.current}")


@gateway.command()
@click.argument("directory", type=click.Path(file_okay=False))
@click.pass_context
def backup(ctx, directory):
    """Copy this home into DIRECTORY (new or empty) while the gateway runs: the database (SQLite
    backup API, or pg_dump), the configuration, the keys and certificates (0600)."""
    from securemail.admin.backup import backup as take
    from securemail.home import Home, resolve
    done = take(Home(resolve(ctx.find_root().params["home"])), directory)
    db = done.manifest["database"]
    click.echo(f"backed up {len(done.files) + len(done.manifest['outside'])} files and the {db['kind']} "
               f"database (schema revision {db['revision'] or '0.1.0'}) into {directory}")


@gateway.command()
@click.argument("directory", type=click.Path(file_okay=False, exists=True))
@click.option("--database-url", help="Restore the database there (empty) instead of where the backup's config says.")
@click.pass_context
def restore(ctx, directory, database_url):
    """Make this (fresh) home from the backup in DIRECTORY: files, keys, configuration, database."""
    from securemail.admin.restore import restore as put_back
    from securemail.home import Home
    done = put_back(Path(directory), Home.open(ctx.find_root().params["home"]), database_url=database_url)
    click.echo(f"restored into {done.home}: database {done.database}, schema revision "
               f"{done.revision or '0.1.0'}, {done.pending} deliveries to make")
    for note in done.notes:
        click.echo(f"note: {note}")
    click.echo(f"next: securemail --home {done.home} gateway check  (listeners, paths), then serve")


@gateway.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object: ok, and checks (name, ok, detail, fix).")
@click.pass_context
def check(ctx, as_json):
    """Preflight of this gateway home, before serve and after every change: config, secret files'
    modes, TLS certificate, listeners, database and schema, federation manifest and this gateway's
    entry, relay_to and LMTP. Exit 0 when all is well, 1 with problems."""
    from securemail.admin.check import gateway_home, preflight
    from securemail.home import resolve
    checks = preflight(gateway_home(resolve(ctx.find_root().params["home"])))
    fine = all(c.ok for c in checks)
    if as_json:
        click.echo(json.dumps({"ok": fine, "checks": [c.to_dict() for c in checks]}, indent=2))
    else:
        for c in checks:
            click.echo(f"{c.label} {c.name} {c.detail}")
            if c.label != "ok":
                click.echo(f"  fix: {c.fix}")
    sys.exit(0 if fine else 1)


@gateway.command()
@click.argument("kind", type=click.Choice(["openpgp", "dkim", "tls"]))
@click.option("--cert", type=click.Path(dir_okay=False, exists=True),
              help="tls: a certificate to use (from a CA) instead of a new self-signed one.")
@click.option("--key", type=click.Path(dir_okay=False, exists=True), help="tls: its private key.")
@click.pass_obj
def rotate(obj, kind, cert, key):
    """Make a new OpenPGP key, DKIM keys or TLS certificate beside the current ones. 'federation
    entry' then lists both; the gateway keeps using and accepting both until 'gateway retire'."""
    from securemail.admin.rotate import rotate as make
    for line in make(obj.core, kind, cert=cert, key=key):
        click.echo(line)


@gateway.command()
@click.argument("kind", type=click.Choice(["openpgp", "dkim", "tls"]))
@click.pass_obj
def retire(obj, kind):
    """Make the new key current and remove the old one, once the installed federation manifest
    lists the new one and no longer the old one (refused otherwise, saying what is missing)."""
    from securemail.admin.rotate import retire as finish
    for line in finish(obj.core, kind):
        click.echo(line)
