"""Index messages by arrival time, for the retention sweep.

The running gateway sweeps finished messages older than ``queue.retention`` every
``queue.purge_interval`` (``Queue.purge``: ``messages.created_at <= cutoff`` and no pending
delivery). Without an index on ``created_at`` each sweep reads the whole ``messages`` table, 30
days of mail by default, whose rows carry the bodies of pending mail, to keep the few old ones
(SQLite's plan: ``SCAN messages``); with it, only the messages past the cutoff are read
(``SEARCH messages USING INDEX messages_created (created_at<?)``).

Revision ID: 0002
Revises: 0001
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("messages_created", "messages", ["created_at"])


def downgrade() -> None:
    op.drop_index("messages_created", table_name="messages")
