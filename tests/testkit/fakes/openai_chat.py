"""A loopback OpenAI-compatible chat completions server (``POST /v1/chat/completions``, SSE streaming).

Reproduces the documented stream shapes (``chat.completion.chunk`` with fields a client must ignore,
``data: [DONE]``, a final ``usage`` chunk with ``stream_options.include_usage``), JSON error responses, and
scriptable faults (any status, malformed data, stalls, drops) through ``Script`` callables. ``dialogue()``
scripts a conversation: each request is answered with the next reply, streamed in word pieces, optionally
followed by a tool call. Simplified: no auth check beyond recording the header, HTTP/1.1 with
``Connection: close`` (one request per connection), ``GET /v1/models`` answers a fixed list.
``reasoning_rules()`` wraps a script with the live refusal of ``max_tokens`` by reasoning models.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, object]


@dataclass
class Connection:
    request: Request
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    async def head(self, status: int = 200, content_type: str = "text/event-stream", chunked: bool = True) -> None:
        lines = [f"HTTP/1.1 {status} X", f"Content-Type: {content_type}", "Connection: close", "x-request-id: req_1"]
        if chunked:
            lines.append("Transfer-Encoding: chunked")
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await self.writer.drain()

    async def chunk(self, data: bytes) -> None:
        self.writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        await self.writer.drain()

    async def event(self, payload: object) -> None:
        text = payload if isinstance(payload, str) else json.dumps(payload)
        await self.chunk(f"data: {text}\n\n".encode())

    async def end(self) -> None:
        self.writer.write(b"0\r\n\r\n")
        await self.writer.drain()

    async def json_response(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        head = f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n"
        self.writer.write(head.encode() + b"Connection: close\r\n\r\n" + data)
        await self.writer.drain()


Script = Callable[[Connection], Awaitable[None]]


@dataclass
class FakeOpenAI:
    script: Script
    requests: list[Request] = field(default_factory=list)
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _server: asyncio.Server | None = None
    base_url: str = ""

    async def __aenter__(self) -> FakeOpenAI:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.base_url = f"http://127.0.0.1:{port}/v1"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode()
            request_line, *header_lines = head.strip().split("\r\n")
            method, path, _ = request_line.split(" ")
            headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in header_lines)}
            raw = await reader.readexactly(int(headers.get("content-length", "0")))
            body = json.loads(raw) if raw else {}
            request = Request(method, path, headers, body)
            self.requests.append(request)
            if method == "GET" and path.endswith("/models"):  # the same list the Realtime fake serves
                from testkit.fakes.openai_realtime import MODELS

                await Connection(request, reader, writer).json_response(200, {"object": "list", "data": [
                    {"id": mid, "object": "model", "owned_by": "system", "shutdown_date": date}
                    for mid, date in MODELS.items()]})
                return
            await self.script(Connection(request, reader, writer))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            with contextlib.suppress(ConnectionError):
                writer.close()
            self._tasks.discard(task)

    async def wait_for_disconnect(self, connection: Connection) -> None:
        """Block until the client closes its side (reading gives EOF), then record it."""
        with contextlib.suppress(ConnectionError):
            while await connection.reader.read(1024):
                pass
        self.disconnected.set()


def chunk(delta: dict[str, object], finish_reason: str | None = None) -> dict[str, object]:
    """A ``chat.completion.chunk`` shaped like OpenAI's, including fields a client must ignore."""
    return {
        "id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
        "object": "chat.completion.chunk",
        "created": 1750838567,
        "model": "gpt-4o-mini-2024-07-18",
        "system_fingerprint": "fp_44709d6fcb",
        "service_tier": "default",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}],
        "usage": None,
        "obfuscation": "x7Q",
    }


FIRST = chunk({"role": "assistant", "content": "", "refusal": None})
USAGE = {
    "id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
    "object": "chat.completion.chunk",
    "created": 1750838567,
    "model": "gpt-4o-mini-2024-07-18",
    "choices": [],
    "usage": {
        "prompt_tokens": 12,
        "completion_tokens": 17,
        "total_tokens": 29,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0},
    },
}


def streaming(*events: object, done: bool = True) -> Script:
    async def script(conn: Connection) -> None:
        await conn.head()
        for event in events:
            await conn.event(event)
        if done:
            await conn.event("[DONE]")
        await conn.end()

    return script


