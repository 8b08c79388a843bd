"""Upgrading a gateway made by 0.1.0: its queued and deferred mail is delivered once, none lost.

The database is the release's own (tests/fixtures/release-0.1.0-*.sql, made by make_dumps.py):
mail never tried, mail deferred by the release's workers, two deliveries leased by a worker that
died, and mail already delivered. The home around it is a fresh ``gateway init`` whose config
names the dump's domain key. ``serve`` refuses the old schema, naming the command;
``gateway check`` says the same; ``gateway migrate`` upgrades it; then a real ``securemail
serve`` delivers every delivery that was owed exactly once, and nothing that was done already.
"""

from __future__ import annotations

import json
from collections import Counter
from contextlib import ExitStack

import pytest
import sqlalchemy as sa

from securemail.migrations import HEAD
from tests.support import OFFICE, Serve, audit_records, federation, fresh_schemas, ok, require_pg, run_cli, schema_url, wait_for
from tests.support.dumps import DOMAIN, domain_key, load_release, message_id, pending


def make_release_home(stack: ExitStack, tmp_path, kind: str):
    """(gateway home, database URL): a new home on the database 0.1.0 left."""
    urls = None
    if kind == "postgresql":
        require_pg()
        schemas = stack.enter_context(fresh_schemas("init", "old", prefix="smmig"))
        urls = {DOMAIN: schema_url(schemas["init"])}
    _, homes = federation(tmp_path, (DOMAIN,), trusted=f"{OFFICE}/32", database_urls=urls)
    g = homes[DOMAIN]
    if kind == "postgresql":
        url = schema_url(schemas["old"])
        g.tune(url=json.dumps(url))
    else:
        url = f"sqlite:///{g.home / 'securemail.db'}"
        for name in ("securemail.db", "securemail.db-wal", "securemail.db-shm"):
            (g.home / name).unlink(missing_ok=True)
    load_release(kind, url)
    g.config.write_text(g.config.read_text().replace(g.domain_key(), domain_key(url)))
    g.tune(cpu_workers="0")
    return g, url


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def release_home(request, tmp_path):
    with ExitStack() as stack:
        yield make_release_home(stack, tmp_path, request.param)


def delivery_states(url: str) -> dict[str, str]:
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            return dict(conn.execute(sa.text("SELECT id, state FROM deliveries")).all())
    finally:
        engine.dispose()


def maildir(g, address: str) -> Counter:
    """The Message-IDs in ``address``'s Maildir, with how many times each arrived."""
    box = g.home / "Maildir" / address / "new"
    return Counter(message_id(p.read_bytes()) for p in box.iterdir()) if box.is_dir() else Counter()


def owed_by_recipient(owed: list[dict]) -> dict[str, Counter]:
    out: dict[str, Counter] = {}
    for p in owed:
        out.setdefault(p["recipient"], Counter())[p["message_id"]] += 1
    return out


def deliver_everything(g, url: str, owed: list[dict]) -> None:
    serve = Serve(g).start()
    try:
        wait_for(lambda: all(delivery_states(url)[p["id"]] == "delivered" for p in owed), 90,
                 "every owed delivery delivered")
    finally:
        assert serve.stop() == 0, serve.output()
    for address, expected in owed_by_recipient(owed).items():
        assert maildir(g, address) == expected, address          # each once, and nothing else
    assert set(delivery_states(url).values()) == {"delivered"}


def test_release_mail_is_delivered_once_after_gateway_migrate(release_home):
    g, url = release_home
    owed = pending(url)
    kinds = Counter("leased" if p["lease_owner"] else "deferred" if p["attempts"] else "queued" for p in owed)
    assert kinds == {"queued": 5, "deferred": 3, "leased": 2}
    refused = run_cli(g.home, "serve")
    assert refused.exit_code == 1
    assert (f"the database schema is at 0.1.0, before migrations (baseline 0001), this version needs revision "
            f"{HEAD}: stop the gateway, back it up, and run `securemail --home {g.home} gateway migrate`"
            ) in refused.output
    check = json.loads(run_cli(g.home, "gateway", "check", "--json").stdout)
    schema = next(c for c in check["checks"] if c["name"] == "database schema")
    assert not schema["ok"] and schema["fix"].endswith(f"`securemail --home {g.home} gateway migrate`")
    out = ok(run_cli(g.home, "gateway", "migrate")).stdout
    assert out.strip() == f"schema migrated: 0.1.0, before migrations (baseline 0001) -> revision {HEAD}"
    assert ok(run_cli(g.home, "gateway", "migrate")).stdout.strip() == \
        f"schema already at revision {HEAD}: nothing to do"
    assert pending(url) == owed
    assert [(r["fields"]["before"], r["fields"]["after"]) for r in audit_records(g.home, "schema-migrated")] == \
        [("0001 (0.1.0)", HEAD)]
    ok(run_cli(g.home, "audit", "verify"))                         # the release's chain goes on intact
    deliver_everything(g, url, owed)


def test_serve_migrates_by_itself_with_auto_migrate(tmp_path):
    with ExitStack() as stack:
        g, url = make_release_home(stack, tmp_path, "sqlite")
        owed = pending(url)
        g.tune(auto_migrate="true")
        deliver_everything(g, url, owed)
        assert ok(run_cli(g.home, "gateway", "migrate")).stdout.strip() == \
            f"schema already at revision {HEAD}: nothing to do"
