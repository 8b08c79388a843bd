"""The home directory: where config, database and mail live (``--home``, $SECUREMAIL_HOME, ~/.securemail)."""

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
