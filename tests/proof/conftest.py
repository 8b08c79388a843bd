"""Fixtures of the proof harnesses: the figures file and log capture."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .figures import ENV_FIGURES, FIGURES, Figures
from .leaks import LogCapture


@pytest.fixture(scope="session", autouse=True)
def _write_figures():
    """At the end of the session, the figures go to $SECUREMAIL_PROOF_FIGURES (when set)."""
    yield
    path = os.environ.get(ENV_FIGURES)
    if path:
        FIGURES.write(Path(path))


@pytest.fixture
def figures() -> Figures:
    return FIGURES


@pytest.fixture
def logs():
    """Every log line of the gateways built in this process during the test."""
    with LogCapture() as cap:
        yield cap
