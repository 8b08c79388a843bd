"""gateway rotate / retire: a new OpenPGP key, DKIM keys or TLS certificate beside the current ones,
and the old ones removed once the installed manifest lists only the new ones (rotation.py says how
the gateway uses both meanwhile).

Local administration of the home: nothing here talks to the network. ``rotate`` writes the new key
(the key store, or a 0600 file) before it names it in securemail.toml, so a crash leaves at most an
unused key; ``retire`` changes securemail.toml before it removes the old key, so a crash leaves at
most an unused file. Both are audited (``key-rotated``, ``key-retired``: fingerprints, selectors and
pins, never key material).
"""

from __future__ import annotations

import datetime as dt
import re
import time
import tomllib
from pathlib import Path

from ..app import Core
from ..config import GatewayConfig
from ..crypto import openpgp
from ..crypto.dkim import MAX_SIGNATURES, generate_dkim_key
from ..crypto.keys import Key, load_key
from ..errors import ConfigError, UsageError
from ..federation import Manifest, load_installed
from ..home import write_atomic
from ..membership import tls_pin_of_cert
from ..policy.encryption import check as encryption_of
from ..rotation import KINDS, RotationConfig, load_rotation
from . import tomledit as T
from .check_files import tls_checks
from .setup import InitOptions, self_signed_cert

KEY_LIFETIME = dt.timedelta(days=InitOptions.key_lifetime_days)


class NotRetirable(ConfigError):
    """The installed manifest does not list the new key yet, or still lists the old one."""
    default_message = "the old key cannot be retired yet"


def _kind(kind: str) -> str:
    if kind not in KINDS:
        raise UsageError(f"rotate or retire what? {' | '.join(KINDS)}, not {kind!r}")
    return kind


def _under_way(kind: str, rot: RotationConfig) -> bool:
    return bool({"openpgp": rot.openpgp_next, "dkim": rot.dkim_next, "tls": rot.tls_next}[kind])


def _save(core: Core, text: str) -> None:
    path = core.home.config_file
    write_atomic(path, text.encode("utf-8"), path.stat().st_mode & 0o777)


def _nested(data: dict, *path: str) -> dict:
    for name in path:
        data = data.setdefault(name, {})
    return data


# --- rotate ----------------------------------------------------------------------------------
def rotate(core: Core, kind: str, *, cert: str | None = None, key: str | None = None,
           clock=time.time) -> list[str]:
    """Make the next ``kind`` key beside the current one; the lines to show the admin."""
    config = GatewayConfig.load(core.home)
    if _under_way(_kind(kind), load_rotation(config)):
        raise UsageError(f"a {kind} rotation is under way already: finish it with "
                         f"'securemail gateway retire {kind}' first")
    if (cert or key) and (kind != "tls" or not (cert and key)):
        raise UsageError("--cert and --key go together, with tls only")
    text = core.home.config_file.read_text(encoding="utf-8")
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(clock()))
    make = {"openpgp": _rotate_openpgp, "dkim": _rotate_dkim, "tls": _rotate_tls}[kind]
    new, fields, lines = make(core, config, text, stamp, cert, key, clock)
    _save(core, new)
    core.audit.append("key-rotated", kind=kind, **fields)
    entry = f"securemail --home {core.home.path} federation entry"
    return lines + [f"next: send `{entry}` to the federation authority and install the manifest it signs "
                    "(the new key is in use keys.switch_after after the authority made it); once every "
                    f"member has it, send `{entry}` again (the new key alone), install that manifest, "
                    f"then run 'securemail gateway retire {kind}'"]


def _rotate_openpgp(core, config, text, stamp, cert, key, clock):
    fprs = {}
    for d in config.domains:
        k = Key(openpgp.generate(f"securemail gateway <gateway@{d}>", "ed25519", KEY_LIFETIME, None))
        core.keys.add(k, source="gateway-rotate")
        fprs[d] = k.fingerprint
    new = T.checked(text, T.insert_table(text, "keys.openpgp", "keys.openpgp_next", fprs),
                    lambda d: {**d, "keys": {**d.get("keys", {}), "openpgp_next": fprs}},
                    f"add [keys.openpgp_next] with {fprs}")
    return new, {"next": fprs}, [f"{d}: next OpenPGP key {f}" for d, f in fprs.items()]


