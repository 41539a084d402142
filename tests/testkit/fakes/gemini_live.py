"""A loopback fake of the Gemini Live API (``BidiGenerateContent`` over WebSocket).

Owns: one ``websockets`` server on 127.0.0.1 (port 0), scripted replies spoken as a 24 kHz tone, an energy
VAD standing in for automatic activity detection, scriptable faults, and a record of every client message.
Must not import parley's providers: it follows the documented protocol, not our client.

Reproduced (ai.google.dev/api/live WebSockets reference, js-genai ``LiveServerContent``, the v1beta
``BidiGenerateContentServerContent`` proto docs, Vertex AI Live API specifications; read through the
search tool on 2026-12-04):
- The API key in ``x-goog-api-key`` (or ``?key=``); ``Faults.reject_status`` refuses the handshake with a
  JSON ``{"error": {"code", "message", "status"}}`` body (429 ``RESOURCE_EXHAUSTED``).
- The first message must be ``setup`` (else close 1007); ``setupComplete`` answers it. Each client message
  holds exactly one of ``setup``, ``clientContent``, ``realtimeInput``, ``toolResponse``.
- ``realtimeInput.audio`` with ``mimeType: audio/pcm;rate=16000``; automatic activity detection (unless
  ``realtimeInputConfig.automaticActivityDetection.disabled``) ends the caller's turn after
  ``silence_ms``; with it disabled, ``activityStart`` / ``activityEnd`` do. Caller speech during a model
  turn stops it: ``serverContent.interrupted`` then the turn ends.
- A model turn: ``serverContent.inputTranscription`` (the scripted transcript), then
  ``outputTranscription`` pieces and ``modelTurn.parts[].inlineData`` (``audio/pcm;rate=24000``) sent
  faster than real time, ``toolCall.functionCalls`` for a scripted tool, ``generationComplete``,
  ``turnComplete``, and ``usageMetadata`` with per-modality details. One unknown field per message.
- ``clientContent`` with ``turnComplete: true`` starts a model turn (text after the last ``": "`` is said,
  how parley asks for its greeting); without it the turns are only recorded (``notes``).

Simplified: tokens from durations (32 per second of audio, per the Gemini token docs); no session
resumption, no goAway, no context compression. A wrong key: the socket is accepted and then closed with
1008 and a reason naming the key ([uncertain]: from client issue threads, not the reference). Faults
(:class:`LiveFaults`): first-audio delay, drop TCP in the n-th turn, a non-JSON frame in the n-th turn.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

import numpy as np
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

__all__ = ["FakeGeminiLive", "LiveFaults", "LiveReply"]

OUT_RATE = 24000


class _QuietLog(logging.LoggerAdapter[logging.Logger]):
    def isEnabledFor(self, level: int) -> bool:
        return level >= logging.INFO and self.logger.isEnabledFor(level)


@dataclass(frozen=True, slots=True)
class LiveReply:
    text: str
    tool: str | None = None
    args: dict[str, object] = field(default_factory=dict)


@dataclass(slots=True)
class LiveFaults:
    reject_status: int | None = None
    first_audio_delay_s: float = 0.0
    drop_in_turn: int | None = None
    malformed_in_turn: int | None = None


@dataclass(slots=True)
class _Conn:
    ws: ServerConnection
    received: list[dict[str, object]] = field(default_factory=list)
    setup: dict[str, Any] | None = None
    auto_vad: bool = True
    active: bool = False  # the caller is speaking (VAD or activityStart)
    silence_ms: float = 0.0
    turn: asyncio.Task[None] | None = None


class FakeGeminiLive:
    """``async with FakeGeminiLive(key, replies=[...], transcripts=[...]) as fake:`` then ``fake.url``."""

    def __init__(self, api_key: str, *, replies: Iterable[LiveReply | str] = (), transcripts: Iterable[str] = (),
                 faults: LiveFaults | None = None, ms_per_char: float = 40.0, chunk_ms: float = 100.0,
                 chunk_interval_s: float = 0.02, silence_ms: float = 500.0, vad_threshold: float = 400.0) -> None:
        self.api_key = api_key
        self.replies: deque[LiveReply] = deque(r if isinstance(r, LiveReply) else LiveReply(r) for r in replies)
        self.transcripts: deque[str] = deque(transcripts)
        self.faults = faults or LiveFaults()
        self.ms_per_char = ms_per_char
        self.chunk_ms = chunk_ms
        self.chunk_interval_s = chunk_interval_s
        self.silence_ms = silence_ms
        self.vad_threshold = vad_threshold
        self.connections: list[_Conn] = []
        self.notes: list[str] = []  # clientContent turns sent without turnComplete
        self.tool_responses: list[dict[str, object]] = []
        self.interruptions = 0
        self.turns = 0
        self._server: Server | None = None

    @property
    def url(self) -> str:
        assert self._server is not None, "not started"
        return f"ws://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/ws/live"

    async def __aenter__(self) -> Self:
        self._server = await serve(self._handle, "127.0.0.1", 0, process_request=self._check, compression=None,
                                   server_header=None, ping_interval=None,
                                   logger=_QuietLog(logging.getLogger("testkit.fakes.gemini_live"), {}))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def _check(self, ws: ServerConnection, request: Request) -> Response | None:
        if self.faults.reject_status is None:
            return None
        status = self.faults.reject_status
        body = {"error": {"code": status, "message": "Resource has been exhausted (fake).",
                          "status": "RESOURCE_EXHAUSTED" if status == 429 else "UNAVAILABLE"}}
        return ws.respond(status, json.dumps(body))

    async def _handle(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        query = parse_qs(urlsplit(ws.request.path).query)
        key = ws.request.headers.get("x-goog-api-key") or (query.get("key") or [""])[-1]
        conn = _Conn(ws)
        self.connections.append(conn)
        if key != self.api_key:
            await ws.close(1008, f"API key not valid. Please pass a valid API key. ({key})")
            return
        try:
            async for frame in ws:
                message = json.loads(frame)
                if "realtimeInput" not in message or "audio" not in message["realtimeInput"]:
                    conn.received.append(message)
                if conn.setup is None and "setup" not in message:
                    await ws.close(1007, "the first message must be setup")
                    return
                await self._on(conn, message)
        except ConnectionClosed:
            pass
        finally:
            if conn.turn is not None:
                conn.turn.cancel()

    async def _on(self, conn: _Conn, m: dict[str, Any]) -> None:  # JSON off the wire
        if "setup" in m:
            setup: dict[str, Any] = m["setup"]
            conn.setup = setup
            detect = (setup.get("realtimeInputConfig") or {}).get("automaticActivityDetection") or {}
            conn.auto_vad = not detect.get("disabled", False)
            await self._send(conn, {"setupComplete": {}})
        elif "realtimeInput" in m:
            rt = m["realtimeInput"]
            if "activityStart" in rt:
                await self._caller_started(conn)
            elif "activityEnd" in rt:
                conn.active = False
                self._model_turn(conn, None)
            elif "audio" in rt and conn.auto_vad:
                await self._vad(conn, base64.b64decode(str(rt["audio"]["data"])))
        elif "clientContent" in m:
            content = m["clientContent"]
            text = "".join(str(p.get("text", "")) for t in content.get("turns", []) for p in t.get("parts", []))
            if content.get("turnComplete"):
                said = text.rsplit(": ", 1)[-1] if ": " in text else None
                self._model_turn(conn, LiveReply(said) if said else None, transcript=False)
            else:
                self.notes.append(text)
        elif "toolResponse" in m:
            self.tool_responses.extend(m["toolResponse"].get("functionResponses", []))

    async def _vad(self, conn: _Conn, data: bytes) -> None:
        samples = np.frombuffer(data[: len(data) // 2 * 2], dtype="<i2").astype(np.float64)
        for i in range(0, samples.size, 320):
            frame = samples[i:i + 320]
            loud = frame.size > 0 and math.sqrt(float(np.mean(frame ** 2))) >= self.vad_threshold
            if loud and not conn.active:
                await self._caller_started(conn)
            elif conn.active and not loud:
                conn.silence_ms += 1000.0 * frame.size / 16000
                if conn.silence_ms >= self.silence_ms:
                    conn.active = False
                    self._model_turn(conn, None)
            elif loud:
                conn.silence_ms = 0.0

    async def _caller_started(self, conn: _Conn) -> None:
        conn.active, conn.silence_ms = True, 0.0
        if conn.turn is not None and not conn.turn.done():
            conn.turn.cancel()
            self.interruptions += 1
            with contextlib.suppress(asyncio.CancelledError):
                await conn.turn
            await self._send(conn, {"serverContent": {"interrupted": True}})
            await self._send(conn, {"serverContent": {"turnComplete": True}})

    def _model_turn(self, conn: _Conn, reply: LiveReply | None, *, transcript: bool = True) -> None:
        if reply is None:
            reply = self.replies.popleft() if self.replies else LiveReply("Okay.")
        self.turns += 1
        conn.turn = asyncio.get_running_loop().create_task(self._speak(conn, reply, self.turns, transcript))

    async def _speak(self, conn: _Conn, reply: LiveReply, n: int, transcript: bool) -> None:
        if transcript:
            heard = self.transcripts.popleft() if self.transcripts else ""
            for word in heard.split():
                await self._send(conn, {"serverContent": {"inputTranscription": {"text": word + " "}}})
        if self.faults.first_audio_delay_s:
            await asyncio.sleep(self.faults.first_audio_delay_s)
        if self.faults.malformed_in_turn == n:
            await conn.ws.send("{not json")
        total = max(self.chunk_ms, self.ms_per_char * len(reply.text))
        words = reply.text.split()
        sent = 0.0
        k = 0
        while sent < total:
            ms = min(self.chunk_ms, total - sent)
            t = (np.arange(int(OUT_RATE * ms / 1000)) + int(OUT_RATE * sent / 1000)) / OUT_RATE
            tone = (0.25 * 32767 * np.sin(2 * math.pi * 440.0 * t)).astype("<i2").tobytes()
            content: dict[str, object] = {"modelTurn": {"parts": [{"inlineData": {
                "mimeType": f"audio/pcm;rate={OUT_RATE}", "data": base64.b64encode(tone).decode()}}]}}
            if k < len(words):
                content["outputTranscription"] = {"text": words[k] + " "}
                k += 1
            await self._send(conn, {"serverContent": content})
            sent += ms
            if self.faults.drop_in_turn == n:
                conn.ws.transport.abort()
                return
            await asyncio.sleep(self.chunk_interval_s)
        if k < len(words):
            await self._send(conn, {"serverContent": {"outputTranscription": {"text": " ".join(words[k:])}}})
        if reply.tool:
            await self._send(conn, {"toolCall": {"functionCalls": [{"id": f"fc-{n}", "name": reply.tool,
                                                                   "args": reply.args}]}})
        await self._send(conn, {"serverContent": {"generationComplete": True}})
        await self._send(conn, {"serverContent": {"turnComplete": True}, "usageMetadata": {
            "promptTokenCount": 400, "responseTokenCount": int(sent * 0.032),
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 300}, {"modality": "AUDIO", "tokenCount": 100}],
            "responseTokensDetails": [{"modality": "AUDIO", "tokenCount": int(sent * 0.032)}]}})

    async def _send(self, conn: _Conn, message: dict[str, object]) -> None:
        await conn.ws.send(json.dumps({**message, "fakeUnknownField": 1}))
