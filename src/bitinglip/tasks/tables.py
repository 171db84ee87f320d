"""The tables `tasks`, `files` and `batches`. Times are Unix seconds (floats), as OpenAI's objects give them.

`owner` is the API key that made a row ("" while there are no keys): every read filters on it, so one key
never sees another's files, batches or tasks.
"""

from __future__ import annotations

import sqlalchemy as sa

from bitinglip.core import metadata

tasks = sa.Table(
    "tasks",
    metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),  # order of arrival, and the list cursor
    sa.Column("id", sa.String(40), nullable=False, unique=True),
    sa.Column("owner", sa.String(100), nullable=False, server_default=""),
    sa.Column("kind", sa.String(40), nullable=False),  # a handler the app registered ("chat", "completion")
    sa.Column("target", sa.String(200), nullable=False),  # what its work runs on (a model): scheduled per target
    sa.Column("payload", sa.Text, nullable=False),  # JSON, the handler's to read
    # queued, running, succeeded, failed, cancelled, expired
    sa.Column("state", sa.String(12), nullable=False),
    sa.Column("priority", sa.Integer, nullable=False, server_default="0"),  # higher first
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("max_attempts", sa.Integer, nullable=False),
    sa.Column("idempotency_key", sa.String(200)),
    sa.Column("lease_owner", sa.String(100)),  # the process running it: "host:pid:nonce"
    sa.Column("lease_expires_at", sa.Float),
    sa.Column("not_before", sa.Float, nullable=False, server_default="0"),  # a retry's backoff
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("started_at", sa.Float),
    sa.Column("finished_at", sa.Float),
    sa.Column("result", sa.Text),  # JSON, written in the same transaction as the final state
    sa.Column("error", sa.Text),  # JSON: {"status_code", "error": {message, type, param, code}}
    sa.Column("batch_id", sa.String(40)),
    sa.Column("line", sa.Integer),  # 1-based line of the batch input file
    sa.Column("custom_id", sa.String(512)),
    sa.UniqueConstraint("owner", "idempotency_key", name="uq_tasks_idempotency"),
    sa.UniqueConstraint("batch_id", "line", name="uq_tasks_batch_line"),
    sa.Index("ix_tasks_claim", "state", "target", "priority", "seq"),
    sa.Index("ix_tasks_batch", "batch_id", "state"),
)

files = sa.Table(
    "files",
    metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("id", sa.String(40), nullable=False, unique=True),  # also its name on disk, under tasks.files_dir
    sa.Column("owner", sa.String(100), nullable=False, server_default=""),
    sa.Column("purpose", sa.String(40), nullable=False),  # batch, batch_output
    sa.Column("filename", sa.String(512), nullable=False),
    sa.Column("bytes", sa.BigInteger, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("expires_at", sa.Float),
)

batches = sa.Table(
    "batches",
    metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("id", sa.String(40), nullable=False, unique=True),
    sa.Column("owner", sa.String(100), nullable=False, server_default=""),
    sa.Column("endpoint", sa.String(100), nullable=False),
    sa.Column("kind", sa.String(40), nullable=False),
    sa.Column("input_file_id", sa.String(40), nullable=False),
    sa.Column("completion_window", sa.String(20), nullable=False),
    # validating, failed, in_progress, finalizing, completed, expired, cancelling, cancelled
    sa.Column("status", sa.String(12), nullable=False),
    sa.Column("priority", sa.Integer, nullable=False, server_default="0"),
    sa.Column("errors", sa.Text),  # JSON list of {code, message, param, line}
    sa.Column("output_file_id", sa.String(40)),
    sa.Column("error_file_id", sa.String(40)),
    sa.Column("total", sa.Integer, nullable=False, server_default="0"),
    sa.Column("metadata", sa.Text),  # JSON object, up to 16 string pairs
    sa.Column("output_expires_s", sa.Float),  # the output and error files' lifetime, when the batch set one
    sa.Column("usage", sa.Text),  # JSON: tokens of the lines that succeeded, summed when it ends
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
    sa.Column("in_progress_at", sa.Float),
    sa.Column("finalizing_at", sa.Float),
    sa.Column("completed_at", sa.Float),
    sa.Column("failed_at", sa.Float),
    sa.Column("expired_at", sa.Float),
    sa.Column("cancelling_at", sa.Float),
    sa.Column("cancelled_at", sa.Float),
    sa.Index("ix_batches_status", "status"),
)

# A file's content, on PostgreSQL only: instances sharing the database share no filesystem, so each reads a file
# from here into its own `tasks.files_dir` on first use. On SQLite (one machine) the file on disk is the content.
file_chunks = sa.Table(
    "file_chunks",
    metadata,
    sa.Column("file_id", sa.String(40), primary_key=True),
    sa.Column("n", sa.Integer, primary_key=True),  # 0, 1, ...: the chunk's place in the file
    sa.Column("data", sa.LargeBinary, nullable=False),
)
