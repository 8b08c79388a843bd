"""Threat agent: a malicious key directory (a member's WKD, or one user who can publish there).

Every test drives the real gateways of the conftest as this agent would and
asserts a promise of docs/security-target.md.
"""

from __future__ import annotations

import pytest

from tests.hostile import ALICE, BRUNO, GATEWAY_PEER, JUSTICE, OFFICE, OWN, STRANGER  # noqa: F401

pytestmark = pytest.mark.timeout(300)
