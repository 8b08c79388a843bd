"""securemail gateway: set up a gateway home (config, keys, certificate) and check its listeners."""

from __future__ import annotations

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
@click.option("--hostname", help="EHLO name and TLS certificate name (default gateway.<first domain>).")
@click.option("--trusted-network", "trusted", multiple=True, help="Office network that may relay (repeatable).")
@click.option("--database-url", help="SQLAlchemy URL (default: SQLite file in the home).")
@click.option("--relay-to", help="Office MTA HOST:PORT for local delivery instead of Maildirs.")
@click.option("--lmtp", help="Local delivery over LMTP (Dovecot) instead of Maildirs: HOST:PORT or a unix socket path.")
@click.option("--tls-cert", type=click.Path(dir_okay=False), help="Real certificate (default: self-signed).")
@click.option("--tls-key", type=click.Path(dir_okay=False), help="Its private key.")
@click.pass_obj
def init(obj, domains, listen, submission, wkd, hostname, trusted, database_url, relay_to, lmtp, tls_cert,
         tls_key):
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
                       database_url=database_url, relay_to=relay_to, lmtp=lmtp, tls_cert=tls_cert, tls_key=tls_key,
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
