"""Key publication: the signed request a user sends to their gateway, and the gateway's checks.

``POST /securemail/v1/publish`` with HTTP Basic auth (the submission credentials)
and the JSON body ``{"address", "key" (armored), "time" (epoch seconds),
"nonce" (random hex), "signature"}``, where ``signature`` is an armored detached
signature by ``key`` over ``canonical({address, key, time, nonce})`` (sorted
keys, no spaces). The gateway publishes only when every check passes
(``check_request``: the authenticated user is the address, the domain is served
here, the key is valid with a user ID for the address and no valid user ID for
any other address, the signature is that key's, the time is within ``MAX_SKEW``;
``Nonces``: never seen before). A key that also claims other addresses is
refused, not stripped: its owner learns why (the CLI prints the reason) and
publishes a key that says only what the gateway will serve. A
*revoked* key needs no signature (it cannot sign, and its revocation is signed
by the key itself): it is merged only into a key already published for the
address, so that the directory serves the revocation.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import ssl
import time
from dataclasses import dataclass

import sqlalchemy as sa

from ..crypto.armor import unarmor_if_needed
from ..crypto.keys import Key, load_key
from ..crypto.message import sign_detached, verify_signatures
from ..crypto.packets import SIG, read_packets
from ..db import transaction
from ..net import server_and_context
from ..errors import DeliveryError, SecureMailError, UsageError
from .wkd import split_address

PATH = "/securemail/v1/publish"
MAX_SKEW = 300.0            # seconds between the request's time and the gateway's clock
NONCE_TTL = 2 * MAX_SKEW    # a nonce is remembered past the time a request could be fresh
MAX_BODY = 256 << 10

metadata = sa.MetaData()
nonces_table = sa.Table(
    "publish_nonces", metadata,
    sa.Column("nonce", sa.String(128), primary_key=True),
    sa.Column("expires_at", sa.Float, nullable=False, index=True),
)


class PublishRefused(SecureMailError):
    """A publication the gateway refuses; ``status`` is the HTTP status to answer."""
    temporary = False
    default_message = "publication refused"

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def canonical(fields: dict) -> bytes:
    return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()


def signed_part(doc: dict) -> dict:
    return {k: doc[k] for k in ("address", "key", "time", "nonce")}


def build_request(key: Key, address: str, *, now: float | None = None,
                  nonce: str | None = None, sign: bool = True) -> dict:
    """The JSON body, signed by ``key`` (a secret key, already unlocked); unsigned for a revocation."""
    doc = {"address": address.strip().lower(), "key": key.public().armored().decode("ascii"),
           "time": int(time.time() if now is None else now), "nonce": nonce or secrets.token_hex(16)}
    doc["signature"] = sign_detached(canonical(doc), key, now=now).decode("ascii") if sign else ""
    return doc


def check_request(doc, auth_user: str, domains, now: float) -> tuple[str, Key]:
    """(address, key) of a proven request by ``auth_user``; PublishRefused saying why not."""
    if not isinstance(doc, dict) or not all(isinstance(doc.get(k), str)
                                            for k in ("address", "key", "nonce", "signature")) \
            or type(doc.get("time")) is not int:
        raise PublishRefused(400, "malformed request")
    address = doc["address"].strip().lower()
    if address != auth_user.strip().lower():
        raise PublishRefused(403, "authenticated user is not the address")
    try:
        _, domain = split_address(address)
    except UsageError:
        raise PublishRefused(400, "not an email address") from None
    if domain not in domains:
        raise PublishRefused(403, "domain not served here")
    nonce = doc["nonce"]
    if not 16 <= len(nonce) <= 128 or any(c not in "0123456789abcdef" for c in nonce):
        raise PublishRefused(400, "nonce must be 16 to 128 lower-case hex digits")
    try:
        key = load_key(doc["key"].encode("ascii"))
    except Exception:  # noqa: BLE001 - hostile input; PGPy raises many types
        raise PublishRefused(400, "key refused") from None
    if key.is_secret:
        raise PublishRefused(400, "send the public key, not the secret key")
    if address not in key.status.addresses:
        raise PublishRefused(400, "key has no valid user ID for the address")
    state = key.state_at(now)
    others = [a for a in key.status.addresses if a != address]
    if others and state != "revoked":  # a revocation binds nothing (KeyStore.add, bind=None)
        raise PublishRefused(400, other_user_ids(address, others))
    if state == "revoked":
        pass  # a revocation is signed by the key itself; taken only for a key published here
    elif state != "valid" or not key.status.encryption_keys(now):
        raise PublishRefused(400, "key is not valid or cannot encrypt")
    elif not _signed_by(doc, key):
        raise PublishRefused(403, "request not signed by the key")
    if abs(doc["time"] - now) > MAX_SKEW:
        raise PublishRefused(403, "request time too far from the gateway's clock")
    return address, key


def other_user_ids(address: str, others) -> str:
    """The refusal of a key that claims more than the authenticated address."""
    names = sorted(others)
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return f"key has user IDs for other addresses ({shown}); publish a key whose only user ID is {address}"


def _signed_by(doc: dict, key: Key) -> bool:
    try:
        sigs = [p.raw for p in read_packets(unarmor_if_needed(doc["signature"].encode("ascii")))
                if p.tag == SIG]
        results = verify_signatures(canonical(signed_part(doc)), sigs,
                                    lambda kid, fpr: key if kid in key.keyids or fpr == key.fingerprint else None)
    except Exception:  # noqa: BLE001 - hostile input
        return False
    return bool(sigs) and any(r.status == "valid" and r.signer == key.fingerprint for r in results)


class Nonces:
    """Nonces seen in publication requests, remembered until they expire."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def claim(self, nonce: str, now: float) -> bool:
        """True the first time ``nonce`` is seen (and stored); False for a replay."""
        with transaction(self.engine) as conn:
            conn.execute(nonces_table.delete().where(nonces_table.c.expires_at < now))
            if conn.execute(sa.select(nonces_table.c.nonce).where(nonces_table.c.nonce == nonce)).first():
                return False
            conn.execute(nonces_table.insert().values(nonce=nonce, expires_at=now + NONCE_TTL))
        return True


# --- the client --------------------------------------------------------------------------
@dataclass(frozen=True)
class Answer:
    status: int
    text: str


def post(server: str, doc: dict, username: str, password: str, *, cafile: str | None = None,
         timeout: float = 30.0) -> Answer:
    """POST the request to ``https://SERVER/securemail/v1/publish``; the server's certificate is
    checked against the system CAs or ``cafile`` (e.g. the gateway's self-signed certificate)."""
    _, _, ctx = server_and_context(server, cafile)
    return asyncio.run(_post(f"https://{server}{PATH}", doc, username, password, ctx, timeout))


async def _post(url: str, doc: dict, username: str, password: str, ctx: ssl.SSLContext,
                timeout: float) -> Answer:
    import aiohttp
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as s:
            async with s.post(url, json=doc, ssl=ctx, auth=aiohttp.BasicAuth(username, password)) as r:
                return Answer(r.status, (await r.content.read(4096)).decode("utf-8", "replace"))
    except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as e:
        raise DeliveryError(f"cannot reach {url}: {e or type(e).__name__}") from None
