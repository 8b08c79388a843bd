"""securemail keys: generate, import, export, list, revoke, delete; publish, locate, accept (key directory)."""

from __future__ import annotations

import json
import os
import re
import sys
import time
from datetime import datetime, timedelta, timezone
from email.utils import parseaddr

import click

from securemail.crypto import openpgp
from securemail.crypto.keys import Key
from securemail.errors import KeyNotFound, UsageError

from .context import read_input, read_secret_file
from .passphrase import Prompter

ASKED = "Passphrase of your secret key (default on a terminal: asked)."


def _locked(key: Key) -> bool:
    return key.is_secret and key.pgp.is_protected


def parse_lifetime(text: str) -> timedelta | None:
    """'2y', '6m', '30d', '12h' or 'never'."""
    if text == "never":
        return None
    m = re.fullmatch(r"(\d+)([ymdh])", text.strip())
    if not m:
        raise UsageError(f"bad --expires {text!r}: use e.g. 2y, 6m, 30d or never")
    n, unit = int(m.group(1)), m.group(2)
    if n <= 0:
        raise UsageError("--expires must be positive")
    return timedelta(days={"y": 365 * n, "m": 30 * n, "d": n}.get(unit, 0), hours=n if unit == "h" else 0)


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds")


def key_json(key: Key, now: float, source: str = "", bound: dict | None = None) -> dict:
    """``bound``: address -> who bound it to the key (import, publish, directory:<domain>); the key
    is used only for those addresses, whatever else its user IDs claim."""
    st = key.status
    return {
        "fingerprint": key.fingerprint, "uids": list(st.uids), "addresses": list(st.addresses),
        "bound": {a: s for a, s in (bound or {}).items() if a in st.addresses},
        "algorithm": st.algorithm, "bits": st.bits, "secret": key.is_secret,
        "protected": key.pgp.is_protected, "state": key.state_at(now),
        "created": _iso(st.created), "expires": _iso(st.expires),
        "revoked": _iso(st.revocation.at) if st.revocation else None,
        "revocation_reason": st.revocation.text if st.revocation else None,
        "can_encrypt": bool(st.encryption_keys(now)), "source": source,
    }


@click.group()
def keys() -> None:
    """Manage OpenPGP keys in the home's key store."""


@keys.command()
@click.option("--uid", required=True, help='User ID, e.g. "Alice Martin <alice@interieur.gouv.fr>".')
@click.option("--algorithm", type=click.Choice(["ed25519", "nistp256", "nistp384", "rsa3072", "rsa4096"]),
              default="ed25519", show_default=True)
@click.option("--expires", default="2y", show_default=True, help="2y, 6m, 30d, or never.")
@click.option("--passphrase-file", type=click.Path(dir_okay=False),
              help="Protect the secret key (default on a terminal: asked twice).")
@click.option("--no-passphrase", is_flag=True, help="Store the secret key unprotected.")
@click.pass_obj
def generate(obj, uid, algorithm, expires, passphrase_file, no_passphrase) -> None:
    """Generate a key pair (Ed25519 + Cv25519 by default); print its fingerprint.

    Without --passphrase-file or --no-passphrase, on a terminal, the passphrase is asked twice.
    """
    if "@" not in uid:
        raise UsageError("--uid must contain an address, e.g. 'Name <user@example.org>'")
    passphrase = Prompter().for_new_key(passphrase_file, no_passphrase)
    key = Key(openpgp.generate(uid, algorithm, parse_lifetime(expires), passphrase))
    obj.core.keys.add(key, source="generated")
    click.echo(key.fingerprint)


@keys.command(name="import")
@click.argument("files", nargs=-1, required=True)
@click.pass_obj
def import_(obj, files) -> None:
    """Import keys from FILES (armored or binary, '-' for stdin)."""
    refused = 0
    for path in files:
        for r in obj.core.keys.import_bytes(read_input(path), source="import"):
            if r.outcome == "refused":
                refused += 1
                who = r.fingerprint or path
                click.echo(f"refused {who}: {r.reason}", err=True)
            else:
                state = r.key.state_at(time.time()) if r.key else ""
                uids = ", ".join(r.key.status.uids) if r.key else ""
                click.echo(f"{r.outcome} {r.fingerprint} {uids} [{state}]")
    if refused:
        sys.exit(1)


@keys.command()
@click.argument("ident")
@click.option("--secret", is_flag=True, help="Export the secret key (as stored, protected or not).")
@click.option("--output", type=click.Path(dir_okay=False), help="Write to a file instead of stdout.")
@click.pass_obj
def export(obj, ident, secret, output) -> None:
    """Export the key of ADDR or FPR, armored."""
    store = obj.core.keys
    if "@" in ident:
        found = store.find(ident)
        if not found:
            raise UsageError(f"no key for {ident}")
        key = max(found, key=lambda k: k.status.created)
    else:
        key = store.get(ident)
    if secret and not key.is_secret:
        raise UsageError(f"no secret key for {ident}")
    data = key.armored() if secret else key.public().armored()
    if output:
        fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if secret else 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    else:
        click.get_binary_stream("stdout").write(data)


