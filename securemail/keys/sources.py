"""Where the locator's keys came from: one row per address and fetched key, with its time.

Table ``key_sources`` (keys/locate.py writes and reads it): ``fingerprint`` "" records a
"no key there" answer. It lives apart from the locator so that creating the schema
(securemail/schema.py) does not load the locator's HTTPS client.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()
sources_table = sa.Table(
    "key_sources", metadata,
    sa.Column("address", sa.String(320), primary_key=True),
    sa.Column("fingerprint", sa.String(40), primary_key=True),   # "" records "no key there"
    sa.Column("source", sa.String(200), nullable=False),
    sa.Column("fetched_at", sa.Float, nullable=False),
)
