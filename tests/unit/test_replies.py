"""Replies are typed values named in smtp/replies.py; nothing else in securemail/ writes reply text."""

from __future__ import annotations

import ast
import io
import pickle
import re
import subprocess
import sys
import tokenize
from pathlib import Path

import pytest

import securemail
from securemail.errors import PolicyRefusal, Reply
from securemail.policy import Verdict
from securemail.smtp import replies

PACKAGE = Path(securemail.__file__).parent
REPLIES = PACKAGE / "smtp" / "replies.py"
# a string that starts as a reply line does: "550 5.7.1 ...", "451 4.7.5" (a reply code, then an enhanced code)
_REPLY_LITERAL = re.compile(r"[2-5][0-9][0-9][ -][2-5]\.[0-9]{1,3}\.[0-9]{1,3}\b")
_STRING_PREFIX = re.compile(r"^[rbfuRBFU]*('''|\"\"\"|'|\")")


def _sources():
    return [p for p in sorted(PACKAGE.rglob("*.py")) if p != REPLIES]


def _reply_literals(path: Path) -> list[str]:
    found = []
    for tok in tokenize.generate_tokens(io.StringIO(path.read_text()).readline):
        if tok.type == tokenize.STRING:
            body = _STRING_PREFIX.sub("", tok.string, count=1)
            if _REPLY_LITERAL.match(body):
                found.append(f"{path.name}:{tok.start[0]}: {tok.string[:60]}")
    return found


def test_no_reply_text_outside_replies_module():
    found = [f"{p.parent.name}/{hit}" for p in _sources() for hit in _reply_literals(p)]
    assert found == [], "reply text belongs in smtp/replies.py as a named Reply:\n" + "\n".join(found)


def test_no_error_gets_its_code_by_hand():
    """An error with its own reply is built from a named one: SomeError(reply=replies.X)."""
    found = []
    for p in _sources():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.keyword) and node.arg in ("code", "enhanced"):
                found.append(f"{p.relative_to(PACKAGE.parent)}:{node.value.lineno}: {node.arg}=")
    assert found == []


def test_the_guard_sees_a_literal(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text('X = "550 5.7.1 no"\nY = f"451 4.7.5 {1}"\nZ = "a 550 5.7.1 in prose"\n')
    assert [hit.split(": ", 1)[1] for hit in _reply_literals(bad)] == ['"550 5.7.1 no"', 'f"451 4.7.5 {1}"']


def test_a_reply_is_its_wire_line_and_knows_its_parts():
    r = Reply(550, "5.7.20", "No  valid\r\nsignature")
    assert r == "550 5.7.20 No valid signature"  # whitespace collapsed: no CR/LF on the wire
    assert (r.code, r.enhanced, r.text, r.temporary) == (550, "5.7.20", "No valid signature", False)
    assert replies.DKIM_TEMPERROR.temporary and not replies.OK.temporary and not replies.DKIM_NOT_ALIGNED.temporary
    assert replies.queued(["q1"]) == "250 2.0.0 OK: queued as q1"
    assert replies.queued(["q1", "q2", "q3"]) == "250 2.0.0 OK: queued as q1+2"
    for name, value in vars(replies).items():
        if name.isupper() and isinstance(value, Reply):
            assert replies.checked(value) is value, name


def test_replies_and_verdicts_cross_processes():
    v = Verdict("member_dkim", replies.DKIM_TEMPERROR, "dkim temperror")
    back = pickle.loads(pickle.dumps(v))
    assert back == v and type(back.reply) is Reply and back.temporary


def test_a_verdict_carries_a_reply_not_a_string():
    with pytest.raises(TypeError):
        Verdict("relay", "554 5.7.1 Relay access denied", "relay attempt")


def test_an_error_built_from_a_reply_gives_it_back():
    e = PolicyRefusal(reply=replies.no_local_key("a@b.fr"), detail="no key")
    assert e.smtp_reply() == "550 5.1.1 no valid key for local recipient a@b.fr" and not e.temporary
    back = pickle.loads(pickle.dumps(e))
    assert back.smtp_reply() == e.smtp_reply() and type(back.smtp_reply()) is Reply
    assert replies.for_exception(e) == e.smtp_reply()


def test_the_named_replies_load_without_the_smtp_adapter():
    """Policy and the crypto workers use the replies; they must not pull in aiosmtpd."""
    code = ("import sys, securemail.smtp.replies, securemail.policy.rules, securemail.policy.recipient; "
            "print('aiosmtpd' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=PACKAGE.parent)
    assert out.stdout.strip() == "False"
