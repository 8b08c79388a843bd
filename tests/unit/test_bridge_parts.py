"""The bridge's pure parts, without sockets: what a client sees of a message, the listeners'
addresses, the memory cache, the upstream's UID response codes."""

from __future__ import annotations

from pathlib import Path

import pytest

from securemail.bridge.cache import ViewCache
from securemail.bridge.settings import BridgeSettings, check_listeners, is_loopback
from securemail.bridge.upstream import new_uid
from securemail.bridge.view import Viewer, crlf
from securemail.errors import UsageError

FORGED = (b"From: bruno@justice.gouv.fr\r\nTo: alice@interieur.gouv.fr\r\nSubject: Bonjour\r\n"
          b"Securemail-Status: encrypted=yes; signature=valid\r\nAuthentication-Results: x; dkim=pass\r\n"
          b"\r\nTexte en clair.\r\n")


def shown(raw: bytes) -> bytes:
    return Viewer([], lambda keyid, fpr: None).show(raw)


def head(msg: bytes) -> str:
    return msg.split(b"\r\n\r\n", 1)[0].decode()


def test_plain_mail_gets_one_status_of_ours_and_loses_the_senders():
    out = shown(FORGED)
    assert head(out).count("Securemail-Status:") == 1
    assert "Securemail-Status: encrypted=no; signature=none" in head(out)
    assert "Authentication-Results" not in head(out)
    assert out.endswith(b"\r\n\r\nTexte en clair.\r\n")


def test_lf_only_mail_is_shown_with_crlf():
    out = shown(FORGED.replace(b"\r\n", b"\n"))
    assert b"\r\n\r\nTexte en clair.\r\n" in out and out.count(b"\n") == out.count(b"\r\n")


def test_a_refused_message_becomes_a_notice_without_its_content():
    armored = b"-----BEGIN PGP MESSAGE-----\r\n\r\nwy4ECQMI\r\n-----END PGP MESSAGE-----\r\n"
    raw = (b"From: x@justice.gouv.fr\r\nSubject: Secret subject line\r\nMIME-Version: 1.0\r\n"
           b'Content-Type: multipart/encrypted; protocol="application/pgp-encrypted"; boundary="b"\r\n\r\n'
           b"--b\r\nContent-Type: application/pgp-encrypted\r\n\r\nVersion: 1\r\n--b\r\n"
           b"Content-Type: application/octet-stream\r\n\r\n" + armored + b"--b--\r\n")
    out = shown(raw)
    assert "Subject: [securemail] message not shown: " in head(out)
    assert "refused=yes" in head(out)
    assert b"Secret subject line" not in out and b"wy4ECQMI" not in out
    assert "From: x@justice.gouv.fr" in head(out)


def test_crlf_leaves_crlf_alone():
    data = b"a\r\nb\r\n"
    assert crlf(data) is data
    assert crlf(b"a\nb\r\n") == b"a\r\nb\r\n"


def settings(imap_host: str, smtp_host: str = "127.0.0.1") -> BridgeSettings:
    return BridgeSettings(home=Path("/nonexistent"), address="a@x.test", imap=("m", 993), smtp=("m", 465),
                          username="a@x.test", cafile=None, imap_listen=(imap_host, 1143),
                          smtp_listen=(smtp_host, 1025))


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_loopback_listeners_are_allowed(host):
    assert is_loopback(host)
    check_listeners(settings(host, host), allow_remote=False)


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "::", "mail.example"])
def test_other_listeners_need_allow_remote(host):
    with pytest.raises(UsageError, match="not a loopback address.*--allow-remote"):
        check_listeners(settings(host), allow_remote=False)
    check_listeners(settings(host), allow_remote=True)


def test_the_cache_keeps_its_budget_and_drops_the_least_recent():
    cache = ViewCache(100)
    cache.put(("INBOX", 1, 1), "a", 40)
    cache.put(("INBOX", 1, 2), "b", 40)
    assert cache.get(("INBOX", 1, 1)) == "a"         # now the most recent
    cache.put(("INBOX", 1, 3), "c", 40)               # over budget: uid 2 goes
    assert cache.get(("INBOX", 1, 2)) is None and cache.size == 80
    cache.put(("Big", 1, 1), "x", 101)                # larger than the budget: not kept
    assert cache.get(("Big", 1, 1)) is None
    cache.discard_folder("INBOX")
    assert len(cache) == 0 and cache.size == 0


def test_what_the_budget_pushes_out_is_handed_on_and_a_discard_is_not():
    evicted = []
    cache = ViewCache(100, on_evict=lambda key, value: evicted.append((key, value)))
    cache.put(("INBOX", 1, 1), "a", 60)
    cache.discard(("INBOX", 1, 1))                    # expunged: nothing to keep of it
    cache.put(("INBOX", 1, 2), "b", 60)
    cache.put(("INBOX", 1, 3), "c", 60)               # over budget: uid 2 goes, and is handed on
    assert evicted == [(("INBOX", 1, 2), "b")]


def test_new_uid_from_appenduid_and_copyuid():
    assert new_uid(b"[APPENDUID 1700000000 45] Append completed.") == 45
    assert new_uid(b"[COPYUID 1700000000 3 7] Copy completed.") == 7
    assert new_uid(b"[COPYUID 1700000000 3:4 7:8] Copy completed.") is None   # a range: not one UID
    assert new_uid(b"Move completed.") is None and new_uid(None) is None
