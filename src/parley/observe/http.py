"""parley's HTTP side on aiohttp: one :class:`HttpServer` per process for ``/metrics``, ``/health``,
``/ready``, ``POST /drain`` and the dashboard pages, on the process's own event loop.

Owns: the routes table (exact paths and aiohttp path patterns such as ``/calls/{call_id}``, each with the
methods it answers), what every response carries (:data:`BASE_HEADERS`, no ``Server`` version), plain-text
error bodies (``404 Not Found``) with nothing of a handler's exception in them, and the limits that keep a
port reachable from the pod network cheap to hold open. Must not know what the routes serve.

The guarantees of the hand-written server it replaced, kept on aiohttp's own knobs:

- GET and HEAD unless a route asks for POST; other methods 405 with ``Allow``; unknown paths 404.
- No request bodies: a request that declares one (``Content-Length`` > 0 or chunked) is answered 413 and
  its connection closed; aiohttp's ``client_max_size`` is set as small as a head.
- A bounded request head: the request line and each header at most ``max_field_bytes`` (431 or 400 beyond),
  at most :data:`MAX_HEADERS` headers.
- Slow or idle clients (slowloris): a connection that has not sent a complete request head within
  ``read_timeout_s`` of connecting, or sits idle that long after a response, is closed (aiohttp's
  keep-alive timer starts at accept).
- At most ``max_connections`` connections at once get their request served; a request arriving while more
  are open is answered 503 and its connection closed.
- The bind address is the caller's (``observe.host``, loopback by default); no access log (a scrape every
  few seconds is not news); a handler's exception is logged and becomes a bare 500.

One difference: a request aiohttp's parser rejects (a malformed request line, a header over the limit) is
answered 400 by aiohttp itself, before any middleware, so without the base headers and with aiohttp's own
``Server`` header; it is logged at debug level only (a port scanner's junk is not an error of ours).

Why aiohttp on the same loop as the media: one asyncio-native dependency, no extra process or thread, and it
costs the loop less than the hand-written server did. Measured with ``scripts/http_frame_lag.py --mode cost``
(CPU time of this process, which the box's other load does not move; 500 requests in a row from another
process): ``/health`` 0.17-0.18 ms per request on aiohttp against 0.29-0.32 ms on the old server;
``/metrics`` 2.5 ms against 0.8 ms, all of the difference in prometheus_client's pure-Python exposition of
~28 kB (see :mod:`parley.observe.metrics`). At one scrape per 15 s that is 0.02 % of a core, and the longest
a frame can wait behind a scrape is ~2.5 ms against a 20 ms frame period. The frame-lag runs
(``--mode none|scrape``: the density bench at 50 calls, interleaved, on a 2-core box shared with other
work; 0 dropped frames and every turn answered in all of them): in the three calmest rounds, scraped every
0.1 s (150x Prometheus' usual rate), frame-lag p99 was 2.3 / 8.6 / 11.7 ms unscraped, 2.6 / 8.6 / 11.1 ms
on the old stack and 11.0 / 25.8 / 8.3 ms on this one; scraped every 1 s the box's own load (unscraped
runs from 21 to 192 ms) swamped any difference. So: a cost visible only at scrape rates nobody uses.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from types import TracebackType

from aiohttp import web

log = logging.getLogger("parley.http")

MAX_FIELD_BYTES = 8 * 1024
MAX_HEADERS = 32
METHODS = ("GET", "HEAD")  # every route's default
KNOWN_METHODS = ("GET", "HEAD", "POST")
TEXT = "text/plain; charset=utf-8"
# Sent with every response; handlers add their own (a page's Content-Security-Policy).
BASE_HEADERS: tuple[tuple[str, str], ...] = (
    ("Cache-Control", "no-store"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def respond(body: bytes | str, status: int = 200, content_type: str = TEXT,
            headers: tuple[tuple[str, str], ...] = ()) -> web.Response:
    """A response with exactly this ``Content-Type`` (parameters included, as Prometheus wants them)."""
    data = body.encode("utf-8") if isinstance(body, str) else body
    return web.Response(body=data, status=status, headers={"Content-Type": content_type, **dict(headers)})


def error_response(status: int, message: str | None = None,
                   headers: tuple[tuple[str, str], ...] = ()) -> web.Response:
    """``404 Not Found`` (``: message``), as plain text."""
    phrase = HTTPStatus(status).phrase
    return respond(f"{status} {phrase}" + (f": {message}" if message else "") + "\n", status, headers=headers)


class HttpServer:
    """Routes requests to handlers. ``async with HttpServer(...) as server`` or ``start()``/``close()``;
    routes are added before ``start()``."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        read_timeout_s: float = 10.0,
        max_field_bytes: int = MAX_FIELD_BYTES,
        max_connections: int = 64,
    ) -> None:
        self.host = host
        self.requested_port = port
        self.read_timeout_s = read_timeout_s
        self.max_field_bytes = max_field_bytes
        self.max_connections = max_connections
        self.app = web.Application(middlewares=[self._guard], client_max_size=max_field_bytes)
        self.app.on_response_prepare.append(_base_headers)
        self._runner: web.AppRunner | None = None

    def route(self, path: str, handler: Handler, *, methods: tuple[str, ...] = METHODS) -> None:
        """Serve ``path`` (an exact path, or an aiohttp pattern like ``/calls/{call_id}``) for ``methods``
        (GET and HEAD unless it says otherwise, e.g. ``("POST",)``)."""
        if not path.startswith("/"):
            raise ValueError(f"a route is a path starting with '/', got {path!r}")
        if not methods or any(m not in KNOWN_METHODS for m in methods):
            raise ValueError(f"methods must be some of {KNOWN_METHODS}, got {methods!r}")
        for method in methods:
            self.app.router.add_route(method, path, handler)

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        if self._runner is None or not self._runner.addresses:
            raise RuntimeError("the HTTP server is not started")
        return int(self._runner.addresses[0][1])

    @property
    def connections(self) -> int:
        """Connections open now (0 before ``start()``)."""
        server = self._runner.server if self._runner is not None else None
        return len(server.connections) if server is not None else 0

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        runner = web.AppRunner(
            self.app, access_log=None, logger=_WireLog(log, {}), keepalive_timeout=self.read_timeout_s,
            shutdown_timeout=1.0,
            max_line_size=self.max_field_bytes, max_field_size=self.max_field_bytes, max_headers=MAX_HEADERS,
        )
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self.requested_port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        log.info("HTTP server on %s", self.url)

    async def close(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> HttpServer:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self.connections > self.max_connections:
            return _closing(error_response(503, "too many connections"))
        if request.body_exists or (request.content_length or 0) > 0:
            return _closing(error_response(413, "request bodies are not accepted"))
        try:
            return await handler(request)
        except web.HTTPMethodNotAllowed as exc:
            allow = ", ".join(m for m in KNOWN_METHODS if m in exc.allowed_methods)
            return error_response(405, headers=(("Allow", allow),))
        except web.HTTPException as exc:
            return error_response(exc.status)
        except Exception:
            log.exception("HTTP handler for %s failed", request.path)
            return error_response(500)


class _WireLog(logging.LoggerAdapter[logging.Logger]):
    """aiohttp's protocol-level log (``Error handling request``: a malformed request), at debug level."""

    def exception(self, msg: object, *args: object, exc_info: object = True, **kwargs: object) -> None:
        self.debug(msg, *args, exc_info=exc_info, **kwargs)  # type: ignore[arg-type]


def _closing(response: web.Response) -> web.Response:
    response.force_close()
    return response


async def _base_headers(_request: web.Request, response: web.StreamResponse) -> None:
    for name, value in BASE_HEADERS:
        response.headers.setdefault(name, value)
    response.headers["Server"] = "parley"
