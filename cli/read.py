"""securemail read: decrypt, verify and show one .eml file or a Maildir."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

import click

from securemail.errors import PassphraseError, UsageError
from securemail.mail.read import read_message

from .context import read_secret_file
from .passphrase import Prompter


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
@click.option("--passphrase-file", type=click.Path(dir_okay=False),
              help="Passphrase of your secret keys (default on a terminal: asked when needed).")
@click.option("--offline", is_flag=True,
              help="Never ask the federation's directory for the key of a signer not known here.")
@click.pass_obj
def read(obj, path, as_json, passphrase_file, offline) -> None:
    """Read PATH (an .eml file or a Maildir; default: the home's Maildir).

    A signer's key not known here is looked up by the From address in the federation's
    directory (as `send` finds recipients' keys), once per address, unless --offline.

    Exit status: 0 every message read, 1 any refused, 2 usage error.
    """
    core = obj.core
    files = _files(Path(path) if path else core.home.maildir)

    signer_key = None if offline else _signer_finder(core)

    def one(f: Path, usable: list):
        return read_message(f.read_bytes(), usable, core.keys.lookup, file=str(f), signer_key=signer_key)
    results = _read_unlocking(core.keys.secret_keys(), files, one, passphrase_file)
    if as_json:
        click.echo(json.dumps([r.to_json() for r in results], indent=2, ensure_ascii=False))
    else:
        for r in results:
            _show(r)
    sys.exit(1 if any(r.error for r in results) else 0)


LOOKUP_TIMEOUT = 5.0  # seconds for one directory request: a reader does not wait long


def _signer_finder(core):
    """From address -> (the key `send` would use for it, or None; why not), asked once per address."""
    from securemail.app import open_locator
    from securemail.errors import SecureMailError
    locator = open_locator(core, timeout=LOOKUP_TIMEOUT)
    answers: dict[str, tuple] = {}

    def find(address: str) -> tuple:
        if locator is None:
            return None, "no federation manifest is installed in this home (securemail federation install)"
        if address not in answers:
            try:
                r = locator.for_signer(address)
                answers[address] = (r.key, r.why() if r.key is None else "")
                if r.key is not None and r.status == "fetched":
                    click.echo(f"found {r.key.fingerprint} for {address} ({r.source})", err=True)
            except SecureMailError as e:
                answers[address] = (None, e.message)
        return answers[address]
    return find


LOCKED_OUT = "not encrypted to any of our keys"


def _locked_out(r) -> bool:
    return bool(r.error) and LOCKED_OUT in r.error


def _read_unlocking(secrets: list, files: list[Path], one, passphrase_file: str | None) -> list:
    """Read every file with the keys that open without a passphrase, or with the file's.

    Without a file, on a terminal, the passphrase is asked once, and only when a message could not
    be opened while a key stayed locked; those messages are read again. Nothing encrypted, nothing asked.
    """
    passphrase = read_secret_file(passphrase_file)
    with contextlib.ExitStack() as stack:
        usable, locked = _unlock(stack, secrets, passphrase)
        results = [one(f, usable) for f in files]
        if passphrase_file is None and locked and any(_locked_out(r) for r in results):
            passphrase = Prompter().for_unlock(None, lambda: True, "your secret keys")
            if passphrase is not None:
                more, locked = _unlock(stack, locked, passphrase)
                usable = usable + more
                results = [one(f, usable) if _locked_out(r) else r for f, r in zip(files, results)]
    for r in results:
        if locked and _locked_out(r):
            r.error += (f" ({len(locked)} secret key(s) stayed locked: "
                        f"{'wrong passphrase' if passphrase else 'give --passphrase-file'})")
    return results


def _unlock(stack: contextlib.ExitStack, keys: list, passphrase: str | None) -> tuple[list, list]:
    """Unlock, for the stack's lifetime, every key the passphrase opens: (usable, still locked)."""
    usable, locked = [], []
    for k in keys:
        try:
            stack.enter_context(k.pgp.unlocked(passphrase))
        except PassphraseError:
            locked.append(k)
            continue
        usable.append(k)
    return usable, locked
