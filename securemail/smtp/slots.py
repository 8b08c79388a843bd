"""Connection slots of one listener: per network, per address, in all, and a reserve.

An attacker holding many addresses holds them in one network: an IPv6 host
gets a /64, a small IPv4 provider a /24. So the public is counted per network
(``per_network``), every client per exact address (``per_ip``), and all of
them against ``total``. ``reserved`` slots of ``total`` are kept for the
privileged (trusted office networks, the manifest's member gateways): the
public may hold at most ``total - reserved``. Privileged sessions are not
counted per network (an office's MTAs share one), only per address.
"""

from __future__ import annotations

import collections
from typing import Callable, Hashable

from ..net import network_of


class Slots:
    """``acquire(ip, holder)`` counts a connection in, or says no; ``release`` counts it out."""

    def __init__(self, *, total: int, per_ip: int, per_network: int, reserved: int = 0,
                 privileged: Callable[[str], bool] = lambda ip: False) -> None:
        self.total, self.per_ip, self.per_network = total, per_ip, per_network
        self.public_share = max(total - reserved, 0)
        self.privileged = privileged
        self._per_ip: collections.Counter[str] = collections.Counter()
        self._per_network: collections.Counter[str] = collections.Counter()
        self._held: dict[Hashable, tuple[str, str | None]] = {}  # holder -> (ip, its counted network)
        self._public = 0

    def __len__(self) -> int:
        return len(self._held)

    def acquire(self, ip: str, holder: Hashable) -> bool:
        if len(self._held) >= self.total or self._per_ip[ip] >= self.per_ip:
            return False
        network = None if self.privileged(ip) else network_of(ip)
        if network is not None:
            if self._public >= self.public_share or self._per_network[network] >= self.per_network:
                return False
            self._per_network[network] += 1
            self._public += 1
        self._per_ip[ip] += 1
        self._held[holder] = (ip, network)
        return True

    def release(self, holder: Hashable) -> None:
        held = self._held.pop(holder, None)
        if held is None:
            return
        ip, network = held
        self._per_ip -= collections.Counter({ip: 1})  # drops zero counts
        if network is not None:
            self._per_network -= collections.Counter({network: 1})
            self._public -= 1
