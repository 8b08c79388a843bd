"""gateway backup and restore: a consistent online copy of a home, and a fresh home made from it.

A backup is a directory (0700, every file 0600):

``backup.json``
    what it holds: the securemail version, the time, the home it was taken from, the database
    (kind, file, PostgreSQL schema, schema revision) and every file with its mode and SHA-256
``home/``
    the home's files: the configuration, the passwords file, the TLS certificate and key, the
    DKIM keys, the installed manifest. The mail in ``Maildir/`` (delivered mail, the users'),
    logs, lock files and the database's own files are not in it
``outside/``
    files the configuration names outside the home (a certificate from the ministry's PKI), by
    their absolute path
``database.sqlite`` or ``database.pgdump``
    the queue, the audit log and the keys, copied while the gateway runs (``backup_db``)

The home's files are copied before the database: a key or a certificate changed during a
backup is the only thing it can miss. ``restore`` checks every SHA-256, refuses a home that is
not fresh and a database that is not empty, writes the files back with their modes, puts the
old home's path in the configuration right (``database.url``, any absolute path into it), and
restores the database; the restored gateway delivers what was queued when the copy was taken.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import migrations
from ..config import CoreConfig, GatewayConfig, read_toml
from ..db import make_engine, transaction
from ..errors import UsageError
from ..home import Home, fsync_directory, write_atomic
from .backup_db import Database, copy_sqlite, pg_dump, sqlite_revision

FORMAT = 1
MANIFEST = "backup.json"
LEFT_OUT_DIRS = ("Maildir",)
LEFT_OUT_SUFFIXES = (".tmp", ".log", ".lock")


@dataclass
class Backup:
    """What ``backup`` wrote (the ``backup.json`` of the directory)."""
    directory: Path
    manifest: dict = field(default_factory=dict)

    @property
    def files(self) -> list[dict]:
        return self.manifest["files"]


def version() -> str:
    try:
        return importlib.metadata.version("securemail")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def home_files(home: Path, database: Database) -> list[Path]:
    """The home's regular files, but for delivered mail, logs, locks and the database's files."""
    skip = database.side_files()
    out = []
    for root, dirs, files in os.walk(home):
        here = Path(root)
        dirs[:] = sorted(d for d in dirs if not (here == home and d in LEFT_OUT_DIRS))
        for name in sorted(files):
            p = here / name
            if p in skip or name.endswith(LEFT_OUT_SUFFIXES) or p.is_symlink() or not p.is_file():
                continue
            out.append(p)
    return out


def outside_files(home: Home) -> list[Path]:
    """Files a gateway's configuration names outside its home (they are backed up too)."""
    if "gateway" not in read_toml(home.config_file):
        return []
    c = GatewayConfig.load(home)
    named = [c.tls_cert, c.tls_key, c.passwords_file, c.federation_manifest, *(d.private_key for d in c.dkim_keys)]
    root = home.path.resolve()
    return sorted({p for p in named if p.is_file() and not p.resolve().is_relative_to(root)})


def _store(src: Path, dest: Path, stored: str) -> dict:
    """Copy ``src`` to ``dest`` (0600); its entry in backup.json."""
    dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_atomic(dest, src.read_bytes(), 0o600)
    return {"path": stored, "mode": oct(src.stat().st_mode & 0o777), "sha256": sha256(dest)}


def backup(home: Home, directory: Path, clock=time.time, engine_for=make_engine) -> Backup:
    """Copy ``home`` into ``directory`` (new, or empty) while its gateway runs."""
    directory = Path(directory)
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise UsageError(f"{directory} exists and is not an empty directory: back up into a new one")
    if not home.path.is_dir():
        raise UsageError(f"no home at {home.path}: nothing to back up")
    database = Database.of(CoreConfig.load(home).database_url)
    if database.path is not None and not database.path.is_file():
        raise UsageError(f"no database at {database.path}: nothing to back up (check database.url)")
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    files = [_store(p, directory / "home" / p.relative_to(home.path), f"home/{p.relative_to(home.path)}")
             for p in home_files(home.path, database)]
    outside = [{**_store(p, directory / "outside" / str(p).lstrip("/"), f"outside/{str(p).lstrip('/')}"),
                "original": str(p)} for p in outside_files(home)]
    dest = directory / database.file
    if database.kind == "sqlite":
        copy_sqlite(database.path, dest)
        revision = sqlite_revision(dest)
    else:
        revision = pg_revision(database.url, engine_for)
        pg_dump(database, dest)
    manifest = {
        "format": FORMAT, "securemail": version(), "created": clock(), "home": str(home.path),
        "database": {"kind": database.kind, "file": database.file, "schema": database.schema,
                     "revision": revision, "sha256": sha256(dest)},
        "files": files, "outside": outside,
    }
    write_atomic(directory / MANIFEST, json.dumps(manifest, indent=2).encode() + b"\n", 0o600)
    fsync_directory(directory)
    return Backup(directory, manifest)


