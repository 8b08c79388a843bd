"""securemail bridge: IMAP and SMTP on this machine for mail clients without OpenPGP."""

from __future__ import annotations

import asyncio
import json
import sys

import click

from .context import read_secret_file
from .passphrase import Prompter

SWITCH_INTERVAL = 0.0005  # seconds


@click.group()
def bridge() -> None:
    """The local bridge: any mail client reads and sends end-to-end encrypted mail through it.

    It offers IMAP and SMTP on this machine, decrypts and checks what the ministry's mail
    server holds, and encrypts and signs what the client sends. Your keys never leave
    this machine.
    """


@bridge.command("init")
@click.option("--imap", required=True, metavar="HOST:PORT", help="The upstream IMAP server (993: implicit TLS, else STARTTLS).")
@click.option("--smtp", required=True, metavar="HOST:PORT", help="The upstream submission server (465: implicit TLS, else STARTTLS).")
@click.option("--username", required=True, help="Your address: the upstream login and the identity mail is signed with.")
@click.option("--password-file", required=True, type=click.Path(dir_okay=False), help="The upstream password.")
@click.option("--cafile", type=click.Path(dir_okay=False), help="CA of the upstream servers (default: the system's).")
@click.option("--imap-listen", default="127.0.0.1:1143", show_default=True, metavar="HOST:PORT")
@click.option("--smtp-listen", default="127.0.0.1:1025", show_default=True, metavar="HOST:PORT")
@click.pass_obj
def init(obj, imap, smtp, username, password_file, cafile, imap_listen, smtp_listen) -> None:
    """Set the bridge up in your home, next to your keys: config, local password, local certificate."""
    from securemail.bridge.settings import is_loopback
    from securemail.bridge.setup import BridgeInit, init_bridge
    core = obj.core
    password = read_secret_file(password_file) or ""
    opts = BridgeInit(imap, smtp, username, password, cafile, imap_listen, smtp_listen)

    def has_secret_key(address: str) -> bool:
        return any(k.is_secret for k in core.keys.find(address))
    settings = init_bridge(core.home.path, opts, has_secret_key)
    click.echo(f"bridge set up in {core.home.path} for {settings.address}")
    for name, (host, _) in (("--imap-listen", settings.imap_listen), ("--smtp-listen", settings.smtp_listen)):
        if not is_loopback(host):
            click.echo(f"note: {name} {host} is not loopback; `bridge serve` will need --allow-remote", err=True)
    click.echo("run `securemail bridge credentials` for your mail client's settings")


@bridge.command("serve")
@click.option("--passphrase-file", type=click.Path(dir_okay=False),
              help="Passphrase of your secret key (default on a terminal: asked once).")
@click.option("--allow-remote", is_flag=True,
              help="Let the local listeners bind to an address other than loopback.")
@click.pass_obj
def serve(obj, passphrase_file, allow_remote) -> None:
    """Run the bridge until SIGTERM or SIGINT; your secret key is unlocked once, here."""
    from securemail.app import open_bridge
    passphrase = Prompter().for_unlock(passphrase_file, lambda: _protected(obj.core), "your secret key")
    home = obj.core.home.path
    obj.close()
    bridge_ = open_bridge(home, passphrase=passphrase, allow_remote=allow_remote)
    def ready() -> None:   # said once both listeners listen, not before a port found taken
        click.echo(f"securemail bridge for {bridge_.address}: IMAP {bridge_.imap_config.host}:"
                   f"{bridge_.imap_config.port}; stop with SIGTERM or Ctrl-C", err=True)
    # the event loop hands each message to the upstream and crypto threads and back: with CPython's
    # default switch interval (5 ms) each handoff may wait that long for the GIL
    sys.setswitchinterval(SWITCH_INTERVAL)
    asyncio.run(bridge_.run_until_signal(ready))


def _protected(core) -> bool:
    return any(k.pgp.is_protected for k in core.keys.secret_keys())


@bridge.command("credentials")
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
@click.pass_obj
def credentials(obj, as_json) -> None:
    """What a mail client needs: host, ports, user, password, and the certificate to trust."""
    from securemail.bridge.settings import BridgeSettings
    from securemail.bridge.setup import credentials as creds
    found = creds(BridgeSettings.load(obj.core.home.path))
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    click.echo(f"IMAP server:  {found['imap']['host']}  port {found['imap']['port']}  (STARTTLS)")
    click.echo(f"SMTP server:  {found['smtp']['host']}  port {found['smtp']['port']}  (STARTTLS)")
    click.echo(f"Username:     {found['username']}")
    click.echo(f"Password:     {found['password']}")
    click.echo(f"Certificate:  {found['certificate']}  (trust this one certificate in your mail client)")
