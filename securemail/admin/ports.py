"""Listener ports on this host: free ones for `gateway init`, collisions for `gateway check`.

Two gateways on one host must not share a port: the second one's key directory
would not listen (``wkd-unavailable``), or its SMTP listener would not start.
``gateway init`` moves a listener left at its default to the next free port and
says so; ``gateway check`` reports a configured port that another process holds
or that two listeners share. A port is "in use" when binding it fails with
EADDRINUSE, as the listener's own bind would (SO_REUSEADDR set, as asyncio and
aiohttp do, so a connection in TIME_WAIT is no collision).
"""

from __future__ import annotations

import errno
import socket
from dataclasses import dataclass
from typing import Callable, Iterable

from ..errors import UsageError

SEARCH = 100  # ports tried above a busy default before giving up


def in_use(host: str, port: int) -> bool:
    """Whether another socket already listens on ``host:port`` (binding it fails with EADDRINUSE)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            return e.errno == errno.EADDRINUSE  # EACCES (port < 1024), EADDRNOTAVAIL: not a collision
    return False


@dataclass(frozen=True)
class Choice:
    """A listener's address as written to the config, and why it is not the one asked for."""

    name: str
    host: str
    port: int
    note: str = ""


def choose(wanted: Iterable[tuple[str, str, int]], movable: frozenset[str] | set[str],
           busy: Callable[[str, int], bool] = in_use) -> list[Choice]:
    """Each ``(name, host, port)`` wanted: kept, or for a ``movable`` one (left at its default) whose
    port is busy or taken by another listener here, the next port that is neither. A fixed port
    shared by two listeners is refused; a fixed port in use is kept with a note."""
    wanted = list(wanted)
    fixed = [p for n, _, p in wanted if n not in movable]
    dup = {p for p in fixed if fixed.count(p) > 1}
    if dup:
        raise UsageError(f"two listeners on port {min(dup)}")
    taken, out = set(fixed), []
    for name, host, port in wanted:
        if name not in movable:
            note = f"{host}:{port} is in use by another process; kept as given" if busy(host, port) else ""
            out.append(Choice(name, host, port, note))
            continue
        why = "taken by another listener here" if port in taken else "in use by another process"
        for p in range(port, min(port + SEARCH, 65536)):
            if p not in taken and not busy(host, p):
                break
        else:
            raise UsageError(f"no free port for the {name} listener in {port}-{port + SEARCH - 1}")
        taken.add(p)
        out.append(Choice(name, host, p, f"default {host}:{port} {why}; chose {host}:{p}" if p != port else ""))
    return out


def collisions(listeners: Iterable[tuple[str, str, int]],
               busy: Callable[[str, int], bool] = in_use) -> list[tuple[str, str]]:
    """``(name, problem)`` for each listener whose port two listeners share or another process holds."""
    listeners = list(listeners)
    out = []
    for name, host, port in listeners:
        others = [n for n, _, p in listeners if p == port and n != name]
        if others:
            out.append((name, f"port {port} also used by [listeners.{others[0]}]"))
        elif busy(host, port):
            out.append((name, f"{host}:{port} is in use (another process, or this gateway running)"))
    return out
