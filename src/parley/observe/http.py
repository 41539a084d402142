"""A small HTTP/1.1 server for GET routes (``/metrics``, ``/health``, ``/ready``, the dashboard pages) and
body-less POST routes registered as such (``/drain``, which also checks :attr:`Request.remote`).

Owns: parsing a request head (pure: bytes in, :class:`Request` out, :class:`HttpError` for bad input),
rendering a :class:`Response` to bytes (pure), routing by exact path or path prefix, and the asyncio shell
that accepts connections. Must not know what the routes serve.

Deliberately small: one request per connection (``Connection: close``), GET and HEAD (POST where a route asks
for it), no request bodies (413), a bounded request head (``max_head_bytes``), a read timeout, and a bounded
number of connections at once (beyond it a connection gets ``503`` and is closed). A handler's exception is
logged and becomes a ``500``; nothing of it reaches the client. Enough for a Prometheus scrape, a load
balancer's health check and a person's browser; not a web framework.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from http import HTTPStatus
from types import TracebackType
from urllib.parse import parse_qsl, unquote, urlsplit

log = logging.getLogger("parley.http")

MAX_HEAD_BYTES = 16 * 1024
METHODS = ("GET", "HEAD")  # every route's default
KNOWN_METHODS = ("GET", "HEAD", "POST")
# Sent with every response; handlers add their own (a page's Content-Security-Policy).
BASE_HEADERS: tuple[tuple[str, str], ...] = (
    ("Cache-Control", "no-store"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
)


class HttpError(Exception):
    """The request cannot be served; ``status`` says why (400, 405, 431, ...)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str  # percent-decoded, without the query
    query: Mapping[str, str] = field(default_factory=dict)  # first value of each name
    headers: Mapping[str, str] = field(default_factory=dict)  # names lower-cased
    remote: str = ""  # the peer's IP address ("" when not over a socket)


@dataclass(frozen=True, slots=True)
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def text(cls, text: str, status: int = 200, content_type: str = "text/plain; charset=utf-8") -> Response:
        return cls(status, text.encode("utf-8"), content_type)

    @classmethod
    def error(cls, status: int, message: str | None = None) -> Response:
        phrase = HTTPStatus(status).phrase
        return cls.text(f"{status} {phrase}" + (f": {message}" if message else "") + "\n", status)


Handler = Callable[[Request], Awaitable[Response]]


# ---- sans-I/O: bytes <-> messages ------------------------------------------------------------------------


def parse_request_head(head: bytes) -> Request:
    """Parse a request line and headers (up to and including the blank line)."""
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError:
        raise HttpError(400, "the request head is not ASCII") from None
    lines = text.split("\r\n")
    while lines and lines[-1] == "":
        lines.pop()
    if not lines:
        raise HttpError(400, "empty request")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        raise HttpError(400, f"malformed request line {lines[0][:80]!r}")
    method, target, version = parts
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise HttpError(505 if version.startswith("HTTP/") else 400, f"unsupported version {version[:20]!r}")
    if not method.isalpha() or not method.isupper():
        raise HttpError(400, f"malformed method {method[:20]!r}")
    if not target.startswith("/"):
        raise HttpError(400, "the request target must be a path")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip() or any(c in name for c in " \t"):
            raise HttpError(400, f"malformed header line {line[:80]!r}")
        headers[name.lower()] = value.strip(" \t")
    split = urlsplit(target)
    query: dict[str, str] = {}
    for key, value in parse_qsl(split.query, keep_blank_values=True):
        query.setdefault(key, value)
    return Request(method=method, path=unquote(split.path), query=query, headers=headers)


