"""docs/deploy.md cannot drift from what `make office` runs: its snippets are the templates' lines.

The guide's convention (said at its top): a fenced block ``LANG title=PATH``
quotes the file PATH of this repository (examples/office/...): every non-blank
line of the block must be a line of that file, in the file's order (lines in
between may be left out). A block ``toml title=securemail.toml init="ARGS"``
quotes what ``securemail gateway init --domain interieur.gouv.fr ARGS`` writes.
Any other block is a command (``sh``) or an example output (``text``); a
config-looking block without a title is an error. The ``securemail`` commands of
the ``sh`` blocks must name real commands and real options of the CLI.
Fast: no server is started (``gateway init`` makes its keys, under a second).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest

from cli.main import cli
from tests.support import REPO, ok, run_cli

DOC = REPO / "docs" / "deploy.md"
FREE = {"sh", "text"}     # commands and example outputs: not quoted from a file
TEMPLATES = ["examples/office/postfix/main.cf", "examples/office/postfix/master.cf",
             "examples/office/postfix/sender_logins", "examples/office/dovecot/dovecot.conf",
             "examples/office/dovecot/mail-crypt.conf", "examples/office/systemd/securemail.service"]
FENCE = re.compile(r"^```(?P<info>[^\n`]*)\n(?P<body>.*?)^```\s*$", re.M | re.S)


def blocks() -> list[tuple[int, str, dict[str, str], str]]:
    """Every fenced block of the guide: (line number, language, attributes, body)."""
    text = DOC.read_text()
    out = []
    for m in FENCE.finditer(text):
        words = shlex.split(m.group("info"))
        lang = words[0] if words else ""
        attrs = dict(w.split("=", 1) for w in words[1:] if "=" in w)
        out.append((text.count("\n", 0, m.start()) + 1, lang, attrs, m.group("body")))
    return out


def in_order(quoted: str, lines: list[str]) -> list[str]:
    """The quoted lines that are not lines of ``lines`` in that order (empty: all are)."""
    at, missing = 0, []
    for q in (x.rstrip() for x in quoted.splitlines()):
        if not q.strip():
            continue
        try:
            at = lines.index(q, at) + 1
        except ValueError:
            missing.append(q)
    return missing


def test_every_config_block_names_its_file_and_every_template_is_quoted():
    found = blocks()
    assert len(found) >= 15
    for line, lang, attrs, _ in found:
        assert lang in FREE or "title" in attrs, f"docs/deploy.md:{line}: a ```{lang} block without title=FILE"
    titles = {attrs.get("title") for _, _, attrs, _ in found}
    assert set(TEMPLATES) <= titles, f"templates the guide never quotes: {set(TEMPLATES) - titles}"


@pytest.mark.parametrize("line, title, body", [
    (line, attrs["title"], body) for line, _, attrs, body in blocks() if "title" in attrs and "init" not in attrs])
def test_a_quoted_block_is_lines_of_its_template(line, title, body):
    path = REPO / title
    assert path.is_file() and path.resolve().is_relative_to(REPO), f"docs/deploy.md:{line}: no file {title}"
    missing = in_order(body, [x.rstrip() for x in path.read_text().splitlines()])
    assert not missing, f"docs/deploy.md:{line}: not lines of {title} (or not in its order): {missing}"


def test_securemail_toml_blocks_are_what_gateway_init_writes(tmp_path):
    inits = [(line, attrs["init"], body) for line, _, attrs, body in blocks() if "init" in attrs]
    assert {i for _, i, _ in inits} >= {"--lmtp /run/dovecot/lmtp", "--relay-to 127.0.0.1:10025"}
    written: dict[str, list[str]] = {}
    for line, args, body in inits:
        if args not in written:
            home = tmp_path / f"gw{len(written)}"
            ok(run_cli(home, "gateway", "init", "--domain", "interieur.gouv.fr", "--submission", "none",
                       "--wkd", "none", *shlex.split(args)), f"gateway init {args}")
            written[args] = [x.rstrip() for x in (home / "securemail.toml").read_text().splitlines()]
        missing = in_order(body, written[args])
        assert not missing, f"docs/deploy.md:{line}: gateway init {args} does not write {missing}"


def commands() -> list[tuple[int, list[str]]]:
    """Each ``securemail --home DIR ...`` of the sh blocks: its words after the home, up to a pipe,
    a redirection or the end of the command (continuation lines joined; quotes as the shell reads them)."""
    out = []
    for line, lang, _, body in blocks():
        if lang != "sh":
            continue
        for command in body.replace("\\\n", " ").splitlines():
            lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
            lexer.whitespace_split = True
            words = list(lexer)
            for i in (i for i, w in enumerate(words[:-2]) if w == "securemail" and words[i + 1] == "--home"):
                rest = words[i + 3:]
                end = next((j for j, w in enumerate(rest) if set(w) <= set(lexer.punctuation_chars)), len(rest))
                out.append((line, rest[:end]))
    return out


def test_the_securemail_commands_of_the_guide_exist_with_their_options():
    found = commands()
    assert len(found) >= 10
    for line, words in found:
        command, ctx = cli, click.Context(cli)
        while isinstance(command, click.Group) and words and not words[0].startswith("-"):
            name = words.pop(0)
            command = command.get_command(ctx, name)
            assert command is not None, f"docs/deploy.md:{line}: no command {name!r}"
        assert not isinstance(command, click.Group), f"docs/deploy.md:{line}: {command.name} needs a subcommand"
        options = {o for p in command.params for o in getattr(p, "opts", []) + getattr(p, "secondary_opts", [])}
        for w in words:
            if w.startswith("--"):
                assert w.split("=", 1)[0] in options, f"docs/deploy.md:{line}: {command.name} has no {w}"


def test_the_office_readme_section_links_the_guide():
    readme = (REPO / "README.md").read_text()
    section = readme.split("### With real office servers", 1)[1].split("\n## ", 1)[0]
    assert "docs/deploy.md" in section
    assert Path(DOC).is_file()
