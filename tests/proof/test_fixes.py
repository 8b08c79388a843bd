"""Regression tests, without sockets, for what the proof harnesses found (each also proven end to end).

* A ``delivery.lease_seconds`` of 60 or less stopped ``serve`` ("lease_seconds must exceed
  the SMTP timeout", a timeout no setting reaches); the step timeout now scales with the lease.
* Our own OpenPGP signing key expired: office mail got ``550 5.7.1`` (the office MTA bounces
  it to the user for good); now ``451``, with an error in the log for the operator.
* A served domain without a DKIM key started, then refused every outbound message with a 5xx;
  now ``serve`` does not start. A corrupt DKIM or TLS key names its file at start.
"""

from __future__ import annotations

import time
from datetime import timedelta

import pytest

from securemail.config import GatewayConfig
from securemail.crypto import openpgp
from securemail.crypto.dkim import generate_dkim_key
from securemail.crypto.keys import Key
from securemail.delivery.worker import SMTP_TIMEOUT, DeliveryWorker
from securemail.errors import ConfigError, SecureMailError, TemporaryFailure
from securemail.crypto.dkim_signing import dkim_signers
from securemail.crypto.tls import server_tls_context
from securemail.admin.setup import self_signed_cert
from securemail.transform.routes import usable_signer
from securemail.queue import Queue

DOMAIN = "a.gov.test"


def _config(tmp_path, **delivery) -> GatewayConfig:
    return GatewayConfig.from_dict({"gateway": {"domains": [DOMAIN]}, "delivery": delivery}, tmp_path)


@pytest.mark.parametrize("lease, timeout", [(8, 2.0), (40, 10.0), (300, SMTP_TIMEOUT), (3600, SMTP_TIMEOUT)])
def test_short_lease_gives_a_shorter_smtp_timeout_instead_of_refusing_to_start(tmp_path, lease, timeout):
    config = _config(tmp_path, lease_seconds=lease)
    self_signed_cert(f"gw.{DOMAIN}", config.tls_cert, config.tls_key)  # shown to members, read here
    w = DeliveryWorker.from_config(config, Queue(None), owner="w1")
    assert (w.lease_seconds, w.timeout) == (float(lease), timeout)


def test_expired_own_signing_key_is_a_temporary_failure():
    key = Key(openpgp.generate(f"gateway <gateway@{DOMAIN}>", "ed25519", timedelta(days=1), None))
    usable_signer(key, time.time())  # valid today: no error
    with pytest.raises(TemporaryFailure) as err:
        usable_signer(key, time.time() + 2 * 86400)
    reply = err.value.smtp_reply()
    assert reply.startswith("451 4.") and key.fingerprint not in reply, reply


def _dkim(tmp_path, selector: str, pem: bytes) -> dict:
    path = tmp_path / f"{selector}.pem"
    path.write_bytes(pem)
    return {"domain": DOMAIN, "selector": selector, "algorithm": "ed25519", "private_key": str(path)}


def test_a_served_domain_without_a_dkim_key_does_not_start(tmp_path):
    with pytest.raises(ConfigError, match=f"no DKIM key configured for {DOMAIN}"):
        dkim_signers(_config(tmp_path))
    good = _dkim(tmp_path, "s1", generate_dkim_key("ed25519").private_pem)
    cfg = GatewayConfig.from_dict({"gateway": {"domains": [DOMAIN]}, "keys": {"dkim": [good]}}, tmp_path)
    assert set(dkim_signers(cfg)) == {DOMAIN}


def test_a_corrupt_dkim_key_names_its_file(tmp_path):
    bad = _dkim(tmp_path, "s1", b"-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n")
    cfg = GatewayConfig.from_dict({"gateway": {"domains": [DOMAIN]}, "keys": {"dkim": [bad]}}, tmp_path)
    with pytest.raises(ConfigError, match=r"DKIM private key unreadable \(s1\.pem\)"):
        dkim_signers(cfg)


def test_a_missing_tls_key_names_its_files(tmp_path):
    with pytest.raises(SecureMailError, match=r"TLS certificate unavailable \(cert\.pem, key\.pem\): "
                                              r"No such file or directory"):
        server_tls_context(_config(tmp_path))
