"""securemail federation: the authority's draft and signed manifest; a gateway's entries and install.

Authority home: ``init`` makes the authority key and ``federation-draft.json``;
``add``/``remove`` edit the draft; ``sign`` bumps the serial and writes a signed
``federation.json`` that expires ``--valid-for`` after it is made (30 days by default). Gateway home: ``entry`` prints this gateway's entries for the
authority; ``install`` checks and installs a signed manifest. A person's home
installs it too (as ``federation.json``), so that ``send`` and ``keys locate``
find keys in the members' directories. ``postfix-transport`` (gateway home)
prints the office Postfix's transport map from the installed manifest. When the home has no ``[federation]
authority`` yet, ``install --authority FPR`` records it in
securemail.toml (a line under ``[federation]``, or that table appended); an
authority already configured is changed only by editing the file.
"""

from __future__ import annotations

import json
import re
import time
import tomllib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import click

from securemail import federation as F
from securemail.app import manifest_path
from securemail.config import GatewayConfig, parse_duration, read_toml
from securemail.crypto import openpgp
from securemail.crypto.keys import Key, load_key
from securemail.errors import ConfigError, KeyNotFound, KeyRefused, SecureMailError, UsageError
from securemail.home import write_atomic
from securemail.net import join_hostport, split_hostport
from securemail.membership import own_entries
from securemail.transport_map import postfix_transport as transport_map_text, relay_next_hop

from .context import read_input, read_secret_file
from .keys import parse_lifetime

DRAFT_FILE = "federation-draft.json"
DEFAULT_UID = "Federation Authority <authority@federation.gouv.fr>"


@dataclass
class Draft:
    """The authority's list being edited before signing; ``serial`` is the last one signed."""
    authority: str
    serial: int = 0
    members: dict[str, dict] = field(default_factory=dict)


def new_manifest(serial: int, members, now: float | None = None, valid_for: float | None = None) -> dict:
    """The manifest to sign; it expires ``valid_for`` seconds after it is made (None: no expiry)."""
    now = time.time() if now is None else now
    created = datetime.fromtimestamp(now, timezone.utc)
    out = {"serial": serial, "created": created.isoformat(timespec="seconds"),
           "members": sorted(members, key=lambda e: e["domain"])}
    if valid_for is not None:
        out["expires"] = datetime.fromtimestamp(now + valid_for, timezone.utc).isoformat(timespec="seconds")
    return out


def pretty_json(doc) -> bytes:
    return json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False).encode() + b"\n"


def load_draft(home: Path) -> Draft | None:
    try:
        d = json.loads((home / DRAFT_FILE).read_bytes())
        return Draft(F.normalize_fpr(d["authority"]), int(d["serial"]),
                     {e["domain"]: e for e in d["members"]})
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{DRAFT_FILE} is unreadable: {e}") from None


def save_draft(home: Path, draft: Draft) -> None:
    members = [draft.members[d] for d in sorted(draft.members)]
    write_atomic(home / DRAFT_FILE, pretty_json(
        {"authority": draft.authority, "serial": draft.serial, "members": members}))


def record_authority(config_file: Path, fpr: str) -> None:
    """Add ``authority = "FPR"`` under [federation] (or append that table); parsed back first."""
    text = config_file.read_text(encoding="utf-8") if config_file.exists() else ""
    line = f'authority = "{fpr}"'
    m = re.search(r"^\[federation\][ \t]*(#.*)?$", text, re.M)
    if m:
        new = text[:m.end()] + "\n" + line + text[m.end():]
    else:
        new = text + ("\n" if text and not text.endswith("\n") else "") + f"\n[federation]\n{line}\n"
    try:
        ok = tomllib.loads(new).get("federation", {}).get("authority") == fpr
    except (tomllib.TOMLDecodeError, AttributeError):
        ok = False
    if not ok:
        raise ConfigError(f"add {line} to [federation] in {config_file.name} by hand")
    mode = config_file.stat().st_mode & 0o777 if config_file.exists() else 0o600
    write_atomic(config_file, new.encode("utf-8"), mode)


def _draft(obj) -> Draft:
    draft = load_draft(obj.core.home.path)
    if draft is None:
        raise UsageError("this home is not a federation authority; run 'securemail federation init'")
    return draft


