"""The table `instances`: one row per BitingLip process serving on this database, kept fresh by its heartbeat.
Times are Unix seconds (floats)."""

from __future__ import annotations

import sqlalchemy as sa

from bitinglip.core import metadata

instances = sa.Table(
    "instances",
    metadata,
    sa.Column("id", sa.String(100), primary_key=True),  # "host:pid:nonce", as its task leases name it
    sa.Column("url", sa.String(300), nullable=False),  # where the others reach it (`server.advertise_url`)
    sa.Column("host", sa.String(200), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("started_at", sa.Float, nullable=False),
    sa.Column("heartbeat_at", sa.Float, nullable=False),
    sa.Column("deployments", sa.Text, nullable=False),  # JSON list of {name, model, state, adapters}
    # Random per process, never shown: the key to its signature on the requests it forwards (gateway/vouch.py).
    sa.Column("secret", sa.String(64), nullable=False, server_default=""),
    sa.Index("ix_instances_heartbeat", "heartbeat_at"),
)
