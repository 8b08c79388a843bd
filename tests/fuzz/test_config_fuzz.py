"""Fuzzing the configuration loader: GatewayConfig.from_dict and read_toml.

Structure-aware: a valid configuration like the one ``gateway init`` writes is
mutated (a value replaced by any TOML value, a key removed, a table replaced,
unknown keys added), and arbitrary TOML documents and bytes are read. The only
exception allowed out is ConfigError; a configuration that loads has limits,
timeouts and retry delays that a running gateway can use (finite, positive).
"""

from __future__ import annotations

import datetime
import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from securemail.config import GatewayConfig, read_toml
from securemail.errors import ConfigError

from . import fuzz

HOME = Path("/nonexistent/securemail-home")


def valid() -> dict:
    """What ``securemail gateway init`` writes, as tomllib reads it."""
    return {
        "gateway": {"domains": ["interieur.gouv.fr"], "hostname": "gw.interieur.gouv.fr"},
        "database": {"url": "sqlite:////nonexistent/securemail.db"},
        "listeners": {"relay": {"listen": "127.0.0.1:2525", "trusted_networks": ["10.1.0.0/16"],
                                "require_starttls": False, "auth_required": False},
                      "submission": {"listen": "127.0.0.1:5870", "require_starttls": True,
                                     "auth_required": True}},
        "tls": {"cert": "tls/cert.pem", "key": "tls/key.pem"},
        "auth": {"passwords_file": "passwords"},
        "delivery": {"local": "maildir", "non_member_policy": "refuse", "workers": 4,
                     "lease_seconds": 300, "poll_interval": 1.0},
        "retry": {"first": 300, "cap": 3600, "give_up_after": 432000},
        "limits": {"message_size": 26214400, "recipients": 100, "connections": 200,
                   "connections_per_ip": 20, "command_timeout": 300},
        "federation": {"manifest": "federation.json"},
        "keys": {"openpgp": {"interieur.gouv.fr": "A" * 40},
                 "dkim": [{"domain": "interieur.gouv.fr", "selector": "sm-ed25519", "algorithm": "ed25519",
                           "private_key": "dkim/interieur.gouv.fr.sm-ed25519.pem"}]},
    }


SCALARS = st.one_of(
    st.text(max_size=30), st.integers(min_value=-(2 ** 63), max_value=2 ** 63 - 1), st.booleans(),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(["", "0.0.0.0:0", "[::1]:25", "x:99999",
                                                                     "relay", "allow-plain", "10.0.0.0/8"]),
    st.datetimes(), st.dates(), st.times())
TOML_VALUE = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=12), inner, max_size=3)), max_leaves=8)


def paths(d, prefix=()):
    for k, v in d.items():
        yield prefix + (k,)
        if isinstance(v, dict):
            yield from paths(v, prefix + (k,))


@st.composite
def mutated_config(draw) -> dict:
    cfg = valid()
    for _ in range(draw(st.integers(1, 4))):
        where = draw(st.sampled_from(sorted(paths(cfg), key=str)))
        parent = cfg
        for k in where[:-1]:
            parent = parent[k]
        how = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
        if how == "replace":
            parent[where[-1]] = draw(TOML_VALUE)
        elif how == "delete":
            del parent[where[-1]]
        else:
            parent[draw(st.text(max_size=10))] = draw(TOML_VALUE)
        if not isinstance(cfg, dict) or not cfg:
            break
    return cfg


def load(data) -> GatewayConfig | None:
    try:
        cfg = GatewayConfig.from_dict(data, HOME)
    except ConfigError:
        return None
    usable(cfg)
    return cfg


