"""The office MTA's transport map: every other member domain of the federation, routed to this gateway.

``securemail federation postfix-transport`` prints it for Postfix's
``transport_maps`` (index it with ``postmap``): one ``domain  smtp:[host]:port``
line per member domain of the installed manifest that this gateway does not
serve itself, so that the office's Postfix hands mail for the federation to its
own gateway, which encrypts it. The next hop is this gateway's relay listener
(its hostname when it listens on a wildcard address), or one given.
"""

from __future__ import annotations

from collections.abc import Iterable

from .config import GatewayConfig
from .errors import ConfigError
from .federation import Manifest

WILDCARDS = ("", "0.0.0.0", "::")


def relay_next_hop(config: GatewayConfig) -> tuple[str, int]:
    """Where the office MTA reaches this gateway: the relay listener (a wildcard: the hostname)."""
    relay = config.listener("relay")
    if relay is None:
        raise ConfigError("no [listeners.relay]: the office MTA hands its mail to the gateway there")
    return (config.hostname if relay.host in WILDCARDS else relay.host), relay.port


def postfix_transport(manifest: Manifest, own_domains: Iterable[str], next_hop: tuple[str, int]) -> str:
    """The transport map's text: a comment naming the manifest, then ``domain  smtp:[host]:port``
    lines, sorted, for the members not in ``own_domains``. Brackets: Postfix looks up no MX."""
    own = {d.lower().rstrip(".") for d in own_domains}
    host, port = next_hop
    lines = [f"# federation members routed to this gateway (manifest serial {manifest.serial}, "
             f"created {manifest.created}); regenerate after each manifest install"]
    lines += [f"{d}  smtp:[{host}]:{port}" for d in sorted(manifest.members) if d not in own]
    return "\n".join(lines) + "\n"
