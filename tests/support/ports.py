"""Free loopback ports, for the listeners the tests and the benchmark start.

A port is often chosen well before its listener binds it (written into a home by ``gateway
init``, then bound when the gateway starts). A port from the kernel's ephemeral range (what
binding to port 0 gives) can meanwhile become the source port of any outgoing connection on
the machine, and the listener then fails with "address already in use" (a fresh-clone CI run
lost nine tests so). So ports are chosen below that range, each pytest-xdist worker in its own
slice of it, never the same one twice in a process, and checked free when chosen.
"""

from __future__ import annotations

import os
import random
import socket

_LOWEST = 10000
_given: set[int] = set()


def _ephemeral_start() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _slice() -> range:
    """This process's ports: below the ephemeral range, one slice per pytest-xdist worker."""
    top = _ephemeral_start()
    if top - _LOWEST < 1000:
        return range(0)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    index = int(worker[2:]) if worker.startswith("gw") and worker[2:].isdigit() else 0
    size = (top - _LOWEST) // max(count, 1)
    start = _LOWEST + size * (index % max(count, 1))
    return range(start, start + size)


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing holds now and no outgoing connection will take."""
    ports = _slice()
    for _ in range(200 if len(ports) else 0):
        port = random.choice(ports)
        if port not in _given and _bindable(port):
            _given.add(port)
            return port
    with socket.socket() as s:   # no room below the ephemeral range: the kernel's choice
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
