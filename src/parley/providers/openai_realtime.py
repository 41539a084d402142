"""OpenAI Realtime (speech-to-speech) over its WebSocket protocol, spoken with ``websockets`` (no SDK).

Owns: the GA event vocabulary (the sans-I/O :class:`RealtimeWire`: session config and client events out as
JSON objects, server events in as parley :mod:`~parley.providers.realtime_base` events), the audio formats
(G.711 mu-law/A-law at 8 kHz when the call's codec is PCMU/PCMA, so nothing is resampled twice, else PCM16
at 24 kHz through soxr), usage per response into cost lines, and one call's socket
(:class:`OpenAIRealtimeStream`). Must not know calls, turns, FreeSWITCH or the price table.

Wire (checked with the search tool, 2026-12-04): ``wss://api.openai.com/v1/realtime?model=...``, Bearer
key, no beta header. ``session.update`` with ``session.type: "realtime"``, ``output_modalities``,
``audio.input.{format, transcription, turn_detection}`` and ``audio.output.{format, voice}``; formats
``{"type": "audio/pcm", "rate": 24000}`` (24 kHz only), ``audio/pcmu``, ``audio/pcma``
(developers.openai.com/api/reference/resources/realtime/client-events; a community.openai.com example
of the GA session.update, thread 1358789). Server events: ``session.created/updated``,
``input_audio_buffer.speech_started/stopped``, ``conversation.item.input_audio_transcription.completed``,
``response.created``, ``response.output_audio.delta``, ``response.output_audio_transcript.delta/done``,
``response.function_call_arguments.done``, ``response.done``, ``error`` (docs.rs openai-protocol
``RealtimeServerEvent``, 46 variants). ``conversation.item.truncate {item_id, content_index: 0,
audio_end_ms}`` cuts an assistant item's audio and deletes its unheard transcript; an ``audio_end_ms``
beyond the item's audio is an error, so it is clamped to what was received (learn.microsoft.com
RealtimeClientEventConversationItemTruncate). A tool result is ``conversation.item.create`` with a
``function_call_output {call_id, output}`` item, then ``response.create``. Usage is on ``response.done``:
``input_token_details.{text_tokens, audio_tokens, cached_tokens, cached_tokens_details}``,
``output_token_details.{text_tokens, audio_tokens}``; cached tokens are a subset of input tokens
(openai-client-base RealtimeResponseUsageInputTokenDetails).

Cost lines: the price table has one input and one output price per model, so one response becomes up to
four :class:`Usage` lines, model ``<model>/audio``, ``<model>/text``, ``<model>/audio-cached`` and
``<model>/text-cached`` (the price table prices each). Input transcription (billed by its own model) is not
reported. Benign in-band errors (cancelling a response that already ended) are logged, not raised.

Text-to-speech on the same client (:mod:`parley.providers.openai_realtime_tts`, the successor of the
``/v1/audio/speech`` models that shut down on 2027-01-06): :meth:`OpenAIRealtime.open_speech` configures a
session with audio output only and no turn detection, and :meth:`OpenAIRealtimeStream.speak` sends each
text as an out-of-band ``response.create`` (``conversation: "none"`` with the text as its only ``input``
item), so the session's conversation never grows (docs.rs openai-struct ``RealtimeResponseCreateParams``:
"Set this to none to create an out-of-band response which will not add items to default conversation").
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlencode

import numpy as np
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, WebSocketException

from parley import wire_json
from parley.audio.pcm import Int16Array
from parley.audio.phone import G711, Codec
from parley.audio.resample import StreamResampler
from parley.errors import ConfigError
from parley.providers.base import ToolCall, Usage, Verdict
from parley.providers.errors import (
    ProviderAuthError,
    ProviderConnectionError,
    ProviderError,
    ProviderProtocolError,
    ProviderTimeout,
    error_for_status,
)
from parley.providers.model_list import http_base, openai_verdict
from parley.providers.realtime_base import (
    CallerSpeech,
    CallerText,
    EventQueue,
    ModelAudio,
    ModelText,
    ModelToolCall,
    RealtimeConfig,
    RealtimeEvent,
    ResponseDone,
)
from parley.providers.ws_connect import QuietWsLog, Redactor, open_ws

__all__ = ["AudioFormat", "OpenAIRealtime", "OpenAIRealtimeStream", "RealtimeWire", "audio_format"]

log = logging.getLogger("parley.providers.openai_realtime")

PROVIDER = "openai-realtime"
URL = "wss://api.openai.com/v1/realtime"
PCM_RATE = 24000  # the only PCM rate the GA API accepts
BENIGN = frozenset({"response_cancel_not_active", "conversation_already_has_active_response"})
FATAL_TYPES = frozenset({"server_error"})
FATAL_CODES = frozenset({"invalid_api_key", "session_expired", "insufficient_quota", "rate_limit_exceeded"})
Json = dict[str, object]


@dataclass(slots=True)
class AudioFormat:
    """One direction-agnostic wire format: G.711 at 8 kHz or PCM16 at 24 kHz."""

    wire: str  # audio/pcmu | audio/pcma | audio/pcm
    rate: int
    g711: Codec | None
    _table: G711 | None = None

    def config(self) -> Json:
        return {"type": self.wire, "rate": self.rate} if self.g711 is None else {"type": self.wire}

    def encode(self, samples: Int16Array) -> bytes:
        if self.g711 is None:
            return samples.astype("<i2", copy=False).tobytes()
        return bytes(self._codec().encode(samples, self.g711))

    def decode(self, data: bytes) -> Int16Array:
        if self.g711 is None:
            return np.frombuffer(data[: len(data) - len(data) % 2], dtype="<i2").astype(np.int16)
        return self._codec().decode(np.frombuffer(data, dtype=np.uint8), self.g711)

    def _codec(self) -> G711:
        if self._table is None:
            self._table = G711()
        return self._table


def audio_format(codec: str | None) -> AudioFormat:
    """G.711 when the call's codec already is (no second quantisation, no resampling), else PCM16."""
    name = (codec or "").upper()
    if name == "PCMU":
        return AudioFormat("audio/pcmu", 8000, "ulaw")
    if name == "PCMA":
        return AudioFormat("audio/pcma", 8000, "alaw")
    return AudioFormat("audio/pcm", PCM_RATE, None)


