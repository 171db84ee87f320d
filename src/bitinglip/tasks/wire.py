"""What the tasks module sends and takes over HTTP: OpenAI's File and Batch objects, and our Task."""

from __future__ import annotations

from typing import Any, Literal

import msgspec

TaskState = Literal["queued", "running", "succeeded", "failed", "cancelled", "expired"]
OPEN_STATES = ("queued", "running")
BatchStatus = Literal[
    "validating", "failed", "in_progress", "finalizing", "completed", "expired", "cancelling", "cancelled"
]
ACTIVE_BATCH = ("validating", "in_progress", "finalizing", "cancelling")


class FileObject(msgspec.Struct, kw_only=True):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    expires_at: int | None
    filename: str
    purpose: str
    status: Literal["processed"] = "processed"
    status_details: str | None = None


class FileList(msgspec.Struct, kw_only=True):
    object: Literal["list"] = "list"
    data: list[FileObject]
    first_id: str | None
    last_id: str | None
    has_more: bool


class FileDeleted(msgspec.Struct, kw_only=True):
    id: str
    object: Literal["file"] = "file"
    deleted: bool = True


class ExpiresAfter(msgspec.Struct, kw_only=True):
    anchor: Literal["created_at"]
    seconds: int


class BatchCreate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict[str, str] | None = None
    # When the output and error files expire (OpenAI: 1 hour to 30 days after they are made); default: the
    # retention of every file, tasks.retention_days.
    output_expires_after: ExpiresAfter | None = None
    # BitingLip's: higher runs first (also against single tasks on the same model). OpenAI has no such field.
    priority: int = 0


class BatchError(msgspec.Struct, kw_only=True):
    code: str
    message: str
    param: str | None = None
    line: int | None = None


class BatchErrors(msgspec.Struct, kw_only=True):
    object: Literal["list"] = "list"
    data: list[BatchError]


class RequestCounts(msgspec.Struct, kw_only=True):
    total: int
    completed: int
    failed: int


class BatchUsage(msgspec.Struct, kw_only=True):
    input_tokens: int
    output_tokens: int
    total_tokens: int


class Batch(msgspec.Struct, kw_only=True):
    id: str
    object: Literal["batch"] = "batch"
    endpoint: str
    errors: BatchErrors | None
    input_file_id: str
    completion_window: str
    status: BatchStatus
    output_file_id: str | None
    error_file_id: str | None
    created_at: int
    in_progress_at: int | None
    expires_at: int | None
    finalizing_at: int | None
    completed_at: int | None
    failed_at: int | None
    expired_at: int | None
    cancelling_at: int | None
    cancelled_at: int | None
    request_counts: RequestCounts
    metadata: dict[str, str] | None
    usage: BatchUsage | None = None


class BatchList(msgspec.Struct, kw_only=True):
    object: Literal["list"] = "list"
    data: list[Batch]
    first_id: str | None
    last_id: str | None
    has_more: bool


class TaskSubmit(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    kind: str  # "chat" or "completion": the body is then what /v1/chat/completions or /v1/completions takes
    request: dict[str, Any]
    priority: int = 0
    # The same key (for the same API key) returns the task made first, however often it is sent.
    idempotency_key: str | None = None
    max_attempts: int | None = None


class TaskError(msgspec.Struct, kw_only=True):
    status_code: int
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class Task(msgspec.Struct, kw_only=True):
    id: str
    object: Literal["task"] = "task"
    kind: str
    model: str
    state: TaskState
    priority: int
    attempts: int
    max_attempts: int
    idempotency_key: str | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    batch_id: str | None
    custom_id: str | None
    request: dict[str, Any] | None = None  # in `show`, not in lists
    result: Any = None
    error: TaskError | None = None


class TaskList(msgspec.Struct, kw_only=True):
    object: Literal["list"] = "list"
    data: list[Task]
    # Pass as `after` for the next page; null on the last one.
    next_cursor: str | None
    has_more: bool
