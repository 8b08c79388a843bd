"""The revisions of the schema, oldest first (Alembic loads them by file; see securemail.migrations)."""
