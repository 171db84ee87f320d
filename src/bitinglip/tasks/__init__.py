"""The durable job queue (tables `tasks`, `files`, `batches`) and OpenAI's Files and Batches API over it.

Generic: the app registers a `TaskKind` per kind of work ("chat", "completion"), so this module never
learns what an inference is; `Capacity` is how it asks the cluster for room. Imports only `bitinglip.core`.
"""

from bitinglip.tasks.batches import BatchService
from bitinglip.tasks.files import FileStore
from bitinglip.tasks.plugin import TasksPlugin
from bitinglip.tasks.queue import Capacity, TaskKind, TaskQueue
from bitinglip.tasks.store import TaskStore
from bitinglip.tasks.wire import Batch, BatchCreate, FileObject, Task, TaskSubmit

__all__ = [
    "Batch",
    "BatchCreate",
    "BatchService",
    "Capacity",
    "FileObject",
    "FileStore",
    "Task",
    "TaskKind",
    "TaskQueue",
    "TaskStore",
    "TaskSubmit",
    "TasksPlugin",
]
