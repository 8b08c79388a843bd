"""The securemail CLI run in-process (click's runner), as tests, proof and bench set homes up."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_cli(home: Path, *args: str, input: bytes | None = None):
    """Run the securemail CLI in-process; returns click's Result (exit_code, stdout, stderr)."""
    from click.testing import CliRunner

    from cli.main import cli
    return CliRunner().invoke(cli, ["--home", str(home), *args], input=input, catch_exceptions=False)


def ok(res, what: str = ""):
    assert res.exit_code == 0, f"{what}: exit {res.exit_code}\n{res.output}\n{getattr(res, 'stderr', '')}"
    return res


def cli(home: Path, *args: str, input: bytes | None = None) -> str:
    """``securemail --home HOME ARGS...``: its stdout, or RuntimeError (for the benchmark)."""
    res = run_cli(home, *args, input=input)
    if res.exit_code != 0:
        raise RuntimeError(f"securemail {' '.join(args[:3])}: exit {res.exit_code}\n{res.output}")
    return res.stdout
