"""A loopback fake of OpenAI's Realtime API WebSocket (``/v1/realtime``), GA event names.

Owns: one ``websockets`` server on 127.0.0.1 (port 0), scripted replies spoken as a tone, a small energy
VAD standing in for server VAD, scriptable faults, and a record of every client event. Must not import
parley's providers: it follows the documented protocol, not our client.

Reproduced (sources: developers.openai.com realtime client-events reference and the realtime-conversations
guide; docs.rs openai-protocol ``RealtimeServerEvent``; the ``conversation.item.truncate`` reference, all
read through the search tool on 2026-12-04):
- Handshake: ``Authorization: Bearer <key>`` and a ``model`` query; a wrong key is a 401 with
  ``{"error": {"message", "type": "invalid_request_error", "code": "invalid_api_key"}}`` whose message
  echoes the key (clients must redact); ``Faults.reject_status`` refuses with any status (429:
  ``rate_limit_exceeded``).
- ``session.created`` on connect; ``session.update`` must carry ``session.type: "realtime"`` and known
  formats (``audio/pcm`` at 24000, ``audio/pcmu``, ``audio/pcma``), answered by ``session.updated``.
- ``input_audio_buffer.append`` (base64 in the session's input format); with ``turn_detection.type:
  "server_vad"``: ``input_audio_buffer.speech_started`` / ``speech_stopped`` after ``silence_duration_ms``,
  ``input_audio_buffer.committed``, ``conversation.item.input_audio_transcription.completed`` (the
  scripted transcript) and, with ``create_response``, a response; speech during a response with
  ``interrupt_response`` cancels it (``response.done`` status ``cancelled``). Manual: ``commit`` then
  ``response.create``.
- A response: ``response.created``, ``response.output_item.added``, ``response.output_audio_transcript.delta``
  per word, ``response.output_audio.delta`` chunks sent faster than real time (the service does),
  ``response.output_audio.done``, ``response.output_audio_transcript.done``, then for a scripted tool call
  ``response.function_call_arguments.done {call_id, name, arguments}``, and ``response.done`` with
  ``usage`` (input/output token details, cached tokens as a subset of input). Every server event has an
  ``event_id`` and one unknown field (``fake_unknown_field``) clients must ignore.
- ``response.cancel`` without a response in progress: ``error`` code ``response_cancel_not_active``. Without
  ``response_id`` it cancels only a response of the default conversation; an out-of-band response
  (``conversation: "none"``) needs its id (client-events reference, ``response.cancel.response_id``: "if
  not provided, will cancel an in-progress response in the default conversation").
- ``conversation.item.truncate`` beyond the item's audio: ``error`` (as documented); else
  ``conversation.item.truncated``. Each truncation is recorded (``truncations``).

- Text-to-speech use: a ``response.create`` whose ``response.input`` holds a user message with
  ``input_text`` (an out-of-band response, ``conversation: "none"``) speaks that text; a session with
  ``audio.input.turn_detection: null`` and no input format is accepted (output format only).
- ``GET /v1/models`` over plain HTTP on the same port (the fake is ``websockets``' ``process_request``):
  the OpenAI list shape ``{"object": "list", "data": [{"id", "object", "created", "owned_by",
  "shutdown_date"}]}``; ``shutdown_date`` (YYYY-MM-DD or null) is in the models reference as mirrored on
  w3cschool.cn (2026-11-10) and was compared with the deprecations page by a dev.to write-up (2026-10-27);
  the default list carries the announced dates (tts-1, tts-1-hd, gpt-4o-mini-tts 2027-01-06; gpt-4o-mini
  2027-01-14). Wrong key: 401 ``invalid_api_key``.

Simplified: the voice is a 440 Hz tone, ``ms_per_char`` per character of the reply; transcripts are
scripted, one per caller turn; token counts are derived from durations (10 audio tokens/s in, 20/s out,
per the realtime-costs guide); VAD is RMS over 20 ms against ``vad_threshold``; no rate limits, no
session expiry; ``response.create`` with ``response.instructions`` containing ``": "`` speaks the text after
the last colon (how parley asks for a fixed greeting).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Self
from urllib.parse import parse_qs, urlsplit

import numpy as np
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from parley.audio.phone import G711

__all__ = ["FakeOpenAIRealtime", "RealtimeFaults", "Reply"]

FORMATS = {"audio/pcm": 24000, "audio/pcmu": 8000, "audio/pcma": 8000}
# GET /v1/models: id -> shutdown_date (the dates OpenAI announced; see the module docstring)
MODELS: dict[str, str | None] = {
    "gpt-realtime": None, "gpt-realtime-mini": None, "gpt-realtime-2.1": None, "gpt-realtime-2.1-mini": None,
    "gpt-4o-mini-transcribe": None, "tts-1": "2027-01-06", "tts-1-hd": "2027-01-06",
    "gpt-4o-mini-tts": "2027-01-06", "gpt-4o-mini": "2027-01-14", "gpt-5.1": None, "gpt-6-luna": None,
}


class _QuietLog(logging.LoggerAdapter[logging.Logger]):
    def isEnabledFor(self, level: int) -> bool:
        return level >= logging.INFO and self.logger.isEnabledFor(level)


@dataclass(frozen=True, slots=True)
class Reply:
    """One scripted model response: what it says, and optionally a tool it calls after saying it."""

    text: str
    tool: str | None = None
    arguments: dict[str, object] = field(default_factory=dict)


@dataclass(slots=True)
class RealtimeFaults:
    reject_status: int | None = None
    reject_count: int | None = None  # None: every handshake
    first_audio_delay_s: float = 0.0  # response.created -> first audio delta
    drop_in_response: int | None = None  # the n-th response (1-based) drops TCP after its first audio
    malformed_in_response: int | None = None  # the n-th response sends a frame that is not JSON
    error_in_response: int | None = None  # the n-th response sends a fatal server_error event and closes 1011
    rejected: int = 0

    def take_rejection(self) -> bool:
        if self.reject_count is not None and self.rejected >= self.reject_count:
            return False
        self.rejected += 1
        return True


@dataclass(slots=True)
class _Conn:
    ws: ServerConnection
    received: list[dict[str, object]] = field(default_factory=list)
    session: dict[str, object] = field(default_factory=dict)
    in_rate: int = 24000
    in_fmt: str = "audio/pcm"
    out_fmt: str = "audio/pcm"
    vad: dict[str, object] | None = None
    speaking: bool = False
    silence_ms: float = 0.0
    heard_ms: float = 0.0  # input audio received
    turn_ms: float = 0.0
    response: asyncio.Task[None] | None = None
    response_id: str | None = None
    out_of_band: bool = False  # the response in progress has conversation: "none"
    items: dict[str, float] = field(default_factory=dict)  # assistant item -> audio ms sent
    n_events: int = 0


class FakeOpenAIRealtime:
    """``async with FakeOpenAIRealtime(key, replies=[...], transcripts=[...]) as fake:`` then ``fake.url``."""

    def __init__(self, api_key: str, *, replies: Iterable[Reply | str] = (), transcripts: Iterable[str] = (),
                 faults: RealtimeFaults | None = None, ms_per_char: float = 40.0, chunk_ms: float = 100.0,
                 chunk_interval_s: float = 0.02, vad_threshold: float = 400.0,
                 models: Mapping[str, str | None] | None = None) -> None:
        self.api_key = api_key
        self.models: dict[str, str | None] = dict(MODELS if models is None else models)
        self.model_requests = 0
        self.replies: deque[Reply] = deque(r if isinstance(r, Reply) else Reply(r) for r in replies)
        self.transcripts: deque[str] = deque(transcripts)
        self.faults = faults or RealtimeFaults()
        self.ms_per_char = ms_per_char
        self.chunk_ms = chunk_ms
        self.chunk_interval_s = chunk_interval_s
        self.vad_threshold = vad_threshold
        self.connections: list[_Conn] = []
        self.handshakes: list[tuple[str, dict[str, str], int]] = []
        self.truncations: list[dict[str, object]] = []
        self.tool_outputs: list[dict[str, object]] = []
        self.responses = 0
        self._server: Server | None = None
        self._g711 = G711()  # the CCITT reference tables (bit-exact with audioop), built once per fake

    @property
    def url(self) -> str:
        assert self._server is not None, "not started"
        return f"ws://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/v1/realtime"

    def received(self, kind: str) -> list[dict[str, object]]:
        return [m for c in self.connections for m in c.received if m.get("type") == kind]

    async def __aenter__(self) -> Self:
        self._server = await serve(self._handle, "127.0.0.1", 0, process_request=self._check, compression=None,
                                   server_header=None, ping_interval=None,
                                   logger=_QuietLog(logging.getLogger("testkit.fakes.openai_realtime"), {}))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    # ---- handshake ---------------------------------------------------------------------------------

    def _check(self, ws: ServerConnection, request: Request) -> Response | None:
        target = urlsplit(request.path)
        query = {k: v[-1] for k, v in parse_qs(target.query).items()}
        auth = request.headers.get("Authorization", "")
        status, code, message = 0, "", ""
        if target.path == "/v1/models" and "upgrade" not in request.headers.get("Connection", "").lower():
            return self._models(ws, auth)
        if target.path != "/v1/realtime":
            status, code, message = 404, "not_found", f"No route {target.path}"
        elif auth != f"Bearer {self.api_key}":
            status, code = 401, "invalid_api_key"
            message = f"Incorrect API key provided: {auth.removeprefix('Bearer ')}."
        elif self.faults.reject_status is not None and self.faults.take_rejection():
            status = self.faults.reject_status
            code = "rate_limit_exceeded" if status == 429 else "scripted"
            message = f"Scripted refusal {status} (fake)"
        elif not query.get("model"):
            status, code, message = 400, "missing_model", "model is required"
        self.handshakes.append((target.path, query, status or 101))
        if not status:
            return None
        body = {"error": {"message": message, "type": "invalid_request_error", "code": code, "param": None}}
        response = ws.respond(status, json.dumps(body))
        del response.headers["Content-Type"]
        response.headers["Content-Type"] = "application/json"
        return response

    def _models(self, ws: ServerConnection, auth: str) -> Response:
        """``GET /v1/models`` over plain HTTP: ``{"object": "list", "data": [{id, object, created, owned_by,
        shutdown_date}]}``; 401 for a wrong key, as the real endpoint."""
        self.model_requests += 1
        if auth != f"Bearer {self.api_key}":
            body: dict[str, object] = {"error": {"message": "Incorrect API key provided.", "type":
                                                 "invalid_request_error", "code": "invalid_api_key", "param": None}}
            status = 401
        else:
            status = 200
            body = {"object": "list", "data": [
                {"id": mid, "object": "model", "created": 1735689600, "owned_by": "system", "shutdown_date": date}
                for mid, date in self.models.items()]}
        response = ws.respond(status, json.dumps(body))
        del response.headers["Content-Type"]
        response.headers["Content-Type"] = "application/json"
        return response

    # ---- one connection ----------------------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        conn = _Conn(ws)
        self.connections.append(conn)
        await self._emit(conn, "session.created", session={"id": f"sess_{len(self.connections)}", "type": "realtime"})
        try:
            async for frame in ws:
                if isinstance(frame, bytes):
                    continue
                message = json.loads(frame)
                if message.get("type") != "input_audio_buffer.append":
                    conn.received.append(message)
                await self._on(conn, message)
        except ConnectionClosed:
            pass
        finally:
            if conn.response is not None:
                conn.response.cancel()

    async def _on(self, conn: _Conn, m: dict[str, object]) -> None:
        match m.get("type"):
            case "session.update":
                await self._session_update(conn, m)
            case "input_audio_buffer.append":
                await self._audio(conn, base64.b64decode(str(m.get("audio", ""))))
            case "input_audio_buffer.commit":
                await self._end_turn(conn, respond=False)
            case "response.create":
                response = m.get("response")
                response = response if isinstance(response, dict) else {}
                instructions = str(response.get("instructions", ""))
                fixed = _input_text(response.get("input"))
                if fixed is None and ": " in instructions:
                    fixed = instructions.rsplit(": ", 1)[-1]
                self._start_response(conn, Reply(fixed) if fixed else None,
                                     out_of_band=response.get("conversation") == "none")
            case "response.cancel":
                rid = m.get("response_id")
                active = conn.response is not None and not conn.response.done()
                # without response_id only a default-conversation response is cancelled
                target = rid == conn.response_id if rid is not None else not conn.out_of_band
                if conn.response is None or not active or not target:
                    await self._error(conn, "response_cancel_not_active", "There is no active response to cancel.")
                else:
                    conn.response.cancel()
            case "conversation.item.truncate":
                await self._truncate(conn, m)
            case "conversation.item.create":
                item = m.get("item")
                if isinstance(item, dict) and item.get("type") == "function_call_output":
                    self.tool_outputs.append(item)
                await self._emit(conn, "conversation.item.created", item=item)

    async def _session_update(self, conn: _Conn, m: dict[str, object]) -> None:
        session = m.get("session")
        if not isinstance(session, dict) or session.get("type") != "realtime":
            await self._error(conn, "invalid_value", "session.type must be 'realtime'", fatal_before=True)
            return
        audio = session.get("audio") if isinstance(session.get("audio"), dict) else {}
        assert isinstance(audio, dict)
        inp = audio.get("input") or {}
        out = audio.get("output") or {}
        for part in (inp, out):
            fmt = part.get("format") if isinstance(part, dict) else None
            if isinstance(fmt, dict) and (fmt.get("type") not in FORMATS
                                          or (fmt.get("type") == "audio/pcm" and fmt.get("rate", 24000) != 24000)):
                await self._error(conn, "invalid_value", f"unsupported audio format {fmt}")
                return
        if isinstance(inp, dict) and isinstance(inp.get("format"), dict):
            conn.in_fmt = str(inp["format"]["type"])
            conn.in_rate = FORMATS[conn.in_fmt]
            conn.vad = inp.get("turn_detection") if isinstance(inp.get("turn_detection"), dict) else None
        if isinstance(out, dict) and isinstance(out.get("format"), dict):
            conn.out_fmt = str(out["format"]["type"])
        conn.session = session
        await self._emit(conn, "session.updated", session=session)

    # ---- caller audio and the VAD ------------------------------------------------------------------

    async def _audio(self, conn: _Conn, data: bytes) -> None:
        samples = _decode(self._g711, data, conn.in_fmt)
        step = conn.in_rate // 50
        for i in range(0, samples.size, step):
            frame = samples[i:i + step]
            ms = 1000.0 * frame.size / conn.in_rate
            conn.heard_ms += ms
            conn.turn_ms += ms
            if conn.vad is None or conn.vad.get("type") != "server_vad":
                continue
            loud = frame.size > 0 and math.sqrt(float(np.mean(frame.astype(np.float64) ** 2))) >= self.vad_threshold
            if loud and not conn.speaking:
                conn.speaking, conn.silence_ms = True, 0.0
                await self._emit(conn, "input_audio_buffer.speech_started", audio_start_ms=int(conn.heard_ms),
                                 item_id=f"item_in_{conn.n_events}")
                if conn.response is not None and not conn.response.done() and conn.vad.get("interrupt_response"):
                    conn.response.cancel()
            elif conn.speaking and not loud:
                conn.silence_ms += ms
                if conn.silence_ms >= float(conn.vad.get("silence_duration_ms", 500)):  # type: ignore[arg-type]
                    conn.speaking = False
                    await self._emit(conn, "input_audio_buffer.speech_stopped", audio_end_ms=int(conn.heard_ms))
                    await self._end_turn(conn, respond=bool(conn.vad.get("create_response", True)))
            elif loud:
                conn.silence_ms = 0.0

    async def _end_turn(self, conn: _Conn, *, respond: bool) -> None:
        item = f"item_in_{conn.n_events}"
        await self._emit(conn, "input_audio_buffer.committed", item_id=item, previous_item_id=None)
        text = self.transcripts.popleft() if self.transcripts else ""
        await self._emit(conn, "conversation.item.input_audio_transcription.completed", item_id=item,
                         content_index=0, transcript=text)
        if respond:
            self._start_response(conn, None)

    # ---- responses ---------------------------------------------------------------------------------

    def _start_response(self, conn: _Conn, reply: Reply | None, *, out_of_band: bool = False) -> None:
        if reply is None:
            reply = self.replies.popleft() if self.replies else Reply("Okay.")
        self.responses += 1
        conn.response_id, conn.out_of_band = f"resp_{self.responses}", out_of_band
        conn.response = asyncio.get_running_loop().create_task(self._respond(conn, reply, self.responses))

    async def _respond(self, conn: _Conn, reply: Reply, n: int) -> None:
        rid, item = f"resp_{n}", f"item_out_{n}"
        in_tokens = int(conn.turn_ms / 100)  # 10 audio tokens per second of input
        conn.turn_ms = 0.0
        sent_ms = 0.0
        status = "completed"
        try:
            await self._emit(conn, "response.created", response={"id": rid, "status": "in_progress"})
            await self._emit(conn, "response.output_item.added", response_id=rid, output_index=0,
                             item={"id": item, "type": "message", "role": "assistant"})
            if self.faults.first_audio_delay_s:
                await asyncio.sleep(self.faults.first_audio_delay_s)
            if self.faults.malformed_in_response == n:
                await conn.ws.send("{not json")
            if self.faults.error_in_response == n:
                await self._emit(conn, "error", error={"type": "server_error", "code": None,
                                                       "message": "The server had an error (fake)"})
                await conn.ws.close(1011, "server error")
                return
            for word in reply.text.split():
                await self._emit(conn, "response.output_audio_transcript.delta", response_id=rid, item_id=item,
                                 output_index=0, content_index=0, delta=word + " ")
            rate = FORMATS[conn.out_fmt]
            total_ms = max(self.chunk_ms, self.ms_per_char * len(reply.text))
            conn.items[item] = 0.0
            while sent_ms < total_ms:
                ms = min(self.chunk_ms, total_ms - sent_ms)
                t = (np.arange(int(rate * ms / 1000)) + int(rate * sent_ms / 1000)) / rate
                tone = (0.25 * 32767 * np.sin(2 * math.pi * 440.0 * t)).astype(np.int16)
                audio = base64.b64encode(_encode(self._g711, tone, conn.out_fmt)).decode()
                await self._emit(conn, "response.output_audio.delta", response_id=rid, item_id=item, output_index=0,
                                 content_index=0, delta=audio)
                sent_ms += ms
                conn.items[item] = sent_ms
                if self.faults.drop_in_response == n:
                    conn.ws.transport.abort()
                    return
                await asyncio.sleep(self.chunk_interval_s)
            await self._emit(conn, "response.output_audio.done", response_id=rid, item_id=item)
            await self._emit(conn, "response.output_audio_transcript.done", response_id=rid, item_id=item,
                             transcript=reply.text)
            if reply.tool:
                await self._emit(conn, "response.function_call_arguments.done", response_id=rid,
                                 item_id=f"fc_{n}", call_id=f"call_{n}", name=reply.tool,
                                 arguments=json.dumps(reply.arguments))
        except asyncio.CancelledError:
            status = "cancelled"
        with contextlib.suppress(ConnectionClosed):
            await self._emit(conn, "response.done", response={"id": rid, "status": status, "usage": {
                "total_tokens": in_tokens + 40 + int(sent_ms / 50),
                "input_tokens": in_tokens + 40, "output_tokens": int(sent_ms / 50) + 5,
                "input_token_details": {"text_tokens": 40, "audio_tokens": in_tokens, "cached_tokens": 32,
                                        "cached_tokens_details": {"text_tokens": 32, "audio_tokens": 0}},
                "output_token_details": {"text_tokens": 5, "audio_tokens": int(sent_ms / 50)},
            }})

    async def _truncate(self, conn: _Conn, m: dict[str, object]) -> None:
        item, end = str(m.get("item_id")), m.get("audio_end_ms")
        if item not in conn.items or not isinstance(end, int) or end > conn.items[item] + 1e-6 or end < 0:
            await self._error(conn, "invalid_value", f"audio_end_ms {end} is beyond the audio of item {item}")
            return
        self.truncations.append(m)
        await self._emit(conn, "conversation.item.truncated", item_id=item, content_index=0, audio_end_ms=end)

    async def _error(self, conn: _Conn, code: str, message: str, *, fatal_before: bool = False) -> None:
        await self._emit(conn, "error", error={"type": "invalid_request_error", "code": code, "message": message,
                                               "param": None})

    async def _emit(self, conn: _Conn, kind: str, **fields: object) -> None:
        conn.n_events += 1
        event = {"type": kind, "event_id": f"event_{conn.n_events}", **fields, "fake_unknown_field": 1}
        await conn.ws.send(json.dumps(event))


def _input_text(items: object) -> str | None:
    """The text of an out-of-band response's ``input`` user message (how a TTS use asks for a reading)."""
    if not isinstance(items, list):
        return None
    for item in items:
        content = item.get("content") if isinstance(item, dict) else None
        for part in content if isinstance(content, list) else ():
            if isinstance(part, dict) and part.get("type") == "input_text":
                return str(part.get("text", ""))
    return None


def _encode(g711: G711, samples: np.ndarray, fmt: str) -> bytes:
    if fmt == "audio/pcm":
        return samples.astype("<i2").tobytes()
    return bytes(g711.encode(samples.astype(np.int16), "ulaw" if fmt == "audio/pcmu" else "alaw"))


def _decode(g711: G711, data: bytes, fmt: str) -> np.ndarray:
    if fmt == "audio/pcm":
        return np.frombuffer(data[: len(data) // 2 * 2], dtype="<i2")
    return g711.decode(np.frombuffer(data, dtype=np.uint8), "ulaw" if fmt == "audio/pcmu" else "alaw")
