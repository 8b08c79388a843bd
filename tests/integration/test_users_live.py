"""Submission users changed while a real `securemail serve` (two processes) runs: added, changed and
removed with `securemail gateway user`, they count for SMTP AUTH and key publication within seconds,
with no restart; a session authenticated as a user removed since can no longer send."""

from __future__ import annotations

import smtplib
import ssl
import time

import pytest

from securemail.errors import ConfigError
from tests.conftest import run_cli

from tests.support import Serve, ok, wait_for, wait_listening
from .test_key_directory import Fed, directory_federation

A = "interieur.gouv.fr"
ALICE = f"alice@{A}"
TRIES = 12  # fresh connections per check: the kernel spreads them over both serve processes
SOON = 5.0  # "within a few seconds" (users.py rereads the file at most once a second)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("users-live")
    homes, wkd, fpr = directory_federation(tmp, domains=(A,))
    g = homes[A]
    g.tune(processes="2", max_failures="1000")  # the failure budget is not under test here
    f = Fed(tmp, homes, wkd, fpr)
    f.people = {ALICE: f.person(ALICE)}
    serve = Serve(g).start()
    try:
        wait_listening(wkd[A], 60, alive=serve._alive)
        f.serve = serve
        yield f
    finally:
        serve.stop()


def auth_code(f: Fed, password: str) -> int:
    """The reply code to AUTH on a new submission connection (235 yes, 535 no)."""
    g = f.homes[A]
    with smtplib.SMTP("127.0.0.1", g.submission, timeout=30) as s:
        s.starttls(context=ssl.create_default_context(cafile=str(g.cert)))
        try:
            return s.login(ALICE, password)[0]
        except smtplib.SMTPAuthenticationError as e:
            return e.smtp_code


def all_answer(f: Fed, password: str, code: int) -> bool:
    return all(auth_code(f, password) == code for _ in range(TRIES))


def user_add(f: Fed, password: str) -> None:
    pw = f.tmp / "user-pw"
    pw.write_text(password + "\n")
    ok(run_cli(f.homes[A].home, "gateway", "user", "add", ALICE, "--password-file", str(pw)), "user add")


def test_users_added_changed_removed_count_without_restart(served):
    f = served
    old, new = "correct horse battery", "tr0ub4dor and 3 more"
    assert auth_code(f, old) == 535                       # no such user yet: both processes know it
    assert "refused (401)" in f.publish(f.people[ALICE], ALICE).stderr

    t0 = time.monotonic()
    user_add(f, old)
    wait_for(lambda: auth_code(f, old) == 235, SOON, "AUTH of the added user")
    time.sleep(1.1)  # past one recheck interval: every serve process has the new file by now
    assert all_answer(f, old, 235), "a serve process still refuses the added user"
    res = ok(f.publish(f.people[ALICE], ALICE), "keys publish by the added user")
    assert f"published {f.fpr_of(f.people[ALICE], ALICE)} for {ALICE}" in res.stdout
    assert time.monotonic() - t0 < SOON + 1.1 + TRIES  # no restart, seconds

    user_add(f, new)                                     # the same command changes the password
    wait_for(lambda: auth_code(f, old) == 535, SOON, "the old password to fail")
    time.sleep(1.1)
    assert all_answer(f, old, 535) and all_answer(f, new, 235)

    f.pw.write_text(new + "\n")
    session = smtplib.SMTP("127.0.0.1", f.homes[A].submission, timeout=30)
    try:                                                  # authenticated before the removal
        session.starttls(context=ssl.create_default_context(cafile=str(f.homes[A].cert)))
        assert session.login(ALICE, new)[0] == 235
        ok(run_cli(f.homes[A].home, "gateway", "user", "remove", ALICE), "user remove")
        time.sleep(1.1)
        assert session.mail(ALICE)[0] == 250
        code, text = session.rcpt(f"bruno@{A}")           # its next transaction is refused
        assert (code, text) == (530, b"5.7.0 Authentication no longer valid")
    finally:
        session.close()
    assert all_answer(f, new, 535)
    assert "refused (401)" in f.publish(f.people[ALICE], ALICE).stderr
    assert f.serve.proc.poll() is None                    # the same serve all along


def test_two_writers_both_land_and_a_broken_file_keeps_the_last_list(tmp_path):
    """What the running gateway rereads: two `user add` at once both land (read, change and replace
    under a lock); a file broken by hand is logged and the last good list kept."""
    from securemail.users import Users
    path, now = tmp_path / "passwords", [0.0]
    serving = Users(path, clock=lambda: now[0])
    first, second = Users(path), Users(path)          # two CLI processes, each read the empty file
    first.set(ALICE, "correct horse battery")
    second.set(f"bruno@{A}", "correct horse battery")
    assert Users(path).names() == [ALICE, f"bruno@{A}"]
    assert not serving.known(ALICE)                   # within the recheck interval: not looked at yet
    now[0] = 1.0
    assert serving.known(ALICE) and serving.check(f"bruno@{A}", b"correct horse battery")
    path.write_text("no colon here\n")
    now[0] = 2.0
    assert serving.known(ALICE)                       # the last good list, not an empty one
    with pytest.raises(ConfigError, match="line 1"):  # a writer rereads under the lock: refused, not overwritten
        first.remove(ALICE)
    assert path.read_text() == "no colon here\n"
