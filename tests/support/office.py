"""examples/office as the package ``office``, for the tests (its modules import each other relatively).

``office_module("instances")`` loads examples/office/__init__.py under the name
``office`` once (as `make office` does by putting examples/ on sys.path) and
returns ``office.instances``: tests/office runs the scenario from it, and
tests/support/dovecot.py configures its Dovecot with the office's template.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from types import ModuleType

from .commands import REPO

OFFICE = REPO / "examples" / "office"


def office_module(name: str) -> ModuleType:
    """``office.NAME`` from examples/office (``office`` itself registered on first use)."""
    if "office" not in sys.modules:
        spec = importlib.util.spec_from_file_location("office", OFFICE / "__init__.py",
                                                      submodule_search_locations=[str(OFFICE)])
        module = importlib.util.module_from_spec(spec)
        sys.modules["office"] = module
        spec.loader.exec_module(module)
    return importlib.import_module(f"office.{name}")
