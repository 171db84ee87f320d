"""The `models` table: one row per model the registry knows and machine that has (or is getting) its files,
whatever its state."""

from __future__ import annotations

import sqlalchemy as sa

from bitinglip.core import metadata

models = sa.Table(
    "models",
    metadata,
    # A row per model and machine: several instances on one database each have their own copy of a model's files.
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("source", sa.String(20), nullable=False),  # hub, local, tiny
    sa.Column("repo_id", sa.String(200)),
    sa.Column("revision", sa.String(200)),
    sa.Column("commit_sha", sa.String(64)),
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("size_bytes", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("architecture", sa.String(200)),
    sa.Column("context_length", sa.Integer),
    sa.Column("dtype", sa.String(40)),
    sa.Column("parameters", sa.BigInteger),
    sa.Column("state", sa.String(20), nullable=False),  # pulling, ready, failed
    sa.Column("error", sa.Text),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("last_used_at", sa.DateTime(timezone=True)),
    # A hub pull not finished yet: "org/name[@rev]" and its file patterns (JSON), so a restart resumes it. On a
    # ready model this is an update downloading beside the served copy; the row switches once it is verified.
    sa.Column("pull_ref", sa.String(300)),
    sa.Column("pull_patterns", sa.Text),
    sa.Column("pull_pid", sa.Integer),  # the process running that pull; a dead pid means it was interrupted
    # The server process that has this model loaded, so `rm` in another process can refuse it; a dead pid is ignored.
    sa.Column("used_by_pid", sa.Integer),
    # "model", or "adapter": a LoRA adapter of the model named `base_model`, served on that model's engines.
    sa.Column("kind", sa.String(20), nullable=False, server_default="model"),
    sa.Column("base_model", sa.String(200)),
    sa.Column("lora_rank", sa.Integer),
    sa.Column("target_modules", sa.Text),  # JSON list of module names
    # The machine the files are on, and pull_pid's and used_by_pid's: several instances may share the database.
    sa.Column("host", sa.String(200), primary_key=True),
)
