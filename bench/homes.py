"""Gateway homes for the benchmark, set up with the real CLI (as tests/integration/gateways.py does).

``make_federation`` makes an authority and two gateway homes, the sender
(interieur.gouv.fr, office network 127.0.0.3/32) and the receiver
(justice.gouv.fr), on free loopback ports, and installs the signed manifest on
the sender. Only the sender runs; the receiver's relay port and its own TLS
certificate serve the null STARTTLS sink, so the manifest's pin matches.
``second_node`` copies a home to run a second process on the same database;
``pg_schema`` gives a fresh PostgreSQL schema and drops it after.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import tomllib
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

SENDER, RECEIVER = "interieur.gouv.fr", "justice.gouv.fr"
OFFICE = "127.0.0.3"
PG_URL = os.environ.get("SECUREMAIL_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(home: Path, *args: str, input: bytes | None = None) -> str:
    """``securemail --home HOME ARGS...`` in-process (click's runner); stdout, or RuntimeError."""
    from click.testing import CliRunner

    from cli.main import cli as securemail
    res = CliRunner().invoke(securemail, ["--home", str(home), *args], input=input, catch_exceptions=False)
    if res.exit_code != 0:
        raise RuntimeError(f"securemail {' '.join(args[:3])}: exit {res.exit_code}\n{res.output}")
    return res.stdout


@dataclass
class GatewayHome:
    domain: str
    home: Path
    relay: int
    submission: int
    wkd: int | None = None      # the key directory's HTTPS port, when this securemail has one

    @property
    def config(self) -> Path:
        return self.home / "securemail.toml"

    # settings the benchmark may add when ``gateway init`` does not write them: key -> table
    ADDABLE = {"cpu_workers": "gateway"}

    def tune(self, **values) -> None:
        """Set ``key = value`` lines of its securemail.toml (TOML values, e.g. ``"4"`` or ``'"auto"'``).

        Each key must be there once, except those in ``ADDABLE``, which are added
        at the top of their table when ``gateway init`` did not write them.
        """
        text = self.config.read_text()
        for key, value in values.items():
            text, n = re.subn(rf"(?m)^{key} = [^#\n]*", f"{key} = {value}  ", text)
            if n == 0 and key in self.ADDABLE:
                table = self.ADDABLE[key]
                text, n = re.subn(rf"(?m)^\[{table}\][^\n]*\n", lambda m: f"{m.group(0)}{key} = {value}\n", text)
            if n != 1:
                raise RuntimeError(f"{key} is in {self.config} {n} times")
        with_values = tomllib.loads(text)
        for key in values:
            if key in self.ADDABLE and key not in with_values.get(self.ADDABLE[key], {}):
                raise RuntimeError(f"{key} did not land in [{self.ADDABLE[key]}] of {self.config}")
        self.config.write_text(text)

    def domain_key(self) -> str:
        with open(self.config, "rb") as fh:
            return tomllib.load(fh)["keys"]["openpgp"][self.domain]

    @property
    def cert(self) -> Path:
        return self.home / "tls" / "cert.pem"

    @property
    def key(self) -> Path:
        return self.home / "tls" / "key.pem"


@dataclass
class Federation:
    authority: Path
    sender: GatewayHome
    receiver: GatewayHome

    def receiver_certificate(self) -> bytes:
        """The receiving domain's OpenPGP certificate (armored), what gpg-filter encrypts to."""
        return cli(self.receiver.home, "keys", "export", self.receiver.domain_key()).encode()


def has_wkd() -> bool:
    """Whether this securemail's ``gateway init`` makes a key directory listener (``--wkd``)."""
    from cli.gateway import init
    return any(p.name == "wkd" for p in init.params)


def _init(root: Path, domain: str, database_url: str | None) -> GatewayHome:
    g = GatewayHome(domain, root / f"gw-{domain}", free_port(), free_port(),
                    free_port() if has_wkd() else None)
    args = ["gateway", "init", "--domain", domain, "--listen", f"127.0.0.1:{g.relay}",
            "--submission", f"127.0.0.1:{g.submission}", "--hostname", f"gw.{domain}",
            "--trusted-network", f"{OFFICE}/32"]
    if g.wkd:
        args += ["--wkd", f"127.0.0.1:{g.wkd}"]
    if database_url:
        args += ["--database-url", database_url]
    cli(g.home, *args)
    return g


def make_federation(root: Path, *, sender_db: str | None = None, **tuning) -> Federation:
    """Authority, sender and receiver homes under ``root``; ``tuning`` goes to the sender's config."""
    authority = root / "authority"
    cli(authority, "federation", "init", "--no-passphrase")
    homes = [_init(root, SENDER, sender_db), _init(root, RECEIVER, None)]
    for g in homes:
        entry = root / f"{g.domain}.json"
        entry.write_text(cli(g.home, "federation", "entry"))
        cli(authority, "federation", "add", "--entry", str(entry))
    manifest = root / "federation.json"
    cli(authority, "federation", "sign", "--output", str(manifest))
    fpr = json.loads(cli(authority, "keys", "list", "--json"))[0]["fingerprint"]
    (root / "authority.asc").write_text(cli(authority, "keys", "export", fpr))
    cli(homes[0].home, "federation", "install", str(manifest), "--authority", fpr,
        "--authority-key", str(root / "authority.asc"))
    if tuning:
        homes[0].tune(**tuning)
    return Federation(authority, *homes)


def second_node(g: GatewayHome, path: Path) -> GatewayHome:
    """A copy of ``g``'s home (same database URL, keys, certificate) listening on other ports."""
    shutil.copytree(g.home, path, ignore=shutil.ignore_patterns("Maildir", "serve.log", "securemail.db*"))
    node = GatewayHome(g.domain, path, free_port(), free_port(), free_port() if g.wkd else None)
    text = node.config.read_text()
    for old, new in ((g.relay, node.relay), (g.submission, node.submission), (g.wkd, node.wkd)):
        if old is None:
            continue
        text, n = re.subn(rf'(?m)^listen = "127\.0\.0\.1:{old}"$', f'listen = "127.0.0.1:{new}"', text)
        if n != 1:
            raise RuntimeError(f"no listener on port {old} in {node.config}")
    node.config.write_text(text)
    return node


def pg_available(url: str = PG_URL) -> str | None:
    """None when PostgreSQL answers at ``url``, else why not."""
    import sqlalchemy as sa
    engine = sa.create_engine(url, connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        return None
    except sa.exc.SQLAlchemyError as err:
        return f"PostgreSQL unreachable at {url}: {type(getattr(err, 'orig', None) or err).__name__}"
    finally:
        engine.dispose()


@contextmanager
def pg_schema(tag: str, url: str = PG_URL):
    """A fresh schema, yielded as a database URL whose search_path is that schema; dropped after."""
    import sqlalchemy as sa
    schema = f"smbench_{tag}_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(url)
    try:
        with admin.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        yield (sa.engine.make_url(url).update_query_dict({"options": f"-csearch_path={schema}"})
               .render_as_string(hide_password=False))
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text("SET LOCAL lock_timeout = '20s'"))
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()