def _rotate_dkim(core, config, text, stamp, cert, key, clock):
    taken = {(d.domain, d.selector) for d in config.dkim_keys}
    for domain in config.domains:  # the overlap signs with old and new: members verify MAX_SIGNATURES
        if 2 * sum(d.domain == domain for d in config.dkim_keys) > MAX_SIGNATURES:
            raise UsageError(f"{domain} has more than {MAX_SIGNATURES // 2} DKIM keys: members check "
                             f"{MAX_SIGNATURES} signatures of a message, old and new would not fit")
    entries, lines = [], []
    for d in config.dkim_keys:
        base = re.sub(r"-\d{8}(?:-\d{6})?$", "", d.selector)  # sm-ed25519-20261203: sm-ed25519
        selector = next((s for s in (f"{base}-{stamp[:8]}", f"{base}-{stamp}") if (d.domain, s) not in taken),
                        None)
        if selector is None:
            raise UsageError(f"{d.domain}: selectors {base}-{stamp} are taken; try again in a second")
        taken.add((d.domain, selector))
        k = generate_dkim_key(d.algorithm)
        rel = f"dkim/{d.domain}.{selector}.pem"
        (core.home.path / "dkim").mkdir(mode=0o700, exist_ok=True)
        write_atomic(core.home.path / rel, k.private_pem, 0o600)
        entries.append({"domain": d.domain, "selector": selector, "algorithm": d.algorithm,
                        "private_key": rel, "next": True})
        lines.append(f"{d.domain}: next DKIM {selector}._domainkey TXT \"{k.public_txt[:40]}...\"")
    new = text
    for e in entries:
        new = T.append_array_entry(new, "keys.dkim", e)
    new = T.checked(text, new, lambda d: _dkim_added(d, entries), "add [[keys.dkim]] entries with next = true")
    return new, {"next": [[e["domain"], e["selector"]] for e in entries]}, lines


def _dkim_added(data: dict, entries: list[dict]) -> dict:
    _nested(data, "keys").setdefault("dkim", []).extend(entries)
    return data


def _rotate_tls(core, config, text, stamp, cert, key, clock):
    if cert:  # a certificate from a CA: checked as `gateway check` checks the current one
        cert_path, key_path = Path(cert).resolve(), Path(key).resolve()
        bad = [c for c in tls_checks(cert_path, key_path, config.hostname, clock(), core.home.path) if not c.ok]
        if bad:
            raise UsageError("; ".join(f"{c.name}: {c.detail}" for c in bad))
        paths = {"next_cert": str(cert_path), "next_key": str(key_path)}
    else:
        paths = {"next_cert": f"tls/cert-{stamp}.pem", "next_key": f"tls/key-{stamp}.pem"}
        self_signed_cert(config.hostname, core.home.path / paths["next_cert"], core.home.path / paths["next_key"])
    new = T.checked(text, T.set_keys(text, "tls", paths),
                    lambda d: {**d, "tls": {**d.get("tls", {}), **paths}}, f"add {paths} to [tls]")
    pin = tls_pin_of_cert((core.home.path / paths["next_cert"]).read_bytes())
    return new, {"next_pin": pin}, [f"next TLS certificate {paths['next_cert']}, pin {pin}"]


# --- retire ----------------------------------------------------------------------------------
def retire(core: Core, kind: str) -> list[str]:
    """Make the next ``kind`` key the current one and remove the old one, once the installed
    manifest lists the next one and no longer the old one; the lines to show the admin."""
    config = GatewayConfig.load(core.home)
    rot = load_rotation(config)
    if not _under_way(_kind(kind), rot):
        raise UsageError(f"no {kind} rotation under way (start one with 'securemail gateway rotate {kind}')")
    manifest = load_installed(config.federation_manifest)
    if manifest is None:
        raise NotRetirable("no federation manifest is installed: members must list the new key first")
    make = {"openpgp": _retire_openpgp, "dkim": _retire_dkim, "tls": _retire_tls}[kind]
    text = core.home.config_file.read_text(encoding="utf-8")
    new, fields, remove = make(core, config, rot, manifest, text)
    _save(core, new)
    lines = [step() for step in remove]
    core.audit.append("key-retired", kind=kind, serial=manifest.serial, **fields)
    return lines


def _require(ok: bool, manifest: Manifest, why: str) -> None:
    if not ok:
        raise NotRetirable(f"the installed manifest (serial {manifest.serial}) {why}: send "
                           "`securemail federation entry` to the federation authority, install the "
                           "manifest it signs, then retire")


def _member(manifest: Manifest, domain: str):
    member = manifest.member(domain)
    _require(member is not None, manifest, f"does not list {domain}")
    return member


