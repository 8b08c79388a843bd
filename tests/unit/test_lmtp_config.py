"""delivery.local = "lmtp": the config keys, the ``lmtp:`` next hop, and where local mail goes in each mode."""

from __future__ import annotations

from pathlib import Path

import pytest

from securemail.config import GatewayConfig
from securemail.transform.hops import LmtpHop, local_hop, lmtp_hop, parse_hop
from securemail.errors import ConfigError, UsageError

HOME = Path("/nonexistent/securemail-home")


def load(**delivery) -> GatewayConfig:
    return GatewayConfig.from_dict({"gateway": {"domains": ["office.test"]}, "delivery": delivery}, HOME)


def test_lmtp_over_tcp_and_over_a_unix_socket():
    c = load(local="lmtp", lmtp="127.0.0.1:24")
    assert (c.local_delivery, c.lmtp, c.relay_to) == ("lmtp", ("127.0.0.1", 24), None)
    assert load(local="lmtp", lmtp="[::1]:2424").lmtp == ("::1", 2424)
    assert load(local="lmtp", lmtp="/run/dovecot/lmtp").lmtp == "/run/dovecot/lmtp"


def test_lmtp_mode_without_delivery_lmtp_is_a_config_error():
    with pytest.raises(ConfigError, match=r'delivery\.lmtp \(HOST:PORT or the absolute path of a unix '
                                          r'socket\) is needed when delivery\.local = "lmtp"'):
        load(local="lmtp")
    with pytest.raises(ConfigError, match="delivery.lmtp .* is needed"):
        load(local="lmtp", relay_to="127.0.0.1:25")  # relay_to is not an LMTP server


@pytest.mark.parametrize("value", [
    "", "dovecot", "127.0.0.1", "127.0.0.1:", "127.0.0.1:0", "127.0.0.1:65536", "127.0.0.1:24x",
    ":24", "host name:24", "relative/lmtp", "run/dovecot/lmtp", "/run/dovecot/\nlmtp", "/" + "x" * 107,
    24, True, ["127.0.0.1:24"], {"host": "127.0.0.1"}])
def test_a_malformed_delivery_lmtp_is_a_config_error_naming_the_value(value):
    with pytest.raises(ConfigError, match=r"delivery\.lmtp must be HOST:PORT or the absolute path of a unix socket"):
        load(local="lmtp", lmtp=value)


def test_a_malformed_delivery_lmtp_is_refused_in_the_other_modes_too():
    with pytest.raises(ConfigError, match=r"delivery\.lmtp must be"):
        load(local="maildir", lmtp="nowhere")


def test_maildir_and_relay_modes_are_unchanged():
    c = load()
    assert (c.local_delivery, c.relay_to, c.lmtp) == ("maildir", None, None)
    c = load(local="relay", relay_to="127.0.0.1:25")
    assert (c.local_delivery, c.relay_to, c.lmtp) == ("relay", ("127.0.0.1", 25), None)
    with pytest.raises(ConfigError, match=r"delivery\.relay_to \(HOST:PORT\) is needed"):
        load(local="relay")
    with pytest.raises(ConfigError, match="delivery.local must be 'maildir', 'relay' or 'lmtp'"):
        load(local="dovecot")


def test_the_lmtp_hop_string_round_trips():
    assert str(lmtp_hop(("127.0.0.1", 24))) == "lmtp:127.0.0.1:24"
    assert str(lmtp_hop(("::1", 24))) == "lmtp:[::1]:24"
    assert str(lmtp_hop("/run/dovecot/lmtp")) == "lmtp:/run/dovecot/lmtp"
    assert parse_hop("lmtp:127.0.0.1:24") == LmtpHop("127.0.0.1", 24)
    assert parse_hop("lmtp:[::1]:24") == LmtpHop("::1", 24)
    assert parse_hop("lmtp:/run/dovecot/lmtp") == LmtpHop(path="/run/dovecot/lmtp")
    # domain-key mode for a user without a key: decrypted in memory at delivery
    assert str(lmtp_hop("/run/dovecot/lmtp", decrypt=True)) == "lmtp-decrypt:/run/dovecot/lmtp"
    assert str(lmtp_hop(("::1", 24), decrypt=True)) == "lmtp-decrypt:[::1]:24"
    assert parse_hop("lmtp-decrypt:/run/dovecot/lmtp") == LmtpHop(path="/run/dovecot/lmtp", decrypt=True)
    assert parse_hop("lmtp-decrypt:127.0.0.1:24") == LmtpHop("127.0.0.1", 24, decrypt=True)
    for text in ("lmtp:/run/a:b", "lmtp:[::1]:24", "lmtp:127.0.0.1:24", "lmtp-decrypt:/run/a:b"):
        assert str(parse_hop(text)) == text


@pytest.mark.parametrize("text", ["lmtp:", "lmtp:127.0.0.1", "lmtp:127.0.0.1:0", "lmtp:::1:24",
                                  "lmtp:run/lmtp", "lmtp:/run/\x00lmtp", "lmtp:/" + "x" * 107])
def test_a_malformed_lmtp_hop_is_refused(text):
    with pytest.raises(UsageError):
        parse_hop(text)


def test_local_mail_goes_where_delivery_local_says():
    rcpt = "bruno@office.test"
    assert str(local_hop(load(), rcpt)) == f"maildir:{rcpt}"
    relay = load(local="relay", relay_to="127.0.0.1:25")
    assert str(local_hop(relay, rcpt)) == "relay:127.0.0.1:25"
    assert str(local_hop(relay, rcpt, decrypt=True)) == "relay-decrypt:127.0.0.1:25"
    assert str(local_hop(load(local="lmtp", lmtp="127.0.0.1:24"), rcpt)) == "lmtp:127.0.0.1:24"
    assert str(local_hop(load(local="lmtp", lmtp="/run/dovecot/lmtp"), rcpt)) == "lmtp:/run/dovecot/lmtp"
    assert str(local_hop(load(local="lmtp", lmtp="/run/dovecot/lmtp"), rcpt, decrypt=True)) == \
        "lmtp-decrypt:/run/dovecot/lmtp"
