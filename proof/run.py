"""Run the full proof and write docs/reliability.md; exit non-zero if anything was lost or leaked.

    python -m proof.run                # what `make proof` runs: the full set
    python -m proof.run --mode fast    # the fast subset of `make test`, same report
    python -m proof.run --render DIR   # re-render the note from a previous run's files

Runs ``pytest tests/proof tests/hostile tests/fuzz`` once with
``SECUREMAIL_PROOF=full``, ``HYPOTHESIS_PROFILE=long``,
``SECUREMAIL_PROOF_FIGURES`` (the crash and fault harnesses' figures) and
``SECUREMAIL_PROOF_OUT`` (the replies the hostile-input tests observed), plus a
JUnit file for every test's outcome, then renders them with ``proof.report``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import charts
from proof.report import Run, render, verdict

REPO = Path(__file__).resolve().parent.parent
SUITES = ("tests/proof", "tests/hostile", "tests/fuzz")
NOTE = REPO / "docs" / "reliability.md"


def run_pytest(work: Path, mode: str, extra: list[str]) -> tuple[int, float]:
    env = {**os.environ, "SECUREMAIL_PROOF": mode,
           "SECUREMAIL_PROOF_FIGURES": str(work / "figures.json"),
           "SECUREMAIL_PROOF_OUT": str(work / "hostile.json"),
           "HYPOTHESIS_PROFILE": "long" if mode == "full" else os.environ.get("HYPOTHESIS_PROFILE", "fuzz")}
    suites = [s for s in SUITES if (REPO / s).is_dir()]
    timeout = ["--timeout=3600"] if mode == "full" else []  # the long fuzz profile: 20 times the examples
    cmd = [sys.executable, "-m", "pytest", "-q", "-rfEs", "-p", "no:cacheprovider", *timeout,
           f"--junitxml={work / 'junit.xml'}", *suites, *extra]
    print("proof:", " ".join(cmd), flush=True)
    began = time.monotonic()
    rc = subprocess.call(cmd, cwd=REPO, env=env)
    return rc, time.monotonic() - began


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="proof.run", description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=("full", "fast"), default="full")
    ap.add_argument("--render", metavar="DIR", type=Path, help="only render the files of an earlier run")
    ap.add_argument("--output", type=Path, default=NOTE)
    ap.add_argument("pytest_args", nargs="*", help="passed to pytest (after --)")
    args = ap.parse_args(argv)

    if args.render:
        work = args.render
        meta = json.loads((work / "run.json").read_text())
    else:
        work = Path(tempfile.mkdtemp(prefix="securemail-proof-"))
        load = os.getloadavg()
        rc, seconds = run_pytest(work, args.mode, args.pytest_args)
        meta = {"mode": args.mode, "pytest_exit": rc, "seconds": round(seconds, 1),
                "finished": time.time(), "load_before": [round(x, 2) for x in load]}
        (work / "run.json").write_text(json.dumps(meta))
    run = Run.load(work, meta)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(render(run))
    problems = verdict(run)
    print(f"proof: wrote {args.output} (raw figures in {work})")
    if charts.available() and run.figures:
        for path in charts.draw(None, run.figures, args.output.parent):
            print(f"proof: wrote {path}")
    elif not charts.available():
        print("proof: no chart: matplotlib is missing (pip install -e '.[bench]')")
    for p in problems:
        print(f"proof: FAILED: {p}", file=sys.stderr)
    if not problems:
        print("proof: passed: 0 lost, 0 leaked, every fault and hostile input answered as specified")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
