"""A home holding every key of the interop corpus, its secret keys unlocked, for tests that read
the corpus's mail in-process (the read path, the bridge's view)."""

from __future__ import annotations

import contextlib
from pathlib import Path

from securemail.app import open_home

from .commands import run_cli


@contextlib.contextmanager
def corpus_reader(corpus: dict, home: Path):
    """(the home's Core, its secret keys unlocked) for the duration of the block."""
    res = run_cli(home, "keys", "import", *map(str, sorted((corpus["dir"] / "keys").glob("*.asc"))))
    assert res.exit_code == 0, res.output
    core = open_home(home)
    try:
        with contextlib.ExitStack() as stack:
            keys = []
            for k in core.keys.secret_keys():
                with contextlib.suppress(Exception):   # a corpus key this home cannot unlock is left out
                    stack.enter_context(k.pgp.unlocked(None))
                    keys.append(k)
            yield core, keys
    finally:
        core.close()
