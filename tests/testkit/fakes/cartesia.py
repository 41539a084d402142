"""A loopback fake of Cartesia's Sonic TTS WebSocket (``/tts/websocket``).

Owns: an asyncio ``websockets`` server on 127.0.0.1 that checks what a client sends against the documented
protocol (docs/provider-protocols.md §5), streams a deterministic tone as base64 PCM, records everything,
and fails on demand. Must not import parley's providers: it is the other side of the wire.

Reproduces:
- handshake: the key as ``Authorization: Bearer``, ``X-API-Key`` or ``?api_key=`` (recorded in
  ``auth``), a required ``Cartesia-Version`` header or ``?cartesia_version=`` (the query wins); refusals carry
  the 2026-03-01 JSON error body (``error_code``, ``title``, ``message``, ``doc_url``, ``request_id``);
- generation requests: required ``context_id``, ``model_id``, ``transcript``, ``voice {mode: id, id}``,
  ``output_format {container: raw, encoding, sample_rate}`` with the documented values; retired models
  answer ``model_sunsetted``; inputs continuing a context must repeat every field but ``transcript`` /
  ``continue`` / ``flush``; ``continue: false`` ends the context after its audio with ``done``; a manual
  flush (``transcript: "", continue: true, flush: true``) answers ``flush_done`` and bumps ``flush_id``;
  a context cannot take input after it ended;
- output: ``chunk`` messages (``status_code`` 206, ``step_time``, ``flush_id``, plus an unknown field),
  ``timestamps`` (seconds) when ``add_timestamps`` is set, ``done`` (``done: true``) last;
- cancel: ``{"context_id", "cancel": true}`` drops the context's inputs that have not started; a generation
  already running still streams to its end; no ``done`` follows a cancelled context;
- errors are per context and leave the socket open: ``{"type": "error", "context_id", "done": true,
  "status_code", "error_code", "title", "message", ...}``; unparseable input gets the same without a
  context id; more than ``max_contexts`` active contexts answers 429 for the new one;
- the idle socket is closed after ``idle_timeout_s`` (Cartesia: 5 minutes, no keepalive message);
- buffering (docs use-the-api/tts-websocket/buffering: "max_buffer_delay_ms ... the default is 3000ms"; the
  API buffers text "until it has enough context to produce high-quality speech, or until
  max_buffer_delay_ms elapses"; whole sentences want 0): a context's first text shorter than
  ``enough_chars`` waits ``max_buffer_delay_ms`` (default 3000, 0-5000 accepted) times ``buffer_time_scale``
  before its first audio; the wait in ms is recorded in ``FakeCartesiaContext.buffer_wait_ms``. Whether
  ``continue: false`` skips the buffer on the live API is not documented: the fake buffers either way.

Simplifies: ``pcm_s16le`` only (other encodings are a 400); the audio is a tone whose length is
proportional to the transcript (:meth:`FakeCartesia.expected_pcm`); "enough context" is a character count;
no prosody; timestamps are spread evenly over the words;
the idle close code (not documented) is 1000 "idle timeout".

Faults (:class:`Fault`, consumed one per generated input, in order): ``drop`` (TCP abort),
``malformed_json``, ``bad_audio`` (non-base64), ``error`` (an in-band error for the context), ``close`` (a
close frame), ``stall`` (stop sending), each after ``after_chunks`` chunks; ``handshake_status`` refuses
every upgrade.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import zlib
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal
from urllib.parse import parse_qsl, urlsplit

import numpy as np
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

__all__ = ["FakeCartesia", "FakeCartesiaConnection", "FakeCartesiaContext", "Fault"]

PATH = "/tts/websocket"
ENCODINGS = frozenset({"pcm_s16le", "pcm_f32le", "pcm_mulaw", "pcm_alaw"})
SAMPLE_RATES = frozenset({8000, 16000, 22050, 24000, 44100, 48000})
RETIRED = frozenset({"sonic", "sonic-english", "sonic-multilingual", "sonic-2-2025-03-07", "sonic-turbo-2025-03-07"})
DEFAULT_BUFFER_DELAY_MS, MAX_BUFFER_DELAY_MS = 3000, 5000
VARYING = frozenset({"transcript", "continue", "flush", "duration"})  # may change between a context's inputs
DOC_URL = "https://docs.cartesia.ai/api-reference/errors"
_STATUS = {
    400: ("invalid_request", "Invalid request"),
    401: ("unauthorized", "Unauthorized"),
    403: ("forbidden", "Forbidden"),
    429: ("rate_limited", "Too many requests"),
    500: ("internal_error", "Internal server error"),
}


class _QuietLog(logging.LoggerAdapter[logging.Logger]):
    """websockets' server log without DEBUG (which prints the request headers, i.e. the API key)."""

    def isEnabledFor(self, level: int) -> bool:
        return level >= logging.INFO and self.logger.isEnabledFor(level)


