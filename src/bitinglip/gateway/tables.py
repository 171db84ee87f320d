"""The tables `api_keys`, `usage` and `responses`. Times are Unix seconds (floats).

A key itself is never stored: only its SHA-256 (keys are 190 random bits, so a fast hash is enough; a slow
one would only slow every request). `usage` holds one row per key, model and UTC day, added to in batches.
"""

from __future__ import annotations

import sqlalchemy as sa

from bitinglip.core import metadata

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.String(20), primary_key=True),  # the public part of the key: "bl_<id>_<secret>"
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),  # sha256 hex of the whole key
    sa.Column("scope", sa.String(20), nullable=False),  # "inference" or "admin"
    sa.Column("models", sa.Text),  # JSON list of model names it may use; NULL: any
    sa.Column("rpm", sa.Integer),
    sa.Column("tpm", sa.Integer),
    sa.Column("max_concurrent", sa.Integer),
    sa.Column("expires_at", sa.Float),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("revoked_at", sa.Float),
)

usage = sa.Table(
    "usage",
    metadata,
    sa.Column("day", sa.String(10), primary_key=True),  # UTC, "2026-11-24"
    sa.Column("key_id", sa.String(20), primary_key=True),  # "" for requests made without a key (auth off)
    sa.Column("model", sa.String(200), primary_key=True),
    sa.Column("requests", sa.Integer, nullable=False, server_default="0"),
    sa.Column("prompt_tokens", sa.Integer, nullable=False, server_default="0"),
    sa.Column("completion_tokens", sa.Integer, nullable=False, server_default="0"),
    sa.Column("errors", sa.Integer, nullable=False, server_default="0"),
)

# A stored Response (`store`, the default on /v1/responses): its request's own input items and the response object,
# both JSON. `previous_response_id` links a conversation's turns: a new turn's context is the whole chain. `owner`
# is the key that made it ("" while auth is off). A new table: `create_all` adds it to an older file.
responses = sa.Table(
    "responses",
    metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("id", sa.String(64), nullable=False, unique=True),
    sa.Column("owner", sa.String(100), nullable=False, server_default=""),
    sa.Column("previous_response_id", sa.String(64)),
    sa.Column("model", sa.String(200), nullable=False),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("input", sa.Text, nullable=False),  # JSON list of input items, each with an id
    sa.Column("response", sa.Text, nullable=False),  # JSON: the response object as it was answered
)

# The shared limiter's log (PostgreSQL, several instances): one row per request and bucket it was admitted to,
# its reserved (then used) tokens, and whether it has ended. Rows leave once ended and out of the 60 s window.
limit_holds = sa.Table(
    "limit_holds",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),  # the request's hold
    sa.Column("bucket", sa.String(250), primary_key=True),  # "key <id>" or "model <name>"
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("tokens", sa.BigInteger, nullable=False),
    sa.Column("done", sa.Boolean, nullable=False),
    sa.Column("instance", sa.String(100), nullable=False),  # whose request: a dead instance's holds are ended
    sa.Index("ix_limit_holds_bucket_at", "bucket", "at"),
)
