"""gateway check: the installed federation manifest (signature, serial, age, expiry) and this gateway's own
entries in it: the address, TLS pin, OpenPGP key and DKIM keys other members use to reach it and
trust its mail.

``serve`` trusts the installed file as ``federation install`` verified it (A.HOST); the check
verifies it again against the authority key in the key store, compares its serial with the last
install the audit log recorded (a file rolled back by hand), and compares this gateway's entries,
as ``securemail federation entry`` makes them, with the manifest's.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from pathlib import Path

from ..audit import AuditLog
from ..config import GatewayConfig
from ..crypto.keys import load_key
from ..errors import KeyNotFound, SecureMailError, TemporaryFailure
from ..federation import Manifest, Member, parse_member, verify_manifest
from ..keys.store import KeyStore
from ..membership import own_entries
from ..net import join_hostport
from .result import Check, command, passed, problem, shown, warning

MAX_AGE_DAYS = 180     # an older manifest is a problem: ask the authority for its latest
WARN_EXPIRY_DAYS = 7   # fewer days before the manifest expires is a warning; expired, a problem
CLOCK_SKEW = 300       # seconds a manifest may seem to come from the future (A.CLOCK)


def federation_checks(config: GatewayConfig, keys: KeyStore | None, audit: AuditLog | None,
                      now: float, max_age_days: int = MAX_AGE_DAYS) -> list[Check]:
    """The manifest's checks; ``keys`` and ``audit`` are None when the database does not answer."""
    home, path, fpr = config.home, config.federation_manifest, config.federation_authority
    if not path.exists() and not fpr:
        return [passed("federation", "no manifest installed and no authority configured: not in a "
                       f"federation yet (to join: `{command(home, 'federation entry')}` to the authority, "
                       "then `federation install`)")]
    if not path.exists():
        return [problem("federation manifest", f"none at {shown(path, home)}, though the authority {fpr} "
                        "is configured", "install the authority's latest manifest: "
                        f"`{command(home, 'federation install FILE')}`")]
    manifest, signature = verified(path, fpr, keys, home, now)
    if manifest is None or keys is None or audit is None:
        return [signature]
    return [signature, serial_check(manifest, audit, home), age_check(manifest, now, max_age_days),
            expiry_check(config, manifest, now), *entry_checks(config, manifest, keys)]


def verified(path: Path, fpr: str | None, keys: KeyStore | None, home: Path,
             now: float) -> tuple[Manifest | None, Check]:
    """The installed manifest if the authority's signature covers it, and the "federation signature"
    check."""
    reinstall = (f"move {path} aside (it is not what the authority signed), then install the authority's "
                 f"manifest again: `{command(home, 'federation install FILE')}`")
    if not fpr:
        return None, problem("federation signature", "no [federation] authority configured: the installed "
                             "manifest cannot be verified",
                             'set authority = "FINGERPRINT" under [federation] (obtained from the authority '
                             f"out of band), or `{command(home, 'federation install FILE --authority FPR')}`")
    if keys is None:
        return None, problem("federation signature", "not verified: the database, which holds the authority "
                             "key, does not answer", "see the database check")
    try:
        manifest = verify_manifest(path.read_bytes(), fpr, keys.get(fpr), now=now, check_keys=False)
    except KeyNotFound:
        return None, problem("federation signature", f"the authority key {fpr} is not in the key store",
                             f"`{command(home, 'federation install FILE --authority-key AUTHORITY.asc')}`")
    except OSError as e:
        return None, problem("federation manifest", f"cannot read {shown(path, home)}: {e.strerror}", reinstall)
    except TemporaryFailure as e:  # the database, under keys.get
        return None, problem("federation signature", f"the key store cannot be read: {e.detail or e.message}",
                             "see the database checks")
    except SecureMailError as e:  # refused (another signer, a changed manifest) or malformed
        return None, problem("federation signature", e.message, reinstall)
    return manifest, passed("federation signature", f"serial {manifest.serial} signed by the authority {fpr}")


