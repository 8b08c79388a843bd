"""Key rotation without sockets: the decisions, the manifest's retiring keys, next hops with several
pins, the config edits rotate and retire make, and what a gateway uses as the manifest changes."""

from __future__ import annotations

import copy
import hashlib
import json
import tomllib
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest

from securemail.manifest_source import ManifestSource

from securemail import federation as F
from securemail.admin import tomledit as T
from securemail.admin.setup import CONFIG_TEMPLATE
from securemail.config import GatewayConfig
from securemail.crypto import openpgp
from securemail.crypto.dkim import generate_dkim_key
from securemail.crypto.keys import Key
from securemail.delivery.keycheck import listed_pins
from securemail.errors import ConfigError, UsageError
from securemail.rotation import (OwnKeys, Rotation, announce, announce_dkim, dkim_signing,
                                 rotation_config, switch)
from securemail.transform.hops import SmtpHop, parse_hop, smtp_hop

PIN1, PIN2, PIN3 = (hashlib.sha256(bytes([i])).hexdigest() for i in (1, 2, 3))


# --- the decisions ------------------------------------------------------------------------------
@pytest.mark.parametrize("current, nxt, created, now, expected", [
    (True, False, 0, 10**9, False),   # the next key is not listed: never
    (True, True, 100, 150, False),    # both listed: not before switch_after (60) has passed...
    (True, True, 100, 160, True),     # ...then the next one
    (False, True, 100, 101, True),    # the current one no longer listed: at once
    (False, False, 0, 10**9, False),  # neither (no manifest yet): the current one
])
def test_switch(current, nxt, created, now, expected):
    assert switch(current, nxt, created, now, 60) is expected


def test_announce_lists_the_next_key_with_the_current_one_retiring_until_the_manifest_has_it():
    assert announce("old", None, ()) == ("old", None)                 # no rotation
    assert announce("old", "new", ("old",)) == ("new", "old")         # the overlap entry
    assert announce("old", "new", ("new", "old")) == ("new", None)    # the closing entry
    assert announce_dkim(["a"], [], {"a"}) == ["a"]
    assert announce_dkim(["a", "b"], ["c", "d"], {"a", "b"}) == ["a", "b", "c", "d"]
    assert announce_dkim(["a", "b"], ["c", "d"], {"a", "b", "c"}) == ["a", "b", "c", "d"]
    assert announce_dkim(["a", "b"], ["c", "d"], {"a", "b", "c", "d"}) == ["c", "d"]


def test_dkim_signs_with_every_listed_selector_else_the_current_ones():
    assert dkim_signing(["a"], ["b"], set()) == ["a"]                 # no manifest: current
    assert dkim_signing(["a"], ["b"], {"a"}) == ["a"]                 # the next one not listed yet
    assert dkim_signing(["a"], ["b"], {"a", "b"}) == ["a", "b"]       # overlap: both
    assert dkim_signing(["a"], ["b"], {"b"}) == ["b"]                 # closing manifest: the next one


def test_rotation_settings_are_checked():
    home = Path("/h")
    r = rotation_config({"tls": {"next_cert": "tls/c.pem", "next_key": "/abs/k.pem"},
                         "keys": {"openpgp_next": {"A.gouv.fr": "ab" * 20}, "switch_after": "2h",
                                  "dkim": [{"domain": "a.gouv.fr", "selector": "s2", "next": True},
                                           {"domain": "a.gouv.fr", "selector": "s1"}]}}, home)
    assert r.tls_next == (home / "tls/c.pem", Path("/abs/k.pem"))
    assert r.openpgp_next == {"a.gouv.fr": "AB" * 20} and r.switch_after == 7200
    assert r.dkim_next == {("a.gouv.fr", "s2")}
    assert rotation_config({}, home).switch_after == 86400 and rotation_config({}, home).tls_next is None
    for bad in ({"tls": {"next_cert": "c.pem"}}, {"keys": {"openpgp_next": "x"}},
                {"keys": {"dkim": [{"next": "yes"}]}}, {"keys": {"switch_after": "soon"}}):
        with pytest.raises(ConfigError):
            rotation_config(bad, home)


# --- the manifest ------------------------------------------------------------------------------
def _key(domain: str) -> Key:
    return Key(openpgp.generate(f"gw <gateway@{domain}>", "ed25519", timedelta(days=30), None))


@pytest.fixture(scope="module")
def entry():
    return {"domain": "a.gouv.fr", "gateway": "mx.a.gouv.fr:25", "tls_pin": PIN1,
            "openpgp_key": _key("a.gouv.fr").public().armored().decode(),
            "dkim": [{"selector": "s1", "public_key": generate_dkim_key("ed25519").public_txt}]}


