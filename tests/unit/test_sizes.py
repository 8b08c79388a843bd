"""No file in securemail/ or cli/ is over 400 lines, and no function over 60 (issue 11): a stage
that outgrows this is split where its parts fall apart, not left to grow."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MAX_FILE, MAX_FUNCTION = 400, 60


def sources():
    for top in ("securemail", "cli"):
        yield from sorted((ROOT / top).rglob("*.py"))


def test_no_file_over_400_lines():
    big = {str(p.relative_to(ROOT)): n for p in sources()
           if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_FILE}
    assert not big, big


def test_no_function_over_60_lines():
    long = {}
    for p in sources():
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION:
                    long[f"{p.relative_to(ROOT)}:{node.lineno} {node.name}"] = n
    assert not long, long


def test_the_size_checks_see_the_tree():
    files = list(sources())
    assert any(p.parts[-2:] == ("app", "gateway.py") for p in files) and any(p.parts[-2] == "cli" for p in files)
