"""The fast address path gives what aiosmtpd's own parser gives, or steps aside."""

from __future__ import annotations

import random

import pytest
from aiosmtpd.smtp import SMTP

from securemail.smtp.fastaddr import fast_getaddr

SLOW = SMTP(handler=None)._getaddr  # the parser aiosmtpd uses for MAIL FROM / RCPT TO

CASES = ["<a@b.c>", "<alice@interieur.gouv.fr> SIZE=4096", "<a.b+c@d-e.f> BODY=8BITMIME SMTPUTF8",
         "<x@y>\tSIZE=1", "<a@b.c> ", "<>", "<> SIZE=1", "<a..b@c>", "<.a@b>", "<a.@b>", "<a@b..c>",
         '<"q r"@x>', "< a@b >", "<a@[1.2.3.4]>", "<a@b.c>SIZE=1", "a@b.c", "<a@b.c", "<a@b.c>>",
         "<a b@c>", "<@r:a@b>", "<a@b.c> SIZE=1 ", "<a@-b.c>", "<é@b.c>", "<a@b.c> SIZE=1  BODY=7BIT"]


@pytest.mark.parametrize("arg", CASES)
def test_fast_path_agrees_with_aiosmtpd_or_steps_aside(arg):
    got = fast_getaddr(arg)
    if got is not None:
        assert got == SLOW(arg)


def test_plain_addresses_take_the_fast_path():
    assert fast_getaddr("<alice@interieur.gouv.fr> SIZE=4096") == ("alice@interieur.gouv.fr", "SIZE=4096")
    assert fast_getaddr("<bruno@justice.gouv.fr>") == ("bruno@justice.gouv.fr", "")
    assert fast_getaddr("<>") is None and fast_getaddr('<"q"@x>') is None


def test_random_arguments_agree():
    rnd = random.Random(5321)
    plain, odd = "abZ9.-+_", ".@<>- \t\"=[]:\\,;()é!#"

    def part(n):
        return "".join(rnd.choice(plain if rnd.random() < 0.93 else odd) for _ in range(n))
    agreed = 0
    for _ in range(20000):
        arg = (f"<{part(rnd.randint(0, 6))}@{part(rnd.randint(0, 8))}>"
               + rnd.choice(["", " ", " SIZE=1", "\tBODY=8BITMIME", part(3)]))
        got = fast_getaddr(arg)
        if got is not None:
            assert got == SLOW(arg), arg
            agreed += 1
    assert agreed > 100  # the comparison was exercised, not skipped
