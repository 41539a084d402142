"""A loopback fake of ElevenLabs' multi-context TTS WebSocket (``/v1/text-to-speech/{voice}/multi-stream-input``).

Owns: an asyncio ``websockets`` server on 127.0.0.1 that checks what a client sends against the documented
protocol (docs/provider-protocols.md §4, §4b), streams a deterministic tone as base64 PCM, records
everything, and fails on demand. Must not import parley's providers: it is the other side of the wire.

Reproduces:
- handshake: path, ``xi-api-key`` header (401 ``{"detail":{"status":"invalid_api_key",...}}`` otherwise),
  query ``model_id`` (``eleven_v3`` refused), ``output_format`` ``pcm_<rate>`` for the API's rates 8000,
  16000, 22050, 24000, 44100 (``pcm_32000``/``pcm_48000`` are not ElevenLabs formats: 400, per the
  issue-11 review of the output_format list), ``inactivity_timeout`` 1-180;
- contexts: the first message of a context opens it (on a fresh socket its text must be exactly one space),
  ``voice_settings`` must be an object with ``speed`` in 0.7-1.2, text is buffered until ``flush: true``,
  ``{"text": ""}`` is a keepalive, ``close_context`` drops unflushed text but lets a flush in progress finish
  and then sends ``{"isFinal": true, "contextId": ...}``, ``close_socket`` finishes every context and closes
  1000; a sixth context while five have not sent ``isFinal`` (closed-but-flushing ones count, as pipecat#4041
  and livekit-js#1985 observed) is ``max_active_conversations`` + close 1008;
- output: ``{"audio": <b64>, "contextId", "alignment", "normalizedAlignment"}`` messages (alignment on the
  first chunk of each flush, null after), an unknown field on every audio message;
- errors: unparseable input is ``invalid_input_message`` + close 1008; no input for the socket's
  ``inactivity_timeout`` (the query's, else the server default ``inactivity_timeout_s`` = 20 s; docs: default
  20, max 180; ``{"text": ""}`` resets it) is ``input_timeout_exceeded`` + close 1008 (the documented message
  text): a pooled socket left idle while the caller talks expires; ``time_scale`` shrinks these timers so a
  30 s pause can be simulated quickly;
- the close race (``close_race_rate``; source: pipecat-ai/pipecat#4681, ~2.5 % of peak-hour calls, fixed
  there by waiting for the first audio before ``close_context``): a ``close_context`` that arrives before the
  context's first audio went out loses, at that rate (seeded), the race against the flush on the server:
  either the sentence is silently skipped (``isFinal`` with no audio) or the context stalls (nothing more is
  sent for it); ``races`` records each one (context id, outcome).

Simplifies: only ``pcm_*`` output (anything else is a 400 at the handshake); the audio is a tone whose
length is proportional to the flushed text (:meth:`FakeElevenLabs.expected_pcm`); no chunk length
schedule (text is generated only when flushed or the context closes); one inactivity timer per socket
(reset by any message, paused while audio is being generated) instead of one per context; the key is
accepted only in the header; texts that do not end with a space are recorded in ``violations`` rather
than refused (the docs say "should").

Faults (:class:`Fault`, consumed one per flushed generation, in order): ``drop`` (TCP abort), ``malformed_json``,
``bad_audio`` (non-base64), ``error`` (in-band error + close 1008), ``close`` (a bare close frame), ``stall``
(stop sending), each after ``after_chunks`` audio messages; ``handshake_status`` refuses every upgrade.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import random
import re
import zlib
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal
from urllib.parse import parse_qsl, urlsplit

import numpy as np
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

__all__ = ["FakeElevenLabs", "FakeElevenLabsConnection", "FakeElevenLabsContext", "Fault"]

PCM_FORMATS = {f"pcm_{rate}": rate for rate in (8000, 16000, 22050, 24000, 44100)}  # no pcm_32000 / pcm_48000
PATH = re.compile(r"/v1/text-to-speech/([^/]+)/multi-stream-input")
MAX_CONTEXTS = 5
_STATUS_CODES = {
    401: ("invalid_api_key", "Invalid API key"),
    403: ("forbidden", "Forbidden"),
    429: ("too_many_concurrent_requests", "Too many concurrent requests."),
    500: ("internal_server_error", "An internal server error occurred."),
    503: ("system_busy", "The system is busy."),
}
INPUT_TIMEOUT = (
    "Have not received a new text input within the timeout of {s:g} seconds. Streaming input terminated. "
    "Please make sure to send text input regularly."
)


class _QuietLog(logging.LoggerAdapter[logging.Logger]):
    """websockets' server log without DEBUG (which prints the request headers, i.e. the API key)."""

    def isEnabledFor(self, level: int) -> bool:
        return level >= logging.INFO and self.logger.isEnabledFor(level)


