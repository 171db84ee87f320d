"""Several instances on one database: `models.host` (the machine a model's files are on), the `instances` table
(each process serving on it, its URL and heartbeat), `file_chunks` (a file's content, for instances that share no
filesystem) and `limit_holds` (limits exact across instances); the last two used on PostgreSQL.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

# The shared limiter's admission (gateway/shared_limits.py) in one round trip: lock the buckets (named in order),
# count each in the 60 s window, and add the request to all of them only if every one has room. A row per bucket
# with its counts; `refused` on the first that has no room, and then nothing is added. Each statement in
# PL/pgSQL reads the rows committed before it: a request that waited on a lock counts the one it waited for.
RESERVE = """
CREATE OR REPLACE FUNCTION bitinglip_reserve(
    names text[], rpms bigint[], tpms bigint[], concs bigint[], want bigint, hold text, who text, now_s float8
) RETURNS TABLE (requests bigint, used bigint, in_flight bigint, oldest float8, refused boolean)
LANGUAGE plpgsql AS $$
DECLARE
    i int;
BEGIN
    FOR i IN 1 .. cardinality(names) LOOP
        PERFORM pg_advisory_xact_lock(hashtextextended(names[i], 0));
    END LOOP;
    FOR i IN 1 .. cardinality(names) LOOP
        SELECT count(*) FILTER (WHERE h.at > now_s - 60),
               coalesce(sum(h.tokens) FILTER (WHERE h.at > now_s - 60), 0),
               count(*) FILTER (WHERE NOT h.done),
               min(h.at) FILTER (WHERE h.at > now_s - 60)
          INTO requests, used, in_flight, oldest
          FROM limit_holds h
         WHERE h.bucket = names[i] AND (h.at > now_s - 60 OR NOT h.done);
        refused := (concs[i] IS NOT NULL AND in_flight >= concs[i])
                OR (rpms[i] IS NOT NULL AND requests >= rpms[i])
                OR (tpms[i] IS NOT NULL AND used + greatest(want, 1) > tpms[i]);
        RETURN NEXT;
        IF refused THEN
            RETURN;
        END IF;
    END LOOP;
    INSERT INTO limit_holds (id, bucket, at, tokens, done, instance)
        SELECT hold, n, now_s, want, false, who FROM unnest(names) AS n;
END
$$
"""

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("models", sa.Column("host", sa.String(length=200), nullable=True))
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
    if op.get_bind().dialect.name == "postgresql":
        op.execute(RESERVE)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION bitinglip_reserve")
    op.drop_index("ix_limit_holds_bucket_at", table_name="limit_holds")
    op.drop_table("limit_holds")
    op.drop_table("file_chunks")
    op.drop_index("ix_instances_heartbeat", table_name="instances")
    op.drop_table("instances")
    with op.batch_alter_table("models") as models:
        models.drop_column("host")
