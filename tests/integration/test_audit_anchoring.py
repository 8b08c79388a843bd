"""Audit anchoring through the real CLI and running gateways: ``audit checkpoint`` to a file, to standard
output and sent by mail (queued by interieur's gateway, delivered encrypted to an address at justice),
the periodic checkpoints of ``[audit] checkpoint_interval``, then ``audit verify --checkpoint`` before
and after a malicious admin truncates or rewrites the SQLite log."""

from __future__ import annotations

import json
import shutil
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from securemail.audit import GENESIS, chain_hash
from tests.support import OFFICE, Running, audit_records, federation, ok, person, run_cli, wait_for

A, J = "interieur.gouv.fr", "justice.gouv.fr"
AUDITOR = f"controle@{J}"  # stands for the authority's address: a member domain, so mail is encrypted


@pytest.fixture(scope="module")
def fed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("anchoring")
    _, homes = federation(tmp, trusted=OFFICE + "/32", tune={"cpu_workers": "0"})
    a, b = homes[A], homes[J]
    auditor = person(tmp, AUDITOR, b)
    cert = ok(run_cli(a.home, "keys", "export", a.domain_key())).stdout_bytes
    ok(run_cli(auditor, "keys", "import", "-", input=cert))  # the auditor knows interieur's domain key
    a.config.write_text(a.config.read_text().replace("[audit]\n", "[audit]\ncheckpoint_interval = 1\n"))
    with Running(a, b, cpu_workers=0):
        wait_for(lambda: len(checkpoint_files(a)) >= 2, 30, "two periodic checkpoints")
        yield {"tmp": tmp, "a": a, "b": b, "auditor": auditor}


def checkpoint_files(gw) -> list:
    """The checkpoints the gateway has written, not one it is writing (a hidden .tmp, renamed
    when whole: listed, it could be gone before it is read)."""
    d = gw.home / "checkpoints"
    return sorted(f for f in d.iterdir() if not f.name.startswith(".")) if d.exists() else []


def verify(home, *files) -> tuple[int, str]:
    args = [a for f in files for a in ("--checkpoint", str(f))]
    res = run_cli(home, "audit", "verify", *args)
    return res.exit_code, res.output


def test_checkpoint_to_a_file_and_to_stdout(fed):
    a, tmp = fed["a"], fed["tmp"]
    out = ok(run_cli(a.home, "audit", "checkpoint", "--output", str(tmp / "cp-file.json")))
    assert "signed by" in out.stderr + out.stdout
    doc = json.loads((tmp / "cp-file.json").read_bytes())
    assert doc["checkpoint"]["domain"] == A and doc["checkpoint"]["seq"] > 0
    assert "BEGIN PGP SIGNATURE" in doc["signature"]
    printed = ok(run_cli(a.home, "audit", "checkpoint")).stdout
    (tmp / "cp-stdout.json").write_text(printed)
    assert json.loads(printed)["checkpoint"]["seq"] > doc["checkpoint"]["seq"]  # its own record in between
    files = [tmp / "cp-file.json", tmp / "cp-stdout.json", *checkpoint_files(a)]
    code, output = verify(a.home, *files)
    assert code == 0, output
    assert output.count(": ok: record ") == len(files) and "audit log intact" in output
    made = audit_records(a.home, "audit-checkpoint")
    assert {r["fields"]["file"] for r in made} >= {"cp-file.json", None}


def test_checkpoint_sent_by_mail_arrives_encrypted_and_verifies(fed):
    a, b, auditor, tmp = fed["a"], fed["b"], fed["auditor"], fed["tmp"]
    out = ok(run_cli(a.home, "audit", "checkpoint", "--to", AUDITOR, "--output", str(tmp / "cp-sent.json")))
    assert f"queued to {AUDITOR}" in out.output
    box = b.home / "Maildir" / AUDITOR / "new"
    [mail] = wait_for(lambda: sorted(box.iterdir()) if box.exists() else [], 60, "the checkpoint mail")
    assert b'"checkpoint"' not in mail.read_bytes()  # encrypted on the way
    [read] = json.loads(ok(run_cli(auditor, "read", "--json", str(mail))).stdout)
    assert read["decrypted"] and read["signature"] == "valid" and f"<gateway@{A}>" in read["from"]
    received = read["body"][read["body"].index("{"):]
    (tmp / "cp-received.json").write_text(received)
    assert json.loads(received) == json.loads((tmp / "cp-sent.json").read_bytes())
    code, output = verify(a.home, tmp / "cp-received.json")
    assert code == 0 and ": ok: record " in output, output
    [queued] = audit_records(a.home, "checkpoint_queued")
    assert queued["fields"]["rcpt_domain"] == J


def test_truncation_and_rewrite_after_checkpoints_are_named(fed, tmp_path):
    a = fed["a"]
    anchors = checkpoint_files(a)
    home = _home_copy(a, tmp_path)  # tamper with a copy: the running gateway keeps its own log
    copy = home / "securemail.db"
    last = max(json.loads(f.read_bytes())["checkpoint"]["seq"] for f in anchors)
    first = min(json.loads(f.read_bytes())["checkpoint"]["seq"] for f in anchors)
    keep = first + (last - first) // 2
    _rewrite(copy, lambda rows: rows[:keep])  # truncated consistently: head and chain agree
    code, output = verify(home, *anchors)
    assert code == 1 and "audit log intact" in output, output  # the log alone looks fine
    assert "TRUNCATED: record " in output and f"the log ends at record {keep}" in output
    _rewrite(copy, lambda rows: [dict(r, kind="refused") if r["seq"] == 2 else r for r in rows])  # rehashed
    code, output = verify(home, *anchors)
    assert code == 1 and "REWRITTEN: record " in output and "records 1 to " in output, output


def _home_copy(gw, tmp_path) -> Path:
    """A copy of the running gateway's home, its database copied online (SQLite's backup API)."""
    home = tmp_path / "home"
    shutil.copytree(gw.home, home, ignore=shutil.ignore_patterns("Maildir", "securemail.db*", "*.lock"))
    with closing(sqlite3.connect(gw.home / "securemail.db")) as src, \
            closing(sqlite3.connect(home / "securemail.db")) as dst:
        src.backup(dst)
    text = (home / "securemail.toml").read_text().replace(str(gw.home / "securemail.db"), str(home / "securemail.db"))
    (home / "securemail.toml").write_text(text)
    return home


def _rewrite(db, change) -> None:
    """A malicious admin on the SQLite file: the records changed, renumbered, every hash recomputed."""
    with closing(sqlite3.connect(db)) as conn, conn:
        conn.row_factory = sqlite3.Row
        rows = [dict(r) for r in conn.execute("SELECT seq, at, kind, fields FROM audit ORDER BY seq")]
        prev, out = GENESIS, []
        for seq, r in enumerate(change(rows), 1):
            digest = chain_hash(prev, seq, r["at"], r["kind"], json.loads(r["fields"]))
            out.append((seq, r["at"], r["kind"], r["fields"], prev, digest))
            prev = digest
        conn.execute("DELETE FROM audit")
        conn.executemany("INSERT INTO audit (seq, at, kind, fields, prev_hash, hash) VALUES (?,?,?,?,?,?)", out)
        conn.execute("UPDATE audit_head SET seq = ?, hash = ?", (len(out), prev))
