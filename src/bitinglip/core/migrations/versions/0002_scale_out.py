"""Several instances on one database: the `instances` table (each process serving on it, its URL and heartbeat)
`file_chunks` (a file's content, for instances that share no filesystem) and `limit_holds` (limits exact across
instances); the last two used on PostgreSQL.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "instances",
        sa.Column("id", sa.String(length=100), nullable=False),
        sa.Column("url", sa.String(length=300), nullable=False),
        sa.Column("host", sa.String(length=200), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.Float(), nullable=False),
        sa.Column("heartbeat_at", sa.Float(), nullable=False),
        sa.Column("deployments", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_instances_heartbeat", "instances", ["heartbeat_at"])
    op.create_table(
        "file_chunks",
        sa.Column("file_id", sa.String(length=40), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("file_id", "n"),
    )

    op.create_table(
        "limit_holds",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("bucket", sa.String(length=250), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("tokens", sa.BigInteger(), nullable=False),
        sa.Column("done", sa.Boolean(), nullable=False),
        sa.Column("instance", sa.String(length=100), nullable=False),
        sa.PrimaryKeyConstraint("id", "bucket"),
    )
    op.create_index("ix_limit_holds_bucket_at", "limit_holds", ["bucket", "at"])


def downgrade() -> None:
    op.drop_index("ix_limit_holds_bucket_at", table_name="limit_holds")
    op.drop_table("limit_holds")
    op.drop_table("file_chunks")
    op.drop_index("ix_instances_heartbeat", table_name="instances")
    op.drop_table("instances")
