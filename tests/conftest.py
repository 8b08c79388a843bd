"""Shared fixtures: the interop corpus from ../shared/corpus and fresh securemail homes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO.parent / "shared" / "corpus"


@pytest.fixture(scope="session")
def corpus() -> dict:
    """The manifest, with absolute paths; skipped visibly when the corpus is absent (never under CI)."""
    manifest = CORPUS / "manifest.json"
    if not manifest.exists():
        if os.environ.get("CI"):
            pytest.fail(f"corpus missing at {CORPUS}")
        pytest.skip(f"shared corpus not found at {CORPUS}")
    data = json.loads(manifest.read_text())
    data["dir"] = CORPUS
    return data


def run_cli(home: Path, *args: str, input: bytes | None = None):
    """Run the securemail CLI in-process; returns click's Result (exit_code, stdout, stderr)."""
    from cli.main import cli
    return CliRunner().invoke(cli, ["--home", str(home), *args], input=input, catch_exceptions=False)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"