def usable(cfg: GatewayConfig) -> None:
    lim, rt = cfg.limits, cfg.retry
    for name, value in (("message_size", lim.message_size), ("recipients", lim.recipients),
                        ("connections", lim.connections), ("connections_per_ip", lim.connections_per_ip),
                        ("command_timeout", lim.command_timeout), ("retry.first", rt.first),
                        ("retry.cap", rt.cap), ("retry.give_up_after", rt.give_up_after),
                        ("workers", cfg.workers), ("lease_seconds", cfg.lease_seconds),
                        ("poll_interval", cfg.poll_interval)):
        assert math.isfinite(value) and value > 0, f"{name} = {value!r} was accepted"
    assert all(0 <= li.port < 65536 for li in cfg.listeners)
    assert cfg.domains and all(isinstance(d, str) for d in cfg.domains)


def test_the_valid_configuration_loads():
    assert load(valid()) is not None


@fuzz(300)
@given(mutated_config())
def test_mutated_configuration_loads_or_raises_config_error(data):
    load(data)


@fuzz(200)
@given(st.dictionaries(st.sampled_from(list(valid()) + ["x"]), TOML_VALUE, max_size=6))
def test_arbitrary_tables_load_or_raise_config_error(data):
    load(data)


@fuzz(200)
@given(st.one_of(st.binary(max_size=300), st.text(max_size=300).map(str.encode)))
def test_read_toml_raises_only_config_error(tmp_path_factory, raw):
    path = tmp_path_factory.getbasetemp() / "fuzz.toml"
    path.write_bytes(raw)
    try:
        data = read_toml(path)
    except ConfigError:
        return
    assert isinstance(data, dict)
    load(data)


@pytest.mark.parametrize("table, key, value", [
    ("delivery", "lease_seconds", 0), ("delivery", "workers", -1), ("delivery", "poll_interval", math.nan),
    ("limits", "command_timeout", math.inf), ("limits", "message_size", 0), ("limits", "recipients", -5),
    ("retry", "first", -1.0), ("retry", "give_up_after", math.nan), ("keys", "dkim", 5),
    ("listeners", "relay", "127.0.0.1:25"), ("gateway", "domains", "interieur.gouv.fr"),
    ("gateway", "cpu_workers", -1), ("gateway", "cpu_workers", 65), ("gateway", "cpu_workers", "many"),
    ("gateway", "cpu_workers", True), ("delivery", "process", "yes"), ("delivery", "process", 1)])
def test_values_a_gateway_cannot_run_with_are_config_errors(table, key, value):
    cfg = valid()
    cfg[table][key] = value
    with pytest.raises(ConfigError):
        GatewayConfig.from_dict(cfg, HOME)


def test_a_config_file_that_is_not_utf8_is_a_config_error(tmp_path):
    (tmp_path / "securemail.toml").write_bytes(b"[gateway]\ndomains = [\"\xe9.fr\"]\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        read_toml(tmp_path / "securemail.toml")


def test_datetime_values_are_refused_where_text_is_expected():
    cfg = valid()
    cfg["gateway"]["hostname"] = datetime.datetime(2024, 1, 1)
    assert load(cfg) is None


@pytest.mark.parametrize("cores, processes, several, want", [
    (1, 1, False, 0), (2, 1, False, 2), (16, 1, False, 4), (2, 2, False, 0), (8, 1, True, 0)])
def test_auto_cpu_workers_follow_the_cores(monkeypatch, cores, processes, several, want):
    import securemail.config as C
    monkeypatch.setattr(C.os, "cpu_count", lambda: cores)
    cfg = valid()
    cfg["gateway"]["processes"] = processes
    got = GatewayConfig.from_dict(cfg, HOME)
    assert got.cpu_workers is None and got.crypto_workers(several) == want
    assert got.separate_delivery(got.crypto_workers(several)) is (want > 0)


def test_explicit_cpu_workers_and_delivery_process_are_kept():
    cfg = valid()
    cfg["gateway"]["cpu_workers"] = 3
    cfg["delivery"]["process"] = False
    got = GatewayConfig.from_dict(cfg, HOME)
    assert got.crypto_workers(True) == 3 and got.separate_delivery(3) is False