@keys.command(name="list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def list_(obj, as_json) -> None:
    """List keys with their state (valid, expired, revoked)."""
    now, bound = time.time(), {}
    for address, fpr, how in obj.core.keys.bindings():
        bound.setdefault(fpr, {})[address] = how
    rows = [key_json(k, now, src, bound.get(k.fingerprint)) for k, src, _ in obj.core.keys.all()]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        kind = "sec" if r["secret"] else "pub"
        click.echo(f"{kind} {r['fingerprint']} {r['algorithm']} [{r['state']}]"
                   f"{' expires ' + r['expires'][:10] if r['expires'] else ''}")
        for uid in r["uids"]:
            how = r["bound"].get(parseaddr(uid)[1].lower(), "not bound")
            click.echo(f"    {uid} [{how}]")


@keys.command()
@click.argument("fpr")
@click.option("--reason", type=click.Choice(["none", "superseded", "compromised", "retired"]),
              default="none", show_default=True)
@click.option("--comment", default="", help="Free text stored in the revocation.")
@click.option("--passphrase-file", type=click.Path(dir_okay=False), help=ASKED)
@click.pass_obj
def revoke(obj, fpr, reason, comment, passphrase_file) -> None:
    """Revoke one of your keys; store and print the revocation (publish it to correspondents)."""
    store = obj.core.keys
    passphrase = Prompter().for_unlock(passphrase_file, lambda: _locked(store.get(fpr)), f"the key {fpr}")
    armored = store.revoke(fpr, passphrase, reason, comment)
    click.get_binary_stream("stdout").write(armored)


@keys.command()
@click.argument("fpr")
@click.pass_obj
def delete(obj, fpr) -> None:
    """Delete a key (and its secret, if any) from the store."""
    obj.core.keys.delete(fpr)
    click.echo(f"deleted {fpr}")


@keys.command()
@click.argument("address", required=False)
@click.option("--server", required=True, help="Your gateway's key directory HOST:PORT ([listeners.wkd]).")
@click.option("--cafile", type=click.Path(dir_okay=False), help="Trust this CA/certificate for TLS.")
@click.option("--username", required=True, help="Your submission user name (your address).")
@click.option("--password-file", required=True, type=click.Path(dir_okay=False))
@click.option("--passphrase-file", type=click.Path(dir_okay=False), help=ASKED)
@click.pass_obj
def publish(obj, address, server, cafile, username, password_file, passphrase_file) -> None:
    """Publish your key for ADDRESS (default: --username) in your gateway's directory.

    The request is signed by the key itself; revocations of your older keys for
    the address are sent too, so that correspondents who cached them learn of it.
    """
    from securemail.keys.publish import build_request, post
    from securemail.mail.outgoing import addr
    address, now = addr(address or username), time.time()
    own = [k for k in obj.core.keys.find(address) if k.is_secret]
    valid = [k for k in own if k.status.signing_keys(now) and k.status.encryption_keys(now)]
    revoked = [k for k in own if k.state_at(now) == "revoked"]
    if not valid and not revoked:
        raise KeyNotFound(f"no valid secret key for {address}; generate one (securemail keys generate)")
    docs = []
    if valid:
        key = max(valid, key=lambda k: k.status.created)
        passphrase = Prompter().for_unlock(passphrase_file, lambda: _locked(key), f"the key {key.fingerprint}")
        with key.pgp.unlocked(passphrase):
            docs.append(build_request(key, address, now=now))
    docs += [build_request(k, address, now=now, sign=False) for k in revoked]
    password, refused = read_secret_file(password_file) or "", 0
    for doc in docs:
        answer = post(server, doc, username, password, cafile=cafile)
        try:
            reply = json.loads(answer.text)
        except ValueError:
            reply = {}
        if answer.status == 200:
            verb = "published" if "published" in reply else "published the revocation of"
            click.echo(f"{verb} {reply.get('fingerprint')} for {address}")
        else:
            refused += 1
            click.echo(f"refused ({answer.status}): {reply.get('error') or answer.text[:200]}", err=True)
    if refused:
        sys.exit(1)


@keys.command()
@click.argument("address")
@click.option("--refresh", is_flag=True, help="Fetch again even if a fresh copy is cached.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def locate(obj, address, refresh, as_json) -> None:
    """Find the key of ADDRESS in the federation's key directory (WKD at its domain's gateway).

    Exit 0 when a usable key is known, 1 otherwise (not found, changed, revoked).
    """
    from securemail.app import open_locator
    from securemail.mail.outgoing import addr
    locator = open_locator(obj.core)
    if locator is None:
        raise UsageError("no federation manifest in this home: securemail federation install F "
                         "--authority FPR --authority-key FILE")
    r = locator.locate(addr(address), refresh=refresh)
    out = {"address": r.address, "status": r.status, "fingerprint": r.key.fingerprint if r.key else None,
           "pinned": r.pinned, "offered": r.offered, "source": r.source,
           "fetched_at": _iso(r.fetched_at), "detail": r.detail}
    if as_json:
        click.echo(json.dumps(out, indent=2))
    elif r.key is not None:
        click.echo(f"{r.status} {r.key.fingerprint} {r.address} [{r.key.state_at(time.time())}]"
                   f"{' from ' + r.source if r.source else ''}"
                   f"{' fetched ' + out['fetched_at'] if r.fetched_at else ''}")
    else:
        click.echo(f"{r.status} {r.address}: {r.detail or 'no usable key'}", err=True)
    if r.key is None:
        sys.exit(1)


@keys.command()
@click.argument("address")
@click.argument("fpr")
@click.pass_obj
def accept(obj, address, fpr) -> None:
    """Accept FPR as the key of ADDRESS (after checking it with its owner): it is pinned and used."""
    from securemail.mail.outgoing import addr
    address = addr(address)
    old = obj.core.keys.accept(address, fpr)
    key = obj.core.keys.get(fpr)
    click.echo(f"accepted {key.fingerprint} for {address}" + (f" (was {old})" if old and old != key.fingerprint else ""))
