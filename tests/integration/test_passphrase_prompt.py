"""Passphrases asked on a real terminal (issue 15, item 4): twice for a new key, once to unlock.

Each test runs the securemail command in a child process on a real pseudo-terminal (``pty.fork``),
answers its prompts as a person would, and checks what the person sees: the prompts, never the typed
passphrase (no echo), and the outcome in the key store or the message.
"""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO, run_cli

PASS = "horse-battery-staple-1789"
NEW = b"Passphrase to protect the new key:"
REPEAT = b"Repeat the passphrase:"
UNLOCK = b"Passphrase for "
COMMAND = [sys.executable, "-m", "cli.main"]


def child_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "SECUREMAIL_HOME"}
    env["PYTHONPATH"] = str(REPO)
    return env


class Terminal:
    """The securemail command on a pseudo-terminal that is its controlling terminal and its stdin."""

    def __init__(self, home, *args: str) -> None:
        argv = [*COMMAND, "--home", str(home), *args]
        env = child_env()
        pid, fd = pty.fork()
        if pid == 0:  # the child: become the command at once
            try:
                os.chdir(REPO)
                os.execve(argv[0], argv, env)
            finally:
                os._exit(127)
        self.pid, self.fd, self.out, self.seen = pid, fd, b"", 0

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return True
        try:
            data = os.read(self.fd, 4096)
        except OSError:  # EIO: the child closed the terminal
            return False
        self.out += data
        return bool(data)

    def expect(self, text: bytes, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.out[self.seen:]:
            left = deadline - time.monotonic()
            assert left > 0 and self._read(left), f"never saw {text!r}; got {self.out!r}"
        self.seen = self.out.index(text, self.seen) + len(text)

    def type(self, line: str) -> None:
        """Typed only after its prompt is shown, when the terminal's echo is already off."""
        os.write(self.fd, line.encode() + b"\r")

    def finish(self, timeout: float = 120) -> int:
        deadline = time.monotonic() + timeout
        while self._read(max(0.0, deadline - time.monotonic())):
            if time.monotonic() > deadline:
                os.kill(self.pid, 9)
                pytest.fail(f"the command did not end; output so far {self.out!r}")
        _, status = os.waitpid(self.pid, 0)
        os.close(self.fd)
        return os.waitstatus_to_exitcode(status)


def no_echo(term: Terminal) -> None:
    assert PASS.encode() not in term.out, "the passphrase was echoed"


def generated(home) -> dict:
    (k,) = json.loads(run_cli(home, "keys", "list", "--json").stdout)
    return k


def self_mail(home, out, *extra: str, body: bytes = b"hello\n"):
    return run_cli(home, "send", "--from", "a@x.fr", "--to", "a@x.fr", "--subject", "s", "--output", str(out),
                   *extra, input=body)


@pytest.fixture
def pw(tmp_path):
    p = tmp_path / "pw"
    p.write_text(PASS + "\n")
    return p


@pytest.fixture
def wrong(tmp_path):
    p = tmp_path / "wrong"
    p.write_text("not-" + PASS + "\n")
    return p


@pytest.fixture
def protected_home(tmp_path, pw):
    home = tmp_path / "h"
    res = run_cli(home, "keys", "generate", "--uid", "A <a@x.fr>", "--passphrase-file", str(pw))
    assert res.exit_code == 0, res.stderr
    return home


def new_passphrase(term, typed: str, repeated: str) -> None:
    """Answer ``keys generate``'s two prompts: the passphrase, then its repetition."""
    term.expect(NEW)
    term.type(typed)
    term.expect(REPEAT)
    term.type(repeated)


def test_generate_asks_twice_without_echo_and_protects_the_key(tmp_path, pw, wrong):
    home = tmp_path / "h"
    term = Terminal(home, "keys", "generate", "--uid", "A <a@x.fr>")
    new_passphrase(term, PASS, PASS)
    assert term.finish() == 0, term.out
    no_echo(term)
    k = generated(home)
    assert k["fingerprint"].encode() in term.out and k["secret"] and k["protected"]
    out = tmp_path / "m.eml"
    refused = self_mail(home, out, "--passphrase-file", str(wrong))
    assert refused.exit_code == 1 and "wrong passphrase" in refused.stderr and not out.exists()
    assert self_mail(home, out, "--passphrase-file", str(pw)).exit_code == 0 and out.exists()


def test_generate_mismatch_is_said_and_asked_again(tmp_path):
    home = tmp_path / "h"
    term = Terminal(home, "keys", "generate", "--uid", "A <a@x.fr>")
    new_passphrase(term, PASS, PASS + "x")
    term.expect(b"do not match")
    new_passphrase(term, PASS, PASS)
    assert term.finish() == 0, term.out
    no_echo(term)
    assert generated(home)["protected"]


def test_generate_gives_up_after_three_mismatches(tmp_path):
    home = tmp_path / "h"
    term = Terminal(home, "keys", "generate", "--uid", "A <a@x.fr>")
    for i in range(3):
        new_passphrase(term, PASS, f"other-{i}")
    assert term.finish() == 2 and b"nothing was generated" in term.out
    no_echo(term)
    assert json.loads(run_cli(home, "keys", "list", "--json").stdout) == []


def test_generate_refuses_an_empty_passphrase_and_names_no_passphrase(tmp_path):
    home = tmp_path / "h"
    term = Terminal(home, "keys", "generate", "--uid", "A <a@x.fr>")
    term.expect(NEW)
    term.type("")
    assert term.finish() == 2 and b"--no-passphrase" in term.out
    assert json.loads(run_cli(home, "keys", "list", "--json").stdout) == []


def test_without_a_terminal_the_old_error_and_exit_code(tmp_path):
    p = subprocess.run([*COMMAND, "--home", str(tmp_path / "h"), "keys", "generate", "--uid", "A <a@x.fr>"],
                       stdin=subprocess.DEVNULL, capture_output=True, cwd=REPO, env=child_env(), timeout=60)
    assert p.returncode == 2
    assert p.stderr.decode().strip() == ("securemail: give --passphrase-file F, "
                                         "or --no-passphrase to store the key unprotected")


def test_read_asks_once_and_decrypts(tmp_path, protected_home, pw):
    out = tmp_path / "self.eml"
    assert self_mail(protected_home, out, "--passphrase-file", str(pw), body=b"secret body\n").exit_code == 0
    term = Terminal(protected_home, "read", str(out))
    term.expect(UNLOCK)
    term.type(PASS)
    assert term.finish() == 0, term.out
    no_echo(term)
    assert term.out.count(UNLOCK) == 1
    assert b"secret body" in term.out and b"signed by" in term.out and b"(valid)" in term.out


def test_read_with_a_wrong_passphrase_stays_locked(tmp_path, protected_home, pw):
    out = tmp_path / "self.eml"
    assert self_mail(protected_home, out, "--passphrase-file", str(pw), body=b"secret body\n").exit_code == 0
    term = Terminal(protected_home, "read", str(out))
    term.expect(UNLOCK)
    term.type("not-" + PASS)
    assert term.finish() == 1
    assert b"wrong passphrase" in term.out and b"secret body" not in term.out
    assert b"not-" + PASS.encode() not in term.out


def test_read_of_unencrypted_mail_asks_nothing(tmp_path, protected_home):
    plain = tmp_path / "plain.eml"
    plain.write_bytes(b"From: b@y.fr\r\nTo: a@x.fr\r\nSubject: hi\r\n\r\nplain words\r\n")
    term = Terminal(protected_home, "read", str(plain))
    assert term.finish(timeout=60) == 0, term.out
    assert UNLOCK not in term.out and b"plain words" in term.out


def test_send_asks_for_the_signing_key_once(tmp_path, protected_home, pw):
    body, out = tmp_path / "body.txt", tmp_path / "sent.eml"
    body.write_text("from the terminal\n")
    term = Terminal(protected_home, "send", "--from", "a@x.fr", "--to", "a@x.fr", "--subject", "s",
                    "--body-file", str(body), "--output", str(out))
    term.expect(UNLOCK)
    term.type(PASS)
    assert term.finish() == 0, term.out
    no_echo(term)
    assert term.out.count(UNLOCK) == 1 and b"a@x.fr" in term.out
    (r,) = json.loads(run_cli(protected_home, "read", "--json", "--passphrase-file", str(pw), str(out)).stdout)
    assert r["body"] == "from the terminal\n" and r["signature"] == "valid"


def test_send_with_a_wrong_passphrase_writes_nothing(tmp_path, protected_home):
    body, out = tmp_path / "body.txt", tmp_path / "sent.eml"
    body.write_text("x\n")
    term = Terminal(protected_home, "send", "--from", "a@x.fr", "--to", "a@x.fr", "--subject", "s",
                    "--body-file", str(body), "--output", str(out))
    term.expect(UNLOCK)
    term.type("not-" + PASS)
    assert term.finish() == 1 and b"wrong passphrase" in term.out and not out.exists()
    assert b"not-" + PASS.encode() not in term.out


def test_revoke_asks_only_for_a_protected_key(tmp_path, protected_home):
    fpr = generated(protected_home)["fingerprint"]
    term = Terminal(protected_home, "keys", "revoke", fpr)
    term.expect(UNLOCK)
    term.type(PASS)
    assert term.finish() == 0 and b"BEGIN PGP PUBLIC KEY BLOCK" in term.out
    no_echo(term)
    assert generated(protected_home)["state"] == "revoked"
    open_home = tmp_path / "open"
    assert run_cli(open_home, "keys", "generate", "--uid", "B <b@x.fr>", "--no-passphrase").exit_code == 0
    term = Terminal(open_home, "keys", "revoke", generated(open_home)["fingerprint"])
    assert term.finish(timeout=60) == 0 and UNLOCK not in term.out


def test_publish_asks_before_it_signs_its_request(tmp_path, protected_home):
    """No gateway listens: a wrong passphrase stops at the key; the right one gets as far as the network."""
    password = tmp_path / "smtp-pw"
    password.write_text("irrelevant\n")
    args = ("keys", "publish", "--server", "127.0.0.1:1", "--username", "a@x.fr", "--password-file", str(password))
    term = Terminal(protected_home, *args)
    term.expect(UNLOCK)
    term.type("not-" + PASS)
    assert term.finish() == 1 and b"wrong passphrase" in term.out
    term = Terminal(protected_home, *args)
    term.expect(UNLOCK)
    term.type(PASS)
    assert term.finish() == 1 and b"passphrase" not in term.out[term.seen:]
    no_echo(term)
    assert b"cannot reach https://127.0.0.1:1/" in term.out[term.seen:]
