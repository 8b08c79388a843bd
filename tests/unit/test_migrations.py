"""Schema migrations (securemail/migrations): what the revisions make is what the models say.

On SQLite and PostgreSQL: a fresh schema is stamped at the head; a database made by 0.1.0 (the
dumps in tests/fixtures) is refused until migrated, then has exactly the models' tables, columns,
indexes and keys; the revisions from nothing make the same; a newer database is refused; two
migrators at once apply the revisions once. A schema change without its revision fails here.
"""

from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa

from securemail import migrations
from securemail.db import make_engine, transaction
from securemail.migrations import SchemaOutdated
from securemail.schema import METADATA, create_schema
from tests.support import fresh_schemas, require_pg, schema_url
from tests.support.dumps import load_release, pending


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'gw.db'}"
        return
    require_pg()
    with fresh_schemas("m", prefix="smmig") as schemas:
        yield schema_url(schemas["m"])


def kind(url: str) -> str:
    return "sqlite" if url.startswith("sqlite") else "postgresql"


def differences(engine) -> list:
    """Alembic's comparison of the database with the models (empty: the same schema)."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), list(METADATA))
    return [d for d in diff if not (d[0] == "remove_table" and d[1].name == migrations.VERSION_TABLE)]


def current(engine) -> migrations.SchemaState:
    with transaction(engine, write=False) as conn:
        return migrations.state(conn)


def indexes(engine) -> set[str]:
    with engine.connect() as conn:
        return {i["name"] for i in sa.inspect(conn).get_indexes("messages")}


def test_the_revision_list_is_the_files():
    walk = [s.revision for s in migrations.scripts().walk_revisions()][::-1]
    assert tuple(walk) == migrations.REVISIONS
    assert migrations.scripts().get_current_head() == migrations.HEAD


def test_a_fresh_schema_is_stamped_at_the_head(url):
    engine = make_engine(url)
    try:
        before = create_schema(engine)
        assert before.empty and not before.up_to_date
        after = current(engine)
        assert (after.current, after.up_to_date, after.empty) == (migrations.HEAD, True, False)
        assert differences(engine) == []
        assert create_schema(engine).up_to_date                        # again: nothing to do
        with transaction(engine) as conn:                               # Alembic reads the stamp as its own
            migrations.downgrade(conn, migrations.BASELINE)
        assert current(engine).current == migrations.BASELINE and "messages_created" not in indexes(engine)
    finally:
        engine.dispose()


def test_the_revisions_from_nothing_make_the_models_schema(url):
    engine = make_engine(url)
    try:
        with transaction(engine) as conn:
            migrations.upgrade(conn)
        assert current(engine).up_to_date and differences(engine) == []
        with transaction(engine) as conn:
            migrations.downgrade(conn, migrations.BASELINE)             # 0002 undone, then redone
        assert "messages_created" not in indexes(engine) and current(engine).current == "0001"
        create_schema(engine, migrate=True)
        assert "messages_created" in indexes(engine) and differences(engine) == []
    finally:
        engine.dispose()


def test_a_release_database_is_refused_then_migrated(url):
    load_release(kind(url), url)
    owed = pending(url)
    assert {p["state"] for p in owed} == {"queued"} and len(owed) == 10
    engine = make_engine(url)
    try:
        found = current(engine)
        assert (found.current, found.empty, found.known) == (None, False, True)
        with pytest.raises(SchemaOutdated) as refused:
            create_schema(engine, fix="securemail --home H gateway migrate")
        assert "0.1.0, before migrations" in refused.value.message
        assert "run `securemail --home H gateway migrate`" in refused.value.message
        assert "messages_created" not in indexes(engine)              # nothing changed
        assert current(engine).current is None and differences(engine) != []
        before = create_schema(engine, migrate=True)
        assert before.current is None and current(engine).up_to_date
        assert differences(engine) == []                               # exactly the models' schema
        assert pending(url) == owed                                    # no row touched
    finally:
        engine.dispose()


def test_a_database_of_a_newer_version_is_refused(url):
    engine = make_engine(url)
    try:
        create_schema(engine)
        with transaction(engine) as conn:
            conn.execute(sa.text("UPDATE alembic_version SET version_num = '9999'"))
        for migrate in (False, True):
            with pytest.raises(SchemaOutdated, match="revision 9999 .unknown to this version.: a newer securemail"):
                create_schema(engine, migrate=migrate)
    finally:
        engine.dispose()


def test_two_migrators_at_once_apply_the_revisions_once(url):
    load_release(kind(url), url)
    engines = [make_engine(url, busy_timeout=60) for _ in range(3)]
    start, results, errors = threading.Barrier(len(engines)), [], []

    def run(engine):
        start.wait()
        try:
            results.append(create_schema(engine, migrate=True))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(e,)) for e in engines]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    try:
        assert errors == []
        assert sorted(r.current or "none" for r in results) == [migrations.HEAD, migrations.HEAD, "none"]
        assert current(engines[0]).up_to_date and differences(engines[0]) == []
    finally:
        for e in engines:
            e.dispose()
