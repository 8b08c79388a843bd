"""Property-based fuzzing of the parsers and decisions (hypothesis); see conftest.py for the profiles.

``fuzz(n)`` is the settings decorator every test here uses: ``n`` examples in
the default profile (the whole directory runs in under a minute), twenty times
more under ``HYPOTHESIS_PROFILE=long`` (``make fuzz``). ``only_ours`` runs a
function and lets nothing but a SecureMailError escape; ``bounded`` also
measures its peak memory.
"""

from __future__ import annotations

import importlib
import os
import tracemalloc

from hypothesis import settings

from securemail.errors import SecureMailError

PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "fuzz")
LONG = PROFILE == "long"


def fuzz(max_examples: int, **overrides) -> settings:
    """The active profile with ``max_examples`` (times 20 in the long profile) and ``overrides``."""
    importlib.import_module(".conftest", __package__)  # registers the profiles (pytest has already)
    base = settings.get_profile(PROFILE if PROFILE in ("fuzz", "long") else "fuzz")
    return settings(base, max_examples=max_examples * (20 if LONG else 1), **overrides)


def only_ours(fn, *args, **kwargs):
    """fn(*args) or None if it raised a SecureMailError; any other exception fails the test."""
    try:
        return fn(*args, **kwargs)
    except SecureMailError:
        return None


def bounded(limit_bytes: int, fn, *args, **kwargs):
    """only_ours(fn, ...) with Python's peak allocation during the call kept under ``limit_bytes``."""
    tracemalloc.start()
    try:
        result = only_ours(fn, *args, **kwargs)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < limit_bytes, f"peak memory {peak >> 10} KiB over {limit_bytes >> 10} KiB"
    return result
