"""The password check's failure budget, its sources, and the cost of an unknown user (no sockets)."""

from __future__ import annotations

import asyncio
import statistics
import threading
import time

import pytest

from securemail.users import Users, check_password, hash_password
from securemail.config import AuthBudget
from securemail.authlimit import AuthGuard, FailureBudget, source_of


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("ip, source", [
    ("192.0.2.7", "192.0.2.7"),
    ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
    ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),
    ("::ffff:192.0.2.7", "192.0.2.7"),
    ("not-an-ip", "not-an-ip"),
])
def test_sources_are_addresses_and_ipv6_64s(ip, source):
    assert source_of(ip) == source


def test_budget_locks_at_the_limit_for_the_lock_time():
    clock = Clock()
    budget = FailureBudget(AuthBudget(max_failures=3, failure_window=60, lock_seconds=100), clock)
    assert budget.fail("k") is None and budget.fail("k") is None
    assert not budget.locked("k")
    assert budget.fail("k") == 1100.0
    assert budget.locked("k")
    clock.now += 99
    assert budget.locked("k")
    clock.now += 1
    assert not budget.locked("k")


def test_failures_outside_the_window_are_forgotten():
    clock = Clock()
    budget = FailureBudget(AuthBudget(max_failures=3, failure_window=60, lock_seconds=100), clock)
    budget.fail("k"), budget.fail("k")
    clock.now += 61
    assert budget.fail("k") is None and not budget.locked("k")


def test_the_budget_forgets_the_oldest_keys_beyond_its_size():
    budget = FailureBudget(AuthBudget(max_failures=5), Clock(), max_keys=10)
    for n in range(50):
        budget.fail(f"k{n}")
    assert len(budget._failures) == 10 and "k49" in budget._failures and "k0" not in budget._failures


def _guard(check, **limits):
    locks = []
    guard = AuthGuard(check, AuthBudget(**limits), on_lock=lambda **f: locks.append(f), clock=Clock())
    return guard, locks


def test_guard_locks_a_source_and_audits_once():
    guard, locks = _guard(lambda u, p: p == b"right", max_failures=3)

    async def run():
        out = [await guard.verify("192.0.2.1", f"user{n}", b"wrong") for n in range(3)]
        out.append(await guard.verify("192.0.2.1", "alice", b"right"))  # locked: not even checked
        out.append(await guard.verify("192.0.2.2", "alice", b"right"))  # another source
        return out

    assert asyncio.run(run()) == ["failed", "failed", "failed", "locked", "ok"]
    assert locks == [{"scope": "source", "name": "192.0.2.1", "seconds": 900}]
    guard.close()


def test_guard_locks_an_account_from_any_source_even_with_the_right_password():
    checked = []
    guard, locks = _guard(lambda u, p: checked.append(u) or p == b"right", max_failures=3)

    async def run():
        for n in range(3):
            assert await guard.verify(f"192.0.2.{n}", "Alice", b"wrong") == "failed"
        return await guard.verify("198.51.100.9", "alice ", b"right")

    assert asyncio.run(run()) == "locked"
    assert len(checked) == 3 and locks == [{"scope": "account", "name": "alice", "seconds": 900}]
    guard.close()


def test_guard_checks_off_the_event_loop():
    loop_thread = []

    def check(user, password):
        loop_thread.append(threading.current_thread() is threading.main_thread())
        time.sleep(0.2)
        return False

    guard, _ = _guard(check)

    async def run():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        task = asyncio.create_task(ticker())
        await asyncio.gather(*(guard.verify(f"192.0.2.{n}", "u", b"p") for n in range(2)))
        task.cancel()
        return ticks

    assert asyncio.run(run()) >= 10  # the loop kept running while two checks slept 0.2 s each
    assert loop_thread == [False, False]  # the loop runs in the main thread, the checks elsewhere
    guard.close()


def test_an_unknown_user_costs_one_scrypt_like_a_known_one(tmp_path):
    users = Users(tmp_path / "passwords")
    users.set("alice@interieur.gouv.fr", "correct horse battery")

    def timed(user):
        started = time.perf_counter()
        assert users.check(user, b"wrong password") is False
        return time.perf_counter() - started

    known = statistics.median(timed("alice@interieur.gouv.fr") for _ in range(5))
    unknown = statistics.median(timed("nobody@interieur.gouv.fr") for _ in range(5))
    assert 0.5 < unknown / known < 2, (known, unknown)  # both one scrypt (~50 ms), not 0 for unknown
    assert users.check("alice@interieur.gouv.fr", b"correct horse battery")


def test_a_malformed_entry_never_matches_and_costs_a_scrypt():
    started = time.perf_counter()
    assert not check_password("plaintext-password", "plaintext-password")
    assert time.perf_counter() - started > 0.005
    assert not check_password("md5$x$y", "anything")
    assert check_password(hash_password("s3cret-pass"), "s3cret-pass")
