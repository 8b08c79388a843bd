"""The home directory: where config, database and mail live (``--home``, $SECUREMAIL_HOME, ~/.securemail),
and ``write_atomic``, the one way its files (and any file securemail writes whole) are replaced."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

ENV_VAR = "SECUREMAIL_HOME"


def resolve(explicit: str | os.PathLike | None = None, env: dict | None = None) -> Path:
    env = os.environ if env is None else env
    if explicit:
        return Path(explicit).expanduser()
    if env.get(ENV_VAR):
        return Path(env[ENV_VAR]).expanduser()
    return Path.home() / ".securemail"


@dataclass(frozen=True)
class Home:
    path: Path

    @classmethod
    def open(cls, explicit=None, env=None) -> "Home":
        """Resolve and create the home (mode 0700) on first use."""
        path = resolve(explicit, env)
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(path, 0o700)
        return cls(path)

    @property
    def config_file(self) -> Path:
        return self.path / "securemail.toml"

    @property
    def database_file(self) -> Path:
        return self.path / "securemail.db"

    @property
    def default_database_url(self) -> str:
        return f"sqlite:///{self.database_file}"

    @property
    def maildir(self) -> Path:
        return self.path / "Maildir"

    def private_file(self, name: str) -> Path:
        """A path in the home for secret material; the caller writes it with mode 0600."""
        return self.path / name


def write_atomic(path, data: bytes, mode: int = 0o644, *, tmp=None, before_rename=None) -> None:
    """Replace ``path`` with ``data`` so that a reader or a crash sees the old file or the new one
    whole: write a temporary file with ``mode``, fsync it, call ``before_rename()``, rename it over
    ``path``, fsync the directory. No temporary file is left behind on an error.

    ``tmp`` is the temporary file's path (by default ``.<name>.<pid>.tmp`` beside ``path``); one
    the caller names must not exist yet and is never a symlink followed (Maildir's ``tmp/``).
    """
    path = Path(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    if tmp is None:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    else:
        tmp, flags = Path(tmp), flags | os.O_EXCL | os.O_NOFOLLOW
    fd = os.open(tmp, flags, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)  # the mode whatever the umask, or a leftover tmp file's
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if before_rename is not None:
            before_rename()
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_directory(path.parent)


def fsync_directory(path) -> None:
    """Make a rename or a new file in the directory ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
