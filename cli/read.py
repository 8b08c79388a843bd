"""securemail read: decrypt, verify and show one .eml file or a Maildir."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from securemail.errors import UsageError
from securemail.mail.read import read_message

from .context import read_secret_file


def _files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        sub = [path / d for d in ("new", "cur") if (path / d).is_dir()]
        if not sub:
            raise UsageError(f"{path} is not a Maildir (no new/ or cur/)")
        return sorted((f for d in sub for f in d.iterdir() if f.is_file()), key=lambda f: f.name)
    raise UsageError(f"no such file or Maildir: {path}")


def _show(r) -> None:
    click.echo(f"== {r.file}")
    if r.error:
        click.echo(f"REFUSED: {r.error}")
        return
    enc = "encrypted" if r.encrypted else "NOT ENCRYPTED"
    sig = {"valid": f"signed by {r.signer} (valid)", "invalid": f"BAD SIGNATURE ({r.signature_reason})",
           "unknown-key": f"signed by unknown key {r.signer or ''}", "none": "not signed",
           "signer-mismatch": f"SIGNED BY {r.signer}, WHO IS NOT THE SENDER SHOWN"}[r.signature]
    click.echo(f"[{enc}; {sig}]")
    if r.warning:
        click.echo(f"WARNING: {r.warning}")
    click.echo(f"From: {r.sender}\nSubject: {r.subject}\n")
    click.echo(r.body.rstrip("\n"))
    for a in r.attachments:
        click.echo(f"[attachment: {a['name']} ({a['size']} bytes)]")
    click.echo("")


@click.command()
@click.argument("path", required=False, type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="A JSON array, one object per message.")
@click.option("--passphrase-file", type=click.Path(dir_okay=False), help="Passphrase of your secret keys.")
@click.pass_obj
def read(obj, path, as_json, passphrase_file) -> None:
    """Read PATH (an .eml file or a Maildir; default: the home's Maildir).

    Exit status: 0 every message read, 1 any refused, 2 usage error.
    """
    core = obj.core
    files = _files(Path(path) if path else core.home.maildir)
    passphrase = read_secret_file(passphrase_file)
    secrets = core.keys.secret_keys()
    results = []
    with _unlocked(secrets, passphrase) as usable:
        locked = len(secrets) - len(usable)
        for f in files:
            r = read_message(f.read_bytes(), usable, core.keys.lookup, file=str(f))
            if locked and r.error and "not encrypted to any of our keys" in r.error:
                r.error += (f" ({locked} secret key(s) stayed locked: "
                            f"{'wrong passphrase' if passphrase else 'give --passphrase-file'})")
            results.append(r)
    if as_json:
        click.echo(json.dumps([r.to_json() for r in results], indent=2, ensure_ascii=False))
    else:
        for r in results:
            _show(r)
    sys.exit(1 if any(r.error for r in results) else 0)


class _unlocked:
    """Unlock every secret key the passphrase opens; the others are skipped."""

    def __init__(self, keys, passphrase) -> None:
        self.keys, self.passphrase, self.ctxs = keys, passphrase, []

    def __enter__(self):
        from securemail.errors import PassphraseError
        usable = []
        for k in self.keys:
            ctx = k.pgp.unlocked(self.passphrase)
            try:
                ctx.__enter__()
            except PassphraseError:
                continue
            self.ctxs.append(ctx)
            usable.append(k)
        return usable

    def __exit__(self, *exc) -> None:
        for ctx in self.ctxs:
            ctx.__exit__(None, None, None)
