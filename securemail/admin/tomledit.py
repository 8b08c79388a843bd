"""Small edits of securemail.toml that keep the admin's comments and layout: set or remove keys of a
table, add or drop a table, drop or change entries of an array of tables.

Each edit works on the text by sections (a header line and the lines up to the next header) and is
then proved: ``checked`` parses the result and compares it with what the same change makes of the
parsed file. When they differ (a layout these edits do not know) the file is left alone and the
error says what to change by hand.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import ConfigError

_HEADER = re.compile(r"^\s*(\[\[?)\s*([A-Za-z0-9_.\-]+)\s*\]\]?\s*(?:#.*)?$")


@dataclass(frozen=True)
class Section:
    name: str          # "" for the lines before the first header
    array: bool        # [[name]]
    start: int         # index of its header line (of its first line for "")
    end: int           # index after its last line


def sections(lines: list[str]) -> list[Section]:
    heads = [(i, m) for i, line in enumerate(lines) if (m := _HEADER.match(line))]
    out = [Section("", False, 0, heads[0][0] if heads else len(lines))]
    for n, (i, m) in enumerate(heads):
        end = heads[n + 1][0] if n + 1 < len(heads) else len(lines)
        out.append(Section(m.group(2), m.group(1) == "[[", i, end))
    return out


def value(v: str | bool | float) -> str:
    """A TOML value: a JSON string is a TOML basic string; true/false; a number."""
    return ("true" if v else "false") if isinstance(v, bool) else json.dumps(v)


def set_keys(text: str, table: str, values: dict, remove: tuple[str, ...] = ()) -> str:
    """In ``[table]``: ``key = value`` for each of ``values`` (replaced where it is, else added under
    the header), the lines of ``remove`` dropped; the table is appended when there is none."""
    lines = text.splitlines(keepends=True)
    found = [s for s in sections(lines) if s.name == table and not s.array]
    if not found:
        body = "".join(f"{k} = {value(v)}\n" for k, v in values.items())
        return text + ("" if not text or text.endswith("\n") else "\n") + f"\n[{table}]\n{body}"
    s, todo = found[0], dict(values)
    out = lines[:s.start + 1]
    for line in lines[s.start + 1:s.end]:
        key = _key(line)
        if key in remove:
            continue
        if key in todo:
            out.append(f"{key} = {value(todo.pop(key))}\n")
            continue
        out.append(line)
    at = max((i + 1 for i, line in enumerate(out) if i > s.start and _key(line)), default=s.start + 1)
    out[at:at] = [f"{k} = {value(v)}\n" for k, v in todo.items()]  # after the table's last key
    return "".join(out + lines[s.end:])


def insert_table(text: str, after: str, table: str, values: dict) -> str:
    """``[table]`` with ``values``, put after the section ``[after]`` (or at the end)."""
    lines = text.splitlines(keepends=True)
    where = next((s.end for s in sections(lines) if s.name == after and not s.array), len(lines))
    if where and not lines[where - 1].endswith("\n"):
        lines[where - 1] += "\n"
    block = [f"[{table}]\n", *(f"{value(k)} = {value(v)}\n" for k, v in values.items()), "\n"]
    return "".join(lines[:where] + block + lines[where:])


def drop_table(text: str, table: str) -> str:
    lines = text.splitlines(keepends=True)
    for s in sections(lines):
        if s.name == table and not s.array:
            return "".join(lines[:s.start] + lines[s.end:])
    return text


def append_array_entry(text: str, name: str, values: dict) -> str:
    """A ``[[name]]`` entry with ``values``, after the last one (or at the end)."""
    lines = text.splitlines(keepends=True)
    last = [s for s in sections(lines) if s.name == name and s.array]
    where = last[-1].end if last else len(lines)
    if where and not lines[where - 1].endswith("\n"):
        lines[where - 1] += "\n"
    gap = ["\n"] if where and lines[where - 1].strip() else []
    block = [f"[[{name}]]\n", *(f"{k} = {value(v)}\n" for k, v in values.items())]
    return "".join(lines[:where] + gap + block + lines[where:])


def edit_array(text: str, name: str, keep: Callable[[dict], bool], remove: tuple[str, ...] = ()) -> str:
    """Each ``[[name]]`` entry: dropped when ``keep(entry)`` is false, else its ``remove`` keys dropped."""
    lines = text.splitlines(keepends=True)
    out = lines[:]
    for s in reversed(sections(lines)):
        if s.name != name or not s.array:
            continue
        try:
            entry = tomllib.loads("".join(lines[s.start + 1:s.end]))
        except tomllib.TOMLDecodeError:
            continue  # left as it is: checked() says so
        if not keep(entry):
            out[s.start:s.end] = []
        else:
            out[s.start:s.end] = [line for line in lines[s.start:s.end] if _key(line) not in remove]
    return "".join(out)


def checked(old: str, new: str, expect: Callable[[dict], dict], what: str) -> str:
    """``new`` if it parses to ``expect(parsed old)``; else ConfigError saying what to do by hand."""
    try:
        ok = tomllib.loads(new) == expect(tomllib.loads(old))
    except (tomllib.TOMLDecodeError, KeyError, TypeError, ValueError):
        ok = False
    if not ok:
        raise ConfigError(f"securemail.toml could not be changed safely; {what} by hand")
    return new


def _key(line: str) -> str | None:
    m = re.match(r"\s*([A-Za-z0-9_\-]+|\"[^\"]*\")\s*=", line)
    return m.group(1).strip('"') if m else None