def _retire_openpgp(core, config, rot, manifest, text):
    old = {d: config.openpgp_keys[d] for d in rot.openpgp_next if d in config.openpgp_keys}
    for d, nxt in rot.openpgp_next.items():
        m = _member(manifest, d)
        listed = {load_key(k).fingerprint for k in (m.openpgp_key, m.retiring_key) if k}
        _require(nxt in listed, manifest, f"does not list the new OpenPGP key {nxt} of {d} yet")
        _require(old.get(d) not in listed, manifest, f"still lists the old OpenPGP key {old.get(d)} of {d}")
    _office_mail_opened_by(core, old.values())
    new = text
    for d, fpr in old.items():
        new = new.replace(f'"{fpr}"', f'"{rot.openpgp_next[d]}"')
    new = T.checked(text, T.drop_table(new, "keys.openpgp_next"), lambda d: _openpgp_retired(d, rot.openpgp_next),
                    f"set [keys.openpgp] to {rot.openpgp_next} and remove [keys.openpgp_next]")

    def remover(fpr):
        return lambda: (core.keys.delete(fpr), f"removed the old OpenPGP key {fpr} from the key store")[1]
    return new, {"old": old, "current": rot.openpgp_next}, [remover(f) for f in old.values()]


def _office_mail_opened_by(core: Core, fprs) -> None:
    """Refuse while mail queued for the office (``relay-decrypt``, opened at delivery) is encrypted
    to a key about to be removed."""
    keyids = {i for f in fprs for i in core.keys.get(f).keyids}
    queue = core.queue()
    waiting = {r["message_id"] for r in queue.list("queued") + queue.list("held")
               if str(r["next_hop"]).startswith("relay-decrypt:")}
    stuck = [m for m in waiting if keyids & set(encryption_of(queue.body(m) or b"").recipient_keyids)]
    if stuck:
        raise NotRetirable(f"{len(stuck)} message(s) queued for the office are encrypted to the old key "
                           "and opened at delivery: retire once they are delivered (securemail queue list)")


def _openpgp_retired(data: dict, nxt: dict) -> dict:
    keys = _nested(data, "keys")
    keys.pop("openpgp_next", None)
    keys["openpgp"] = {**keys.get("openpgp", {}), **{d: f for d, f in nxt.items()}}
    return data


def _retire_dkim(core, config, rot, manifest, text):
    old = []
    for domain in {d for d, _ in rot.dkim_next}:
        current, nxt = rot.dkim(config, domain)
        listed = {sel for sel, _ in _member(manifest, domain).dkim}
        missing = [k.selector for k in nxt if k.selector not in listed]
        _require(not missing, manifest, f"does not list the new DKIM selectors {', '.join(missing)} of {domain} yet")
        still = [k.selector for k in current if k.selector in listed]
        _require(not still, manifest, f"still lists the old DKIM selectors {', '.join(still)} of {domain}")
        old += current
    gone = {(k.domain, k.selector) for k in old}
    keep = lambda e: (str(e.get("domain", "")).lower(), e.get("selector")) not in gone  # noqa: E731
    new = T.checked(text, T.edit_array(text, "keys.dkim", keep, remove=("next",)),
                    lambda d: _dkim_retired(d, keep), "remove the old [[keys.dkim]] entries and their next = true")

    def remover(k):
        return lambda: (k.private_key.unlink(missing_ok=True),
                        f"removed the old DKIM key {k.domain} {k.selector} ({k.private_key.name})")[1]
    return new, {"old": [[k.domain, k.selector] for k in old]}, [remover(k) for k in old]


def _dkim_retired(data: dict, keep) -> dict:
    keys = _nested(data, "keys")
    keys["dkim"] = [{n: v for n, v in e.items() if n != "next"} for e in keys.get("dkim", []) if keep(e)]
    return data


def _retire_tls(core, config, rot, manifest, text):
    old_pin, new_pin = tls_pin_of_cert(config.tls_cert.read_bytes()), tls_pin_of_cert(rot.tls_next[0].read_bytes())
    for d in config.domains:
        pins = _member(manifest, d).tls_pins
        _require(new_pin in pins, manifest, f"does not pin the new TLS certificate for {d} yet")
        _require(old_pin not in pins, manifest, f"still pins the old TLS certificate for {d}")
    tls = tomllib.loads(text).get("tls", {})
    values = {"cert": tls["next_cert"], "key": tls["next_key"]}
    new = T.checked(text, T.set_keys(text, "tls", values, remove=("next_cert", "next_key")),
                    lambda d: {**d, "tls": {**{k: v for k, v in d["tls"].items() if not k.startswith("next_")},
                                            **values}},
                    f"set [tls] cert and key to {values} and remove next_cert and next_key")

    def remover(path: Path):
        def remove() -> str:
            if core.home.path in path.resolve().parents:
                path.unlink(missing_ok=True)
                return f"removed the old {path.name}"
            return f"{path} is no longer used (outside the home: left in place)"
        return remove
    return new, {"old_pin": old_pin, "current_pin": new_pin}, [remover(config.tls_key), remover(config.tls_cert)]
