"""Loaded by every Python process the test session starts (tests/differential puts this directory on
PYTHONPATH): in a gateway's child process, each body sent to a member gateway is judged by
tests/differential/checker.py and the verdict appended to ``$SECUREMAIL_DIFFERENTIAL_OUT/<pid>.jsonl``.

Nothing happens until ``securemail.delivery.pool`` is imported (a process that never delivers
never loads the checker), nothing at all outside a test session, and nothing in a process that
runs pytest (a pytest-xdist worker inherits this path from the controller): the plugin observes
the gateways built there, and a test's own SessionPool aimed at a sink is not a gateway.
"""

import os
import sys

_OUT = os.environ.get("SECUREMAIL_DIFFERENTIAL_OUT")
_TARGET = "securemail.delivery.pool"


def _checker():
    import importlib.util
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "checker.py")
    spec = importlib.util.spec_from_file_location("securemail_differential_checker", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _patch(pool) -> None:
    import json
    checker = _checker()
    original = pool.SessionPool.deliver

    async def deliver(self, hop, mail_from, rcpt, body, **kw):
        # A pytest process (a pytest-xdist worker starts with this directory on its path too) is
        # observed by the plugin itself, which tells a gateway's pool from a test's own sink.
        if str(hop).startswith("smtp:") and "_pytest" not in sys.modules:
            line = {"size": len(body), "hop": str(hop).rsplit(":", 1)[0], "problems": checker.problems(bytes(body))}
            with open(os.path.join(_OUT, f"{os.getpid()}.jsonl"), "a") as f:
                f.write(json.dumps(line) + "\n")
        return await original(self, hop, mail_from, rcpt, body, **kw)
    pool.SessionPool.deliver = deliver


class _Finder:
    """Finds nothing itself: wraps the real loader of ``_TARGET`` so the module is patched once loaded."""

    def find_spec(self, name, path=None, target=None):
        if name != _TARGET:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                break
        else:
            return None
        exec_module = spec.loader.exec_module

        def exec_and_patch(module):
            exec_module(module)
            _patch(module)
        spec.loader.exec_module = exec_and_patch
        return spec


if _OUT and os.path.isdir(_OUT):
    sys.meta_path.insert(0, _Finder())
