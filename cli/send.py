"""securemail send: an end-to-end encrypted and signed notice, from a script or a person."""

from __future__ import annotations

import os
import time

import click

from securemail.mail.compose import Draft, read_attachment
from securemail.mail.outgoing import addr, build_encrypted, signing_key, submit
from securemail.errors import KeyNotFound, TemporaryFailure, UsageError

from .context import read_input, read_secret_file
from .passphrase import Prompter


@click.command()
@click.option("--from", "sender", required=True, help="Your address (its secret key signs).")
@click.option("--to", "to", multiple=True, required=True, help="Recipient (repeatable).")
@click.option("--cc", "cc", multiple=True, help="Copy recipient (repeatable).")
@click.option("--subject", required=True, help="Subject (protected: only inside the encryption).")
@click.option("--body-file", type=click.Path(dir_okay=False), help="Body text; default: stdin.")
@click.option("--attach", multiple=True, type=click.Path(dir_okay=False), help="Attachment (repeatable).")
@click.option("--server", help="SMTP server HOST:PORT to submit to.")
@click.option("--starttls", is_flag=True, help="Require STARTTLS (the default).")
@click.option("--tls", is_flag=True, help="Implicit TLS (submissions port 465).")
@click.option("--insecure-plain", is_flag=True,
              help="Plain SMTP, no TLS: only without credentials (a test sink, say).")
@click.option("--cafile", type=click.Path(dir_okay=False),
              help="Trust this CA/certificate for TLS (a private CA; default: the system CAs).")
@click.option("--username", help="SMTP AUTH user name.")
@click.option("--password-file", type=click.Path(dir_okay=False), help="SMTP AUTH password file.")
@click.option("--passphrase-file", type=click.Path(dir_okay=False),
              help="Passphrase of your secret key (default on a terminal: asked).")
@click.option("--output", type=click.Path(dir_okay=False), help="Write the .eml instead of sending.")
@click.pass_obj
def send(obj, sender, to, cc, subject, body_file, attach, server, starttls, tls, insecure_plain, cafile,
         username, password_file, passphrase_file, output) -> None:
    """Encrypt to every recipient and to yourself, sign, and submit (or write with --output).

    The server is reached over STARTTLS (or --tls) and its certificate verified;
    a password never crosses without TLS: --insecure-plain refuses --username.
    """
    if starttls + tls + insecure_plain > 1:
        raise UsageError("--starttls, --tls and --insecure-plain exclude each other")
    if not output and not server:
        raise UsageError("give --server HOST:PORT to send, or --output FILE to write the message")
    if username and not password_file:
        raise UsageError("--username needs --password-file")
    if insecure_plain and (username or password_file):
        raise UsageError("--insecure-plain never sends credentials: the password would cross in clear; "
                         "use STARTTLS (the default) or --tls")
    body = read_input(body_file or "-").decode("utf-8", "replace")
    draft = Draft(sender=sender, to=list(to), cc=list(cc), subject=subject, body=body,
                  attachments=[read_attachment(p) for p in attach])
    _locate(obj, [*to, *cc])
    raw, rcpts = build_encrypted(obj.core.keys, draft, _passphrase(obj, sender, passphrase_file))
    if output:
        fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
        click.echo(f"wrote {output}")
        return
    submit(raw, addr(sender), rcpts, server, security="tls" if tls else "none" if insecure_plain else "starttls",
           username=username, password=read_secret_file(password_file), cafile=cafile)
    click.echo(f"sent to {', '.join(rcpts)}")


def _passphrase(obj, sender: str, passphrase_file: str | None) -> str | None:
    """Asked on a terminal only if the key that will sign is protected; a missing key is left
    for build_encrypted to report, in its usual order."""
    def protected() -> bool:
        try:
            key = signing_key(obj.core.keys, addr(sender), time.time())
        except KeyNotFound:
            return False
        return key.pgp.is_protected
    return Prompter().for_unlock(passphrase_file, protected, f"your key for {addr(sender)}")


def _locate(obj, recipients) -> None:
    """With a federation manifest in the home: find missing keys, refresh stale ones (WKD)."""
    from securemail.app import open_locator
    locator = open_locator(obj.core)
    if locator is None:
        return
    for a in dict.fromkeys(addr(r) for r in recipients):
        try:
            r = locator.ensure(a)
        except TemporaryFailure as e:
            click.echo(f"securemail: cannot look up {a}: {e.message}", err=True)
            continue
        if r is not None and r.status == "fetched" and r.key is not None:
            click.echo(f"found {r.key.fingerprint} for {a} ({r.source})", err=True)
