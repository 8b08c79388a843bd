"""Sending from a person's key store: find every key, sign and encrypt, submit over SMTP."""

from __future__ import annotations

import smtplib
import ssl
import time
from email.utils import parseaddr

from ..crypto import message as M
from ..crypto.keys import Key
from ..errors import DeliveryError, KeyNotFound, KeyUnusable, UsageError
from ..keys.store import KeyStore
from ..net import server_and_context
from .compose import Draft, inner_entity, pgp_mime


def addr(value: str) -> str:
    a = parseaddr(value)[1].strip().lower()
    if "@" not in a:
        raise UsageError(f"not an email address: {value!r}")
    return a


def recipient_key(store: KeyStore, address: str, now: float) -> Key:
    """The key to encrypt to, or a clear error naming the address.

    A pinned address uses its pinned key only; another key for it raises
    KeyChanged (with the ``securemail keys accept`` command to run).
    """
    key = store.trusted_for(address, now)
    if key is not None:
        return key
    known = store.find(address)
    if not known:
        raise KeyNotFound(f"no key for {address}; import it first (securemail keys import), "
                          "or find it in the federation's directory (securemail keys locate)")
    pin = store.pinned(address)
    states = sorted({k.state_at(now) for k in known if pin is None or k.fingerprint == pin})
    raise KeyUnusable(f"the key for {address} is {'/'.join(states) or 'unusable'}; nothing was sent")


def signing_key(store: KeyStore, address: str, now: float) -> Key:
    own = [k for k in store.find(address) if k.is_secret and k.status.signing_keys(now)]
    if not own:
        raise KeyNotFound(f"no valid secret key for {address}; generate one (securemail keys generate)")
    return max(own, key=lambda k: k.status.created)


def build_encrypted(store: KeyStore, draft: Draft, passphrase: str | None,
                    now: float | None = None) -> tuple[bytes, list[str]]:
    """The PGP/MIME message and the envelope recipients; nothing is produced on any error."""
    now = time.time() if now is None else now
    sender = addr(draft.sender)
    rcpts = list(dict.fromkeys(addr(a) for a in [*draft.to, *draft.cc]))
    if not rcpts:
        raise UsageError("no recipients")
    targets = [(recipient_key(store, a, now), a) for a in rcpts]
    me = signing_key(store, sender, now)
    targets.append((me, sender))
    headers = draft.headers()
    inner = inner_entity(draft, headers)
    with me.pgp.unlocked(passphrase):
        armored = M.encrypt(inner, targets, signer=me, now=now)
    return pgp_mime(headers, armored), rcpts


def submit(raw: bytes, sender: str, rcpts: list[str], server: str, *, security: str = "starttls",
           username: str | None = None, password: str | None = None, timeout: float = 60,
           cafile: str | None = None, source: tuple[str, int] | None = None) -> None:
    """Submit over SMTP; security is 'starttls' (the default), 'tls' or 'none'.

    The server certificate is verified against the system CAs, or ``cafile``
    (a gateway's self-signed certificate, say). With 'starttls' a server that
    does not offer it is refused before anything else is sent. Credentials are
    never sent without TLS: 'none' with a username is refused before connecting.
    """
    if security not in ("starttls", "tls", "none"):
        raise UsageError(f"unknown SMTP security {security!r}")
    if security == "none" and (username or password):
        raise UsageError("credentials are never sent over plain SMTP; use STARTTLS or implicit TLS")
    host, port, ctx = server_and_context(server, cafile)
    try:
        cls = smtplib.SMTP_SSL if security == "tls" else smtplib.SMTP
        kw = {"context": ctx} if security == "tls" else {}
        with cls(host, port, timeout=timeout, source_address=source, **kw) as smtp:
            smtp.ehlo()
            if security == "starttls":
                smtp.starttls(context=ctx)
                smtp.ehlo()
            if username:
                smtp.login(username, password or "")
            refused = smtp.sendmail(sender, rcpts, raw)
    except smtplib.SMTPResponseException as e:
        text = e.smtp_error.decode("utf-8", "replace") if isinstance(e.smtp_error, bytes) else str(e.smtp_error)
        raise DeliveryError(f"server refused the message: {e.smtp_code} {text}", temporary=e.smtp_code < 500) from None
    except smtplib.SMTPRecipientsRefused as e:
        raise DeliveryError(f"server refused every recipient: {', '.join(e.recipients)}") from None
    except smtplib.SMTPNotSupportedError as e:
        raise DeliveryError(f"{server} does not offer {'STARTTLS' if 'STARTTLS' in str(e) else 'AUTH'}; "
                            "nothing was sent") from None
    except ssl.SSLCertVerificationError as e:
        raise DeliveryError(f"the TLS certificate of {server} is not trusted ({e.verify_message}); nothing "
                            "was sent (--cafile for a private CA)") from None
    except (OSError, smtplib.SMTPException) as e:
        raise DeliveryError(f"cannot submit to {server}: {e}") from None
    if refused:
        raise DeliveryError(f"server refused some recipients: {', '.join(refused)}")
