"""Next hops: a typed value from the crypto stage to the socket, a string only in the queue's column.

The stage builds a ``Hop`` (``smtp_hop``, ``relay_hop``, ``maildir_hop`` check what they are
given); the queue stores ``str(hop)`` on each delivery row; the delivery worker parses the row's
text once (``parse_hop``) when it claims it, and hands the ``Hop`` to the SMTP client or the
Maildir writer. The stored forms, one per way a message leaves the gateway (the office MTA in two):

``smtp:HOST:PORT:PIN`` or ``smtp:HOST:PORT:PIN,PIN``
    a member gateway; STARTTLS is required and the server certificate's
    SubjectPublicKeyInfo SHA-256 must equal PIN (64 lowercase hex digits), or
    one of the PINs (a member rotating its certificate is pinned twice).
``relay:HOST:PORT``
    the office MTA, inside the office; plain SMTP.
``relay-decrypt:HOST:PORT``
    the office MTA too, for member mail encrypted to one of our domain keys:
    the queue holds it encrypted, and the delivery step decrypts it in memory
    just before handing it over (transform/routes.py ``open_for_office``).
``maildir:ADDRESS``
    a local Maildir under ``<home>/Maildir/<address>/``.
``lmtp:HOST:PORT`` or ``lmtp:/PATH``
    the office's mailbox server (Dovecot) over LMTP, inside the office: TCP, or
    the unix socket at the absolute PATH; a status for each recipient.
``lmtp-decrypt:HOST:PORT`` or ``lmtp-decrypt:/PATH``
    the same server, for member mail encrypted to one of our domain keys whose
    recipient has no key of their own (domain-key mode): queued encrypted and
    decrypted in memory at delivery, as ``relay-decrypt``.

An IPv6 host is written in brackets (``smtp:[::1]:25:PIN``). ``parse_hop``
raises ``UsageError`` for anything else; the worker holds such a delivery
aside instead of guessing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from securemail.errors import UsageError
from securemail.net import HOST as _HOST
from securemail.net import join_hostport, split_hostport, split_socket_address

_PIN = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class SmtpHop:
    """A member gateway: STARTTLS required, certificate pinned by SPKI SHA-256."""
    host: str
    port: int
    pin: str
    also: tuple[str, ...] = ()   # other pins accepted: the member's retiring certificate
    kind = "smtp"

    @property
    def pins(self) -> tuple[str, ...]:
        return (self.pin, *self.also)

    def __str__(self) -> str:
        return f"smtp:{join_hostport(self.host, self.port)}:{','.join(self.pins)}"


@dataclass(frozen=True)
class RelayHop:
    """The office MTA: plain SMTP inside the office; ``decrypt``: opened with a domain key on the way."""
    host: str
    port: int
    decrypt: bool = False
    kind = "relay"

    def __str__(self) -> str:
        return f"{'relay-decrypt' if self.decrypt else 'relay'}:{join_hostport(self.host, self.port)}"


@dataclass(frozen=True)
class MaildirHop:
    """A local mailbox, named by the recipient address."""
    address: str
    kind = "maildir"

    def __str__(self) -> str:
        return f"maildir:{self.address}"


@dataclass(frozen=True)
class LmtpHop:
    """The office's mailbox server over LMTP: ``host`` and ``port``, or the unix socket ``path``;
    ``decrypt``: opened with a domain key on the way."""
    host: str = ""
    port: int = 0
    path: str = ""
    decrypt: bool = False
    kind = "lmtp"

    def __str__(self) -> str:
        return f"{'lmtp-decrypt' if self.decrypt else 'lmtp'}:{self.path or join_hostport(self.host, self.port)}"


Hop = SmtpHop | RelayHop | MaildirHop | LmtpHop


def smtp_hop(host: str, port: int, pin: str | tuple[str, ...]) -> SmtpHop:
    """The next hop for a member gateway (``pin`` is hex, any case; or several: ``Member.tls_pins``)."""
    return _smtp(host, port, ",".join((pin,) if isinstance(pin, str) else pin).lower())


def relay_hop(host: str, port: int, decrypt: bool = False) -> RelayHop:
    """The next hop for the office MTA (``decrypt``: the body is decrypted at delivery)."""
    return RelayHop(_check_host(host), _check_port(port), decrypt)


def maildir_hop(address: str) -> MaildirHop:
    """The next hop for local delivery to ``address``."""
    return MaildirHop(_address(address))


def lmtp_hop(target: tuple[str, int] | str, decrypt: bool = False) -> LmtpHop:
    """The next hop for LMTP to ``(host, port)`` or to the unix socket at an absolute path
    (``decrypt``: the body is decrypted at delivery)."""
    if isinstance(target, str):
        return LmtpHop(path=_socket_path(target), decrypt=decrypt)
    return LmtpHop(_check_host(target[0]), _check_port(target[1]), decrypt=decrypt)


def local_hop(config, rcpt: str, decrypt: bool = False) -> Hop:
    """Where mail for the local ``rcpt`` goes, by the gateway's ``delivery.local`` (``GatewayConfig``):
    the office MTA or the LMTP server (``decrypt``: opened in memory at delivery), or its Maildir."""
    if config.local_delivery == "relay":
        return relay_hop(*config.relay_to, decrypt=decrypt)
    if config.local_delivery == "lmtp":
        return lmtp_hop(config.lmtp, decrypt=decrypt)
    return maildir_hop(rcpt)


def parse_hop(text: str) -> Hop:
    """The hop a next-hop string names; ``UsageError`` if it is not one of the forms above."""
    kind, sep, rest = str(text).partition(":")
    if not sep:
        raise UsageError(f"invalid next hop {text!r}")
    if kind == "maildir":
        return MaildirHop(_address(rest))
    if kind == "smtp":
        hostport, _, pin = rest.rpartition(":")
        host, port = _split(hostport, text)
        return _smtp(host, port, pin)
    if kind in ("relay", "relay-decrypt"):
        host, port = _split(rest, text)
        return RelayHop(host, port, kind == "relay-decrypt")
    if kind in ("lmtp", "lmtp-decrypt"):
        decrypt = kind == "lmtp-decrypt"
        if rest.startswith("/"):
            return LmtpHop(path=_socket_path(rest), decrypt=decrypt)
        return LmtpHop(*_split(rest, text), decrypt=decrypt)
    raise UsageError(f"unknown next-hop kind {kind!r}")


def _smtp(host: str, port: int, pins: str) -> SmtpHop:
    first, *also = pins.split(",")
    if not all(_PIN.match(p) for p in (first, *also)):
        raise UsageError("a member gateway pin is 64 lowercase hex digits (SPKI SHA-256)")
    return SmtpHop(_check_host(host), _check_port(port), first, tuple(p for p in dict.fromkeys(also) if p != first))


def _address(address: str) -> str:
    if not address or any(c.isspace() or ord(c) < 32 or c == "\x7f" for c in address):
        raise UsageError(f"invalid maildir address {address!r}")
    return address


def _socket_path(path: str) -> str:
    """An absolute path that fits a unix socket address and has no control characters."""
    if not path.startswith("/") or split_socket_address(path) is None:
        raise UsageError(f"invalid unix socket path {path!r}")
    return path


def _split(hostport: str, text: str) -> tuple[str, int]:
    parts = split_hostport(hostport)
    if parts is None:
        raise UsageError(f"invalid next hop {text!r}")
    if ":" in parts[0] and not hostport.startswith("["):
        raise UsageError(f"an IPv6 host must be in brackets: {text!r}")
    return _check_host(parts[0]), _check_port(parts[1])


def _check_host(host: str) -> str:
    if not _HOST.match(host or ""):
        raise UsageError(f"invalid host {host!r}")
    return host


def _check_port(port: int) -> int:
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise UsageError(f"invalid port {port!r}")
    return port
