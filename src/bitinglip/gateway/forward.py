"""A request for a model this instance does not serve, while another instance on the database does: sent there,
its answer (streamed or whole, error or not) passed back as it comes, so a plain load balancer in front of
several instances works.

One hop only: a forwarded request carries `X-BitingLip-Forwarded` and is never forwarded again. It keeps the
caller's request id (`X-Request-ID`) and key, and this instance's vouch that it checked that key
(gateway/vouch.py): the instance that serves it does not check the key again, and admits it against the key's
limits and records its usage, as for a request that reached it directly. Which instance serves what is
`Instances`' view of the `instances` table as of this instance's last heartbeat: a request's path reads no table.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable

import aiohttp
from litestar.types import HTTPResponseBodyEvent, HTTPResponseStartEvent, Receive, Scope, Send
from multidict import CIMultiDict

from bitinglip.cluster import Instances
from bitinglip.core import Unavailable, get_logger
from bitinglip.gateway.generation import until_disconnect
from bitinglip.gateway.vouch import FORWARDED, VOUCH, Vouches

log = get_logger(__name__)

# Not passed on: the connection's own (hop by hop), and what the client library sets for the new request.
_REQUEST_DROPPED = frozenset(
    {b"host", b"content-length", b"connection", b"keep-alive", b"transfer-encoding", b"te", b"upgrade", b"x-request-id"}
    | {FORWARDED, VOUCH}
)
# x-request-id: this instance adds its own, the same id.
_RESPONSE_DROPPED = frozenset({b"connection", b"keep-alive", b"transfer-encoding", b"date", b"server", b"x-request-id"})


class Forwarder:
    def __init__(self, instances: Instances, here: Callable[[str], bool], *, timeout_s: float = 600.0) -> None:
        self.instances = instances
        self.vouches = Vouches(instances)
        self.here = here  # whether this instance has the model (a deployment or an adapter), in any state
        self.timeout_s = timeout_s
        self._turn = itertools.count()
        self._client: aiohttp.ClientSession | None = None

    def target(self, model: str | None, scope: Scope) -> str | None:
        """The URL of another instance to send this request to, or None to serve it here."""
        if model is None or self.here(model):
            return None
        if any(name == FORWARDED for name, _ in scope["headers"]):
            return None  # it came from another instance: one hop only
        urls = self.instances.serving_urls.get(model)
        if not urls:
            return None
        return urls[next(self._turn) % len(urls)]

    async def send(self, url: str, scope: Scope, body: bytes, receive: Receive, send: Send) -> None:
        """Send the request to `url` and its answer to the client; a client gone stops it there too."""
        if self._client is None:
            # aiohttp rather than httpx: its C parser took half the CPU per forwarded stream (docs/scale-out.md).
            self._client = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout_s, sock_connect=5.0),
                connector=aiohttp.TCPConnector(limit=0),
                auto_decompress=False,
                skip_auto_headers=("User-Agent", "Accept-Encoding", "Accept", "Content-Type"),
            )
        headers = [(k.decode(), v.decode()) for k, v in scope["headers"] if k not in _REQUEST_DROPPED]
        state = scope["state"]
        headers += [(FORWARDED.decode(), self.instances.id), ("x-request-id", state["request_id"])]
        if (key := state.get("key")) is not None:  # auth is on: this instance checked it
            headers.append(self.vouches.sign(state["request_id"], key.id))
        target = f"{url}{scope['path']}" + (f"?{scope['query_string'].decode()}" if scope["query_string"] else "")
        method = str(scope.get("method", "POST"))
        try:
            response = await self._client.request(method, target, headers=_multi(headers), data=body)
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("gateway.forward_failed", url=url, error=f"{type(exc).__name__}: {exc}")
            raise Unavailable(
                f"the instance serving this model ({url}) did not answer; try again", retry_after=1
            ) from None
        scope["state"]["forwarded_to"] = url
        try:
            pump = asyncio.ensure_future(self._pass_back(response, send))
            gone = asyncio.ensure_future(until_disconnect(receive)())
            await asyncio.wait((pump, gone), return_when=asyncio.FIRST_COMPLETED)
            for task in (pump, gone):
                task.cancel()
            await asyncio.gather(pump, gone, return_exceptions=True)
            if pump.done() and not pump.cancelled() and (error := pump.exception()) is not None:
                raise error
        finally:
            response.close()  # a client gone mid-answer: the serving instance sees its request end too

    @staticmethod
    async def _pass_back(response: aiohttp.ClientResponse, send: Send) -> None:
        start: HTTPResponseStartEvent = {
            "type": "http.response.start",
            "status": response.status,
            "headers": [(k, v) for k, v in response.raw_headers if k.lower() not in _RESPONSE_DROPPED],
        }
        await send(start)
        async for chunk in response.content.iter_any():
            part: HTTPResponseBodyEvent = {"type": "http.response.body", "body": chunk, "more_body": True}
            await send(part)
        end: HTTPResponseBodyEvent = {"type": "http.response.body", "body": b"", "more_body": False}
        await send(end)

    async def stop(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None


def _multi(headers: list[tuple[str, str]]) -> CIMultiDict[str]:
    """The headers as aiohttp takes repeated names."""
    return CIMultiDict(headers)