def pg_revision(url: str, engine_for=make_engine) -> str | None:
    engine = engine_for(url)
    try:
        with transaction(engine, write=False) as conn:
            return migrations.state(conn).current
    finally:
        engine.dispose()


def read_backup(directory: Path) -> Backup:
    """The backup in ``directory``, every file checked against its SHA-256."""
    directory = Path(directory)
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError) as e:
        raise UsageError(f"{directory} is not a securemail backup ({MANIFEST}: {e})") from None
    if manifest.get("format") != FORMAT:
        raise UsageError(f"{directory}: backup format {manifest.get('format')!r} is not {FORMAT}")
    found = Backup(directory, manifest)
    for entry in [*found.files, *manifest["outside"], {"path": manifest["database"]["file"],
                                                       "sha256": manifest["database"]["sha256"]}]:
        path = directory / entry["path"]
        if ".." in Path(entry["path"]).parts or not path.is_file() or sha256(path) != entry["sha256"]:
            raise UsageError(f"{directory}: {entry['path']} is missing or damaged (SHA-256 differs)")
    return found


def restore_files(found: Backup, home: Home) -> list[str]:
    """The home's files back with their modes; files from outside put back where they were when
    missing there. Returns what the operator must look at (outside files that differ)."""
    notes = []
    for entry in found.files:
        dest = home.path / Path(entry["path"]).relative_to("home")
        dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomic(dest, (found.directory / entry["path"]).read_bytes(), int(entry["mode"], 8))
    for entry in found.manifest["outside"]:
        dest, data = Path(entry["original"]), (found.directory / entry["path"]).read_bytes()
        if not dest.exists():
            dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            write_atomic(dest, data, int(entry["mode"], 8))
        elif dest.read_bytes() != data:
            notes.append(f"{dest} differs from the one backed up ({entry['path']} in the backup): left as it is")
    return notes


def rehomed(text: str, old_home: str, new_home: Path, database_url: str | None) -> str:
    """The configuration ``text`` pointing into ``new_home`` (and at ``database_url`` if given)."""
    if old_home != str(new_home):
        text = text.replace(old_home.rstrip("/") + "/", str(new_home).rstrip("/") + "/")
    if database_url:
        lines = text.splitlines(keepends=True)
        table, done = "", False
        for i, line in enumerate(lines):
            stripped = line.strip()
            if stripped.startswith("["):
                table = stripped.split("]")[0].strip("[ ")
            elif table == "database" and stripped.startswith("url") and stripped[3:].lstrip().startswith("="):
                lines[i], done = f"url = {json.dumps(database_url)}\n", True
        if not done:
            raise UsageError("the backed up securemail.toml has no [database] url line to replace")
        text = "".join(lines)
    return text


def fresh_home(home: Home) -> None:
    leftovers = [p.name for p in home.path.iterdir() if p.name not in (*LEFT_OUT_DIRS,)]
    if leftovers:
        raise UsageError(f"{home.path} is not a fresh home (it has {', '.join(sorted(leftovers)[:4])}): "
                         "restore into a new, empty home")


def copy_database_file(src: Path, dest: Path) -> None:
    """The SQLite copy into place (0600): the backup API again, so the file is whole or absent."""
    if dest.exists():
        raise UsageError(f"{dest} exists: restore into an empty database")
    dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.restore")
    tmp.unlink(missing_ok=True)
    copy_sqlite(src, tmp)
    shutil.move(tmp, dest)
    fsync_directory(dest.parent)