def dialogue(replies: Sequence[str | tuple[str, str]]) -> Script:
    """Answer request n with ``replies[n]`` (text, or (text, tool_name) to end with that tool call)."""
    turn = {"n": 0}

    async def script(conn: Connection) -> None:
        item = replies[min(turn["n"], len(replies) - 1)]
        turn["n"] += 1
        text, tool = (item, None) if isinstance(item, str) else item
        events: list[object] = [FIRST]
        words = text.split(" ")
        events += [chunk({"content": w + (" " if i < len(words) - 1 else "")}) for i, w in enumerate(words)]
        if tool:
            call = {"index": 0, "id": f"call_{turn['n']}", "type": "function",
                    "function": {"name": tool, "arguments": "{}"}}
            events.append(chunk({"tool_calls": [call]}))
        events.append(chunk({}, "tool_calls" if tool else "stop"))
        events.append(USAGE)
        await streaming(*events)(conn)

    return script


# ---- faults --------------------------------------------------------------------------------------------------


def server_error(status: int = 503, message: str = "The server is overloaded or not ready yet.") -> Script:
    """Every request answered ``status`` with OpenAI's documented error body before any streaming
    (docs/provider-protocols.md §6 "Errors": 500/502/503 server errors, ``{"error": {message, type, code}}``)."""

    async def script(conn: Connection) -> None:
        await conn.json_response(status, {"error": {"message": message, "type": "server_error", "param": None,
                                                    "code": None}})

    return script


def stall(*, after_head: bool = True) -> Script:
    """Headers (or nothing at all), then no byte until the client goes: a model server that queued the request
    and never produced a token (OpenAI documents no server idle limit; the SDK waits 600 s, §6 "Timeouts")."""

    async def script(conn: Connection) -> None:
        if after_head:
            await conn.head()
        with contextlib.suppress(ConnectionError):
            while await conn.reader.read(1024):
                pass

    return script


def drop_after(*events: object) -> Script:
    """These events, then the TCP connection cut without the terminating chunk: a stream broken mid-reply
    (a proxy or load balancer reset; §0 notes the final usage chunk is then lost)."""

    async def script(conn: Connection) -> None:
        await conn.head()
        for event in events:
            await conn.event(event)
        transport = conn.writer.transport
        transport.abort()

    return script


def garbage(*raw: str) -> Script:
    """A 200 ``text/event-stream`` whose ``data:`` lines are not JSON (e.g. a truncated chunk from a buggy
    compatible server or a proxy's HTML error page inside the stream; §6: an event must be one JSON object)."""

    async def script(conn: Connection) -> None:
        await conn.head()
        for text in raw or ('{"id": "chatcmpl-1", "choices": [{"delta": {"content": "Sure', "<html>502</html>"):
            await conn.event(text)
        await conn.event("[DONE]")
        await conn.end()

    return script


# ---- live-API parameter rules --------------------------------------------------------------------------------

REASONING_MODEL = re.compile(r"(o\d|gpt-[5-9])")  # o1/o3/o4 and the GPT-5/GPT-6 families reason
UNSUPPORTED_MAX_TOKENS = {
    "message": "Unsupported parameter: 'max_tokens' is not supported with this model. "
    "Use 'max_completion_tokens' instead.",
    "type": "invalid_request_error",
    "param": "max_tokens",
    "code": "unsupported_parameter",
}


def reasoning_rules(script: Script, *, models: re.Pattern[str] = REASONING_MODEL) -> Script:
    """``script``, except that a request for a reasoning model carrying ``max_tokens`` is refused with a 400.

    Source: the Chat Completions reference ("max_tokens ... deprecated in favor of max_completion_tokens, and
    is not compatible with o-series models"); simonw/llm#724 and drupal ai_agents#3569280 quote the live error
    text used here; chatGPTBox#908 and orca-lang v0.1.13 report the same for gpt-5.x; the replacement of
    gpt-4o-mini, gpt-6-luna, reasons by default (OpenAI deprecations page, per its migration guides).
    Simplified: the model is matched by name (``models``), not looked up in a model list."""

    async def guarded(conn: Connection) -> None:
        model = str(conn.request.body.get("model", ""))
        if "max_tokens" in conn.request.body and models.match(model):
            await conn.json_response(400, {"error": UNSUPPORTED_MAX_TOKENS})
            return
        await script(conn)

    return guarded