@dataclass
class Fault:
    kind: Literal["drop", "malformed_json", "bad_audio", "error", "close", "stall"]
    after_chunks: int = 0
    error: str = "internal_server_error"
    message: str = "An internal server error occurred."
    close_code: int = 1011
    close_reason: str = ""


@dataclass
class FakeElevenLabsContext:
    context_id: str
    voice_settings: object = None
    texts: list[str] = field(default_factory=list)
    flushed: list[str] = field(default_factory=list)
    buffer: str = ""
    closed_by_client: bool = False
    audio_messages: int = 0
    final_sent: bool = False
    queue: asyncio.Queue[str | None] = field(default_factory=asyncio.Queue, repr=False)
    task: asyncio.Task[None] | None = field(default=None, repr=False)


@dataclass
class FakeElevenLabsConnection:
    voice_id: str
    query: dict[str, str]
    headers: dict[str, str]
    sample_rate: int
    received: list[object] = field(default_factory=list)
    contexts: dict[str, FakeElevenLabsContext] = field(default_factory=dict)
    errors_sent: list[dict[str, object]] = field(default_factory=list)
    generating: int = 0
    close_code: int | None = None
    closed: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    def unfinished(self) -> list[FakeElevenLabsContext]:
        """Contexts that count against the limit: open, or closed but still flushing (no isFinal yet)."""
        return [c for c in self.contexts.values() if not c.final_sent]