def _gateway(obj) -> GatewayConfig | None:
    """The gateway config of a gateway home; None for a person's or the authority's home."""
    home = obj.core.home
    return GatewayConfig.load(home) if "gateway" in read_toml(home.config_file) else None


def _configured_authority(obj) -> str | None:
    config = _gateway(obj)
    return config.federation_authority if config else obj.core.config.federation_authority


def _authority(obj, fpr: str | None, key_file: str | None, *, store: bool) -> tuple[str, Key]:
    """The authority fingerprint (option, gateway config, else draft) and its certificate."""
    draft = load_draft(obj.core.home.path)
    fpr = fpr or _configured_authority(obj) or (draft and draft.authority)
    if not fpr:
        raise UsageError("no federation authority here: give --authority FPR")
    fpr = F.normalize_fpr(fpr)
    if key_file and not store:
        return fpr, _load_cert(key_file)
    if key_file:
        for r in obj.core.keys.import_bytes(read_input(key_file), source="federation-authority"):
            if r.outcome == "refused":
                raise KeyRefused(f"{key_file}: {r.reason}")
    try:
        return fpr, obj.core.keys.get(fpr)
    except KeyNotFound:
        raise KeyNotFound(f"the authority key {fpr} is not in the key store; "
                          "give --authority-key FILE") from None


def _echo_members(members) -> None:
    for m in sorted(members, key=lambda m: m.domain):
        click.echo(f"  {m.domain}  gateway {join_hostport(*m.gateway)}  tls_pin {m.tls_pin}")
        click.echo(f"      openpgp {load_key(m.openpgp_key).fingerprint}"
                   f"  dkim {', '.join(sel for sel, _ in m.dkim)}")
        if m.retiring_pin or m.retiring_key:
            click.echo(f"      retiring: tls_pin {m.retiring_pin or '-'}  openpgp "
                       f"{load_key(m.retiring_key).fingerprint if m.retiring_key else '-'}")


def _expiry(m: F.Manifest) -> str:
    if m.expires_at is None:
        return " (no expiry)"
    return f" expires {m.expires}" + (" (EXPIRED)" if m.expires_at <= time.time() else "")


def _txt(data: bytes) -> str:
    """A DKIM TXT value from a file: bare, or quoted in DNS zone style."""
    text = data.decode("utf-8", "replace")
    quoted = re.findall(r'"((?:[^"\\]|\\.)*)"', text)
    return "".join(quoted) if quoted else " ".join(text.split())


def _load_cert(path: str) -> Key:
    try:
        return load_key(read_input(path))
    except UsageError:
        raise
    except Exception as e:  # noqa: BLE001 - PGPy raises many types on hostile input
        why = e.message if isinstance(e, SecureMailError) else "unreadable key data"
        raise KeyRefused(f"{path}: {why}") from None


@click.group()
def federation() -> None:
    """The federation manifest: member domains, their gateways, TLS pins and keys."""


@federation.command()
@click.option("--uid", default=DEFAULT_UID, show_default=True, help="User ID of the authority key.")
@click.option("--expires", default="5y", show_default=True, help="5y, 2y, 6m, or never.")
@click.option("--passphrase-file", type=click.Path(dir_okay=False), help="Protect the secret key.")
@click.option("--no-passphrase", is_flag=True, help="Store the secret key unprotected.")
@click.pass_obj
def init(obj, uid, expires, passphrase_file, no_passphrase) -> None:
    """Make this home a federation authority: a signing key and an empty draft; print its fingerprint."""
    home = obj.core.home.path
    if (draft := load_draft(home)) is not None:
        raise UsageError(f"this home is already the federation authority {draft.authority}")
    if bool(passphrase_file) == bool(no_passphrase):
        raise UsageError("give --passphrase-file F, or --no-passphrase to store the key unprotected")
    passphrase = read_secret_file(passphrase_file)
    if passphrase_file and not passphrase:
        raise UsageError("the passphrase file is empty")
    key = Key(openpgp.generate(uid, "ed25519", parse_lifetime(expires), passphrase))
    obj.core.keys.add(key, source="federation-authority")
    save_draft(home, Draft(key.fingerprint))
    click.echo(key.fingerprint)


