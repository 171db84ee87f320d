"""API keys on every route but the public ones: who is calling, and may they call this.

`AuthMiddleware` runs on every matched route (Litestar route middleware) before the body is read:
- the key comes from `Authorization: Bearer <key>` (what the `openai` client sends) or `x-api-key`; a request
  another instance forwarded with its vouch has the key taken as that instance checked it (gateway/vouch.py);
- a missing, malformed, unknown, revoked or expired key is a 401; a key without the route's scope a 403
  (`/api/...` needs `admin`, except `/api/tasks` and `/api/usage`; `/v1/...` needs `inference` or `admin`);
- the key lands in the request's scope state (`key`, `owner`, `models`) for the routes; which models it may
  use is checked where the model is known (the OpenAI routes, tasks and batches);
- a key with limits gets OpenAI's `x-ratelimit-*` headers on every response.

Keys are cached for `gateway.key_cache_s`, unknown ids too, so a flood of bad keys never reaches the database.
"""

from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict
from collections.abc import Callable

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from bitinglip.core import Forbidden, GatewaySettings, ServerSettings, SettingsError, Unauthorized
from bitinglip.gateway.keys import ApiKey, KeyStore, key_id, matches
from bitinglip.gateway.vouch import Vouches

PUBLIC_PATHS = {"health": "/health", "ready": "/ready", "metrics": "/metrics", "docs": "/schema"}
INFERENCE_API = ("/api/tasks", "/api/usage")
MAX_CACHED = 10_000


def required_scope(path: str) -> str:
    if path == "/metrics" or (path.startswith("/api/") and not path.startswith(INFERENCE_API)):
        return "admin"
    return "inference"


class Authenticator:
    def __init__(self, store: KeyStore, settings: GatewaySettings, vouches: Vouches | None = None) -> None:
        self.store = store
        self.vouches = vouches  # None: a single instance, nothing is forwarded to it
        self.ttl = settings.key_cache_s
        self._cache: OrderedDict[str, tuple[ApiKey | None, float]] = OrderedDict()
        public = [PUBLIC_PATHS[name] for name in settings.public]
        self.public_exact = frozenset(p for p in public if p != "/schema")
        self.public_docs = "/schema" in public

    def is_public(self, path: str) -> bool:
        # The dashboard's files (/ui) hold no data: the page asks for a key and sends it with each call it makes;
        # /api/me checks the key it is sent itself (a sign-in page asks it which key it has).
        return (
            path == "/"
            or path == "/api/me"
            or path == "/ui"
            or path.startswith("/ui/")
            or path in self.public_exact
            or (self.public_docs and (path == "/schema" or path.startswith("/schema/")))
        )

    def forget(self, ident: str) -> None:
        """A key changed here (revoked through /api/keys): the next request reads it again."""
        self._cache.pop(ident, None)

    async def _lookup(self, ident: str) -> ApiKey | None:
        now = time.monotonic()
        cached = self._cache.get(ident)
        if cached is not None and cached[1] > now:
            return cached[0]
        found = await self.store.get(ident)
        self._cache[ident] = (found, now + self.ttl)
        self._cache.move_to_end(ident)
        if len(self._cache) > MAX_CACHED:
            self._cache.popitem(last=False)
        return found

    async def authenticate_request(self, scope: Scope) -> ApiKey:
        """The request's key: checked here, or as the instance that forwarded the request checked it."""
        token = request_token(scope)
        if token and self.vouches is not None and (ident := key_id(token)) is not None:
            voucher = self.vouches.voucher(scope, ident)
            if voucher is not None and (key := await self._lookup(ident)) is not None:
                scope["state"].setdefault("log", {})["vouched_by"] = voucher  # on the access line
                return key
        return await self.authenticate(token)

    async def authenticate(self, token: str | None) -> ApiKey:
        if not token:
            raise Unauthorized(
                "no API key: send one as `Authorization: Bearer <key>` (make one with `bitinglip keys create`)",
                code="missing_api_key",
            )
        ident = key_id(token)
        key = await self._lookup(ident) if ident is not None else None
        # The id is no secret (it names the row); the whole key is compared by hash, in constant time.
        if key is None or not matches(token, key):
            raise Unauthorized("incorrect API key provided", code="invalid_api_key")
        state = key.state()
        if state != "active":
            raise Unauthorized(f"this API key was {state}", code=f"{state}_api_key")
        return key


def request_token(scope: Scope) -> str | None:
    """The key a request sends: `Authorization: Bearer <key>` or `x-api-key`."""
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, credentials = value.decode("latin-1").partition(" ")
            return credentials.strip() if scheme.lower() == "bearer" else None
        if name == b"x-api-key":
            return value.decode("latin-1").strip()
    return None


class AuthMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        auth: Authenticator,
        rate_headers: Callable[[ApiKey], list[tuple[bytes, bytes]]],
    ) -> None:
        self.app = app
        self.auth = auth
        self.rate_headers = rate_headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"]
        if scope["type"] != ScopeType.HTTP or self.auth.is_public(path):
            await self.app(scope, receive, send)
            return
        key = await self.auth.authenticate_request(scope)
        if required_scope(path) == "admin" and key.scope != "admin":
            raise Forbidden(f"this API key has scope `{key.scope}`; {path} needs an `admin` key", code="scope_required")
        state = scope.setdefault("state", {})
        state["key"] = key
        state["owner"] = key.id
        state["models"] = key.models
        state.setdefault("log", {})["key_id"] = key.id
        if key.rpm is None and key.tpm is None:
            await self.app(scope, receive, send)
            return

        async def send_with_limits(message: Message) -> None:
            # A request forwarded to another instance carries that instance's headers: it admitted the request.
            if message["type"] == "http.response.start" and "forwarded_to" not in state:
                message["headers"] = [*message.get("headers", []), *self.rate_headers(key)]
            await send(message)

        await self.app(scope, receive, send_with_limits)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def auth_enabled(server: ServerSettings, gateway: GatewaySettings) -> bool:
    """Whether keys are required; refuses (SettingsError) to serve a non-loopback address without them unless
    `gateway.allow_public_without_auth` says so."""
    enabled = not is_loopback(server.host) if gateway.auth == "auto" else bool(gateway.auth)
    if not enabled and not is_loopback(server.host) and not gateway.allow_public_without_auth:
        raise SettingsError(
            f"server.host {server.host!r} is reachable from other machines and gateway.auth is off: every caller "
            "could use the models and the admin API. Turn auth on (gateway.auth = true, then "
            "`bitinglip keys create --scope admin`), or set gateway.allow_public_without_auth = true",
            param="gateway.auth",
        )
    return enabled