def test_a_manifest_without_retiring_keys_parses_as_before(entry):
    m = F.parse_member(copy.deepcopy(entry))
    assert m.tls_pins == (PIN1,) and m.retiring_key is None and "retiring" not in m.to_dict()
    assert m.to_dict() == entry


def test_retiring_pin_and_key_are_accepted_and_round_trip(entry):
    old = _key("a.gouv.fr")
    e = {**copy.deepcopy(entry), "retiring": {"tls_pin": PIN2, "openpgp_key": old.public().armored().decode()}}
    m = F.parse_member(e)
    assert m.tls_pins == (PIN1, PIN2) and F.parse_member(m.to_dict()) == m
    manifest = F.Manifest(1, "2026-12-03T09:00:00+00:00", {"a.gouv.fr": m})
    assert manifest.pinned_domains(PIN2) == manifest.pinned_domains(PIN1) == {"a.gouv.fr"}
    assert manifest.pinned_domains(PIN3) == frozenset()


@pytest.mark.parametrize("retiring, message", [
    ("x", "retiring must be an object"),
    ({}, "retiring must be an object"),
    ({"dkim": []}, "retiring must be an object"),
    ({"tls_pin": "AB" * 32}, "retiring tls_pin"),
    ({"tls_pin": PIN1}, "retiring tls_pin must be another"),
    ({"openpgp_key": "garbage"}, "retiring openpgp_key refused"),
])
def test_a_malformed_retiring_field_is_refused_naming_the_domain(entry, retiring, message):
    with pytest.raises(F.ManifestInvalid, match=rf"a\.gouv\.fr: {message}"):
        F.parse_member({**copy.deepcopy(entry), "retiring": retiring})


def test_the_manifest_source_gives_both_keys_of_a_rotating_member(tmp_path, entry):
    old = _key("a.gouv.fr")
    e = {**copy.deepcopy(entry), "retiring": {"openpgp_key": old.public().armored().decode()}}
    path = tmp_path / "federation.json"
    path.write_text(json.dumps({"manifest": {"serial": 1, "created": "2026-12-03T09:00:00+00:00",
                                             "members": [e]}, "signature": ""}))
    source = ManifestSource(path)
    keys = source.member_keys("a.gouv.fr")
    assert [k.fingerprint for k in keys][1] == old.fingerprint and len(keys) == 2
    assert source.member_key("a.gouv.fr").fingerprint == keys[0].fingerprint    # encrypted to
    assert source.lookup(next(iter(old.keyids)), None).fingerprint == old.fingerprint  # verified
    assert source.member_keys("b.gouv.fr") == []


# --- next hops ---------------------------------------------------------------------------------
def test_a_member_hop_carries_every_pin_and_an_old_one_still_parses():
    assert str(smtp_hop("gw.b.gov.test", 25, (PIN1, PIN2, PIN1))) == f"smtp:gw.b.gov.test:25:{PIN1},{PIN2}"
    assert parse_hop(f"smtp:gw.b.gov.test:25:{PIN1},{PIN2}").pins == (PIN1, PIN2)
    assert parse_hop(f"smtp:gw.b.gov.test:25:{PIN1}") == SmtpHop("gw.b.gov.test", 25, PIN1)
    with pytest.raises(UsageError):
        parse_hop(f"smtp:gw.b.gov.test:25:{PIN1},zz")


def test_a_queued_hop_is_sent_with_the_pins_listed_now():
    member = SimpleNamespace(gateway=("gw.b.gov.test", 25), tls_pins=(PIN2, PIN3))
    refresh = listed_pins(lambda: SimpleNamespace(members={"b.gov.test": member}))
    assert refresh(smtp_hop("gw.b.gov.test", 25, PIN1)).pins == (PIN2, PIN3)   # rotated while queued
    assert refresh(smtp_hop("gw.c.gov.test", 25, PIN1)).pins == (PIN1,)        # not listed: as queued
    assert listed_pins(lambda: None)(smtp_hop("gw.b.gov.test", 25, PIN1)).pins == (PIN1,)


# --- the config edits ---------------------------------------------------------------------------
def init_text() -> str:
    return CONFIG_TEMPLATE.format(
        domains='["a.gouv.fr"]', hostname="gw.a.gouv.fr", db="sqlite:///x.db", listen="127.0.0.1:2525",
        trusted='["127.0.0.1/32"]', cert="tls/cert.pem", tkey="tls/key.pem", local="maildir",
        relay_to='# relay_to = "x"', lmtp="# lmtp", submission="", wkd="", metrics="none",
        openpgp=f'"a.gouv.fr" = "{"AB" * 20}"',
        dkim='[[keys.dkim]]\ndomain = "a.gouv.fr"\nselector = "s1"\nalgorithm = "ed25519"\n'
             'private_key = "dkim/a.pem"\n')


