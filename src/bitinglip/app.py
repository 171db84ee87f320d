"""The composition root: the one place that imports every module, builds the components and wires them.

Nothing here does I/O: components start in their plugins' lifespans, in plugin order, and stop in reverse.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from litestar import Litestar

from bitinglip.cluster import Cluster, ClusterPlugin
from bitinglip.core import CorePlugin, Database, LoadedSettings, load_settings
from bitinglip.gateway import GatewayPlugin, OpenAIServing
from bitinglip.models import ModelRegistry, ModelService, ModelsPlugin


class Components:
    """Everything the app is made of, built without I/O; the CLI and tests reach the services here."""

    def __init__(self, loaded: LoadedSettings, on_fatal: Callable[[str], None] | None = None) -> None:
        settings = loaded.settings
        self.settings = settings
        self.db = Database(settings.db)
        self.registry = ModelRegistry(self.db, Path(settings.models.dir))
        self.models = ModelService(self.registry)
        self.cluster = Cluster(settings.cluster, self._resolve_and_mark, on_fatal=on_fatal)
        self.serving = OpenAIServing(self.cluster, settings.gateway)

    async def _resolve_and_mark(self, spec: str) -> tuple[Path, str]:
        path, name = await self.models.resolve_for_serving(spec)
        self.models.in_use.add(name)
        return path, name


def create_app(loaded: LoadedSettings | None = None, on_fatal: Callable[[str], None] | None = None) -> Litestar:
    loaded = loaded or load_settings()
    parts = Components(loaded, on_fatal)
    parts.cluster.check()
    app = Litestar(
        plugins=[
            CorePlugin(parts.db),
            ModelsPlugin(parts.models),
            ClusterPlugin(parts.cluster),
            GatewayPlugin(parts.serving, access_log=loaded.settings.server.access_log),
        ],
        logging_config=None,  # ours (structlog) is set up by the CLI; Litestar's would replace it
    )
    app.state.components = parts
    return app