def _int(value: object) -> int:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else 0


def _dict(value: object) -> Mapping[str, object]:
    return value if isinstance(value, dict) else {}


class RealtimeWire:
    """Client events out, server events in. No I/O, no clock: the stream sends what this builds."""

    def __init__(self, model: str, voice: str, fmt: AudioFormat, *, transcribe_model: str = "gpt-4o-mini-transcribe",
                 vad_silence_ms: int = 500) -> None:
        self.model = model
        self.voice = voice
        self.fmt = fmt
        self.transcribe_model = transcribe_model
        self.vad_silence_ms = vad_silence_ms
        self.response_active = False
        self.response_id: str | None = None  # of the response in progress (response.created)
        self.audio_ms: dict[str, float] = {}  # assistant item -> ms of its audio received
        self.ready = False

    # ---- client events -----------------------------------------------------------------------------

    def session_update(self, config: RealtimeConfig) -> Json:
        vad: Json | None = None
        if config.server_vad:
            vad = {"type": "server_vad", "create_response": True, "interrupt_response": True,
                   "silence_duration_ms": self.vad_silence_ms, "prefix_padding_ms": 300, "threshold": 0.5}
        tools = [{"type": "function", "name": t.name, "description": t.description, "parameters": dict(t.parameters)}
                 for t in config.tools]
        return {"type": "session.update", "session": {
            "type": "realtime",
            "model": self.model,
            "instructions": config.instructions,
            "output_modalities": ["audio"],
            "audio": {
                "input": {"format": self.fmt.config(), "transcription": {"model": self.transcribe_model},
                          "turn_detection": vad},
                "output": {"format": self.fmt.config(), "voice": self.voice},
            },
            "tools": tools,
            "tool_choice": "auto",
        }}

    def append(self, audio: bytes) -> Json:
        return {"type": "input_audio_buffer.append", "audio": base64.b64encode(audio).decode("ascii")}

    def commit_and_respond(self) -> list[Json]:
        return [{"type": "input_audio_buffer.commit"}, {"type": "response.create"}]

    def say(self, text: str) -> Json:
        return {"type": "response.create", "response": {
            "instructions": f"Say exactly this to the caller and nothing else: {text}"}}

    def speech_session(self, instructions: str) -> Json:
        """A text-to-speech session: audio out only, no input audio, no turn detection, no transcription."""
        return {"type": "session.update", "session": {
            "type": "realtime",
            "model": self.model,
            "instructions": instructions,
            "output_modalities": ["audio"],
            "audio": {"input": {"turn_detection": None},
                      "output": {"format": self.fmt.config(), "voice": self.voice}},
        }}

    def speak(self, text: str, instructions: str) -> Json:
        """An out-of-band response (``conversation: "none"``) whose only input is ``text``: the session's
        conversation never grows, so every sentence bills the same small prompt."""
        message = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}
        return {"type": "response.create", "response": {
            "conversation": "none", "input": [message], "instructions": instructions,
            "output_modalities": ["audio"]}}

    def cancel(self) -> list[Json]:
        """Cancel the response in progress by its id: without ``response_id`` the server cancels only a
        response of the default conversation, never an out-of-band one (client-events reference,
        ``response.cancel.response_id``, as in learn.microsoft.com RealtimeClientEventResponseCancel)."""
        if not self.response_active:
            return []
        if self.response_id is None:
            return [{"type": "response.cancel"}]
        return [{"type": "response.cancel", "response_id": self.response_id}]

    def interrupt(self, item_id: str | None, heard_ms: float) -> list[Json]:
        out: list[Json] = []
        if self.response_active:
            out.append({"type": "response.cancel"})
        if item_id is not None and item_id in self.audio_ms:
            end = int(max(0.0, min(heard_ms, self.audio_ms[item_id])))
            out.append({"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0,
                        "audio_end_ms": end})
        return out

    def tool_result(self, call: ToolCall, output: str, *, respond: bool) -> list[Json]:
        item = {"type": "function_call_output", "call_id": call.id, "output": output}
        out: list[Json] = [{"type": "conversation.item.create", "item": item}]
        if respond:
            out.append({"type": "response.create"})
        return out

    # ---- server events -----------------------------------------------------------------------------

    def feed(self, message: Mapping[str, object]) -> list[RealtimeEvent]:
        kind = message.get("type")
        match kind:
            case "session.updated":
                self.ready = True
            case "input_audio_buffer.speech_started" | "input_audio_buffer.speech_stopped":
                return [CallerSpeech(started=kind.endswith("started"))]
            case "conversation.item.input_audio_transcription.completed":
                return [CallerText(str(message.get("transcript") or "").strip())]
            case "response.created":
                self.response_active = True
                rid = _dict(message.get("response")).get("id")
                self.response_id = rid if isinstance(rid, str) and rid else None
            case "response.output_audio.delta":
                return self._audio(message)
            case "response.output_audio_transcript.delta":
                return [ModelText(str(message.get("item_id") or ""), str(message.get("delta") or ""))]
            case "response.output_audio_transcript.done":
                text = str(message.get("transcript") or "")
                return [ModelText(str(message.get("item_id") or ""), text, final=True)]
            case "response.function_call_arguments.done":
                return [self._tool_call(message)]
            case "response.done":
                return self._done(_dict(message.get("response")))
            case "error":
                return self._error(_dict(message.get("error")))
        return []  # unknown and uninteresting events are ignored, as the API adds them

    def _audio(self, message: Mapping[str, object]) -> list[RealtimeEvent]:
        item = str(message.get("item_id") or "")
        try:
            data = base64.b64decode(str(message.get("delta") or ""), validate=True)
        except ValueError:
            raise ProviderProtocolError("openai-realtime: audio delta is not base64", provider=PROVIDER) from None
        samples = self.fmt.decode(data)
        self.audio_ms[item] = self.audio_ms.get(item, 0.0) + 1000.0 * samples.size / self.fmt.rate
        return [ModelAudio(item, samples, self.fmt.rate)] if samples.size else []

    def _tool_call(self, message: Mapping[str, object]) -> ModelToolCall:
        raw = str(message.get("arguments") or "{}")
        try:
            args = wire_json.loads(raw) if raw.strip() else {}
        except wire_json.WireJsonError:
            args = {}
        call_id = str(message.get("call_id") or message.get("item_id") or "")
        return ModelToolCall(ToolCall(call_id, str(message.get("name") or ""), args if isinstance(args, dict) else {}))

    def _done(self, response: Mapping[str, object]) -> list[RealtimeEvent]:
        self.response_active = False
        cancelled = response.get("status") == "cancelled"
        failed = response.get("status") == "failed"
        return [*self.usage(_dict(response.get("usage")), cancelled=cancelled, failed=failed),
                ResponseDone(cancelled=cancelled)]

    def usage(self, usage: Mapping[str, object], *, cancelled: bool = False, failed: bool = False) -> list[Usage]:
        ins, outs = _dict(usage.get("input_token_details")), _dict(usage.get("output_token_details"))
        cached = _dict(ins.get("cached_tokens_details"))
        c_audio, c_text = _int(cached.get("audio_tokens")), _int(cached.get("text_tokens"))
        lines = [
            ("audio", _int(ins.get("audio_tokens")) - c_audio, _int(outs.get("audio_tokens"))),
            ("text", _int(ins.get("text_tokens")) - c_text, _int(outs.get("text_tokens"))),
            ("audio-cached", c_audio, 0),
            ("text-cached", c_text, 0),
        ]
        return [Usage(PROVIDER, f"{self.model}/{name}", "llm", input_tokens=max(0, i), output_tokens=o,
                      cancelled=cancelled, failed=failed)
                for n, (name, i, o) in enumerate(lines) if n == 0 or i or o]

    def _error(self, error: Mapping[str, object]) -> list[RealtimeEvent]:
        code, kind = str(error.get("code") or ""), str(error.get("type") or "")
        message = str(error.get("message") or error)[:300]
        if code in BENIGN or (kind not in FATAL_TYPES and code not in FATAL_CODES and self.ready):
            log.info("openai-realtime reported %s (%s): %s", code or kind, "ignored", message)
            return []
        if code == "invalid_api_key" or kind == "authentication_error":
            raise ProviderAuthError(f"openai-realtime: {message}", provider=PROVIDER, code=code or None)
        retryable = kind in FATAL_TYPES or code == "rate_limit_exceeded"
        raise ProviderError(f"openai-realtime: {kind} {code}: {message}".strip(), provider=PROVIDER,
                            code=code or None, retryable=retryable)