def test_config_edits_keep_the_comments_and_parse_to_what_was_meant():
    text = init_text()
    t = T.set_keys(text, "tls", {"next_cert": "tls/c2.pem", "next_key": "tls/k2.pem"})
    assert tomllib.loads(t)["tls"] == {"cert": "tls/cert.pem", "key": "tls/key.pem",
                                       "next_cert": "tls/c2.pem", "next_key": "tls/k2.pem"}
    assert "# securemail gateway configuration" in t and "# EHLO name" in t
    t = T.set_keys(t, "tls", {"cert": "tls/c2.pem", "key": "tls/k2.pem"}, remove=("next_cert", "next_key"))
    assert tomllib.loads(t)["tls"] == {"cert": "tls/c2.pem", "key": "tls/k2.pem"}
    t = T.insert_table(t, "keys.openpgp", "keys.openpgp_next", {"a.gouv.fr": "CD" * 20})
    assert tomllib.loads(t)["keys"]["openpgp_next"] == {"a.gouv.fr": "CD" * 20}
    assert tomllib.loads(T.drop_table(t, "keys.openpgp_next"))["keys"].keys() == {"switch_after", "openpgp",
                                                                                  "dkim"}
    t = T.append_array_entry(t, "keys.dkim", {"domain": "a.gouv.fr", "selector": "s2", "next": True})
    assert [d["selector"] for d in tomllib.loads(t)["keys"]["dkim"]] == ["s1", "s2"]
    t = T.edit_array(t, "keys.dkim", lambda e: e["selector"] != "s1", remove=("next",))
    assert tomllib.loads(t)["keys"]["dkim"] == [{"domain": "a.gouv.fr", "selector": "s2"}]
    assert GatewayConfig.from_dict(tomllib.loads(t), Path("/h")).dkim_keys[0].selector == "s2"


def test_an_edit_that_does_not_parse_back_as_meant_is_refused():
    text = init_text()
    with pytest.raises(ConfigError, match="by hand"):
        T.checked(text, text + "\n[tls]\n", lambda d: d, "do it")
    with pytest.raises(ConfigError, match="set it by hand"):
        T.checked(text, text, lambda d: {**d, "x": 1}, "set it")


# --- what a gateway uses as the manifest moves --------------------------------------------------
def test_the_gateway_switches_as_the_manifest_lists_its_next_keys(tmp_path):
    home = tmp_path
    (home / "tls").mkdir()
    from securemail.admin.setup import self_signed_cert
    from securemail.membership import tls_pin_of_cert
    for name in ("cert", "next"):
        self_signed_cert("gw.a.gouv.fr", home / f"tls/{name}.pem", home / f"tls/{name}-key.pem")
    old, new = (tls_pin_of_cert((home / f"tls/{n}.pem").read_bytes()) for n in ("cert", "next"))
    text = T.set_keys(init_text(), "tls", {"cert": "tls/cert.pem", "key": "tls/cert-key.pem",
                                           "next_cert": "tls/next.pem", "next_key": "tls/next-key.pem"})
    text = T.append_array_entry(text, "keys.dkim", {"domain": "a.gouv.fr", "selector": "s2",
                                                    "algorithm": "ed25519", "private_key": "dkim/b.pem",
                                                    "next": True})
    text = T.set_keys(text, "keys", {"switch_after": "60s"})
    (home / "securemail.toml").write_text(text)
    config = GatewayConfig.from_dict(tomllib.loads(text), home)
    now, listed = [1000.0], {}
    manifest = SimpleNamespace(created="1970-01-01T00:16:40+00:00", member=lambda d: listed.get(d))
    rotation = Rotation(OwnKeys(config), lambda: manifest if listed else None, lambda: now[0])

    def member(*pins, dkim=("s1",)):
        listed["a.gouv.fr"] = SimpleNamespace(tls_pins=pins, dkim=tuple((s, "") for s in dkim))
    assert rotation.tls_pair()[0].name == "cert.pem"                               # no manifest
    assert [k.selector for k in rotation.dkim_keys("a.gouv.fr")] == ["s1"]
    member(old)
    assert rotation.tls_pair()[0].name == "cert.pem"
    member(new, old, dkim=("s1", "s2"))                                            # the overlap
    assert rotation.tls_pair()[0].name == "cert.pem"                               # members install it...
    assert [k.selector for k in rotation.dkim_keys("a.gouv.fr")] == ["s1", "s2"]
    now[0] = 1061.0
    assert rotation.tls_pair()[0].name == "next.pem"                               # ...then the new one
    member(new, dkim=("s2",))                                                      # the closing one
    now[0] = 1000.0
    assert rotation.tls_pair()[0].name == "next.pem"
    assert [k.selector for k in rotation.dkim_keys("a.gouv.fr")] == ["s2"]
