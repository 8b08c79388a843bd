"""Connection slots: per network for the public, per address for all, a reserve for the privileged."""

from __future__ import annotations

import pytest

from securemail.config import ConfigError, GatewayConfig
from securemail.smtp.slots import Slots, network_of
from tests.fuzz.test_config_fuzz import HOME, valid


@pytest.mark.parametrize("ip, network", [
    ("192.0.2.7", "192.0.2.0/24"),
    ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
    ("::ffff:192.0.2.7", "192.0.2.0/24"),
])
def test_networks_are_24s_and_64s(ip, network):
    assert network_of(ip) == network


def test_many_addresses_of_one_ipv6_64_share_its_slots():
    slots = Slots(total=100, per_ip=20, per_network=3)
    taken = [slots.acquire(f"2001:db8::{n:x}", n) for n in range(1, 6)]
    assert taken == [True, True, True, False, False]
    assert slots.acquire("2001:db8:0:1::1", "other 64")


def test_the_public_never_takes_the_reserve_and_the_privileged_can():
    office = {"10.1.0.5"}
    slots = Slots(total=6, per_ip=5, per_network=5, reserved=2, privileged=office.__contains__)
    public = [slots.acquire(f"198.51.{n}.1", n) for n in range(6)]
    assert public == [True] * 4 + [False] * 2
    assert slots.acquire("10.1.0.5", "office-1") and slots.acquire("10.1.0.5", "office-2")
    assert not slots.acquire("10.1.0.5", "office-3")  # the total holds for everyone
    slots.release("office-1")
    assert not slots.acquire("198.51.9.1", "public")  # a freed reserved slot stays reserved
    assert slots.acquire("10.1.0.5", "office-3")


def test_release_gives_back_every_count():
    slots = Slots(total=2, per_ip=1, per_network=1, reserved=0)
    assert slots.acquire("192.0.2.1", "a") and not slots.acquire("192.0.2.2", "b")
    slots.release("a")
    slots.release("a")  # twice: no effect
    assert slots.acquire("192.0.2.2", "b") and len(slots) == 1


def test_config_names_and_defaults():
    cfg = GatewayConfig.from_dict(valid(), HOME)
    assert (cfg.limits.connections_per_network, cfg.limits.connections_reserved,
            cfg.limits.idle_before_mail, cfg.limits.connections_per_ip) == (20, 50, 60.0, 20)
    relay, submission = cfg.listener("relay"), cfg.listener("submission")
    assert (relay.auth, submission.auth) == (False, True)
    assert (cfg.auth_budget.max_failures, cfg.auth_budget.failure_window, cfg.auth_budget.lock_seconds,
            cfg.auth_budget.session_failures) == (10, 900.0, 900.0, 3)


@pytest.mark.parametrize("table, key, value", [
    ("limits", "connections_reserved", 200), ("limits", "connections_reserved", -1),
    ("limits", "connections_per_network", 0), ("limits", "idle_before_mail", float("nan")),
    ("auth", "max_failures", 0), ("auth", "lock_seconds", -5.0), ("auth", "session_failures", True)])
def test_unusable_values_are_config_errors(table, key, value):
    data = valid()
    data[table][key] = value
    with pytest.raises(ConfigError):
        GatewayConfig.from_dict(data, HOME)


def test_auth_on_the_relay_only_when_configured():
    data = valid()
    data["listeners"]["relay"]["auth"] = True
    assert GatewayConfig.from_dict(data, HOME).listener("relay").auth
    data["listeners"]["relay"] = {**data["listeners"]["relay"], "auth": False, "auth_required": True,
                                  "require_starttls": True}
    with pytest.raises(ConfigError, match="auth_required"):
        GatewayConfig.from_dict(data, HOME)
    del data["listeners"]["relay"]["auth"]  # the old name alone still works: it implies auth
    assert GatewayConfig.from_dict(data, HOME).listener("relay").auth


def test_member_gateway_addresses_from_the_manifest():
    import asyncio
    from types import SimpleNamespace

    from securemail.smtp.members import MemberAddresses

    def member(host):
        return SimpleNamespace(gateway=(host, 25))

    manifest = SimpleNamespace(members={"a.fr": member("192.0.2.10"), "b.fr": member("gw.b.fr")})
    asked = []

    def resolve(name, port, proto):
        asked.append(name)
        return [(None, None, None, "", ("198.51.100.7", 0))]

    members = MemberAddresses(lambda: manifest, resolve=resolve)
    assert "192.0.2.10" in members and "203.0.113.1" not in members

    async def resolved():
        assert "198.51.100.7" not in members  # the name is being resolved in a thread
        for _ in range(100):
            await asyncio.sleep(0.01)
            if "198.51.100.7" in members:
                return True
        return False

    members = MemberAddresses(lambda: manifest, resolve=resolve)
    assert asyncio.run(resolved()) and asked == ["gw.b.fr"]
    assert "192.0.2.10" not in MemberAddresses(lambda: None)  # no manifest installed: no member