def handshake_error(status: int, body: bytes) -> ProviderError:
    """A refused upgrade: OpenAI's ``{"error": {"message", "code", "type"}}`` body when there is one."""
    text = body.decode("utf-8", "replace").strip()
    try:
        parsed = wire_json.loads(text) if text else {}
    except wire_json.WireJsonError:
        parsed = {}
    err = _dict(_dict(parsed).get("error"))
    code = err.get("code")
    return error_for_status(status, str(err.get("message") or text[:200]), provider=PROVIDER,
                            code=str(code) if code else None)


def close_error(code: int | None, reason: str) -> ProviderError:
    text = f"openai-realtime: connection closed: {code} {reason}".rstrip()
    if code is None or code in (1000, 1001, 1006, 1011, 1012, 1013):
        return ProviderConnectionError(text, provider=PROVIDER, code=f"ws-{code}")
    return ProviderError(text, provider=PROVIDER, code=f"ws-{code}", retryable=code not in (1003, 1007, 1008, 1009))


class OpenAIRealtime:
    """A :class:`~parley.providers.realtime_base.RealtimeProvider` for OpenAI's Realtime API."""

    name: str = PROVIDER

    def __init__(self, api_key: str, *, model: str = "gpt-realtime", voice: str = "marin", url: str = URL,
                 transcribe_model: str = "gpt-4o-mini-transcribe", connect_timeout_s: float = 5.0,
                 vad_silence_ms: int = 500) -> None:
        if not api_key:
            raise ConfigError("openai realtime: an API key is required")
        self.model = model
        self.voice = voice
        self.url = url
        self.transcribe_model = transcribe_model
        self.connect_timeout_s = connect_timeout_s
        self.vad_silence_ms = vad_silence_ms
        self._key = api_key
        self._redactor = Redactor([api_key])
        self._ws_log = QuietWsLog(logging.getLogger("parley.providers.openai_realtime.websockets"), {})

    def __repr__(self) -> str:
        return f"OpenAIRealtime(url={self.url!r}, model={self.model!r}, voice={self.voice!r})"

    async def check(self) -> Verdict | None:
        """Open a session and close it (authenticates and configures, bills nothing: no response), then judge
        the model by the model list."""
        stream = await self.open(RealtimeConfig("parley providers check"))
        await stream.close()
        return await self.model_verdict()

    async def model_verdict(self) -> Verdict:
        """``GET /models`` next to the Realtime endpoint (free) and this model's place in it."""
        return await openai_verdict(http_base(self.url), self._key, self.model, provider=PROVIDER)

    async def open(self, config: RealtimeConfig) -> OpenAIRealtimeStream:
        wire = RealtimeWire(self.model, self.voice, audio_format(config.codec), transcribe_model=self.transcribe_model,
                            vad_silence_ms=self.vad_silence_ms)
        return await self._open(wire, wire.session_update(config), config.call_rate)

    async def open_speech(self, instructions: str) -> OpenAIRealtimeStream:
        """A session that only speaks (PCM16 at 24 kHz): the text-to-speech use of the same client."""
        wire = RealtimeWire(self.model, self.voice, audio_format(None))
        return await self._open(wire, wire.speech_session(instructions), PCM_RATE)

    async def _open(self, wire: RealtimeWire, session: Json, call_rate: int) -> OpenAIRealtimeStream:
        sep = "&" if "?" in self.url else "?"
        ws = await open_ws(self.url + sep + urlencode({"model": self.model}),
                           {"Authorization": f"Bearer {self._key}"}, provider=PROVIDER,
                           connect_timeout_s=self.connect_timeout_s, handshake_error=handshake_error,
                           redactor=self._redactor, logger=self._ws_log, shown_url=self.url)
        stream = OpenAIRealtimeStream(ws, wire, call_rate, self._redactor)
        try:
            await stream.configure(session, self.connect_timeout_s)
        except BaseException:
            await ws.close()
            raise
        return stream


