"""The addresses of the member gateways of the installed manifest: reserved connection slots for them."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time

from ..manifest_source import ManifestSource

log = logging.getLogger(__name__)


class MemberAddresses:
    """``ip in members``: is this the address of a member gateway in the manifest (for reserved slots).

    Gateways given as IP addresses count at once; names are resolved in a thread,
    again when the manifest changes and every ``refresh`` seconds; until then
    only the addresses already known count. This grants connection slots only,
    never trust: a member's mail is still checked by its certificate and DKIM.
    """

    def __init__(self, manifest: ManifestSource, *, refresh: float = 3600.0,
                 resolve=socket.getaddrinfo, clock=time.monotonic) -> None:
        self.manifest, self.refresh, self.resolve, self.clock = manifest, refresh, resolve, clock
        self._for: object = None
        self._next = 0.0
        self._literal: frozenset[str] = frozenset()
        self._resolved: frozenset[str] = frozenset()

    def __contains__(self, ip: str) -> bool:
        m = self.manifest()
        if m is not self._for or self.clock() >= self._next:
            self._update(m)
        return ip in self._literal or ip in self._resolved

    def _update(self, m) -> None:
        self._for, self._next = m, self.clock() + self.refresh
        literal, names = set(), set()
        for member in (m.members.values() if m else ()):
            try:
                literal.add(str(ipaddress.ip_address(member.gateway[0])))
            except ValueError:
                names.add(member.gateway[0])
        self._literal = frozenset(literal)
        if not names:
            self._resolved = frozenset()
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        loop.run_in_executor(None, self._resolve, sorted(names)).add_done_callback(self._done)

    def _resolve(self, names: list[str]) -> frozenset[str]:
        out = set()
        for name in names:
            try:
                out |= {str(info[4][0]) for info in self.resolve(name, None, proto=socket.IPPROTO_TCP)}
            except OSError as e:
                log.info("member gateway %s does not resolve: %s", name, e)
        return frozenset(out)

    def _done(self, future) -> None:
        if not future.cancelled() and future.exception() is None:
            self._resolved = future.result()
