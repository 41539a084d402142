"""Gemini Live (``BidiGenerateContent``) over its WebSocket protocol, spoken with ``websockets`` (no SDK).

Owns: the setup message, realtime audio input at 16 kHz (soxr from the call's rate), 24 kHz audio output,
the server's activity detection or parley's (``activityStart`` / ``activityEnd``), interruptions, tool
calls and responses, both transcripts, and ``usageMetadata`` per modality into cost lines (the sans-I/O
:class:`LiveWire`), plus one call's socket (:class:`GeminiLiveStream`). Must not know calls, turns,
FreeSWITCH or the price table.

Wire (checked with the search tool, 2026-12-04; ai.google.dev/api/live "Live API - WebSockets API
reference"; googleapis js-genai ``LiveServerContent``; the google.ai.generativelanguage.v1beta
``BidiGenerateContentServerContent`` proto docs): endpoint ``wss://generativelanguage.googleapis.com/ws/
google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent``; every client message has
exactly one of ``setup``, ``clientContent``, ``realtimeInput``, ``toolResponse``; the first is ``setup``
(``model``, ``generationConfig.{responseModalities, speechConfig}``, ``systemInstruction``, ``tools``,
``realtimeInputConfig.automaticActivityDetection.disabled``, ``inputAudioTranscription``,
``outputAudioTranscription``), answered by ``setupComplete``. Input audio is raw 16-bit PCM at 16 kHz
little-endian, output 24 kHz (Vertex AI Live API technical specifications). Server messages:
``serverContent.{modelTurn.parts[].inlineData, outputTranscription, inputTranscription, interrupted,
generationComplete, turnComplete}``, ``toolCall.functionCalls[{id, name, args}]``,
``toolCallCancellation``, ``usageMetadata.{promptTokensDetails, responseTokensDetails}[{modality,
tokenCount}]``, ``goAway``. Usage metadata is billed per turn and the context is re-billed each turn, so
every report is summed (discuss.ai.google.dev threads 173248 and 140340).

Heard-truncation: Gemini has no truncate; on an interruption it keeps in its history what it had sent
(``interrupted``: "stop and empty the current playback queue"). parley therefore tells it, as a
``clientContent`` turn without ``turnComplete``, what the caller actually heard (from PLAYBACK events):
the nearest the protocol allows, and an approximation, unlike OpenAI's ``conversation.item.truncate``.
A bad key is refused in-band by a close frame whose reason names the key ([uncertain]: observed in
client issue threads, not in the reference); it is mapped to :class:`ProviderAuthError`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import re
from collections.abc import Mapping

import numpy as np
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, WebSocketException

from parley import wire_json
from parley.audio.pcm import Int16Array
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
from parley.providers.realtime_base import (
    CallerSpeech,
    CallerText,
    EventQueue,
    ModelAudio,
    ModelInterrupted,
    ModelText,
    ModelToolCall,
    RealtimeConfig,
    RealtimeEvent,
    ResponseDone,
)
from parley.providers.ws_connect import QuietWsLog, Redactor, open_ws

__all__ = ["GeminiLive", "GeminiLiveStream", "LiveWire"]

log = logging.getLogger("parley.providers.gemini_live")

PROVIDER = "gemini-live"
URL = "wss://generativelanguage.googleapis.com/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent"
IN_RATE = 16000
OUT_RATE = 24000
_RATE = re.compile(r"rate=(\d+)")
Json = dict[str, object]


def _dict(value: object) -> Mapping[str, object]:
    return value if isinstance(value, dict) else {}


def _list(value: object) -> list[object]:
    return value if isinstance(value, list) else []


def _modalities(details: object) -> dict[str, int]:
    out: dict[str, int] = {}
    for d in details if isinstance(details, list) else []:
        if isinstance(d, dict) and isinstance(d.get("tokenCount"), int):
            key = str(d.get("modality", "TEXT")).lower()
            out[key] = out.get(key, 0) + int(d["tokenCount"])
    return out


class LiveWire:
    """Client messages out, server messages in. No I/O, no clock."""

    def __init__(self, model: str, voice: str) -> None:
        self.model = model
        self.voice = voice
        self.ready = False
        self.turn = 0  # the model's turn number names its "item" (Gemini has no item ids)
        self.in_turn = False  # the model is producing the current turn
        self._caller: list[str] = []  # input transcription pieces of the caller's turn in progress

    @property
    def item(self) -> str:
        return f"turn-{self.turn}"

    def setup(self, config: RealtimeConfig) -> Json:
        tools = [{"functionDeclarations": [{"name": t.name, "description": t.description,
                                            "parameters": dict(t.parameters)} for t in config.tools]}]
        return {"setup": {
            "model": self.model if self.model.startswith("models/") else f"models/{self.model}",
            "generationConfig": {"responseModalities": ["AUDIO"], "speechConfig": {
                "voiceConfig": {"prebuiltVoiceConfig": {"voiceName": self.voice}}}},
            "systemInstruction": {"parts": [{"text": config.instructions}]},
            "tools": tools if config.tools else [],
            "realtimeInputConfig": {"automaticActivityDetection": {"disabled": not config.server_vad}},
            "inputAudioTranscription": {},
            "outputAudioTranscription": {},
        }}

    def audio(self, samples: Int16Array) -> Json:
        data = base64.b64encode(samples.astype("<i2", copy=False).tobytes()).decode("ascii")
        return {"realtimeInput": {"audio": {"data": data, "mimeType": f"audio/pcm;rate={IN_RATE}"}}}

    def activity(self, start: bool) -> Json:
        return {"realtimeInput": {"activityStart" if start else "activityEnd": {}}}

    def say(self, text: str) -> Json:
        return self._user(f"Say exactly this to the caller and nothing else: {text}", complete=True)

    def heard(self, heard_text: str) -> Json:
        note = f'(The caller interrupted you; they heard only: "{heard_text}". Anything after it was not heard.)'
        return self._user(note, complete=False)

    def tool_result(self, call: ToolCall, output: str) -> Json:
        return {"toolResponse": {"functionResponses": [{"id": call.id, "name": call.name,
                                                        "response": {"output": output}}]}}

    def _user(self, text: str, *, complete: bool) -> Json:
        return {"clientContent": {"turns": [{"role": "user", "parts": [{"text": text}]}], "turnComplete": complete}}

    # ---- server messages ---------------------------------------------------------------------------

    def feed(self, message: Mapping[str, object]) -> list[RealtimeEvent]:
        out: list[RealtimeEvent] = []
        if "setupComplete" in message:
            self.ready = True
        if "usageMetadata" in message:  # before a turnComplete in the same message: the turn's cost first
            out += self.usage(_dict(message["usageMetadata"]))
        if "serverContent" in message:
            out += self._content(_dict(message["serverContent"]))
        if "toolCall" in message:
            out += self._model_output()
            for call in _list(_dict(message["toolCall"]).get("functionCalls")):
                if isinstance(call, dict):
                    args = call.get("args")
                    out.append(ModelToolCall(ToolCall(str(call.get("id") or ""), str(call.get("name") or ""),
                                                      args if isinstance(args, dict) else {})))
        if "goAway" in message:
            log.info("gemini-live: the server will close this connection soon: %s", message["goAway"])
        if "error" in message:
            err = _dict(message["error"])
            raise ProviderError(f"gemini-live: {err.get('message') or err}", provider=PROVIDER,
                                code=str(err.get("status") or err.get("code") or "") or None)
        return out

    def _content(self, content: Mapping[str, object]) -> list[RealtimeEvent]:
        out: list[RealtimeEvent] = []
        text = _dict(content.get("inputTranscription")).get("text")
        if isinstance(text, str) and text:
            if not self._caller and not self.in_turn:
                out.append(CallerSpeech(started=True))
            self._caller.append(text)
        if content.get("interrupted") is True:
            out.append(ModelInterrupted())
            self._end_turn()
        spoken = _dict(content.get("outputTranscription")).get("text")
        if isinstance(spoken, str) and spoken:
            out += self._model_output()
            out.append(ModelText(self.item, spoken))
        for part in _list(_dict(content.get("modelTurn")).get("parts")):
            inline = _dict(_dict(part).get("inlineData"))
            if inline.get("data"):
                out += self._model_output()
                out.append(self._audio(inline))
        if content.get("turnComplete") is True:
            out += self._model_output()  # a turn with no output still closes the caller's turn
            self._end_turn()
            out.append(ResponseDone())
        return out

    def _model_output(self) -> list[RealtimeEvent]:
        """The model starts answering: the caller's turn (and its transcript) is over."""
        if self.in_turn:
            return []
        self.in_turn = True
        out: list[RealtimeEvent] = []
        if self._caller:
            out += [CallerSpeech(started=False), CallerText("".join(self._caller).strip())]
            self._caller = []
        return out

    def _end_turn(self) -> None:
        if self.in_turn:
            self.turn += 1
        self.in_turn = False

    def _audio(self, inline: Mapping[str, object]) -> ModelAudio:
        try:
            data = base64.b64decode(str(inline["data"]), validate=True)
        except ValueError:
            raise ProviderProtocolError("gemini-live: inlineData is not base64", provider=PROVIDER) from None
        m = _RATE.search(str(inline.get("mimeType") or ""))
        rate = int(m[1]) if m else OUT_RATE
        samples = np.frombuffer(data[: len(data) // 2 * 2], dtype="<i2").astype(np.int16)
        return ModelAudio(self.item, samples, rate)

    def usage(self, meta: Mapping[str, object]) -> list[Usage]:
        ins, outs = _modalities(meta.get("promptTokensDetails")), _modalities(meta.get("responseTokensDetails"))
        lines = [Usage(PROVIDER, f"{self.model}/audio", "llm", input_tokens=ins.get("audio", 0),
                       output_tokens=outs.get("audio", 0))]
        text_in, text_out = ins.get("text", 0), outs.get("text", 0)
        if text_in or text_out:
            lines.append(Usage(PROVIDER, f"{self.model}/text", "llm", input_tokens=text_in, output_tokens=text_out))
        return lines


def close_error(code: int | None, reason: str) -> ProviderError:
    text = f"gemini-live: connection closed: {code} {reason}".rstrip()
    if "api key" in reason.lower() or "permission" in reason.lower():
        return ProviderAuthError(text, provider=PROVIDER, code=f"ws-{code}")
    if code is None or code in (1000, 1001, 1006, 1011, 1013):
        return ProviderConnectionError(text, provider=PROVIDER, code=f"ws-{code}")
    return ProviderError(text, provider=PROVIDER, code=f"ws-{code}", retryable=code not in (1003, 1007, 1008))


def handshake_error(status: int, body: bytes) -> ProviderError:
    text = body.decode("utf-8", "replace").strip()
    try:
        parsed = wire_json.loads(text) if text else {}
    except wire_json.WireJsonError:
        parsed = {}
    err = _dict(_dict(parsed).get("error"))
    return error_for_status(status, str(err.get("message") or text[:200]), provider=PROVIDER,
                            code=str(err.get("status")) if err.get("status") else None)


class GeminiLive:
    """A :class:`~parley.providers.realtime_base.RealtimeProvider` for the Gemini Live API."""

    name: str = PROVIDER

    def __init__(self, api_key: str, *, model: str = "gemini-2.5-flash-native-audio-preview-12-2025",
                 voice: str = "Kore", url: str = URL, connect_timeout_s: float = 5.0) -> None:
        if not api_key:
            raise ConfigError("gemini live: an API key is required")
        self.model = model
        self.voice = voice
        self.url = url
        self.connect_timeout_s = connect_timeout_s
        self._key = api_key
        self._redactor = Redactor([api_key])
        self._ws_log = QuietWsLog(logging.getLogger("parley.providers.gemini_live.websockets"), {})

    def __repr__(self) -> str:
        return f"GeminiLive(url={self.url!r}, model={self.model!r}, voice={self.voice!r})"

    async def check(self) -> Verdict | None:
        """Open a session and close it: authenticates and configures, bills nothing (no turn)."""
        stream = await self.open(RealtimeConfig("parley providers check"))
        await stream.close()
        return None

    async def open(self, config: RealtimeConfig) -> GeminiLiveStream:
        ws = await open_ws(self.url, {"x-goog-api-key": self._key}, provider=PROVIDER,
                           connect_timeout_s=self.connect_timeout_s, handshake_error=handshake_error,
                           redactor=self._redactor, logger=self._ws_log, shown_url=self.url)
        stream = GeminiLiveStream(ws, LiveWire(self.model, self.voice), config, self._redactor)
        try:
            await stream.configure(self.connect_timeout_s)
        except BaseException:
            await ws.close()
            raise
        return stream


class GeminiLiveStream:
    """One call's Live socket: a reader task turns server messages into parley events."""

    def __init__(self, ws: ClientConnection, wire: LiveWire, config: RealtimeConfig, redactor: Redactor) -> None:
        self._ws = ws
        self._wire = wire
        self._config = config
        self._redactor = redactor
        self._resampler = StreamResampler(config.call_rate, IN_RATE)
        self._events = EventQueue()
        self._reader: asyncio.Task[None] | None = None
        self._closing = False

    async def configure(self, timeout_s: float) -> None:
        try:
            async with asyncio.timeout(timeout_s):
                await self._send(self._wire.setup(self._config))
                while not self._wire.ready:
                    self._wire.feed(self._parse(await self._ws.recv()))
        except TimeoutError:
            raise ProviderTimeout("gemini-live: no setupComplete in the connect timeout", provider=PROVIDER) from None
        except ConnectionClosed as exc:
            raise self._redactor.error(self._closed(exc)) from exc
        self._reader = asyncio.create_task(self._read(), name="gemini-live-reader")

    async def send_audio(self, samples: Int16Array) -> None:
        out = self._resampler.process(samples)
        if out.size and not self._events.done:
            await self._send(self._wire.audio(out))

    async def start_turn(self) -> None:
        if not self._config.server_vad:
            await self._send(self._wire.activity(True))

    async def end_turn(self) -> None:
        if not self._config.server_vad:
            await self._send(self._wire.activity(False))

    async def say(self, text: str) -> None:
        await self._send(self._wire.say(text))

    async def interrupt(self, item_id: str | None, heard_ms: float, heard_text: str) -> None:
        await self._send(self._wire.heard(heard_text))

    async def tool_result(self, call: ToolCall, output: str, *, respond: bool) -> None:
        await self._send(self._wire.tool_result(call, output))  # Gemini goes on by itself after a result

    async def close(self) -> None:
        self._closing = True
        await self._ws.close()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._reader), 2.0)
        self._events.put(None)

    def __aiter__(self) -> GeminiLiveStream:
        return self

    async def __anext__(self) -> RealtimeEvent:
        return await self._events.next()

    async def _send(self, message: Json) -> None:
        with contextlib.suppress(ConnectionClosed):
            await self._ws.send(json.dumps(message))

    def _parse(self, frame: str | bytes) -> Mapping[str, object]:
        try:  # the service sends JSON, as text or as binary frames
            parsed = wire_json.loads(frame)
        except wire_json.WireJsonError as exc:
            raise ProviderProtocolError(f"gemini-live: message is not JSON ({exc})", provider=PROVIDER) from None
        if not isinstance(parsed, dict):
            raise ProviderProtocolError("gemini-live: message is not a JSON object", provider=PROVIDER)
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
            error = ProviderConnectionError(f"gemini-live: socket failed: {type(exc).__name__}", provider=PROVIDER)
        if error is None:
            self._events.put(None)
            return
        self._events.done = True
        if self._wire.in_turn:
            self._events.put(Usage(PROVIDER, f"{self._wire.model}/audio", "llm", failed=True))
        self._events.put(self._redactor.error(error))
        with contextlib.suppress(Exception):
            await self._ws.close()

    def _closed(self, exc: ConnectionClosed) -> ProviderError:
        frame = exc.rcvd
        return close_error(frame.code if frame else None, frame.reason if frame else "no close frame")
