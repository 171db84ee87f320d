"""A `models` row per model and machine: the primary key becomes (name, host), so the same model pulled on two
machines sharing the database has a row on each, with its own path, pull and users. Rows from before hosts were
recorded (one machine then) are the machine's that upgrades.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07
"""

from __future__ import annotations

import socket
import warnings

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(sa.text("UPDATE models SET host = :host WHERE host IS NULL").bindparams(host=socket.gethostname()))
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE models DROP CONSTRAINT models_pkey")
        op.execute("ALTER TABLE models ALTER COLUMN host SET NOT NULL")
        op.execute("ALTER TABLE models ADD PRIMARY KEY (name, host)")
        return
    # SQLite changes a key by copying the table; SQLAlchemy warns that the copy's key is not the old one's, which
    # is the point.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Table '_alembic_tmp_models' specifies columns", sa.exc.SAWarning)
        with op.batch_alter_table("models", recreate="always") as table:
            table.alter_column("host", existing_type=sa.String(length=200), nullable=False)
            table.create_primary_key("pk_models", ["name", "host"])


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE models DROP CONSTRAINT models_pkey")
        op.execute("ALTER TABLE models ALTER COLUMN host DROP NOT NULL")
        op.execute("ALTER TABLE models ADD PRIMARY KEY (name)")
        return
    with op.batch_alter_table("models", recreate="always") as table:
        table.create_primary_key("pk_models", ["name"])
        table.alter_column("host", existing_type=sa.String(length=200), nullable=True)
