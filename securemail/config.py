"""Typed settings loaded once from the home's TOML file; no module-level instance."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError
from .home import Home


@dataclass(frozen=True)
class CoreConfig:
    database_url: str

    @classmethod
    def load(cls, home: Home) -> "CoreConfig":
        data = read_toml(home.config_file)
        db = data.get("database", {})
        if not isinstance(db, dict):
            raise ConfigError("[database] must be a table")
        url = db.get("url") or home.default_database_url
        if not isinstance(url, str):
            raise ConfigError("database.url must be a string")
        return cls(database_url=url)


def read_toml(path: Path) -> dict:
    """The parsed file, or {} when it does not exist; a clear ConfigError when it is invalid."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        return {}
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path.name}: {e}") from None
    except OSError as e:
        raise ConfigError(f"{path.name}: {e.strerror}") from None