@federation.command()
@click.option("--entry", "entry_file", help="JSON from 'securemail federation entry' (one or a list).")
@click.option("--domain")
@click.option("--gateway", help="HOST:PORT of the member's relay listener.")
@click.option("--tls-pin", help="SHA-256 of the TLS certificate's SubjectPublicKeyInfo, hex.")
@click.option("--openpgp-key", type=click.Path(dir_okay=False), help="The domain key's certificate.")
@click.option("--dkim", multiple=True, metavar="SELECTOR:FILE", help="FILE holds the TXT value.")
@click.option("--wkd", help="HOST:PORT of the member's key directory (optional).")
@click.pass_obj
def add(obj, entry_file, domain, gateway, tls_pin, openpgp_key, dkim, wkd) -> None:
    """Add or replace member domains in the draft (every entry is checked first)."""
    draft = _draft(obj)
    fields = (domain, gateway, tls_pin, openpgp_key, dkim)
    if entry_file:
        if any(fields) or wkd:
            raise UsageError("give --entry FILE, or --domain and its fields, not both")
        try:
            entries = json.loads(read_input(entry_file))
        except ValueError:
            raise UsageError(f"{entry_file} is not JSON") from None
        entries = entries if isinstance(entries, list) else [entries]
    elif not all(fields):
        raise UsageError("give --entry FILE, or all of --domain --gateway --tls-pin --openpgp-key --dkim")
    else:
        domain = domain.strip().lower().rstrip(".")
        sels = [d.partition(":") for d in dkim]
        if not all(sel and path for sel, _, path in sels):
            raise UsageError("--dkim must be SELECTOR:FILE")
        entries = [{"domain": domain, "gateway": gateway.strip().lower(),
                    "tls_pin": tls_pin.strip().lower().replace(":", ""),
                    "openpgp_key": _load_cert(openpgp_key).public().armored().decode("ascii"),
                    "dkim": [{"selector": sel, "public_key": _txt(read_input(path))}
                             for sel, _, path in sels]}]
        if wkd:
            entries[0]["wkd"] = wkd.strip().lower()
    members = [F.parse_member(e) for e in entries]
    verbs = [("updated" if m.domain in draft.members else "added", m.domain) for m in members]
    draft.members.update((m.domain, m.to_dict()) for m in members)
    save_draft(obj.core.home.path, draft)
    for verb, d in verbs:
        click.echo(f"{verb} {d}")


@federation.command()
@click.argument("domain")
@click.pass_obj
def remove(obj, domain) -> None:
    """Remove DOMAIN from the draft."""
    draft = _draft(obj)
    domain = domain.strip().lower().rstrip(".")
    if draft.members.pop(domain, None) is None:
        raise UsageError(f"{domain} is not in the draft")
    save_draft(obj.core.home.path, draft)
    click.echo(f"removed {domain}")


@federation.command()
@click.pass_obj
def entry(obj) -> None:
    """Print this gateway's entries (JSON) for the authority's 'federation add --entry'."""
    config = GatewayConfig.load(obj.core.home)  # during a rotation, what to list depends on the installed manifest
    click.echo(json.dumps(own_entries(config, obj.core.keys.get, F.load_installed(config.federation_manifest)),
                          indent=2))


@federation.command()
@click.option("--output", required=True, type=click.Path(dir_okay=False), help="federation.json to write.")
@click.option("--passphrase-file", type=click.Path(dir_okay=False), help="Unlocks the authority key.")
@click.option("--valid-for", default="30d", show_default=True,
              help="How long gateways trust it (30d, 12h, ...); then member mail waits for a newer one.")
@click.pass_obj
def sign(obj, output, passphrase_file, valid_for) -> None:
    """Sign the draft as the next serial and write the manifest to --output."""
    draft = _draft(obj)
    if not draft.members:
        raise UsageError("the draft has no members; add some with 'securemail federation add'")
    try:
        lifetime = parse_duration(valid_for, "--valid-for")
    except ConfigError as e:
        raise UsageError(e.message) from None
    if lifetime <= 0:
        raise UsageError("--valid-for must be above zero")
    key = obj.core.keys.get(draft.authority)
    manifest = new_manifest(draft.serial + 1, draft.members.values(), valid_for=lifetime)
    with key.pgp.unlocked(read_secret_file(passphrase_file)):
        data = F.sign_manifest(manifest, key)
    draft.serial += 1  # saved first: a crash skips a serial, never signs two contents under one
    save_draft(obj.core.home.path, draft)
    write_atomic(output, data)
    click.echo(f"signed manifest serial {draft.serial} with {len(draft.members)} members, "
               f"expires {manifest['expires']}: {output}")