class FakeElevenLabs:
    """``async with FakeElevenLabs() as fake:`` then point the client at ``fake.url_base``."""

    def __init__(
        self,
        *,
        api_key: str = "xi-test-key-0123456789",
        inactivity_timeout_s: float = 20.0,
        seconds_per_char: float = 0.02,
        chunk_samples: int = 640,
        odd_chunks: bool = False,
        first_audio_delay_s: float = 0.0,
        chunk_delay_s: float = 0.0,
        time_scale: float = 1.0,
        close_race_rate: float = 0.0,
        close_race_outcomes: tuple[Literal["skip", "stall"], ...] = ("skip", "stall"),
        seed: int = 4681,
    ) -> None:
        self.api_key = api_key
        self.inactivity_timeout_s = inactivity_timeout_s
        self.seconds_per_char = seconds_per_char
        self.chunk_samples = chunk_samples
        self.odd_chunks = odd_chunks  # split messages at odd byte offsets (samples straddle messages)
        self.first_audio_delay_s = first_audio_delay_s
        self.chunk_delay_s = chunk_delay_s
        self.time_scale = time_scale  # multiplies the inactivity timers (tests simulate long pauses)
        self.close_race_rate = close_race_rate
        self.close_race_outcomes = close_race_outcomes
        self.races: list[tuple[str, str]] = []
        self._rng = random.Random(seed)
        self.handshake_status: int | None = None
        self.faults: list[Fault] = []
        self.connections: list[FakeElevenLabsConnection] = []
        self.refused: list[int] = []
        self.violations: list[str] = []
        self._server: Server | None = None

    @property
    def url_base(self) -> str:
        if self._server is None:
            raise RuntimeError("FakeElevenLabs is not started")
        return f"ws://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

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

    async def __aenter__(self) -> FakeElevenLabs:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # ---- handshake -----------------------------------------------------------------------------------

    def _check(self, ws: ServerConnection, request: Request) -> Response | None:
        url = urlsplit(request.path)
        query = dict(parse_qsl(url.query))
        if self.handshake_status is not None:
            return self._refuse(ws, self.handshake_status)
        if not PATH.fullmatch(url.path):
            return self._refuse(ws, 404, "not_found", "Not found")
        if request.headers.get("xi-api-key") != self.api_key:
            return self._refuse(ws, 401)
        if query.get("model_id") == "eleven_v3":
            return self._refuse(ws, 400, "model_not_supported", "eleven_v3 is not available over WebSocket")
        if query.get("output_format", "mp3_44100_128") not in PCM_FORMATS:
            return self._refuse(ws, 400, "unsupported_output_format", "the fake speaks pcm_* only")
        timeout = query.get("inactivity_timeout", "20")
        if not timeout.isdigit() or not 1 <= int(timeout) <= 180:
            return self._refuse(ws, 400, "invalid_inactivity_timeout", "inactivity_timeout must be 1-180")
        return None

    def _refuse(self, ws: ServerConnection, status: int, code: str = "", message: str = "") -> Response:
        self.refused.append(status)
        default = _STATUS_CODES.get(status, ("error", "Error"))
        body = json.dumps({"detail": {"status": code or default[0], "message": message or default[1]}})
        response = ws.respond(status, body)
        del response.headers["Content-Type"]
        response.headers["Content-Type"] = "application/json"
        return response

    # ---- one connection ------------------------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        url = urlsplit(ws.request.path)
        match = PATH.fullmatch(url.path)
        query = dict(parse_qsl(url.query))
        conn = FakeElevenLabsConnection(
            voice_id=match.group(1) if match else "",
            query=query,
            headers={k.lower(): v for k, v in ws.request.headers.raw_items()},
            sample_rate=PCM_FORMATS[query.get("output_format", "pcm_16000")],
        )
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

    async def _serve(self, ws: ServerConnection, conn: FakeElevenLabsConnection) -> None:
        idle_s = float(conn.query.get("inactivity_timeout", self.inactivity_timeout_s))
        while True:
            try:
                async with asyncio.timeout(idle_s * self.time_scale):
                    raw = await ws.recv()
            except TimeoutError:
                if conn.generating:
                    continue
                message = INPUT_TIMEOUT.format(s=idle_s)
                await self._fail(ws, conn, "input_timeout_exceeded", message)
                return
            except ConnectionClosed:
                return
            try:
                msg: object = json.loads(raw) if isinstance(raw, str) else None
            except ValueError:
                msg = None
            if not isinstance(msg, dict):
                conn.received.append(raw)
                await self._fail(ws, conn, "invalid_input_message", "Could not parse input message.")
                return
            conn.received.append(msg)
            if not await self._dispatch(ws, conn, msg):
                return

    async def _dispatch(self, ws: ServerConnection, conn: FakeElevenLabsConnection, msg: dict[str, object]) -> bool:
        if msg.get("close_socket") is True:
            for live in conn.unfinished():
                if not live.closed_by_client:
                    live.closed_by_client = True
                    live.queue.put_nowait(None)
            await asyncio.gather(*(c.task for c in conn.contexts.values() if c.task), return_exceptions=True)
            await ws.close(1000)
            return False
        cid = msg.get("context_id", "default")
        text, flush = msg.get("text"), msg.get("flush") is True
        if not isinstance(cid, str) or (text is not None and not isinstance(text, str)):
            await self._fail(ws, conn, "invalid_input_message", "context_id and text must be strings.")
            return False
        ctx = conn.contexts.get(cid)
        if msg.get("close_context") is True:
            if ctx is None or ctx.closed_by_client:
                self.violations.append(f"close_context for unknown or closed context {cid!r}")
            else:
                ctx.closed_by_client, ctx.buffer = True, ""
                if ctx.audio_messages == 0 and self.close_race_rate and self._rng.random() < self.close_race_rate:
                    await self._lose_race(ws, ctx)
                else:
                    ctx.queue.put_nowait(None)
            return True
        if text is None and not flush:
            await self._fail(ws, conn, "invalid_input_message", "Message has neither text nor flush.")
            return False
        if ctx is None or ctx.closed_by_client:
            if not conn.contexts and text != " ":
                await self._fail(ws, conn, "invalid_input_message", "The first message must have text ' '.")
                return False
            if len(conn.unfinished()) >= MAX_CONTEXTS:
                message = (
                    "Maximum simultaneous contexts per WebSocket connection exceeded (5). "
                    "Please close an existing context before opening a new one."
                )
                await self._fail(ws, conn, "max_active_conversations", message)
                return False
            settings = msg.get("voice_settings")
            speed = settings.get("speed", 1.0) if isinstance(settings, dict) else 1.0
            if settings is not None and (not isinstance(settings, dict) or not 0.7 <= float(speed) <= 1.2):
                await self._fail(ws, conn, "invalid_input_message", "Invalid voice_settings.")
                return False
            ctx = FakeElevenLabsContext(cid, settings)
            ctx.task = asyncio.create_task(self._generate(ws, conn, ctx))
            conn.contexts[cid] = ctx
        if text:
            ctx.texts.append(text)
            ctx.buffer += text
            if not text.endswith(" "):
                self.violations.append(f"text does not end with a space: {text!r}")
        if flush and ctx.buffer.strip():
            ctx.queue.put_nowait(ctx.buffer)
            ctx.buffer = ""
        return True

    async def _lose_race(self, ws: ServerConnection, ctx: FakeElevenLabsContext) -> None:
        """pipecat#4681: the close overtook the flush; the sentence is skipped or the context hangs."""
        outcome = self._rng.choice(self.close_race_outcomes)
        self.races.append((ctx.context_id, outcome))
        if ctx.task is not None:
            ctx.task.cancel()
            await asyncio.gather(ctx.task, return_exceptions=True)
        if outcome == "skip":
            with contextlib.suppress(ConnectionClosed):
                await ws.send(json.dumps({"isFinal": True, "contextId": ctx.context_id}))
            ctx.final_sent = True

    async def _generate(self, ws: ServerConnection, conn: FakeElevenLabsConnection, ctx: FakeElevenLabsContext) -> None:
        with contextlib.suppress(ConnectionClosed):
            while (text := await ctx.queue.get()) is not None:
                fault = self.faults.pop(0) if self.faults else None
                conn.generating += 1
                try:
                    if not await self._speak(ws, conn, ctx, text, fault):
                        return
                finally:
                    conn.generating -= 1
                ctx.flushed.append(text)
            await ws.send(json.dumps({"isFinal": True, "contextId": ctx.context_id}))
            ctx.final_sent = True

    async def _speak(
        self,
        ws: ServerConnection,
        conn: FakeElevenLabsConnection,
        ctx: FakeElevenLabsContext,
        text: str,
        fault: Fault | None,
    ) -> bool:
        pcm = self.expected_pcm(text, conn.sample_rate)
        step = 2 * self.chunk_samples + (1 if self.odd_chunks else 0)
        pieces = [pcm[i : i + step] for i in range(0, len(pcm), step)]
        await asyncio.sleep(self.first_audio_delay_s)
        spoken = text.strip()
        for i, piece in enumerate(pieces):
            if fault is not None and i == fault.after_chunks:
                await self._apply(ws, conn, ctx, fault)
                return False
            alignment = None
            if i == 0:
                times = [round(1000 * self.seconds_per_char * k) for k in range(len(spoken))]
                alignment = {
                    "chars": list(spoken),
                    "charStartTimesMs": times,
                    "charDurationsMs": [round(1000 * self.seconds_per_char)] * len(spoken),
                }
            message = {
                "audio": base64.b64encode(piece).decode(),
                "isFinal": None,
                "normalizedAlignment": alignment,
                "alignment": alignment,
                "contextId": ctx.context_id,
                "xFakeServerRegion": "loopback",  # an unknown field: clients must ignore it
            }
            await ws.send(json.dumps(message))
            ctx.audio_messages += 1
            if self.chunk_delay_s:
                await asyncio.sleep(self.chunk_delay_s)
        if fault is not None:
            await self._apply(ws, conn, ctx, fault)
            return False
        return True

    async def _apply(
        self, ws: ServerConnection, conn: FakeElevenLabsConnection, ctx: FakeElevenLabsContext, fault: Fault
    ) -> None:
        match fault.kind:
            case "drop":
                ws.transport.abort()
            case "malformed_json":
                await ws.send('{"audio": "AAAA", "contextId": ')
            case "bad_audio":
                await ws.send(json.dumps({"audio": "%%% not base64 %%%", "contextId": ctx.context_id}))
            case "error":
                await self._fail(ws, conn, fault.error, fault.message)
            case "close":
                await ws.close(fault.close_code, fault.close_reason)
            case "stall":
                await asyncio.Event().wait()

    async def _fail(self, ws: ServerConnection, conn: FakeElevenLabsConnection, error: str, message: str) -> None:
        """The documented failure shape: an in-band error message, then close 1008."""
        payload: dict[str, object] = {"message": message, "error": error, "code": 1008}
        conn.errors_sent.append(payload)
        with contextlib.suppress(ConnectionClosed):
            await ws.send(json.dumps(payload))
            await ws.close(1008, error)
