"""The schema as it stood before Alembic: every table, created where missing.

A SQLite home from before Alembic has most of these already (and the old `schema_version` table): its `models`
table gets the changes the old in-house migrations made (versions 2 and 3), then the tables it lacks are created.

Revision ID: 0001
Revises:
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _from_before_alembic(connection: sa.Connection) -> None:
    columns = {c["name"] for c in sa.inspect(connection).get_columns("models")}
    if "serving_pid" in columns:
        op.execute("ALTER TABLE models RENAME COLUMN serving_pid TO used_by_pid")
    if "kind" not in columns:
        op.execute("ALTER TABLE models ADD COLUMN kind VARCHAR(20) NOT NULL DEFAULT 'model'")
        op.execute("ALTER TABLE models ADD COLUMN base_model VARCHAR(200)")
        op.execute("ALTER TABLE models ADD COLUMN lora_rank INTEGER")
        op.execute("ALTER TABLE models ADD COLUMN target_modules TEXT")


def upgrade() -> None:
    connection = op.get_bind()
    existing = set(sa.inspect(connection).get_table_names())
    if "schema_version" in existing:
        if "models" in existing:
            _from_before_alembic(connection)
        op.drop_table("schema_version")
    if "api_keys" not in existing:
        op.create_table(
            "api_keys",
            sa.Column("id", sa.String(length=20), nullable=False),
            sa.Column("name", sa.String(length=200), nullable=False),
            sa.Column("hash", sa.String(length=64), nullable=False),
            sa.Column("scope", sa.String(length=20), nullable=False),
            sa.Column("models", sa.Text(), nullable=True),
            sa.Column("rpm", sa.Integer(), nullable=True),
            sa.Column("tpm", sa.Integer(), nullable=True),
            sa.Column("max_concurrent", sa.Integer(), nullable=True),
            sa.Column("expires_at", sa.Float(), nullable=True),
            sa.Column("created_at", sa.Float(), nullable=False),
            sa.Column("revoked_at", sa.Float(), nullable=True),
            sa.PrimaryKeyConstraint("id"),
        )

    if "batches" not in existing:
        op.create_table(
            "batches",
            sa.Column("seq", sa.Integer(), autoincrement=True, nullable=False),
            sa.Column("id", sa.String(length=40), nullable=False),
            sa.Column("owner", sa.String(length=100), server_default="", nullable=False),
            sa.Column("endpoint", sa.String(length=100), nullable=False),
            sa.Column("kind", sa.String(length=40), nullable=False),
            sa.Column("input_file_id", sa.String(length=40), nullable=False),
            sa.Column("completion_window", sa.String(length=20), nullable=False),
            sa.Column("status", sa.String(length=12), nullable=False),
            sa.Column("priority", sa.Integer(), server_default="0", nullable=False),
            sa.Column("errors", sa.Text(), nullable=True),
            sa.Column("output_file_id", sa.String(length=40), nullable=True),
            sa.Column("error_file_id", sa.String(length=40), nullable=True),
            sa.Column("total", sa.Integer(), server_default="0", nullable=False),
            sa.Column("metadata", sa.Text(), nullable=True),
            sa.Column("output_expires_s", sa.Float(), nullable=True),
            sa.Column("usage", sa.Text(), nullable=True),
            sa.Column("created_at", sa.Float(), nullable=False),
            sa.Column("expires_at", sa.Float(), nullable=False),
            sa.Column("in_progress_at", sa.Float(), nullable=True),
            sa.Column("finalizing_at", sa.Float(), nullable=True),
            sa.Column("completed_at", sa.Float(), nullable=True),
            sa.Column("failed_at", sa.Float(), nullable=True),
            sa.Column("expired_at", sa.Float(), nullable=True),
            sa.Column("cancelling_at", sa.Float(), nullable=True),
            sa.Column("cancelled_at", sa.Float(), nullable=True),
            sa.PrimaryKeyConstraint("seq"),
            sa.UniqueConstraint("id"),
        )
        op.create_index("ix_batches_status", "batches", ["status"])

    if "files" not in existing:
        op.create_table(
            "files",
            sa.Column("seq", sa.Integer(), autoincrement=True, nullable=False),
            sa.Column("id", sa.String(length=40), nullable=False),
            sa.Column("owner", sa.String(length=100), server_default="", nullable=False),
            sa.Column("purpose", sa.String(length=40), nullable=False),
            sa.Column("filename", sa.String(length=512), nullable=False),
            sa.Column("bytes", sa.BigInteger(), nullable=False),
            sa.Column("created_at", sa.Float(), nullable=False),
            sa.Column("expires_at", sa.Float(), nullable=True),
            sa.PrimaryKeyConstraint("seq"),
            sa.UniqueConstraint("id"),
        )

    if "models" not in existing:
        op.create_table(
            "models",
            sa.Column("name", sa.String(length=200), nullable=False),
            sa.Column("source", sa.String(length=20), nullable=False),
            sa.Column("repo_id", sa.String(length=200), nullable=True),
            sa.Column("revision", sa.String(length=200), nullable=True),
            sa.Column("commit_sha", sa.String(length=64), nullable=True),
            sa.Column("path", sa.Text(), nullable=False),
            sa.Column("size_bytes", sa.BigInteger(), server_default="0", nullable=False),
            sa.Column("architecture", sa.String(length=200), nullable=True),
            sa.Column("context_length", sa.Integer(), nullable=True),
            sa.Column("dtype", sa.String(length=40), nullable=True),
            sa.Column("parameters", sa.BigInteger(), nullable=True),
            sa.Column("state", sa.String(length=20), nullable=False),
            sa.Column("error", sa.Text(), nullable=True),
            sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
            sa.Column("pull_ref", sa.String(length=300), nullable=True),
            sa.Column("pull_patterns", sa.Text(), nullable=True),
            sa.Column("pull_pid", sa.Integer(), nullable=True),
            sa.Column("used_by_pid", sa.Integer(), nullable=True),
            sa.Column("kind", sa.String(length=20), server_default="model", nullable=False),
            sa.Column("base_model", sa.String(length=200), nullable=True),
            sa.Column("lora_rank", sa.Integer(), nullable=True),
            sa.Column("target_modules", sa.Text(), nullable=True),
            sa.PrimaryKeyConstraint("name"),
        )

    if "responses" not in existing:
        op.create_table(
            "responses",
            sa.Column("seq", sa.Integer(), autoincrement=True, nullable=False),
            sa.Column("id", sa.String(length=64), nullable=False),
            sa.Column("owner", sa.String(length=100), server_default="", nullable=False),
            sa.Column("previous_response_id", sa.String(length=64), nullable=True),
            sa.Column("model", sa.String(length=200), nullable=False),
            sa.Column("status", sa.String(length=20), nullable=False),
            sa.Column("created_at", sa.Float(), nullable=False),
            sa.Column("input", sa.Text(), nullable=False),
            sa.Column("response", sa.Text(), nullable=False),
            sa.PrimaryKeyConstraint("seq"),
            sa.UniqueConstraint("id"),
        )

    if "tasks" not in existing:
        op.create_table(
            "tasks",
            sa.Column("seq", sa.Integer(), autoincrement=True, nullable=False),
            sa.Column("id", sa.String(length=40), nullable=False),
            sa.Column("owner", sa.String(length=100), server_default="", nullable=False),
            sa.Column("kind", sa.String(length=40), nullable=False),
            sa.Column("target", sa.String(length=200), nullable=False),
            sa.Column("payload", sa.Text(), nullable=False),
            sa.Column("state", sa.String(length=12), nullable=False),
            sa.Column("priority", sa.Integer(), server_default="0", nullable=False),
            sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
            sa.Column("max_attempts", sa.Integer(), nullable=False),
            sa.Column("idempotency_key", sa.String(length=200), nullable=True),
            sa.Column("lease_owner", sa.String(length=100), nullable=True),
            sa.Column("lease_expires_at", sa.Float(), nullable=True),
            sa.Column("not_before", sa.Float(), server_default="0", nullable=False),
            sa.Column("created_at", sa.Float(), nullable=False),
            sa.Column("started_at", sa.Float(), nullable=True),
            sa.Column("finished_at", sa.Float(), nullable=True),
            sa.Column("result", sa.Text(), nullable=True),
            sa.Column("error", sa.Text(), nullable=True),
            sa.Column("batch_id", sa.String(length=40), nullable=True),
            sa.Column("line", sa.Integer(), nullable=True),
            sa.Column("custom_id", sa.String(length=512), nullable=True),
            sa.PrimaryKeyConstraint("seq"),
            sa.UniqueConstraint("batch_id", "line", name="uq_tasks_batch_line"),
            sa.UniqueConstraint("id"),
            sa.UniqueConstraint("owner", "idempotency_key", name="uq_tasks_idempotency"),
        )
        op.create_index("ix_tasks_batch", "tasks", ["batch_id", "state"])
        op.create_index("ix_tasks_claim", "tasks", ["state", "target", "priority", "seq"])

    if "usage" not in existing:
        op.create_table(
            "usage",
            sa.Column("day", sa.String(length=10), nullable=False),
            sa.Column("key_id", sa.String(length=20), nullable=False),
            sa.Column("model", sa.String(length=200), nullable=False),
            sa.Column("requests", sa.Integer(), server_default="0", nullable=False),
            sa.Column("prompt_tokens", sa.Integer(), server_default="0", nullable=False),
            sa.Column("completion_tokens", sa.Integer(), server_default="0", nullable=False),
            sa.Column("errors", sa.Integer(), server_default="0", nullable=False),
            sa.PrimaryKeyConstraint("day", "key_id", "model"),
        )


def downgrade() -> None:
    for name in ("usage", "tasks", "responses", "models", "files", "batches", "api_keys"):
        op.drop_table(name)