def _when(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def serial_check(manifest: Manifest, audit: AuditLog, home: Path) -> Check:
    """The installed serial against the last ``manifest-change`` of the audit log: a lower serial, or
    the same serial with other content, is a file put back by hand (a rollback)."""
    try:
        last = audit.last("manifest-change")
    except SecureMailError as e:
        return problem("federation serial", f"{manifest.serial}; the audit log cannot be read: "
                       f"{e.detail or e.message}", "see the database checks")
    if last is None:
        return passed("federation serial", f"{manifest.serial} (no install in the audit log to "
                      "compare with)")
    serial, digest, at = last.fields.get("serial"), last.fields.get("digest"), _when(last.at)
    fix = ("install the authority's latest manifest (move this file aside first): "
           f"`{command(home, 'federation install FILE')}`")
    if isinstance(serial, int) and serial > manifest.serial:
        return problem("federation serial", f"{manifest.serial} is older than serial {serial}, "
                       f"installed {at} (audit log): the file was rolled back", fix)
    if serial == manifest.serial and digest != manifest.digest:
        return problem("federation serial", f"{manifest.serial} has other content than the serial "
                       f"{serial} installed {at} (audit log)", fix)
    if serial != manifest.serial:
        return passed("federation serial", f"{manifest.serial}, newer than the last install in the "
                      f"audit log (serial {serial}, {at}): copied in without `federation install`")
    return passed("federation serial", f"{manifest.serial}, the last installed ({at}, audit log)")


def age_check(manifest: Manifest, now: float, max_age_days: int = MAX_AGE_DAYS) -> Check:
    """Days since the authority made the manifest: over ``max_age_days``, or in the future, is a problem."""
    age = now - datetime.fromisoformat(manifest.created).timestamp()
    days = math.floor(age / 86400)
    if age < -CLOCK_SKEW:
        return problem("federation age", f"created {manifest.created}, in the future",
                       "check this host's clock (the authority's may be wrong too)")
    if days > max_age_days:
        return problem("federation age", f"created {manifest.created}: {days} days old (over {max_age_days})",
                       "ask the federation authority for its latest manifest and install it")
    return passed("federation age", f"created {manifest.created}: {days} days old")


def expiry_check(config: GatewayConfig, manifest: Manifest, now: float,
                 warn_days: int = WARN_EXPIRY_DAYS) -> Check:
    """Time left before ``expires``: past it member mail is deferred (a problem); fewer than
    ``warn_days`` days, or no expiry at all (a manifest signed before manifests expired), a warning."""
    fetch = config.federation_fetch
    renew = (f"the gateway fetches {fetch.url} every {fetch.interval:.0f} s: check that the authority "
             "publishes a fresh manifest there (audit: manifest-fetch-refused, manifest-fetch-failed)"
             if fetch else "install the authority's latest manifest: "
             f"`{command(config.home, 'federation install FILE')}` (or set [federation] url to fetch it)")
    if manifest.expires_at is None:
        return warning("federation expiry", f"serial {manifest.serial} has no expiry (signed before "
                       "manifests expired): a stale copy would be trusted for ever",
                       "ask the authority to sign with `federation sign --valid-for 30d`, then " + renew)
    left = manifest.expires_at - now
    if left <= 0:
        return problem("federation expiry", f"serial {manifest.serial} expired {manifest.expires}: mail to "
                       "and from members is deferred (451) until a fresh manifest is installed", renew)
    detail = f"serial {manifest.serial} expires {manifest.expires}: {left / 86400:.1f} days left"
    if left < warn_days * 86400:
        return warning("federation expiry", detail + f" (fewer than {warn_days})", renew)
    return passed("federation expiry", detail)


def entry_checks(config: GatewayConfig, manifest: Manifest, keys: KeyStore) -> list[Check]:
    """One check per served domain: its entry in the manifest is the one this gateway would send."""
    home = config.home
    send = (f"send `{command(home, 'federation entry')}` to the federation authority, then install the "
            "manifest it signs")
    try:
        entries = own_entries(config, keys.get, manifest)
    except SecureMailError as e:
        return [problem("federation entry", f"this gateway's entry cannot be made: {e.detail or e.message}",
                        "correct the keys and [tls] files this names, then check again")]
    out = []
    for entry in entries:
        name, member = f"federation entry {entry['domain']}", manifest.member(entry["domain"])
        if member is None:
            out.append(problem(name, f"{entry['domain']} is not in the installed manifest (serial "
                                     f"{manifest.serial}): members refuse its mail", send))
            continue
        diffs = differences(parse_member(entry, check_keys=False), member)
        out.append(problem(name, "differs from the manifest: " + "; ".join(diffs),
                           "if these changed on purpose, " + send + "; otherwise put back the keys and "
                           "addresses the manifest lists") if diffs
                   else passed(name, "the manifest lists this gateway's address, TLS pin, OpenPGP key and "
                               "DKIM keys"))
    return out


def differences(ours: Member, theirs: Member) -> list[str]:
    """What other members would find wrong: ``ours`` is this gateway's entry, ``theirs`` the manifest's."""
    out = []
    if ours.gateway != theirs.gateway:
        out.append(f"gateway {join_hostport(*ours.gateway)} here, {join_hostport(*theirs.gateway)} listed")
    if ours.tls_pins != theirs.tls_pins:  # with the retiring pin during a rotation
        out.append(f"tls_pin {_short(ours.tls_pins)} here, {_short(theirs.tls_pins)} listed")
    mine, listed = _fprs(ours), _fprs(theirs)
    if mine != listed:
        out.append(f"openpgp_key {' retiring '.join(mine)} here, {' retiring '.join(listed)} listed")
    records = dict(theirs.dkim)
    for selector, txt in ours.dkim:
        if selector not in records:
            out.append(f"DKIM selector {selector} is not listed")
        elif "".join(records[selector].split()) != "".join(txt.split()):
            out.append(f"DKIM selector {selector} lists another key")
    out += [f"DKIM selector {sel} is listed, not used here" for sel in records if sel not in dict(ours.dkim)]
    if ours.wkd != theirs.wkd:
        out.append(f"wkd {join_hostport(*ours.wkd) if ours.wkd else 'none'} here, "
                   f"{join_hostport(*theirs.wkd) if theirs.wkd else 'none'} listed")
    return out


def _short(pins: tuple[str, ...]) -> str:
    return " retiring ".join(f"{p[:16]}..." for p in pins)


def _fprs(member: Member) -> tuple[str, ...]:
    return tuple(load_key(k).fingerprint for k in (member.openpgp_key, member.retiring_key) if k)
