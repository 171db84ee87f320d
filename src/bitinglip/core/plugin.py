"""Mounts the shared HTTP edge on the whole app: error envelope, request ids and access log, /health, OpenAPI."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Sequence
from pathlib import Path

from litestar import Litestar
from litestar.config.app import AppConfig
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin, SwaggerRenderPlugin, YamlRenderPlugin
from litestar.plugins import InitPlugin
from litestar.static_files import create_static_files_router

from bitinglip.core.http import (
    Observer,
    RequestIdMiddleware,
    complete_openapi,
    handle_error,
    health,
    root_head,
    root_route,
)
from bitinglip.core.litestar_internals import check as check_litestar
from bitinglip.core.litestar_internals import wrap_whole_app

STATIC = Path(__file__).parent / "static"
SWAGGER_ASSETS = "/schema/assets/swagger-ui"  # vendored swagger-ui-dist (static/swagger-ui/README.md)


class CorePlugin(InitPlugin):
    def __init__(self, access_log: bool = True, observers: Sequence[Observer] = (), home: str | None = None) -> None:
        self.access_log = access_log
        self.observers = observers
        self.home = home  # where `GET /` sends a browser (the dashboard), if anywhere

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        app_config.exception_handlers[Exception] = handle_error
        app_config.route_handlers.extend([health, root_route(self.home), root_head])
        app_config.openapi_config = OpenAPIConfig(
            title="BitingLip",
            version=importlib.metadata.version("bitinglip"),
            use_handler_docstrings=True,
            create_examples=False,
            # Swagger UI from the package (no CDN: the docs work offline), at /schema and /schema/swagger; the
            # document itself at /schema/openapi.json and .yaml. Litestar's other viewers load from CDNs.
            render_plugins=[
                SwaggerRenderPlugin(
                    path=["/", "/swagger"],
                    js_url=f"{SWAGGER_ASSETS}/swagger-ui-bundle.js",
                    css_url=f"{SWAGGER_ASSETS}/swagger-ui.css",
                    standalone_preset_js_url=f"{SWAGGER_ASSETS}/swagger-ui-standalone-preset.js",
                    favicon=f"<link rel='icon' type='image/png' href='{SWAGGER_ASSETS}/favicon-32x32.png'>",
                ),
                JsonRenderPlugin(),
                YamlRenderPlugin(),
            ],
        )
        app_config.route_handlers.append(
            create_static_files_router(
                SWAGGER_ASSETS, directories=[STATIC / "swagger-ui"], include_in_schema=False, name="swagger-assets"
            )
        )
        app_config.on_startup.extend([self._wrap_whole_app, complete_openapi])
        return app_config

    def _wrap_whole_app(self, app: Litestar) -> None:
        # Litestar runs middleware only on matched routes; request ids and the access log are for every
        # request, a 404 or a 405 too, so they wrap the app's ASGI handler. The exception handler sits inside:
        # its log lines carry the id.
        check_litestar()
        wrap_whole_app(
            app, lambda inner: RequestIdMiddleware(inner, access_log=self.access_log, observers=self.observers)
        )