@federation.command()
@click.argument("file")
@click.option("--authority", help="Authority fingerprint (default: the gateway config, or the draft).")
@click.option("--authority-key", type=click.Path(dir_okay=False), help="Authority certificate file.")
@click.pass_obj
def verify(obj, file, authority, authority_key) -> None:
    """Check a signed manifest FILE and print its members."""
    fpr, cert = _authority(obj, authority, authority_key, store=False)
    m = F.verify_manifest(read_input(file), fpr, cert)
    click.echo(f"valid manifest serial {m.serial} created {m.created}{_expiry(m)}, signed by {fpr}")
    _echo_members(m.members.values())


@federation.command()
@click.pass_obj
def show(obj) -> None:
    """Show the installed manifest (gateway home) and the draft (authority home)."""
    draft = load_draft(obj.core.home.path)
    installed = F.load_installed(manifest_path(obj.core.home))
    if installed is None and draft is None:
        raise UsageError("no manifest installed here ('securemail federation install F') "
                         "and no draft ('securemail federation init')")
    if installed is not None:
        click.echo(f"installed manifest serial {installed.serial} created {installed.created}"
                   f"{_expiry(installed)}, authority {_configured_authority(obj)}")
        _echo_members(installed.members.values())
    if draft is not None:
        click.echo(f"draft of authority {draft.authority}, last signed serial {draft.serial}")
        _echo_members(F.parse_member(e, check_keys=False) for e in draft.members.values())


@federation.command()
@click.argument("file")
@click.option("--authority", help="Authority fingerprint, needed once: it is then recorded in the config.")
@click.option("--authority-key", type=click.Path(dir_okay=False),
              help="Import the authority certificate from FILE first.")
@click.pass_obj
def install(obj, file, authority, authority_key) -> None:
    """Install a signed manifest FILE (gateway or person home); its serial must move forward."""
    home = obj.core.home
    authority_now = _configured_authority(obj)
    configured = F.normalize_fpr(authority_now) if authority_now else None
    if configured and authority and F.normalize_fpr(authority) != configured:
        raise UsageError(f"this gateway's federation authority is {configured}; "
                         "edit [federation] authority in securemail.toml to change it")
    if not configured and not authority:
        raise UsageError("no federation authority configured: give --authority FPR "
                         "(its fingerprint, obtained out of band)")
    fpr, cert = _authority(obj, configured or authority, authority_key, store=True)
    result = F.install(read_input(file), manifest_path(home), fpr, cert,
                       obj.core.audit)
    if not configured:
        record_authority(home.config_file, fpr)
        click.echo(f"federation authority {fpr} recorded in {home.config_file.name}")
    m, old = result.manifest, result.previous
    if not result.changed:
        click.echo(f"manifest serial {m.serial} is already installed")
        return
    click.echo(f"installed manifest serial {m.serial} ({len(m.members)} members)"
               + (f", replacing serial {old.serial}" if old else ""))


@federation.command("postfix-transport")
@click.option("--next-hop", help="HOST:PORT where the office MTA reaches this gateway "
              "(default: the relay listener; its hostname when it listens on a wildcard address).")
@click.pass_obj
def postfix_transport(obj, next_hop) -> None:
    """(gateway home) Print a Postfix transport map: each other member domain to this gateway."""
    config = _gateway(obj)
    if config is None:
        raise UsageError("not a gateway home: the transport map routes the office's mail to its gateway")
    manifest = F.load_installed(manifest_path(obj.core.home))
    if manifest is None:
        raise UsageError("no manifest installed here ('securemail federation install F')")
    hop = split_hostport(next_hop) if next_hop else relay_next_hop(config)
    if hop is None:
        raise UsageError(f"--next-hop must be HOST:PORT, not {next_hop!r}")
    click.echo(transport_map_text(manifest, config.domains, hop), nl=False)
