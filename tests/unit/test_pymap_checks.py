"""The bridge's protocol checks for pymap.bytes answer as typing's do, and pymap formats the same."""

from __future__ import annotations

import typing
from decimal import Decimal
from fractions import Fraction

import pymap.bytes
from pymap.bytes import BytesFormat
from pymap.parsing.primitives import Nil, Number
from pymap.parsing.specials import SequenceSet

from securemail.bridge import pymap_checks


class WithBytes:
    def __bytes__(self) -> bytes:
        return b"with"


class NoneBytes:
    __bytes__ = None   # typing's check says no, and so must ours


class WithIndex:
    def __index__(self) -> int:
        return 7


VALUES = [b"x", bytearray(b"x"), memoryview(b"x"), "x", 3, True, 2.5, Decimal(1), Fraction(1, 3), None,
          (b"a",), [b"a"], {b"a"}, {b"a": 1}, object(), WithBytes(), NoneBytes(), WithIndex(), Nil(),
          Number(5), SequenceSet.build([1, 2]), pymap.bytes.Writeable.wrap(b"w"), range(3), WithBytes]


def test_the_checks_answer_as_typings_protocols_do():
    for value in VALUES:
        assert isinstance(value, pymap_checks.SupportsBytes) == isinstance(value, typing.SupportsBytes), value
        assert isinstance(value, pymap_checks.SupportsIndex) == isinstance(value, typing.SupportsIndex), value
    assert sum(isinstance(v, pymap_checks.SupportsBytes) for v in VALUES) >= 5   # both answers occur
    assert sum(isinstance(v, pymap_checks.SupportsIndex) for v in VALUES) >= 3


def test_pymap_formats_the_same_with_them_installed():
    def formatted() -> list:
        out = []
        for how, arg in [(b"%b", b"x"), (b"%b", WithBytes()), (b"%d", 5),
                         (b"%b %b", (b"a", Nil())), (b"%b", Number(9)), (b"[%b]", [b"q"])]:
            out.append(BytesFormat(how) % arg)
        try:
            BytesFormat(b"%b") % object()
        except NotImplementedError:
            out.append("refused")
        return out + [pymap.bytes.has_bytes(v) for v in VALUES]

    saved = pymap.bytes.SupportsBytes, pymap.bytes.SupportsIndex
    before = formatted()
    try:
        pymap_checks.install()
        assert pymap.bytes.SupportsBytes is pymap_checks.SupportsBytes
        assert formatted() == before and "refused" in before
    finally:
        pymap.bytes.SupportsBytes, pymap.bytes.SupportsIndex = saved
