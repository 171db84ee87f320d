"""Alembic's environment: `bitinglip.core.db` hands it an open connection (and, to autogenerate, the metadata
with every module's tables); nothing here opens a database of its own."""

from __future__ import annotations

from alembic import context

from bitinglip.core.db import metadata

config = context.config
connection = config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=config.attributes.get("metadata", metadata),
    # SQLite alters a table by copying it: batch mode does that for `op.batch_alter_table`.
    render_as_batch=connection.dialect.name == "sqlite",
    transaction_per_migration=False,
)
with context.begin_transaction():
    context.run_migrations()
