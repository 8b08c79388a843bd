"""The envelope: the one object that travels the pipeline (sender, recipients, bytes, peer)."""

from __future__ import annotations

from dataclasses import dataclass, field

from securemail.crypto.tlspin import der_pin


@dataclass(frozen=True)
class Envelope:
    """One received message as the SMTP adapter accepted it; immutable.

    ``mail_from`` is ``""`` for the null reverse-path ``<>`` (bounces).
    ``data`` is the message exactly as received after dot-unstuffing, with
    CRLF line endings (bare CR/LF are refused before this object exists).
    ``tls_peer_pin`` is the SPKI pin (crypto/tlspin.py) of the client certificate
    the session showed on STARTTLS, None without one: how a member gateway is
    recognised (policy rule ``member_cert``).
    """

    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes = field(repr=False)
    peer_ip: str
    peer_port: int
    tls: bool
    tls_peer_cert_der: bytes | None = field(repr=False)
    auth_user: str | None
    helo: str
    received_at: float
    tls_peer_pin: str | None = field(init=False)

    def __post_init__(self) -> None:
        der = self.tls_peer_cert_der
        object.__setattr__(self, "tls_peer_pin", der_pin(der) if der else None)
