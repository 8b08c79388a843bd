"""Every message of the interop corpus (shared or regenerated) read with `securemail read --json` gives what its manifest says."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import run_cli
from tests.support.corpus import case_files


@pytest.fixture(scope="module")
def reader_home(corpus, tmp_path_factory):
    home = tmp_path_factory.mktemp("reader")
    keys = sorted((corpus["dir"] / "keys").glob("*.asc"))
    res = run_cli(home, "keys", "import", *map(str, keys))
    assert res.exit_code == 0, res.output
    return home


@pytest.mark.parametrize("name", case_files())
def test_corpus_message(corpus, reader_home, name):
    m = next(x for x in corpus["mail"] if x["file"] == name)
    res = run_cli(reader_home, "read", "--json", str(corpus["dir"] / name))
    out = json.loads(res.stdout)
    assert len(out) == 1
    r = out[0]
    if m["expect"] == "show":
        assert res.exit_code == 0, r
        assert r["error"] is None
        assert r["encrypted"] is True and r["decrypted"] is True
        assert r["signature"] == m["signature"], r
        if m.get("signer"):
            assert r["signer"] == m["signer"]
        assert m["sender"] in r["from"]
        if m.get("subject"):
            assert r["subject"] == m["subject"]
        if m.get("body_contains"):
            assert m["body_contains"] in r["body"]
        for att in m.get("attachments", []):
            assert att in [a["name"] for a in r["attachments"]]
    elif m["expect"] == "refuse":
        assert res.exit_code == 1
        assert r["error"], r
        assert r["decrypted"] is False and r["body"] == "" and r["attachments"] == []
        if m.get("must_not_show"):
            assert m["must_not_show"] not in res.output
    else:  # plaintext: never presented as encrypted
        assert r["encrypted"] is False and r["decrypted"] is False
        assert r["signature"] == m.get("signature", "none")
        human = run_cli(reader_home, "read", str(corpus["dir"] / name)).stdout
        assert "NOT ENCRYPTED" in human or "REFUSED" in human


def test_corpus_maildir_exit_status(corpus, reader_home, tmp_path):
    """A Maildir mixing good and refused mail: every message listed, exit 1."""
    md = tmp_path / "Maildir"
    for d in ("new", "cur", "tmp"):
        (md / d).mkdir(parents=True)
    for name in ("mail/plain.eml", "mail/tampered.eml", "mail/encrypted-unsigned.eml"):
        (md / "new" / name.split("/")[1]).write_bytes((corpus["dir"] / name).read_bytes())
    res = run_cli(reader_home, "read", "--json", str(md))
    out = json.loads(res.stdout)
    assert res.exit_code == 1
    assert sorted(r["error"] is None for r in out) == [False, True, True]


def test_compression_bomb_memory_is_bounded(corpus, reader_home):
    """256 MiB of plaintext behind 329 KiB: refused at the limit, peak memory far below the bomb."""
    # VmHWM, not ru_maxrss: Linux keeps the parent's (pytest's) ru_maxrss across fork+exec.
    code = (
        "import re, sys\n"
        "from cli.main import main\n"
        "sys.argv = ['securemail', '--home', sys.argv[1], 'read', '--json', sys.argv[2]]\n"
        "try:\n    main()\n"
        "except SystemExit as e:\n"
        "    hwm = re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)\n"
        "    print('RSS', int(hwm) // 1024, 'EXIT', e.code, file=sys.stderr)\n")
    p = subprocess.run([sys.executable, "-c", code, str(reader_home),
                        str(corpus["dir"] / "mail/compression-bomb.eml")],
                       capture_output=True, text=True, timeout=120)
    rss = int(p.stderr.split("RSS ")[1].split()[0])
    assert "EXIT 1" in p.stderr
    assert json.loads(p.stdout)[0]["error"]
    assert rss < 200, f"peak RSS {rss} MiB"  # about 64 MiB of interpreter + the 64 MiB limit