@dataclass
class Fault:
    kind: Literal["drop", "malformed_json", "bad_audio", "error", "close", "stall"]
    after_chunks: int = 0
    status: int = 500
    error_code: str = "internal_error"
    message: str = "Something went wrong."
    close_code: int = 1011
    close_reason: str = ""


@dataclass
class FakeCartesiaContext:
    context_id: str
    fields: dict[str, object]
    add_timestamps: bool = False
    transcripts: list[str] = field(default_factory=list)
    generated: list[str] = field(default_factory=list)
    chunks_sent: int = 0
    flush_id: int = 1
    ended: bool = False
    cancelled: bool = False
    done_sent: bool = False
    buffer_wait_ms: float | None = None  # the server-side buffering before the first audio (None: not yet)
    queue: asyncio.Queue[tuple[str, str]] = field(default_factory=asyncio.Queue, repr=False)
    task: asyncio.Task[None] | None = field(default=None, repr=False)


@dataclass
class FakeCartesiaConnection:
    query: dict[str, str]
    headers: dict[str, str]
    auth: str
    version: str
    received: list[object] = field(default_factory=list)
    contexts: dict[str, FakeCartesiaContext] = field(default_factory=dict)
    errors_sent: list[dict[str, object]] = field(default_factory=list)
    generating: int = 0
    close_code: int | None = None
    closed: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    def active(self) -> list[FakeCartesiaContext]:
        return [c for c in self.contexts.values() if not c.done_sent and not c.cancelled]


