"""Routes: OpenAI's Files (`/v1/files`) and Batches (`/v1/batches`), and our tasks (`/api/tasks`). Thin: parse,
call a service, return.

Every call names its owner: the API key that made the request (`request.scope["state"]["owner"]`, set by the
gateway's key check), "" while auth is off. Rows of another owner answer 404, as if they did not exist. A key
limited to some models (`state["models"]`) may not queue work for the others.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from litestar import Controller, Request, Response, delete, get, post
from litestar.datastructures import UploadFile
from litestar.di import NamedDependency
from litestar.enums import RequestEncodingType
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import Body, FromPath, FromQuery, JSONBody, KwargDefinition, QueryParameter
from litestar.response import File

from bitinglip.core import error_responses
from bitinglip.tasks.batches import BatchService
from bitinglip.tasks.files import FileStore
from bitinglip.tasks.queue import TaskQueue
from bitinglip.tasks.wire import (
    Batch,
    BatchCreate,
    BatchList,
    FileDeleted,
    FileList,
    FileObject,
    Task,
    TaskList,
    TaskState,
    TaskSubmit,
)

FILE_MEDIA_TYPE = "application/octet-stream"
# Litestar documents a File response as a bare string: say what the bytes are.
FileBytes = Annotated[
    bytes,
    KwargDefinition(
        description="The file's bytes as they were uploaded, or as a batch wrote them (its output and error files "
        "are JSON lines, one per input line)",
        schema_extra={"contentMediaType": FILE_MEDIA_TYPE},
    ),
]


def owner_of(request: Request[Any, Any, Any]) -> str:
    owner: str = request.scope.get("state", {}).get("owner", "")
    return owner


@dataclass
class FileUpload:
    """The multipart form the `openai` client sends to files.create."""

    file: UploadFile
    purpose: str


class FilesController(Controller):
    path = "/v1/files"
    tags = ("files",)

    @post(
        "/",
        operation_id="createFile",
        summary="Upload a file (purpose `batch`: a batch input, JSON lines)",
        status_code=200,
        responses=error_responses(400, 413),
    )
    async def create_file(
        self,
        files: NamedDependency[FileStore],
        request: Request[Any, Any, Any],
        data: Annotated[FileUpload, Body(media_type=RequestEncodingType.MULTI_PART)],
    ) -> FileObject:
        try:
            return await files.upload(data.file.file, data.file.filename, data.purpose, owner_of(request))
        finally:
            await data.file.close()

    @get("/", operation_id="listFiles", summary="Files, newest first")
    async def list_files(
        self,
        files: NamedDependency[FileStore],
        request: Request[Any, Any, Any],
        purpose: FromQuery[str | None] = None,
        after: FromQuery[str | None] = None,
        limit: FromQuery[int] = 10000,
        order: FromQuery[Literal["asc", "desc"]] = "desc",
    ) -> FileList:
        return await files.list_files(owner_of(request), purpose=purpose, after=after, limit=limit, order=order)

    @get("/{file_id:str}", operation_id="retrieveFile", summary="One file", responses=error_responses(404))
    async def retrieve_file(
        self, files: NamedDependency[FileStore], request: Request[Any, Any, Any], file_id: FromPath[str]
    ) -> FileObject:
        return await files.get(file_id, owner_of(request))

    @get(
        "/{file_id:str}/content",
        operation_id="downloadFile",
        summary="A file's contents, streamed",
        responses={
            200: ResponseSpec(
                data_container=FileBytes,
                media_type=FILE_MEDIA_TYPE,
                description="The file's contents, as an attachment named after the file",
                generate_examples=False,
            ),
            **error_responses(404),
        },
        media_type=FILE_MEDIA_TYPE,
    )
    async def file_content(
        self, files: NamedDependency[FileStore], request: Request[Any, Any, Any], file_id: FromPath[str]
    ) -> File:
        found = await files.get(file_id, owner_of(request))
        return File(path=await files.local_path(file_id), filename=found.filename, media_type=FILE_MEDIA_TYPE)

    @delete(
        "/{file_id:str}",
        operation_id="deleteFile",
        summary="Delete a file",
        status_code=200,
        responses=error_responses(404),
    )
    async def delete_file(
        self, files: NamedDependency[FileStore], request: Request[Any, Any, Any], file_id: FromPath[str]
    ) -> FileDeleted:
        await files.delete(file_id, owner_of(request))
        return FileDeleted(id=file_id)


class BatchesController(Controller):
    path = "/v1/batches"
    tags = ("batches",)

    @post(
        "/",
        operation_id="createBatch",
        summary="Run a file of requests in the background; `failed` with line numbers when the file is not right",
        status_code=200,
        responses=error_responses(400, 404),
    )
    async def create_batch(
        self, batches: NamedDependency[BatchService], request: Request[Any, Any, Any], data: JSONBody[BatchCreate]
    ) -> Batch:
        return await batches.create(data, owner_of(request))

    @get("/", operation_id="listBatches", summary="Batches, newest first; page with `after` (a batch id)")
    async def list_batches(
        self,
        batches: NamedDependency[BatchService],
        request: Request[Any, Any, Any],
        after: FromQuery[str | None] = None,
        limit: FromQuery[int] = 20,
    ) -> BatchList:
        return await batches.list_batches(owner_of(request), after=after, limit=limit)

    @get(
        "/{batch_id:str}",
        operation_id="retrieveBatch",
        summary="One batch and its progress",
        responses=error_responses(404),
    )
    async def retrieve_batch(
        self, batches: NamedDependency[BatchService], request: Request[Any, Any, Any], batch_id: FromPath[str]
    ) -> Batch:
        return await batches.get(batch_id, owner_of(request))

    @post(
        "/{batch_id:str}/cancel",
        operation_id="cancelBatch",
        summary="Cancel a batch: lines not finished end, running ones are aborted; the output keeps what finished",
        status_code=200,
        responses=error_responses(404, 409),
    )
    async def cancel_batch(
        self, batches: NamedDependency[BatchService], request: Request[Any, Any, Any], batch_id: FromPath[str]
    ) -> Batch:
        return await batches.cancel(batch_id, owner_of(request))


class TasksController(Controller):
    path = "/api/tasks"
    tags = ("tasks",)

    @post(
        "/",
        operation_id="submitTask",
        summary="Run a chat or completion request in the background (202; 200 when the idempotency key was seen)",
        status_code=202,
        responses=error_responses(400, 404),
    )
    async def submit(
        self, queue: NamedDependency[TaskQueue], request: Request[Any, Any, Any], data: JSONBody[TaskSubmit]
    ) -> Response[Task]:
        task, made = await queue.submit(data, owner_of(request), request.scope["state"].get("models"))
        return Response(task, status_code=202 if made else 200)

    @get("/", operation_id="listTasks", summary="Tasks, newest first; page with `after` (the last id seen)")
    async def list_tasks(
        self,
        queue: NamedDependency[TaskQueue],
        request: Request[Any, Any, Any],
        # `state` is a name Litestar reserves for the app's state; the query parameter is still called `state`.
        task_state: Annotated[TaskState | None, QueryParameter(name="state")] = None,
        batch_id: FromQuery[str | None] = None,
        after: FromQuery[str | None] = None,
        limit: FromQuery[int] = 50,
    ) -> TaskList:
        limit = max(1, min(limit, 1000))
        data, more = await queue.store.list_tasks(
            owner_of(request), state=task_state, batch_id=batch_id, after=after, limit=limit
        )
        return TaskList(data=data, next_cursor=data[-1].id if more and data else None, has_more=more)

    @get(
        "/{task_id:str}",
        operation_id="showTask",
        summary="One task, with its request and result",
        responses=error_responses(404),
    )
    async def show_task(
        self, queue: NamedDependency[TaskQueue], request: Request[Any, Any, Any], task_id: FromPath[str]
    ) -> Task:
        return await queue.store.get(task_id, owner_of(request))

    @post(
        "/{task_id:str}/cancel",
        operation_id="cancelTask",
        summary="Cancel a task; a running one is aborted in the engine",
        status_code=200,
        responses=error_responses(404, 409),
    )
    async def cancel_task(
        self, queue: NamedDependency[TaskQueue], request: Request[Any, Any, Any], task_id: FromPath[str]
    ) -> Task:
        return await queue.cancel(task_id, owner_of(request))
