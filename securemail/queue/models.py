"""Queue tables: one row per message (the bytes to deliver), one per recipient delivery."""

from __future__ import annotations

import sqlalchemy as sa

STATES = ("queued", "delivered", "bounced", "held")
FINAL_STATES = ("delivered", "bounced")

metadata = sa.MetaData()

messages = sa.Table(
    "messages", metadata,
    sa.Column("id", sa.String(32), primary_key=True),        # uuid4 hex
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("sender", sa.Text, nullable=False),             # envelope; "" = null sender
    sa.Column("body", sa.LargeBinary, nullable=False),        # final bytes to deliver
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("peer", sa.Text, nullable=False, default=""),
    sa.Column("meta", sa.Text, nullable=False, default="{}"),  # JSON, sorted keys
    sa.Index("messages_created", "created_at"),  # the retention sweep (migration 0002)
)

deliveries = sa.Table(
    "deliveries", metadata,
    sa.Column("id", sa.String(32), primary_key=True),        # uuid4 hex
    sa.Column("message_id", sa.String(32),
              sa.ForeignKey("messages.id", ondelete="CASCADE"), nullable=False),
    sa.Column("recipient", sa.Text, nullable=False),
    sa.Column("next_hop", sa.Text, nullable=False),           # "smtp:host:port", "maildir", ...
    sa.Column("state", sa.String(16), nullable=False, default="queued"),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("next_attempt_at", sa.Double, nullable=False),
    sa.Column("lease_owner", sa.Text, nullable=True),
    sa.Column("lease_until", sa.Double, nullable=True),
    sa.Column("last_error", sa.Text, nullable=False, default=""),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("updated_at", sa.Double, nullable=False),
    sa.CheckConstraint("state IN ('queued', 'delivered', 'bounced', 'held')",
                       name="deliveries_state"),
    sa.Index("deliveries_due", "state", "next_attempt_at"),
    sa.Index("deliveries_message", "message_id"),
)
