"""Cartesia Sonic streaming TTS over its WebSocket (``wss://api.cartesia.ai/tts/websocket``).

Owns: the Cartesia WebSocket wire format (spoken with ``websockets``, no SDK): the generation request,
the messages of a context, when a failure may be retried and the cancel sent at a barge-in; and translating
handshake, in-band and close failures into :mod:`parley.providers.errors` at this edge. The request's
shell (pooled socket, retry, usage, cancel) is :mod:`parley.providers.tts_shell`'s, shared with ElevenLabs.
Must not know calls, turns, playback or other providers.

Design. One synthesize() = one new ``context_id`` (Cartesia: a context per turn, never reuse an id) on a
socket the request holds alone; finished requests return the socket to the pool, so the sentences of one
reply share it (Cartesia: "do many generations over a single WebSocket ... set it up before the first
generation": call :meth:`CartesiaTTS.prewarm`). Each sentence is one generation request with
``continue: false``: parley's chunker already hands over whole sentences, so streaming pieces with
``continue: true`` would only add a round of buffering before the first audio. The request also sets
``max_buffer_delay_ms: 0`` (the docs' "custom buffering" for whole sentences): left out, the server's
default of 3000 ms lets it hold a short text while it waits for "enough context" (``buffer_delay_ms``).
Prosody across the sentences of a reply is therefore not carried over; a reply-level streaming API would be
needed for that. Request::

    {"context_id": C, "model_id": "sonic-3.5", "transcript": "Hello there.", "voice": {"mode": "id", "id": V},
     "output_format": {"container": "raw", "encoding": "pcm_s16le", "sample_rate": 16000},
     "language": "en", "continue": false, "max_buffer_delay_ms": 0}

Audio comes as ``{"type": "chunk", "context_id": C, "data": <base64>}`` and ends with ``{"type": "done"}``;
``timestamps`` (with ``add_timestamps=True``) are kept in :attr:`CartesiaTTS.last_word_timestamps`;
``flush_done``, ``phoneme_timestamps`` and unknown types are ignored.

Barge-in (the consumer closes the generator or cancels its task): nothing more is yielded, and
``{"context_id": C, "cancel": true}`` is sent. Cancel only stops inputs that have not started generating, so
late chunks (and any ``done``) of that context still arrive; they are dropped by context id when the socket
is next used. The request's ``on_cancel`` sink receives ``Usage(cancelled=True)`` (in a call, the sink the
call's stream was opened with; the per-call ``open()`` is :class:`~parley.providers.base.TTSRequests`'s: a
call's requests share nothing but the pool).

Auth: ``Authorization: Bearer <key>`` and ``Cartesia-Version`` headers (current docs; the older
``X-API-Key`` / ``?api_key=`` forms are not used, so the key never appears in a URL). Idle sockets are
closed by Cartesia after 5 minutes and it has no keepalive message: a pooled socket found closed is
replaced, and one that dies before the request's first audio is replaced once, transparently.

Failures: handshake 401/403 -> :class:`ProviderAuthError`; 429 (too many sockets or contexts) and 5xx ->
retryable :class:`ProviderError`; other 4xx (bad voice, ``model_sunsetted``) -> not retryable; in-band
``error`` messages map by their ``status_code`` the same way; connect / next-message deadlines ->
:class:`ProviderTimeout`; drops -> :class:`ProviderConnectionError`; non-JSON, binary or undecodable
audio -> :class:`ProviderProtocolError`. A failed request yields ``Usage(failed=True)`` and raises.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass
from typing import TypeAlias

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from parley import wire_json
from parley.errors import ConfigError
from parley.providers.base import TTSEvent, TTSRequests, Usage, UsageSink
from parley.providers.errors import (
    ProviderAuthError,
    ProviderConnectionError,
    ProviderError,
    ProviderProtocolError,
    error_for_status,
)
from parley.providers.tts_shell import PooledVoice, WsRequest, pooled_synthesis
from parley.providers.ws_connect import QuietWsLog, Redactor, closed_error, open_ws
from parley.providers.ws_pool import PooledSocket, SocketPool

__all__ = ["CartesiaTTS", "ServerChunk", "ServerDone", "ServerError", "ServerTimestamps", "parse_message"]

log = logging.getLogger("parley.providers.cartesia_tts")

PROVIDER = "cartesia"
API_VERSION = "2026-03-01"  # what GET https://api.cartesia.ai/ reports as the current version
PCM_RATES = frozenset({8000, 16000, 22050, 24000, 44100, 48000})
RETIRED_MODELS = frozenset({"sonic", "sonic-english", "sonic-multilingual", "sonic-2-2025-03-07"})
MAX_IDLE = 4  # pooled sockets kept open


# ---- sans-I/O: server messages and error mapping ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServerChunk:
    context_id: str | None
    pcm: bytes


@dataclass(frozen=True, slots=True)
class ServerDone:
    context_id: str | None


@dataclass(frozen=True, slots=True)
class ServerTimestamps:
    context_id: str | None
    words: Mapping[str, object]


@dataclass(frozen=True, slots=True)
class ServerError:
    context_id: str | None
    status: int | None
    code: str | None
    message: str


ServerMessage: TypeAlias = ServerChunk | ServerDone | ServerTimestamps | ServerError | None


def parse_message(raw: str | bytes) -> ServerMessage:
    """One server frame -> event (None: a type we do not use). Unknown types and fields are ignored."""
    if isinstance(raw, bytes):
        raise ProviderProtocolError(f"{PROVIDER}: unexpected binary frame", provider=PROVIDER)
    try:
        data: object = wire_json.loads(raw)
    except wire_json.WireJsonError as exc:
        raise ProviderProtocolError(f"{PROVIDER}: message is not JSON ({exc})", provider=PROVIDER) from exc
    if not isinstance(data, dict):
        raise ProviderProtocolError(f"{PROVIDER}: message is not a JSON object", provider=PROVIDER)
    cid = data.get("context_id")
    context_id = cid if isinstance(cid, str) else None
    kind = data.get("type")
    if kind == "error" or (kind is None and data.get("error")):
        status = data.get("status_code")
        code = data.get("error_code")
        parts = [str(p) for p in (data.get("title"), data.get("message") or data.get("error")) if p]
        return ServerError(
            context_id,
            status if isinstance(status, int) and not isinstance(status, bool) else None,
            str(code) if code else None,
            ": ".join(parts) or "error",
        )
    if kind == "chunk":
        audio = data.get("data")
        if not isinstance(audio, str):
            raise ProviderProtocolError(f"{PROVIDER}: chunk without base64 'data'", provider=PROVIDER)
        try:
            return ServerChunk(context_id, base64.b64decode(audio, validate=True))
        except (binascii.Error, ValueError) as exc:
            raise ProviderProtocolError(f"{PROVIDER}: audio is not base64 ({exc})", provider=PROVIDER) from exc
    if kind == "timestamps":
        words = data.get("word_timestamps")
        return ServerTimestamps(context_id, words) if isinstance(words, dict) else None
    if kind == "done":
        return ServerDone(context_id)
    return None


def error_for_message(status: int | None, code: str | None, message: str) -> ProviderError:
    """The error for an in-band ``{"type": "error", "status_code", "error_code", "title", "message"}``."""
    if status is not None and status >= 400:
        return error_for_status(status, message, provider=PROVIDER, code=code)
    text = f"{PROVIDER}: error: {message}"
    return ProviderError(text, provider=PROVIDER, status=status, code=code, retryable=False)


def error_for_close(code: int | None, reason: str) -> ProviderError:
    """The error for a socket that closed while a request still expected audio."""
    text = f"{PROVIDER}: connection closed ({code if code is not None else 1006}{' ' + reason if reason else ''})"
    if code in (4001, 4003) or any(w in reason.lower() for w in ("api key", "unauthori", "authenticat")):
        return ProviderAuthError(text, provider=PROVIDER)
    if code == 1008:
        return ProviderError(text, provider=PROVIDER, code="policy_violation", retryable=False)
    if code == 1009:
        return ProviderProtocolError(text, provider=PROVIDER, code="message_too_big")
    return ProviderConnectionError(text, provider=PROVIDER)


def error_for_handshake(status: int, body: bytes) -> ProviderError:
    """The error for a refused upgrade (JSON ``error_code``/``title``/``message`` or legacy plain text)."""
    text = body.decode("utf-8", "replace").strip()
    code: str | None = None
    try:
        data = wire_json.loads(text) if text else None
    except wire_json.WireJsonError:
        data = None
    if isinstance(data, dict):
        code = str(data["error_code"]) if data.get("error_code") else None
        parts = [str(p) for p in (data.get("title"), data.get("message") or data.get("error")) if p]
        text = ": ".join(parts) or text
    return error_for_status(status, text[:300], provider=PROVIDER, code=code)


# ---- the provider --------------------------------------------------------------------------------------


class CartesiaTTS(PooledVoice, TTSRequests):
    """A :class:`~parley.providers.base.TTSProvider` speaking raw ``pcm_s16le`` from Cartesia Sonic."""

    name: str = PROVIDER

    def __init__(
        self,
        api_key: str,
        voice_id: str,
        *,
        model: str = "sonic-3.5",
        sample_rate: int = 16000,
        url: str = "wss://api.cartesia.ai/tts/websocket",
        version: str = API_VERSION,
        language: str | None = "en",
        add_timestamps: bool = False,
        buffer_delay_ms: int = 0,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 10.0,
    ) -> None:
        if sample_rate not in PCM_RATES:
            raise ConfigError(f"cartesia: no raw PCM output at {sample_rate} Hz (choose from {sorted(PCM_RATES)})")
        if model in RETIRED_MODELS:
            raise ConfigError(f"cartesia: model {model!r} was discontinued on 2026-06-01; use sonic-3.5")
        if not 0 <= buffer_delay_ms <= 5000:
            raise ConfigError(f"cartesia: max_buffer_delay_ms must be within 0-5000, not {buffer_delay_ms}")
        self.buffer_delay_ms = buffer_delay_ms
        self.voice_id = voice_id
        self.model = model
        self.sample_rate = sample_rate
        self.url = url
        self.version = version
        self.language = language
        self.add_timestamps = add_timestamps
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.last_word_timestamps: Mapping[str, object] | None = None
        self._api_key = api_key
        self._ws_log = QuietWsLog(log.getChild("websockets"), {})
        self._redactor = Redactor([api_key])
        self._pool = SocketPool(self._open_ws, provider=PROVIDER, closed_error=self._closed,
                                read_timeout_s=read_timeout_s, max_idle=MAX_IDLE)

    def __repr__(self) -> str:
        return f"CartesiaTTS(voice_id={self.voice_id!r}, model={self.model!r}, sample_rate={self.sample_rate})"

    def synthesize(self, text: str, *, on_cancel: UsageSink | None = None) -> AsyncGenerator[TTSEvent, None]:
        return pooled_synthesis(self._pool, text, sample_rate=self.sample_rate, attempt=self._attempt,
                                retry=self._retry, goodbye=self._goodbye, usage=self._usage,
                                on_cancel=on_cancel)

    async def _attempt(self, sock: PooledSocket, req: WsRequest) -> AsyncIterator[bytes]:
        await self._pool.send(sock, self._request(req.ctx, req.text))
        req.sent, req.billed = 1, True
        while (pcm := await self._next_audio(sock, req.ctx)) is not None:
            yield pcm

    @staticmethod
    def _retry(exc: ProviderError, req: WsRequest) -> bool:
        """A pooled socket the server closed while idle (5 min) fails as a dropped connection: retry once."""
        return req.sock is not None and req.sock.pooled and isinstance(exc, ProviderConnectionError)

    @staticmethod
    def _goodbye(req: WsRequest) -> Mapping[str, object] | None:
        return {"context_id": req.ctx, "cancel": True} if req.sent else None

    # ---- one request's wire traffic ----------------------------------------------------------------

    def _request(self, ctx: str, text: str) -> dict[str, object]:
        request: dict[str, object] = {
            "context_id": ctx,
            "model_id": self.model,
            "transcript": text.strip(),
            "voice": {"mode": "id", "id": self.voice_id},
            "output_format": {"container": "raw", "encoding": "pcm_s16le", "sample_rate": self.sample_rate},
            "continue": False,
            "max_buffer_delay_ms": self.buffer_delay_ms,
        }
        if self.language:
            request["language"] = self.language
        if self.add_timestamps:
            request["add_timestamps"] = True
        return request

    async def _next_audio(self, sock: PooledSocket, ctx: str) -> bytes | None:
        """The next audio of ``ctx`` (None once it is done); other contexts' frames are dropped."""
        while True:
            match parse_message(await self._pool.recv(sock)):
                case ServerChunk(context_id=str(cid)) | ServerDone(context_id=str(cid)) if cid != ctx:
                    continue  # late frames of a context cancelled by barge-in
                case ServerTimestamps(context_id=str(cid)) | ServerError(context_id=str(cid)) if cid != ctx:
                    continue
                case ServerError(status=status, code=code, message=message):
                    raise self._redacted(error_for_message(status, code, self._redact(message)))
                case ServerChunk(pcm=pcm):
                    return pcm
                case ServerDone():
                    return None
                case ServerTimestamps(words=words):
                    self.last_word_timestamps = words
                case None:
                    continue

    async def _open_ws(self) -> ClientConnection:
        return await open_ws(
            self.url,
            {"Authorization": f"Bearer {self._api_key}", "Cartesia-Version": self.version},
            provider=PROVIDER,
            connect_timeout_s=self.connect_timeout_s,
            handshake_error=error_for_handshake,
            redactor=self._redactor,
            logger=self._ws_log,
            shown_url=self.url,
        )

    # ---- helpers -------------------------------------------------------------------------------------

    def _closed(self, exc: ConnectionClosed) -> ProviderError:
        return closed_error(exc, error_for_close, self._redactor)

    def _redacted(self, error: ProviderError) -> ProviderError:
        return self._redactor.error(error)

    def _redact(self, text: str) -> str:
        return self._redactor.text(text)

    def _usage(self, characters: int, *, cancelled: bool = False, failed: bool = False) -> Usage:
        return Usage(
            provider=PROVIDER,
            model=self.model,
            kind="tts",
            characters=characters,
            cancelled=cancelled,
            failed=failed,
        )
