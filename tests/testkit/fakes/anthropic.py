"""A loopback fake of Anthropic's streaming Messages API (``POST /v1/messages``), plus the tiny HTTP/1.1
server it runs on (:class:`LoopbackHttpServer`, also used by the OpenAI TTS fake).

Reproduced (docs/provider-protocols.md §7): the ``x-api-key`` / ``anthropic-version`` / JSON checks with
the documented error body ``{"type":"error","error":{"type","message"},"request_id"}`` and statuses (401
``authentication_error``, 400 ``invalid_request_error``, 404 ``not_found_error``); request-body checks
(``model``, integer ``max_tokens``, non-empty ``messages`` of ``user``/``assistant`` turns, ``stream:
true``, tools with ``name`` + ``input_schema``, every ``tool_result`` answering a ``tool_use`` of the
assistant turn just before it, non-empty text); the SSE stream with named events (``event: <type>`` then
``data: <json>``): ``message_start`` with usage, ``ping``, per block ``content_block_start`` /
``content_block_delta`` (``text_delta``, ``input_json_delta`` whose first fragment is ``""``) /
``content_block_stop``, ``message_delta`` with cumulative ``output_tokens`` and ``stop_reason``,
``message_stop``; in-stream ``error`` events; a field clients must ignore. Scripted faults: any status with
its error type (401/403/429/500/529 ...), ``retry-after`` / ``x-should-retry`` headers, malformed data,
stalls (``then="hold"``: keep the response open until the client goes), drops (TCP cut mid-stream).

Simplified: replies are scripted (:class:`AnthropicReply`, one per request in order, the last repeating),
never generated; token counts are whatever the script says; no rate-limit headers, no ``anthropic-beta``
features, no thinking blocks unless scripted. The rule that the first message must be a ``user`` turn is
enforced conservatively [uncertain whether the API still requires it]. The HTTP server speaks just enough
HTTP/1.1 for httpx: Content-Length request bodies, chunked or Content-Length responses, keep-alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Literal
from urllib.parse import parse_qsl, urlsplit

__all__ = [
    "AnthropicReply",
    "FakeAnthropic",
    "HttpExchange",
    "HttpRequest",
    "LoopbackHttpServer",
    "error_reply",
    "reply",
    "text",
    "tool_use",
]


# ---- a tiny HTTP/1.1 server -----------------------------------------------------------------------------


@dataclass(slots=True)
class HttpRequest:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    body: bytes
    connection: int  # which TCP connection carried it (1, 2, ...): shows keep-alive reuse

    def json(self) -> object:
        return json.loads(self.body)


class HttpExchange:
    """One request and the response being written for it."""

    def __init__(self, request: HttpRequest, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.request = request
        self._reader = reader
        self._writer = writer
        self.complete = False  # the response was fully written: the connection may carry another request

    async def head(self, status: int, headers: Mapping[str, str] | None = None, *, chunked: bool = True) -> None:
        phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error"
        lines = [f"HTTP/1.1 {status} {phrase}", *(f"{k}: {v}" for k, v in (headers or {}).items())]
        if chunked:
            lines.append("Transfer-Encoding: chunked")
        self._writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await self._writer.drain()

    async def chunk(self, data: bytes) -> None:
        if data:
            self._writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            await self._writer.drain()

    async def end(self) -> None:
        self._writer.write(b"0\r\n\r\n")
        await self._writer.drain()
        self.complete = True

    async def respond(self, status: int, body: bytes, headers: Mapping[str, str] | None = None) -> None:
        await self.head(status, {**(headers or {}), "Content-Length": str(len(body))}, chunked=False)
        self._writer.write(body)
        await self._writer.drain()
        self.complete = True

    def drop(self) -> None:
        """Cut the TCP connection (no final chunk, no FIN handshake)."""
        self._writer.transport.abort()

    async def wait_for_disconnect(self) -> None:
        """Hold the response open until the client closes its side."""
        with contextlib.suppress(ConnectionError):
            while await self._reader.read(4096):
                pass


Handler = Callable[[HttpExchange], Awaitable[None]]


class LoopbackHttpServer:
    """HTTP/1.1 on 127.0.0.1 with keep-alive; each request goes to ``handler``."""

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.connections = 0
        self.disconnects = 0  # connections that ended mid-response (the client went away, or a scripted cut)
        self.disconnected = asyncio.Event()
        self.url = ""

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        number = self.connections
        try:
            while (request := await self._read_request(reader, number)) is not None:
                exchange = HttpExchange(request, reader, writer)
                await self._handler(exchange)
                if not exchange.complete:
                    self.disconnects += 1
                    self.disconnected.set()
                    break
                if request.headers.get("connection", "").lower() == "close":
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            self.disconnects += 1
            self.disconnected.set()
        finally:
            with contextlib.suppress(ConnectionError):
                writer.close()
            self._tasks.discard(task)

    @staticmethod
    async def _read_request(reader: asyncio.StreamReader, number: int) -> HttpRequest | None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        except asyncio.IncompleteReadError:
            return None  # the client closed an idle connection
        request_line, *header_lines = head.strip().split("\r\n")
        method, target, _ = request_line.split(" ", 2)
        headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in header_lines)}
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        parts = urlsplit(target)
        return HttpRequest(method, parts.path, dict(parse_qsl(parts.query)), headers, body, number)


# ---- scripted Anthropic replies ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Block:
    kind: Literal["text", "tool_use"]
    fragments: tuple[str, ...]
    id: str = ""
    name: str = ""


def text(*fragments: str) -> _Block:
    """A text content block streamed as these ``text_delta`` fragments."""
    return _Block("text", fragments)


def tool_use(id: str, name: str, *json_fragments: str) -> _Block:
    """A ``tool_use`` block whose input arrives as these ``input_json_delta`` fragments (after a ``""``)."""
    return _Block("tool_use", ("", *json_fragments), id=id, name=name)


Event = Mapping[str, object] | str  # a str is sent verbatim as the data line (malformed data)


@dataclass(frozen=True, slots=True)
class AnthropicReply:
    """What the fake answers to one request."""

    events: tuple[Event, ...] = ()
    status: int = 200
    error_type: str = ""  # for a status other than 200
    error_message: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    then: Literal["end", "hold", "drop"] = "end"  # after the events: finish, stall until the client goes, cut
    delay_s: float = 0.0  # before each event


def reply(
    *blocks: _Block,
    input_tokens: int = 25,
    output_tokens: int | None = None,
    stop_reason: str | None = None,
    error: str | None = None,
    then: Literal["end", "hold", "drop"] = "end",
    delay_s: float = 0.0,
    stop_after: int | None = None,
) -> AnthropicReply:
    """A streamed message with these blocks. ``error``: an in-stream ``error`` event of that type replaces
    the end of the message. ``stop_after``: only the first n events are sent, then ``then``."""
    out = output_tokens if output_tokens is not None else sum(len(f.split()) for b in blocks for f in b.fragments)
    reason = stop_reason or ("tool_use" if any(b.kind == "tool_use" for b in blocks) else "end_turn")
    usage = {
        "input_tokens": input_tokens,
        "output_tokens": 1,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "service_tier": "standard",
    }
    events: list[Event] = [
        {
            "type": "message_start",
            "message": {
                "id": "msg_01FakeXyz",
                "type": "message",
                "role": "assistant",
                "content": [],
                "model": "claude-fake",
                "stop_reason": None,
                "stop_sequence": None,
                "usage": usage,
                "x_fake_unknown_field": {"clients": "must ignore this"},
            },
        },
        {"type": "ping"},
    ]
    for index, block in enumerate(blocks):
        if block.kind == "text":
            start: dict[str, object] = {"type": "text", "text": ""}
            deltas = [{"type": "text_delta", "text": f} for f in block.fragments]
        else:
            start = {"type": "tool_use", "id": block.id, "name": block.name, "input": {}}
            deltas = [{"type": "input_json_delta", "partial_json": f} for f in block.fragments]
        events.append({"type": "content_block_start", "index": index, "content_block": start})
        events.extend({"type": "content_block_delta", "index": index, "delta": d} for d in deltas)
        events.append({"type": "content_block_stop", "index": index})
    if error is not None:
        events.append({"type": "error", "error": {"type": error, "message": error.replace("_", " ").capitalize()}})
    else:
        events.append(
            {
                "type": "message_delta",
                "delta": {"stop_reason": reason, "stop_sequence": None},
                "usage": {"output_tokens": out},
            }
        )
        events.append({"type": "message_stop"})
    return AnthropicReply(tuple(events[:stop_after]), then=then, delay_s=delay_s)


def error_reply(status: int, error_type: str, message: str = "", **headers: str) -> AnthropicReply:
    """An HTTP error before streaming, with the documented body (``headers``: e.g. ``retry_after="3"``)."""
    return AnthropicReply(
        status=status,
        error_type=error_type,
        error_message=message or error_type.replace("_", " ").capitalize(),
        headers={k.replace("_", "-"): v for k, v in headers.items()},
    )


# ---- the fake -----------------------------------------------------------------------------------------------


class FakeAnthropic:
    """``async with FakeAnthropic(key, replies=[...]) as fake:`` then use ``fake.base_url``."""

    def __init__(self, api_key: str, replies: Sequence[AnthropicReply] = (), *, version: str = "2023-06-01") -> None:
        self.api_key = api_key
        self.version = version
        self.replies = list(replies) or [reply(text("Hello."))]
        self.requests: list[HttpRequest] = []
        self.http = LoopbackHttpServer(self._handle)

    @property
    def base_url(self) -> str:
        return self.http.url

    @property
    def disconnected(self) -> asyncio.Event:
        return self.http.disconnected

    async def __aenter__(self) -> FakeAnthropic:
        await self.http.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.http.stop()

    def body(self, n: int = -1) -> dict[str, object]:
        parsed = self.requests[n].json()
        assert isinstance(parsed, dict)
        return parsed

    async def _handle(self, ex: HttpExchange) -> None:
        self.requests.append(ex.request)
        problem = self._problem(ex.request)
        if problem is not None:
            await self._error(ex, *problem)
            return
        script = self.replies[min(len(self.requests) - 1, len(self.replies) - 1)]
        if script.status != 200:
            await self._error(ex, script.status, script.error_type, script.error_message, script.headers)
            return
        await ex.head(
            200,
            {
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
                "request-id": "req_fake01",
                **script.headers,
            },
        )
        for event in script.events:
            if script.delay_s:
                await asyncio.sleep(script.delay_s)
            if isinstance(event, str):
                await ex.chunk(f"event: content_block_delta\ndata: {event}\n\n".encode())
            else:
                await ex.chunk(f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode())
        if script.then == "drop":
            ex.drop()
        elif script.then == "hold":
            await ex.wait_for_disconnect()
        else:
            await ex.end()

    async def _error(
        self, ex: HttpExchange, status: int, kind: str, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        body = {"type": "error", "error": {"type": kind, "message": message}, "request_id": "req_fake01"}
        await ex.respond(
            status,
            json.dumps(body).encode(),
            {"Content-Type": "application/json", "request-id": "req_fake01", **(headers or {})},
        )

    def _problem(self, request: HttpRequest) -> tuple[int, str, str] | None:
        """The error the real API would answer for this request, if any."""
        if request.method != "POST" or request.path != "/v1/messages":
            return 404, "not_found_error", f"Not found: {request.method} {request.path}"
        if request.headers.get("x-api-key") != self.api_key:
            return 401, "authentication_error", "invalid x-api-key"
        if request.headers.get("anthropic-version") != self.version:
            return 400, "invalid_request_error", "anthropic-version: header is required and must be supported"
        if not request.headers.get("content-type", "").startswith("application/json"):
            return 400, "invalid_request_error", "content-type must be application/json"
        try:
            body = request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return 400, "invalid_request_error", "request body is not valid JSON"
        problem = _body_problem(body)
        return (400, "invalid_request_error", problem) if problem else None


def _body_problem(body: object) -> str | None:
    if not isinstance(body, dict):
        return "body must be a JSON object"
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "model: field required"
    if not isinstance(body.get("max_tokens"), int) or body["max_tokens"] < 1:
        return "max_tokens: field required (a positive integer)"
    if body.get("stream") is not True:
        return "this fake only streams: stream must be true"
    if "system" in body and not isinstance(body["system"], str | list):
        return "system: must be a string or a list of text blocks"
    for n, tool in enumerate(body.get("tools") or []):
        if not isinstance(tool, dict) or not tool.get("name") or not isinstance(tool.get("input_schema"), dict):
            return f"tools.{n}: name and input_schema are required"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages: at least one message is required"
    previous_tool_ids: set[str] = set()
    for n, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            return f"messages.{n}.role: must be 'user' or 'assistant'"
        if n == 0 and message["role"] != "user":
            return "messages: first message must use the 'user' role"
        content = message.get("content")
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        if not isinstance(blocks, list) or not blocks:
            return f"messages.{n}.content: must be a non-empty string or list"
        tool_ids: set[str] = set()
        for block in blocks:
            kind = block.get("type") if isinstance(block, dict) else None
            if kind == "text" and not block.get("text"):
                return f"messages.{n}: text content blocks must be non-empty"
            if kind == "tool_use":
                tool_ids.add(str(block.get("id")))
            if kind == "tool_result" and block.get("tool_use_id") not in previous_tool_ids:
                return f"messages.{n}: tool_result block(s) provided without a matching tool_use just before"
        previous_tool_ids = tool_ids if message["role"] == "assistant" else set()
    return None
