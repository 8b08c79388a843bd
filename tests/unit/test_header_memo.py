"""mimeparse.EachOnce keeps the parse of a short header field for the next messages: it answers as
a fresh parse does, is shared only by equal fields, and keeps nothing longer than SHARED_LONGEST."""

from __future__ import annotations

import secrets
from email import policy
from email.headerregistry import HeaderRegistry

from securemail.mail import mimeparse as M

FIELDS = [("Content-Type", 'multipart/mixed; boundary="b{tag}"; charset=utf-8'),
          ("From", '"Bruno {tag}" <bruno@justice.gouv.fr>'),
          ("Subject", "=?utf-8?q?R=C3=A9union_{tag}?="),
          ("To", "a@x.fr, broken <@{tag}"),
          ("Date", "Thu, 03 Dec 2026 09:00:00 +0000"),
          ("Content-Disposition", 'attachment; filename="f{tag}.pdf"')]


def test_a_shared_parse_answers_as_a_fresh_one():
    tag = secrets.token_hex(4)
    for name, value in FIELDS:
        value = value.format(tag=tag)
        first, second, fresh = M.EachOnce()(name, value), M.EachOnce()(name, value), HeaderRegistry()(name, value)
        assert second is first                                   # the next message reuses it
        assert str(first) == str(fresh) and first.name == fresh.name
        assert [type(d) for d in first.defects] == [type(d) for d in fresh.defects]
        assert getattr(first, "params", None) == getattr(fresh, "params", None)
        assert getattr(first, "addresses", None) == getattr(fresh, "addresses", None)
    assert M.EachOnce()("Subject", f"a {tag}") is not M.EachOnce()("Subject", f"b {tag}")


def test_a_long_field_is_parsed_for_its_message_only():
    value = "x" * (M.SHARED_LONGEST + 1) + secrets.token_hex(4)
    size = M._shared.cache_info().currsize
    one = M.EachOnce()
    assert one("Subject", value) is one("Subject", value)          # once per message, as before
    assert M.EachOnce()("Subject", value) is not one("Subject", value)
    assert M._shared.cache_info().currsize == size


def test_messages_read_with_it_read_as_with_the_default_policy():
    raw = (b"From: Bruno <bruno@justice.gouv.fr>\r\nSubject: =?utf-8?q?R=C3=A9union?=\r\n"
           b"Content-Type: text/plain; charset=utf-8\r\n\r\nbonjour\r\n")
    shared = policy.default.clone(header_factory=M.EachOnce())
    for _ in range(2):
        a, b = M.parse(raw, shared), M.parse(raw, policy.default)
        assert [(k, str(v)) for k, v in a.items()] == [(k, str(v)) for k, v in b.items()]
        assert a.get_content_type() == b.get_content_type() and a.get_content_charset() == b.get_content_charset()
