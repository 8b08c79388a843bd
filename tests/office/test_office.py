"""The office example as a test: examples/office's one scenario, with real Postfix, Dovecot and clients.

The scenario (two ministries, each with a private Postfix, a private Dovecot and a
securemail gateway; swaks, neomutt, mbsync, imaplib and GnuPG as the people's
programs) is imported from examples/office, the same that `make office` runs;
each test is one of its paths, in order, on one set of servers for the module.
Without the Debian packages (or root) it is skipped with the reason, except under
CI=true, where it fails. Besides the scenario's own checks, what crossed between
the gateways is judged by tests/differential/checker.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.differential import checker
from tests.support import free_port
from tests.support.office import office_module

pytestmark = pytest.mark.office


def _package():
    """examples/office's instances and paths (the package ``office``)."""
    return office_module("instances"), office_module("paths")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    instances, _ = _package()
    why = ", ".join(instances.missing_programs())
    if not why and os.geteuid() != 0:
        why = "root (Postfix and Dovecot instances start as root)"
    if why:
        message = f"office scenario needs {why}; apt-get install {instances.PACKAGES}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    build = office_module("scenario").build
    w = build(tmp_path_factory.mktemp("office"), print, port=free_port)
    try:
        yield w
    finally:
        w.close()


def _path(world, number: int):
    _, paths = _package()
    title, path = paths.PATHS[number - 1]
    print(f"\n== {title}")
    return path(world)


def test_1_plain_mail_both_ways_over_lmtp_and_relay_to_is_read_with_mbsync_and_imaplib(world):
    status = _path(world, 1)
    assert status.startswith("encrypted=yes; signature=valid")


def test_2_pgp_mime_from_gnupg_arrives_unchanged_and_verifies(world):
    assert _path(world, 2).startswith("encrypted=yes")


def test_3_gateway_refusal_bounces_into_the_senders_mailbox(world):
    reasons = _path(world, 3)
    assert "5.7.1" in reasons and "exceeds size limit" in reasons


def test_4_gateway_down_postfix_queues_then_delivers_once(world):
    assert "Connection refused" in _path(world, 4)


def test_5_nothing_readable_crossed_between_the_gateways(world):
    bodies = _path(world, 5)
    assert len(bodies) >= 4
    for body in bodies:
        assert checker.problems(body) == [], checker.problems(body)


def test_systemd_unit_exposure_is_at_most_2(tmp_path):
    """The hardened unit of examples/office/systemd, filled in, as systemd-analyze judges it offline."""
    instances, _ = _package()
    if shutil.which("systemd-analyze") is None:
        if os.environ.get("CI"):
            pytest.fail("systemd-analyze missing (apt-get install systemd)")
        pytest.skip("systemd-analyze missing (apt-get install systemd)")
    unit = instances.systemd_unit(tmp_path / "securemail.service", home=tmp_path / "home",
                                  securemail=Path(sys.executable).parent / "securemail")
    exposure = instances.unit_exposure(unit)
    assert exposure is not None and exposure <= 2.0, exposure
    verify = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0 and "not safe" not in verify.stderr, verify.stderr
