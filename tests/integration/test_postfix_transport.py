"""securemail federation postfix-transport: the office Postfix's transport map, from the installed manifest."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from securemail.federation import Manifest
from securemail.transport_map import postfix_transport
from tests.support import federation, ok, run_cli

DOMAINS = ("interieur.gouv.fr", "justice.gouv.fr", "armees.gouv.fr")


@pytest.fixture(scope="module")
def fed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("transport")
    _, homes = federation(tmp, domains=DOMAINS, fast=False, install=["interieur.gouv.fr"])
    return tmp, homes


def test_every_other_member_goes_to_this_gateways_relay_listener(fed):
    _, homes = fed
    a = homes["interieur.gouv.fr"]
    out = ok(run_cli(a.home, "federation", "postfix-transport"), "postfix-transport").stdout
    comment, *lines = out.splitlines()
    assert comment.startswith("# ") and "manifest serial 1" in comment
    assert lines == [f"armees.gouv.fr  smtp:[127.0.0.1]:{a.relay}", f"justice.gouv.fr  smtp:[127.0.0.1]:{a.relay}"]


def test_next_hop_given(fed):
    a = fed[1]["interieur.gouv.fr"]
    out = ok(run_cli(a.home, "federation", "postfix-transport", "--next-hop", "[2001:db8::25]:2525")).stdout
    assert out.splitlines()[1:] == ["armees.gouv.fr  smtp:[2001:db8::25]:2525",
                                    "justice.gouv.fr  smtp:[2001:db8::25]:2525"]
    res = run_cli(a.home, "federation", "postfix-transport", "--next-hop", "gw.example")
    assert res.exit_code == 2 and "HOST:PORT" in res.output


def test_refused_without_manifest_or_outside_a_gateway_home(fed):
    tmp, homes = fed
    res = run_cli(homes["justice.gouv.fr"].home, "federation", "postfix-transport")  # nothing installed there
    assert res.exit_code == 2 and "no manifest installed" in res.output
    res = run_cli(tmp / "authority", "federation", "postfix-transport")
    assert res.exit_code == 2 and "not a gateway home" in res.output


def test_a_wildcard_listener_is_reached_by_the_hostname():
    from securemail.config import Listener
    from securemail.transport_map import relay_next_hop

    class Config:
        hostname = "gw.interieur.gouv.fr"

        @staticmethod
        def listener(name):
            return Listener(name=name, host="0.0.0.0", port=25) if name == "relay" else None
    assert relay_next_hop(Config()) == ("gw.interieur.gouv.fr", 25)


def test_postmap_reads_it(fed, tmp_path):
    """The real Postfix indexes the map and finds each member (postmap -q); the gateway's own domain is absent."""
    if shutil.which("postmap") is None:
        if os.environ.get("CI"):
            pytest.fail("postmap missing (apt-get install postfix)")
        pytest.skip("postmap missing (apt-get install postfix)")
    a = fed[1]["interieur.gouv.fr"]
    (tmp_path / "transport").write_text(ok(run_cli(a.home, "federation", "postfix-transport")).stdout)
    # postmap needs a main.cf (none in /etc/postfix on a machine set up with "No configuration")
    (tmp_path / "main.cf").write_text("maillog_file = /dev/stdout\n")
    conf = ["-c", str(tmp_path)]
    subprocess.run(["postmap", *conf, f"hash:{tmp_path / 'transport'}"], check=True, capture_output=True, timeout=60)

    def query(key):
        return subprocess.run(["postmap", *conf, "-q", key, f"hash:{tmp_path / 'transport'}"],
                              capture_output=True, text=True, timeout=60)
    assert query("justice.gouv.fr").stdout.strip() == f"smtp:[127.0.0.1]:{a.relay}"
    assert query("interieur.gouv.fr").returncode == 1  # not found: its own domain is final at the office


def test_pure_map_text():
    m = Manifest(serial=7, created="2026-12-01T00:00:00+00:00", members={"b.fr": None, "a.fr": None, "own.fr": None})
    assert postfix_transport(m, ["OWN.fr."], ("gw.own.fr", 2525)).splitlines()[1:] == [
        "a.fr  smtp:[gw.own.fr]:2525", "b.fr  smtp:[gw.own.fr]:2525"]
