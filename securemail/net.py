"""Network addresses (HOST:PORT, the one way they are read and written) and the client-side
connection settings shared by the commands that talk to a gateway (SMTP, HTTPS)."""

from __future__ import annotations

import ipaddress
import os
import re
import ssl

from .errors import UsageError

HOST = re.compile(r"^[A-Za-z0-9.\-_:]{1,253}$")  # what a next hop may name: names, IPv4, IPv6 (unbracketed)
MAX_SOCKET_PATH = 107  # bytes of a unix socket address (sockaddr_un.sun_path less its NUL, Linux)


def split_hostport(text: str) -> tuple[str, int] | None:
    """(host, port) from ``HOST:PORT`` or ``[IPV6]:PORT``, the brackets removed; None unless the
    host is not empty and the port is 0 to 65535 in ASCII digits. Each caller words its own error."""
    host, _, port = str(text).rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host or not (port.isascii() and port.isdigit()) or int(port) > 65535:
        return None
    return host, int(port)


def split_socket_address(text: str) -> tuple[str, int] | str | None:
    """Where a service inside the office listens: ``(host, port)`` from HOST:PORT (port 1 to 65535,
    a host a next hop may name), or ``text`` itself when it is the absolute path of a unix socket (at
    most ``MAX_SOCKET_PATH`` bytes, no control characters); None when it is neither."""
    text = str(text)
    if text.startswith("/"):
        fits = len(os.fsencode(text)) <= MAX_SOCKET_PATH
        return text if fits and not any(ord(c) < 32 or c == "\x7f" for c in text) else None
    hostport = split_hostport(text)
    if hostport is None or hostport[1] == 0 or not HOST.match(hostport[0]):
        return None
    return hostport


def join_hostport(host: str, port: int) -> str:
    """``HOST:PORT``, an IPv6 host in brackets: the form ``split_hostport`` reads back."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def server_and_context(server: str, cafile: str | None) -> tuple[str, int, ssl.SSLContext]:
    """HOST:PORT split, and a verifying TLS context (system CAs, or ``cafile``: a gateway's
    self-signed certificate, say)."""
    hostport = split_hostport(server)
    if hostport is None:
        raise UsageError(f"--server must be HOST:PORT, not {server!r}")
    try:
        ctx = ssl.create_default_context(cafile=cafile)
    except (OSError, ssl.SSLError) as e:
        raise UsageError(f"cannot load CA file {cafile}: {e}") from None
    return (*hostport, ctx)


def network_of(ip: str, v4_prefix: int = 24) -> str:
    """The network a public client is counted in: the /24 (``v4_prefix``) of an IPv4 address, the
    /64 of an IPv6 one (one subscriber's allocation); an IPv4-mapped IPv6 address counts as IPv4."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if addr.version == 6 and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    prefix = v4_prefix if addr.version == 4 else 64
    return str(ipaddress.ip_network(f"{addr}/{prefix}", strict=False))