def render_response(response: Response, *, head_only: bool = False) -> bytes:
    """The response as bytes; ``head_only`` (a HEAD request) keeps Content-Length but drops the body."""
    status = HTTPStatus(response.status)
    lines = [
        f"HTTP/1.1 {status.value} {status.phrase}",
        f"Content-Type: {response.content_type}",
        f"Content-Length: {len(response.body)}",
        "Connection: close",
    ]
    for name, value in (*BASE_HEADERS, *response.headers):
        if any(c in name + value for c in "\r\n"):
            raise ValueError(f"header {name!r} contains a line break")
        lines.append(f"{name}: {value}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + response.body


# ---- the asyncio shell ----------------------------------------------------------------------------------


class HttpServer:
    """Routes GET requests to handlers. ``async with HttpServer(...) as server`` or ``start()``/``close()``."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        read_timeout_s: float = 10.0,
        max_head_bytes: int = MAX_HEAD_BYTES,
        max_connections: int = 64,
    ) -> None:
        self.host = host
        self.requested_port = port
        self.read_timeout_s = read_timeout_s
        self.max_head_bytes = max_head_bytes
        self.max_connections = max_connections
        self._exact: dict[str, Handler] = {}
        self._prefixes: list[tuple[str, Handler]] = []
        self._methods: dict[str, tuple[str, ...]] = {}  # path -> allowed methods (default METHODS)
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    def route(self, path: str, handler: Handler, *, prefix: bool = False, methods: tuple[str, ...] = METHODS) -> None:
        """Serve ``path`` exactly, or (``prefix=True``) every path that starts with it; longest prefix wins.
        ``methods``: what the route answers (GET and HEAD unless it says otherwise, e.g. ``("POST",)``)."""
        if not path.startswith("/"):
            raise ValueError(f"a route is a path starting with '/', got {path!r}")
        if not methods or any(m not in KNOWN_METHODS for m in methods):
            raise ValueError(f"methods must be some of {KNOWN_METHODS}, got {methods!r}")
        self._methods[path] = methods
        if prefix:
            self._prefixes.append((path, handler))
            self._prefixes.sort(key=lambda ph: len(ph[0]), reverse=True)
        else:
            self._exact[path] = handler

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("the HTTP server is not started")
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._on_connection, self.host, self.requested_port, limit=self.max_head_bytes + 1024
        )
        log.info("HTTP server on %s", self.url)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for task in list(self._connections):
            task.cancel()
        for task in list(self._connections):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def __aenter__(self) -> HttpServer:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def handle(self, request: Request) -> Response:
        """Route one request (no socket involved: tests can call this directly)."""
        handler, path = self._exact.get(request.path), request.path
        if handler is None:
            handler, path = next(((h, p) for p, h in self._prefixes if request.path.startswith(p)), (None, ""))
        if request.method not in KNOWN_METHODS:
            return Response(405, b"405 Method Not Allowed\n", headers=(("Allow", ", ".join(METHODS)),))
        if handler is None:
            return Response.error(404)
        allowed = self._methods.get(path, METHODS)
        if request.method not in allowed:
            return Response(405, b"405 Method Not Allowed\n", headers=(("Allow", ", ".join(allowed)),))
        try:
            return await handler(request)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("HTTP handler for %s failed", request.path)
            return Response.error(500)

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            if len(self._connections) > self.max_connections:
                writer.write(render_response(Response.error(503, "too many connections")))
            else:
                await self._exchange(reader, writer)
            await writer.drain()
        except (ConnectionError, TimeoutError):
            pass
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError, TimeoutError):
                async with asyncio.timeout(1.0):
                    await writer.wait_closed()

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head_only = False
        try:
            async with asyncio.timeout(self.read_timeout_s):
                head = await reader.readuntil(b"\r\n\r\n")
            if len(head) > self.max_head_bytes:
                raise HttpError(431, "the request head is too large")
            request = parse_request_head(head)
            length = request.headers.get("content-length", "0").strip()
            if length not in ("", "0") or "transfer-encoding" in request.headers:
                raise HttpError(413, "request bodies are not accepted")
            peer = writer.get_extra_info("peername")
            if isinstance(peer, tuple) and peer:
                request = replace(request, remote=str(peer[0]))
            head_only = request.method == "HEAD"
            response = await self.handle(request)
        except asyncio.LimitOverrunError:
            response = Response.error(431, "the request head is too large")
        except asyncio.IncompleteReadError as exc:
            if not exc.partial:
                return  # connected and closed: a port probe
            response = Response.error(400, "incomplete request")
        except TimeoutError:
            response = Response.error(408)
        except HttpError as exc:
            response = Response.error(exc.status, str(exc))
        writer.write(render_response(response, head_only=head_only))
