"""securemail gateway: set up a gateway home (config, keys, certificate) and check it before serving."""

from __future__ import annotations

import json
import sys

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
            click.echo(f"{'ok' if c.ok else c.word} {c.name} {c.detail}")
            if not c.ok:
                click.echo(f"  fix: {c.fix}")
    sys.exit(0 if fine else 1)
