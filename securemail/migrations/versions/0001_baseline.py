"""Baseline: the schema of securemail 0.1.0, the release before migrations.

A database made by 0.1.0 has these tables and no ``alembic_version``: it is at this revision.
Its upgrade creates only the tables that are missing (every table on an empty database; a home
older than key bindings lacks ``key_bindings``, which ``schema.create_schema`` then fills). The
tables are written out here as 0.1.0 had them, not imported from the models: the models move on,
this revision does not.

Revision ID: 0001
Revises: (none)
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

release = sa.MetaData()

sa.Table(
    "messages", release,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("sender", sa.Text, nullable=False),
    sa.Column("body", sa.LargeBinary, nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("peer", sa.Text, nullable=False),
    sa.Column("meta", sa.Text, nullable=False),
)
sa.Table(
    "deliveries", release,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("message_id", sa.String(32), sa.ForeignKey("messages.id", ondelete="CASCADE"), nullable=False),
    sa.Column("recipient", sa.Text, nullable=False),
    sa.Column("next_hop", sa.Text, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("next_attempt_at", sa.Double, nullable=False),
    sa.Column("lease_owner", sa.Text, nullable=True),
    sa.Column("lease_until", sa.Double, nullable=True),
    sa.Column("last_error", sa.Text, nullable=False),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("updated_at", sa.Double, nullable=False),
    sa.CheckConstraint("state IN ('queued', 'delivered', 'bounced', 'held')", name="deliveries_state"),
    sa.Index("deliveries_due", "state", "next_attempt_at"),
    sa.Index("deliveries_message", "message_id"),
)
sa.Table(
    "replay_seen", release,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("expires_at", sa.Double, nullable=False),
    sa.Index("replay_seen_expiry", "expires_at"),
    sqlite_with_rowid=False,
)
sa.Table(
    "audit", release,
    sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("at", sa.Double, nullable=False),
    sa.Column("kind", sa.String(64), nullable=False),
    sa.Column("fields", sa.Text, nullable=False),
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
)
sa.Table(
    "audit_head", release,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
    sa.CheckConstraint("id = 1", name="audit_head_single_row"),
)
sa.Table(
    "keys", release,
    sa.Column("fingerprint", sa.String(40), primary_key=True),
    sa.Column("data", sa.LargeBinary, nullable=False),
    sa.Column("secret", sa.Boolean, nullable=False),
    sa.Column("addresses", sa.Text, nullable=False),
    sa.Column("source", sa.String(200), nullable=False),
    sa.Column("added_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)
sa.Table(
    "key_addresses", release,
    sa.Column("address", sa.String(320), primary_key=True),
    sa.Column("fingerprint", sa.String(40), sa.ForeignKey("keys.fingerprint", ondelete="CASCADE"),
              primary_key=True),
)
sa.Table(
    "pins", release,
    sa.Column("address", sa.String(320), primary_key=True),
    sa.Column("fingerprint", sa.String(40), nullable=False),
    sa.Column("pinned_at", sa.Float, nullable=False),
    sa.Column("source", sa.String(200), nullable=False),
    sa.Column("superseded", sa.Text, nullable=False),
)
sa.Table(
    "key_bindings", release,
    sa.Column("address", sa.String(320), primary_key=True),
    sa.Column("fingerprint", sa.String(40), primary_key=True),
    sa.Column("source", sa.String(260), nullable=False),
    sa.Column("bound_at", sa.Float, nullable=False),
)
sa.Table(
    "directory", release,
    sa.Column("address", sa.String(320), primary_key=True),
    sa.Column("fingerprint", sa.String(40), nullable=False),
    sa.Column("published_at", sa.Float, nullable=False),
    sa.Column("source", sa.String(200), nullable=False),
    sa.Column("domain", sa.String(253), nullable=False),
    sa.Column("hu", sa.String(32), nullable=False),
    sa.Index("directory_domain_hu", "domain", "hu"),
)
sa.Table(
    "key_sources", release,
    sa.Column("address", sa.String(320), primary_key=True),
    sa.Column("fingerprint", sa.String(40), primary_key=True),
    sa.Column("source", sa.String(200), nullable=False),
    sa.Column("fetched_at", sa.Float, nullable=False),
)
sa.Table(
    "publish_nonces", release,
    sa.Column("nonce", sa.String(128), primary_key=True),
    sa.Column("expires_at", sa.Float, nullable=False, index=True),
)


def upgrade() -> None:
    release.create_all(op.get_bind(), checkfirst=True)


def downgrade() -> None:
    raise NotImplementedError("0.1.0 is the first schema: there is nothing before it to go back to")