class FakeCartesia:
    """``async with FakeCartesia() as fake:`` then point the client at ``fake.url``."""

    def __init__(
        self,
        *,
        api_key: str = "sk_car_test_0123456789",
        idle_timeout_s: float = 300.0,
        max_contexts: int = 15,
        seconds_per_char: float = 0.02,
        chunk_samples: int = 640,
        odd_chunks: bool = False,
        first_audio_delay_s: float = 0.0,
        chunk_delay_s: float = 0.0,
        enough_chars: int = 120,
        buffer_time_scale: float = 0.001,
    ) -> None:
        self.api_key = api_key
        self.enough_chars = enough_chars
        self.buffer_time_scale = buffer_time_scale  # 3000 ms of buffering -> 3 ms of real waiting by default
        self.idle_timeout_s = idle_timeout_s
        self.max_contexts = max_contexts
        self.seconds_per_char = seconds_per_char
        self.chunk_samples = chunk_samples
        self.odd_chunks = odd_chunks
        self.first_audio_delay_s = first_audio_delay_s
        self.chunk_delay_s = chunk_delay_s
        self.handshake_status: int | None = None
        self.faults: list[Fault] = []
        self.connections: list[FakeCartesiaConnection] = []
        self.refused: list[int] = []
        self._server: Server | None = None

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("FakeCartesia is not started")
        return f"ws://127.0.0.1:{self._server.sockets[0].getsockname()[1]}{PATH}"

    @property
    def handshakes(self) -> int:
        """Accepted upgrades (refused ones are in ``refused``)."""
        return len(self.connections)

    def expected_pcm(self, text: str, sample_rate: int = 16000) -> bytes:
        """The s16le audio this fake speaks for ``text`` (a tone; length and pitch depend on the text)."""
        spoken = text.strip()
        n = max(1, round(len(spoken) * self.seconds_per_char * sample_rate))
        freq = 200 + zlib.crc32(spoken.encode()) % 600
        t = np.arange(n, dtype=np.float64) / sample_rate
        return (np.sin(2 * np.pi * freq * t) * 8000).astype("<i2").tobytes()

    async def start(self) -> None:
        self._server = await serve(
            self._handle,
            "127.0.0.1",
            0,
            process_request=self._check,
            compression=None,
            logger=_QuietLog(logging.getLogger(__name__), {}),
        )

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> FakeCartesia:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # ---- handshake -----------------------------------------------------------------------------------

    def _auth(self, request: Request, query: dict[str, str]) -> tuple[str, str]:
        """(method, version) the client used; method is "" when the key is missing or wrong."""
        version = query.get("cartesia_version") or request.headers.get("Cartesia-Version") or ""
        bearer = request.headers.get("Authorization", "")
        if bearer == f"Bearer {self.api_key}":
            return "bearer", version
        if request.headers.get("X-API-Key") == self.api_key:
            return "x-api-key", version
        if query.get("api_key") == self.api_key:
            return "query", version
        return "", version

    def _check(self, ws: ServerConnection, request: Request) -> Response | None:
        url = urlsplit(request.path)
        query = dict(parse_qsl(url.query))
        if self.handshake_status is not None:
            return self._refuse(ws, self.handshake_status)
        if url.path != PATH:
            return self._refuse(ws, 404, "not_found", "Not found")
        method, version = self._auth(request, query)
        if not method:
            return self._refuse(ws, 401, "unauthorized", "Invalid or missing API key.")
        if not version:
            return self._refuse(ws, 400, "missing_version", "The Cartesia-Version header is required.")
        return None

    def _refuse(self, ws: ServerConnection, status: int, code: str = "", message: str = "") -> Response:
        self.refused.append(status)
        default = _STATUS.get(status, ("error", "Error"))
        body = {
            "error_code": code or default[0],
            "title": default[1],
            "message": message or default[1],
            "doc_url": DOC_URL,
            "request_id": f"req_fake_{len(self.refused)}",
        }
        response = ws.respond(status, json.dumps(body))
        del response.headers["Content-Type"]
        response.headers["Content-Type"] = "application/json"
        return response

    # ---- one connection ------------------------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        query = dict(parse_qsl(urlsplit(ws.request.path).query))
        method, version = self._auth(ws.request, query)
        headers = {k.lower(): v for k, v in ws.request.headers.raw_items()}
        conn = FakeCartesiaConnection(query=query, headers=headers, auth=method, version=version)
        self.connections.append(conn)
        try:
            await self._serve(ws, conn)
        finally:
            for ctx in conn.contexts.values():
                if ctx.task is not None:
                    ctx.task.cancel()
            await asyncio.gather(*(c.task for c in conn.contexts.values() if c.task), return_exceptions=True)
            await ws.wait_closed()
            conn.close_code = ws.close_code
            conn.closed.set()

    async def _serve(self, ws: ServerConnection, conn: FakeCartesiaConnection) -> None:
        while True:
            try:
                async with asyncio.timeout(self.idle_timeout_s):
                    raw = await ws.recv()
            except TimeoutError:
                if conn.generating:
                    continue
                await ws.close(1000, "idle timeout")
                return
            except ConnectionClosed:
                return
            try:
                msg: object = json.loads(raw) if isinstance(raw, str) else None
            except ValueError:
                msg = None
            conn.received.append(msg if isinstance(msg, dict) else raw)
            if not isinstance(msg, dict):
                await self._error(ws, conn, None, 400, "invalid_request", "Could not parse the message as JSON.")
                continue
            await self._dispatch(ws, conn, msg)

    async def _dispatch(self, ws: ServerConnection, conn: FakeCartesiaConnection, msg: dict[str, object]) -> None:
        cid = msg.get("context_id")
        if msg.get("cancel") is True:
            ctx = conn.contexts.get(cid) if isinstance(cid, str) else None
            if ctx is not None:
                ctx.cancelled = True
            return
        problem = _invalid(msg)
        if problem is not None:
            await self._error(ws, conn, cid if isinstance(cid, str) else None, 400, "invalid_request", problem)
            return
        assert isinstance(cid, str)
        if msg["model_id"] in RETIRED:
            await self._error(ws, conn, cid, 400, "model_sunsetted", f"Model {msg['model_id']} was discontinued.")
            return
        fields = {k: v for k, v in msg.items() if k not in VARYING}
        ctx = conn.contexts.get(cid)
        if ctx is None:
            if len(conn.active()) >= self.max_contexts:
                await self._error(ws, conn, cid, 429, "concurrency_limited", "Too many concurrent requests.")
                return
            ctx = FakeCartesiaContext(cid, fields, add_timestamps=msg.get("add_timestamps") is True)
            ctx.task = asyncio.create_task(self._work(ws, conn, ctx))
            conn.contexts[cid] = ctx
        elif ctx.ended or ctx.cancelled:
            await self._error(ws, conn, cid, 400, "invalid_request", "This context no longer accepts input.")
            return
        elif fields != ctx.fields:
            message = "Inputs on a context must keep every field except transcript and continue the same."
            await self._error(ws, conn, cid, 400, "invalid_request", message)
            return
        transcript = str(msg["transcript"])
        ctx.transcripts.append(transcript)
        if transcript:
            ctx.queue.put_nowait(("speak", transcript))
        if msg.get("flush") is True:
            ctx.queue.put_nowait(("flush", ""))
        if msg.get("continue") is not True:
            ctx.ended = True
            ctx.queue.put_nowait(("end", ""))

    async def _work(self, ws: ServerConnection, conn: FakeCartesiaConnection, ctx: FakeCartesiaContext) -> None:
        with contextlib.suppress(ConnectionClosed):
            while True:
                kind, text = await ctx.queue.get()
                if ctx.cancelled:
                    return  # inputs that had not started are dropped, and no done follows
                if kind == "speak":
                    fault = self.faults.pop(0) if self.faults else None
                    conn.generating += 1
                    try:
                        if not await self._speak(ws, conn, ctx, text, fault):
                            return
                    finally:
                        conn.generating -= 1
                    ctx.generated.append(text)
                elif kind == "flush":
                    await self._send(ws, ctx, "flush_done", flush_id=ctx.flush_id, flush_done=True)
                    ctx.flush_id += 1
                else:
                    await self._send(ws, ctx, "done", done=True)
                    ctx.done_sent = True
                    return

    async def _speak(
        self,
        ws: ServerConnection,
        conn: FakeCartesiaConnection,
        ctx: FakeCartesiaContext,
        text: str,
        fault: Fault | None,
    ) -> bool:
        output = ctx.fields["output_format"]
        assert isinstance(output, dict)
        pcm = self.expected_pcm(text, int(output["sample_rate"]))
        step = 2 * self.chunk_samples + (1 if self.odd_chunks else 0)
        pieces = [pcm[i : i + step] for i in range(0, len(pcm), step)]
        if ctx.buffer_wait_ms is None:
            delay = ctx.fields.get("max_buffer_delay_ms", DEFAULT_BUFFER_DELAY_MS)
            ctx.buffer_wait_ms = float(delay) if len(text) < self.enough_chars else 0.0  # type: ignore[arg-type]
            await asyncio.sleep(ctx.buffer_wait_ms / 1000 * self.buffer_time_scale)
        await asyncio.sleep(self.first_audio_delay_s)
        for i, piece in enumerate(pieces):
            if fault is not None and i == fault.after_chunks:
                await self._apply(ws, conn, ctx, fault)
                return False
            data = base64.b64encode(piece).decode()
            await self._send(ws, ctx, "chunk", data=data, step_time=12.5, flush_id=ctx.flush_id, x_fake_shard="lo")
            ctx.chunks_sent += 1
            if self.chunk_delay_s:
                await asyncio.sleep(self.chunk_delay_s)
        if fault is not None:
            await self._apply(ws, conn, ctx, fault)
            return False
        if ctx.add_timestamps:
            words = text.split()
            span = len(pcm) / 2 / int(output["sample_rate"]) / max(1, len(words))
            stamps = {"words": words, "start": [k * span for k in range(len(words))]}
            stamps["end"] = [(k + 1) * span for k in range(len(words))]
            await self._send(ws, ctx, "timestamps", word_timestamps=stamps)
        return True

    async def _send(self, ws: ServerConnection, ctx: FakeCartesiaContext, kind: str, **extra: object) -> None:
        done = extra.pop("done", False)
        message = {"type": kind, "context_id": ctx.context_id, "done": done, "status_code": 206, **extra}
        await ws.send(json.dumps(message))

    async def _apply(
        self, ws: ServerConnection, conn: FakeCartesiaConnection, ctx: FakeCartesiaContext, f: Fault
    ) -> None:
        match f.kind:
            case "drop":
                ws.transport.abort()
            case "malformed_json":
                await ws.send('{"type": "chunk", "data": ')
            case "bad_audio":
                await ws.send(json.dumps({"type": "chunk", "context_id": ctx.context_id, "data": "%% not b64 %%"}))
            case "error":
                await self._error(ws, conn, ctx.context_id, f.status, f.error_code, f.message)
            case "close":
                await ws.close(f.close_code, f.close_reason)
            case "stall":
                await asyncio.Event().wait()

    async def _error(
        self, ws: ServerConnection, conn: FakeCartesiaConnection, cid: str | None, status: int, code: str, message: str
    ) -> None:
        payload: dict[str, object] = {
            "type": "error",
            "context_id": cid,
            "done": True,
            "status_code": status,
            "error_code": code,
            "title": _STATUS.get(status, ("error", "Error"))[1],
            "message": message,
            "doc_url": DOC_URL,
            "request_id": f"req_fake_{len(conn.errors_sent) + 1}",
        }
        if cid is None:
            del payload["context_id"]
        conn.errors_sent.append(payload)
        with contextlib.suppress(ConnectionClosed):
            await ws.send(json.dumps(payload))


