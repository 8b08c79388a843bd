"""The import graph of securemail/ has no circles (issue 11: "The import graph has no circles").

Every ``import`` and ``from ... import`` in a module counts, wherever it is written: at the top,
inside a function (a lazy import hides a circle, it does not remove it) or under
``TYPE_CHECKING``. ``from package import name`` is an edge to ``package.name`` when that is a
module, else to ``package``. A module's own ancestor packages are left out (``queue/store.py``
importing ``queue/models.py`` runs ``queue/__init__.py`` first; that is not a circle between stages).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "securemail"

# Circles still in the tree that other parts of issue 11 remove; each is listed by its sorted
# modules. This list may only shrink: the test fails on any circle not named here, and on a
# listed one that is gone (so that it is taken off the list).
KNOWN: set[frozenset[str]] = set()


def module_names() -> dict[str, Path]:
    out = {}
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[:len(base) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The securemail modules ``module`` imports, anywhere in its text."""
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, module, path.name == "__init__.py")
            for a in node.names:
                targets.add(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base)
    ancestors = {".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)}
    return {t for t in targets if t in modules and t != module and t not in ancestors}


def graph() -> dict[str, set[str]]:
    modules = module_names()
    return {m: imports_of(m, p, modules) for m, p in modules.items()}


def cycles(edges: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(frozenset(component))
    return found


def test_the_graph_sees_relative_lazy_and_type_checking_imports():
    edges = graph()
    assert "securemail.db" in edges["securemail.audit"]                    # from securemail.db import ...
    assert "securemail.keys.binding" in edges["securemail.keys.store"]     # from . import binding as B
    assert "securemail.errors" in edges["securemail.db"]                   # from securemail.errors import ...
    toy = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(toy) == [frozenset("abc")]


def test_no_new_import_circle():
    found = set(cycles(graph()))
    new = found - KNOWN
    assert not new, "import circles: " + "; ".join(" <-> ".join(sorted(c)) for c in sorted(new, key=sorted))
    gone = KNOWN - found
    assert not gone, "take these off KNOWN, they are gone: " + "; ".join(" ".join(sorted(c)) for c in gone)


# The stages a message travels, in order, under the foundation; the composition root and the
# processes' entry points on top (README "Architecture"). A module may import its own stage, an
# earlier one or the foundation, never a later one. The longest matching prefix gives the rank.
STAGES: dict[str, int] = {
    # 0 the foundation: errors, settings, storage, the primitives every stage uses
    "securemail.errors": 0, "securemail.net": 0, "securemail.home": 0, "securemail.config": 0,
    "securemail.config_ops": 0, "securemail.periodic": 0,
    "securemail.db": 0, "securemail.envelope": 0, "securemail.audit": 0, "securemail.crypto": 0,
    "securemail.queue": 0, "securemail.smtp.replies": 0, "securemail.mail.headers": 0,
    "securemail.migrations": 0,
    "securemail.logs": 0, "securemail.metrics": 0,   # what every stage reports to (issue 14)
    # 1 what the gateway knows: mail formats, policy, keys, the federation, its users
    "securemail.mail": 1, "securemail.policy": 1, "securemail.keys": 1, "securemail.federation": 1,
    "securemail.membership": 1, "securemail.users": 1, "securemail.authlimit": 1, "securemail.schema": 1,
    "securemail.transport_map": 1,
    "securemail.manifestfetch": 1, "securemail.checkpoint": 1,
    "securemail": 1,
    # 2 intake (listeners, SMTP sessions, AUTH) -> 3 transform (DATA glue, crypto stage, routes,
    # next hops) -> 4 delivery
    "securemail.smtp": 2, "securemail.transform": 3, "securemail.delivery": 4,
    # 5 the processes (supervision, crypto workers, the serve process) and the bridge (a person's
    # local listeners, built on intake, transform and delivery), 6 the composition root,
    # 7 the roles' entry points and the admin's tools, which call the root
    "securemail.procs": 5, "securemail.bridge": 5, "securemail.app": 6, "securemail.roles": 7,
    "securemail.admin": 7,
}


def stage_of(module: str) -> int:
    parts = module.split(".")
    for i in range(len(parts), 0, -1):
        prefix = ".".join(parts[:i])
        if prefix in STAGES:
            return STAGES[prefix]
    raise AssertionError(f"{module} is in no stage: add it to STAGES")


def test_every_import_runs_from_a_later_stage_to_an_earlier_one_or_the_foundation():
    backwards = sorted(f"{m} ({stage_of(m)}) imports {t} ({stage_of(t)})"
                       for m, targets in graph().items() for t in targets if stage_of(t) > stage_of(m))
    assert not backwards, "imports against the pipeline:\n" + "\n".join(backwards)


def test_the_stage_check_sees_a_backward_import():
    assert stage_of("securemail.transform.stage") == 3 and stage_of("securemail.delivery.hops") == 4
    assert stage_of("securemail.smtp.replies") == 0 and stage_of("securemail.smtp.server") == 2
