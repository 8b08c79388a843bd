"""Alembic's environment for securemail: the revisions run on the connection the caller holds.

``securemail.migrations`` puts the connection (from the project's engine, ``db.make_engine``, in a
transaction of ``db.transaction`` that holds the migration lock) in ``config.attributes``. There is
no URL and no ``alembic.ini``; the caller commits. SQLite changes tables by copying them
(``render_as_batch``), since its ALTER TABLE cannot do most changes.
"""

from alembic import context

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("securemail migrations run through `securemail gateway migrate`, not the alembic command")
context.configure(connection=connection, target_metadata=context.config.attributes.get("target_metadata"),
                  render_as_batch=True, compare_type=True)
with context.begin_transaction():  # inside the caller's transaction: nothing of its own
    context.run_migrations()
