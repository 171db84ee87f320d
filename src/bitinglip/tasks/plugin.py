"""Mounts the tasks module's routes (`/v1/files`, `/v1/batches`, `/api/tasks`) and hands them its services;
starting and stopping the queue is `Components.running`'s."""

from __future__ import annotations

from litestar.config.app import AppConfig
from litestar.di import Provide
from litestar.plugins import InitPlugin

from bitinglip.tasks.api import BatchesController, FilesController, TasksController
from bitinglip.tasks.batches import BatchService

MULTIPART_OVERHEAD = 1 << 20  # headers and boundaries around an upload of the largest file taken


class TasksPlugin(InitPlugin):
    def __init__(self, batches: BatchService) -> None:
        self.batches = batches

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        # Uploads may be as large as tasks.max_file_bytes; every other route keeps Litestar's 10 MB limit.
        files = type(
            "FilesController",
            (FilesController,),
            {"request_max_body_size": self.batches.settings.max_file_bytes + MULTIPART_OVERHEAD},
        )
        app_config.route_handlers.extend([files, BatchesController, TasksController])
        batches, queue, store = self.batches, self.batches.queue, self.batches.files
        app_config.dependencies["batches"] = Provide(lambda: batches, use_cache=True, sync_to_thread=False)
        app_config.dependencies["queue"] = Provide(lambda: queue, use_cache=True, sync_to_thread=False)
        app_config.dependencies["files"] = Provide(lambda: store, use_cache=True, sync_to_thread=False)
        return app_config
