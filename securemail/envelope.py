"""The envelope: the one object that travels the pipeline (sender, recipients, bytes, peer)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Envelope:
    """One received message as the SMTP adapter accepted it; immutable.

    ``mail_from`` is ``""`` for the null reverse-path ``<>`` (bounces).
    ``data`` is the message exactly as received after dot-unstuffing, with
    CRLF line endings (bare CR/LF are refused before this object exists).
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