def _invalid(msg: dict[str, object]) -> str | None:
    """What is wrong with a generation request, or None."""
    for name in ("context_id", "model_id", "transcript"):
        if not isinstance(msg.get(name), str):
            return f"'{name}' is required and must be a string."
    voice = msg.get("voice")
    if not isinstance(voice, dict) or voice.get("mode") != "id" or not isinstance(voice.get("id"), str):
        return '\'voice\' must be {"mode": "id", "id": <voice id>}.'
    fmt = msg.get("output_format")
    if not isinstance(fmt, dict) or fmt.get("container") != "raw":
        return "'output_format' must be a raw container."
    if fmt.get("encoding") not in ENCODINGS or fmt.get("sample_rate") not in SAMPLE_RATES:
        return "Unsupported output_format encoding or sample_rate."
    if fmt.get("encoding") != "pcm_s16le":
        return "This fake only produces pcm_s16le."
    if "continue" in msg and not isinstance(msg["continue"], bool):
        return "'continue' must be a boolean."
    delay = msg.get("max_buffer_delay_ms", DEFAULT_BUFFER_DELAY_MS)
    if isinstance(delay, bool) or not isinstance(delay, int) or not 0 <= delay <= MAX_BUFFER_DELAY_MS:
        return f"'max_buffer_delay_ms' must be an integer in 0-{MAX_BUFFER_DELAY_MS}."
    return None
