"""The proof's figures: what each harness saw, written as JSON for proof/run.py.

Every harness adds one entry per scenario: which invariant or fault, the
backend, the run count, and its counts (acked, delivered, duplicated, lost,
leaks) and the replies clients saw. ``SECUREMAIL_PROOF_FIGURES`` names the file,
rewritten after every entry; without it nothing is written.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from pathlib import Path

MODE = "full" if os.environ.get("SECUREMAIL_PROOF", "").lower() == "full" else "fast"
FULL = MODE == "full"
ENV_FIGURES = "SECUREMAIL_PROOF_FIGURES"


def runs(fast: int, full: int) -> int:
    """A run count for the current mode."""
    return full if FULL else fast


class Figures:
    """Entries recorded by the harnesses of one pytest session."""

    def __init__(self) -> None:
        self.entries: list[dict] = []
        self._lock = threading.Lock()

    def record(self, *, group: str, name: str, **fields) -> dict:
        """Add one scenario's figures; Counters become plain dicts."""
        entry = {"group": group, "name": name, "mode": MODE, "at": time.time(),
                 **{k: dict(v) if isinstance(v, Counter) else v for k, v in fields.items()}}
        with self._lock:
            self.entries.append(entry)
            path = os.environ.get(ENV_FIGURES)
            if path:  # at once: a run that is killed half-way still leaves what it saw
                self.write(Path(path))
        return entry

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {"mode": MODE, "entries": self.entries}
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
        tmp.replace(path)


FIGURES = Figures()