class OpenAIRealtimeStream:
    """One call's Realtime socket: a reader task turns server events into parley events."""

    def __init__(self, ws: ClientConnection, wire: RealtimeWire, call_rate: int, redactor: Redactor) -> None:
        self._ws = ws
        self._wire = wire
        self._redactor = redactor
        self._resampler = StreamResampler(call_rate, wire.fmt.rate)
        self._events = EventQueue()
        self._reader: asyncio.Task[None] | None = None
        self._closing = False
        self.sent: list[str] = []  # client event types, in order (tests, traces)

    async def configure(self, session: Json, timeout_s: float) -> None:
        """``session.created`` -> ``session.update`` -> ``session.updated``; failures raise here."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._expect("session.created")
                await self._send(session)
                await self._expect("session.updated")
        except TimeoutError:
            raise ProviderTimeout("openai-realtime: no session within the connect timeout", provider=PROVIDER) from None
        except ConnectionClosed as exc:
            raise self._redactor.error(self._closed(exc)) from exc
        self._reader = asyncio.create_task(self._read(), name="openai-realtime-reader")

    async def _expect(self, kind: str) -> None:
        while True:
            message = self._parse(await self._ws.recv())
            self._wire.feed(message)  # an error event raises here
            if message.get("type") == kind:
                return

    # ---- RealtimeStream ----------------------------------------------------------------------------

    async def send_audio(self, samples: Int16Array) -> None:
        out = self._resampler.process(samples)
        if out.size and not self._events.done:
            await self._send(self._wire.append(self._wire.fmt.encode(out)))

    async def start_turn(self) -> None:
        return None  # the input buffer collects the turn; nothing to announce

    async def end_turn(self) -> None:
        for event in self._wire.commit_and_respond():
            await self._send(event)

    async def say(self, text: str) -> None:
        await self._send(self._wire.say(text))

    async def interrupt(self, item_id: str | None, heard_ms: float, heard_text: str) -> None:
        for event in self._wire.interrupt(item_id, heard_ms):
            await self._send(event)

    async def tool_result(self, call: ToolCall, output: str, *, respond: bool) -> None:
        for event in self._wire.tool_result(call, output, respond=respond):
            await self._send(event)

    async def speak(self, text: str, instructions: str) -> None:
        """Text-to-speech: one out-of-band response reading ``text`` (see :meth:`RealtimeWire.speak`)."""
        await self._send(self._wire.speak(text, instructions))

    async def cancel(self) -> None:
        """Stop the response in progress, if any (its ``response.done`` still follows, with usage)."""
        for event in self._wire.cancel():
            await self._send(event)

    @property
    def finished(self) -> bool:
        """The socket failed or closed: the stream yields nothing new."""
        return self._events.done

    async def close(self) -> None:
        self._closing = True
        await self._ws.close()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._reader), 2.0)
        self._events.put(None)

    def __aiter__(self) -> OpenAIRealtimeStream:
        return self

    async def __anext__(self) -> RealtimeEvent:
        return await self._events.next()

    # ---- internals ---------------------------------------------------------------------------------

    async def _send(self, event: Json) -> None:
        self.sent.append(str(event["type"]))
        with contextlib.suppress(ConnectionClosed):  # the reader reports a broken socket
            await self._ws.send(json.dumps(event))

    def _parse(self, frame: str | bytes) -> Mapping[str, object]:
        if isinstance(frame, bytes):
            raise ProviderProtocolError("openai-realtime: binary frame", provider=PROVIDER)
        try:
            parsed = wire_json.loads(frame)
        except wire_json.WireJsonError as exc:
            raise ProviderProtocolError(f"openai-realtime: event is not JSON ({exc})", provider=PROVIDER) from None
        if not isinstance(parsed, dict) or not isinstance(parsed.get("type"), str):
            raise ProviderProtocolError("openai-realtime: event without a type", provider=PROVIDER)
        return parsed

    async def _read(self) -> None:
        error: ProviderError | None = None
        try:
            while True:
                for event in self._wire.feed(self._parse(await self._ws.recv())):
                    self._events.put(event)
        except ConnectionClosed as exc:
            if not (self._closing and (exc.rcvd is None or exc.rcvd.code in (1000, 1001))):
                error = self._closed(exc)
        except ProviderError as exc:
            error = exc
        except WebSocketException as exc:
            error = ProviderConnectionError(f"openai-realtime: socket failed: {type(exc).__name__}", provider=PROVIDER)
        if error is not None:
            self._events.done = True
            if self._wire.response_active:  # what the cut-off response consumed is unknown: mark it
                self._events.put(Usage(PROVIDER, f"{self._wire.model}/audio", "llm", failed=True))
            self._events.put(self._redactor.error(error))
            with contextlib.suppress(Exception):
                await self._ws.close()
        else:
            self._events.put(None)

    def _closed(self, exc: ConnectionClosed) -> ProviderError:
        frame = exc.rcvd
        return close_error(frame.code if frame else None, frame.reason if frame else "no close frame")
