"""Hypothesis profiles for the fuzz tests: ``fuzz`` (default, fast) and ``long`` (``make fuzz``).

Selected with ``HYPOTHESIS_PROFILE``; tests take them through ``tests.fuzz.fuzz(n)``
rather than ``settings.load_profile`` so that the rest of the suite keeps its own
settings. Every example must finish within the deadline (bounded time); no example
database is written into the repository.
"""

from __future__ import annotations

from datetime import timedelta

from hypothesis import HealthCheck, settings

_COMMON = dict(database=None, print_blob=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                      HealthCheck.filter_too_much])

settings.register_profile("fuzz", deadline=timedelta(seconds=2), **_COMMON)
settings.register_profile("long", deadline=timedelta(seconds=5), **_COMMON)
