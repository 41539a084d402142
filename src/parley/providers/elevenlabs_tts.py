"""ElevenLabs streaming TTS over the multi-context WebSocket (``/v1/text-to-speech/{voice}/multi-stream-input``).

Owns: the ElevenLabs WebSocket wire format (spoken with ``websockets``, no SDK): a context's three
messages, its audio and end, which failures earn a retry on a fresh socket and the ``close_context`` sent
at a barge-in; and translating every handshake, in-band and close-frame failure into
:mod:`parley.providers.errors` at this edge. The request's shell (pooled socket, retry, usage, cancel) is
:mod:`parley.providers.tts_shell`'s, shared with Cartesia. Must not know calls, turns, playback or other
providers.

Design. One synthesize() = one *context* on a socket the request holds alone (a socket is never shared by
two requests at once; concurrent calls get their own sockets; finished requests put theirs back in the
pool, so the sentences of one reply reuse one socket). Per request, three text frames go out::

    {"text": " ", "context_id": C, "voice_settings": {...}}     open the context (text must be one space)
    {"text": "Hello there. ", "context_id": C, "flush": true}    the sentence, ending with a space, flushed
    {"context_id": C, "close_context": true}                     close it: a flushing context finishes first

Audio arrives as ``{"audio": <base64 s16le>, "contextId": C, ...alignment}`` and the context ends with
``{"isFinal": true, "contextId": C}``. The protocol has no documented "flush finished" marker (livekit
ignores an undocumented ``flush_done``), and on the single-stream endpoint ``isFinal`` only follows
``{"text": ""}``, which ends the whole socket. Closing the *context* right after the flush gives a
documented end marker per sentence without giving up the socket, so the next sentence pays no handshake.
The close goes out only after the context's first audio (or ``close_grace_s`` without any): sent within
~1 ms of the flush it races the server's generation (pipecat#4681, ~2.5 % of peak-hour calls), and the
sentence is skipped (``isFinal`` with no audio) or the context stalls. An ``isFinal`` with no audio for text
that has letters or digits is retried once on a fresh socket, then raised as a retryable ``empty_audio``
error so the fallback chain takes the sentence. Flushing every sentence forgoes the server's
cross-sentence buffering (slightly flatter prosody between sentences) for the lowest first-audio latency.

Barge-in (the consumer closes the generator or cancels its task): nothing more is yielded at once. The
context is already closed (or gets ``close_context`` now, if the request stopped before sending it); the
server still finishes a flush in progress, so its late frames are dropped by context id when the socket is
next used (the vendor's documented multi-context barge-in). A socket keeps a set of contexts that have not
sent ``isFinal`` yet and is closed instead of pooled when three are pending, well under the documented
limit of five per socket (pipecat#4041). The request's ``on_cancel`` sink receives ``Usage(cancelled=True)``
(in a call, the sink the call's stream was opened with; the per-call ``open()`` is
:class:`~parley.providers.base.TTSRequests`'s: a call's requests share nothing but the pool).

Idle sockets: the server ends a socket after ``inactivity_timeout`` (default 20 s, max 180) without text,
with an ``input_timeout_exceeded`` error and close 1008: a socket pooled between replies would expire
while the caller talks, so the client asks for the 180 s maximum (``inactivity_timeout_s``; ``None`` leaves
the server default) rather than running a keepalive task per idle socket. A pooled socket found closed is
replaced; one that dies before the request's first audio (the close raced our send) is replaced once.

Failures: handshake 401/403 and in-band auth errors -> :class:`ProviderAuthError`; 429 and concurrency
errors -> retryable :class:`ProviderError`; ``quota_exceeded`` / unusual activity -> not retryable; connect
or next-message deadline -> :class:`ProviderTimeout`; drops and unexpected closes ->
:class:`ProviderConnectionError`; non-JSON, binary or undecodable audio -> :class:`ProviderProtocolError`.
A failed request yields ``Usage(failed=True)`` and raises. The key travels only in the ``xi-api-key``
header; websockets' DEBUG log (which prints headers) is muted and error texts are redacted.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass
from typing import TypeAlias
from urllib.parse import quote, urlencode

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
    ProviderTimeout,
    error_for_status,
)
from parley.providers.tts_shell import PooledVoice, WsRequest, pooled_synthesis
from parley.providers.ws_connect import QuietWsLog, Redactor, closed_error, open_ws
from parley.providers.ws_pool import PooledSocket, SocketPool

__all__ = ["ElevenLabsTTS", "ServerAudio", "ServerError", "ServerFinal", "error_for_close", "parse_message"]

log = logging.getLogger("parley.providers.elevenlabs_tts")

PROVIDER = "elevenlabs"
PCM_RATES = frozenset({8000, 16000, 22050, 24000, 44100})  # the API's pcm_* formats (no 32000 or 48000)
RETIRE_AT = 3  # contexts still waiting for isFinal when a socket is closed instead of pooled (limit: 5)
MAX_IDLE = 4  # pooled sockets kept open

_AUTH = frozenset({"invalid_api_key", "missing_api_key", "unauthorized", "invalid_authorization", "auth_error"})
_FINAL = frozenset({"quota_exceeded", "insufficient_credits", "payment_required", "detected_unusual_activity"})
_BUSY = frozenset({"too_many_concurrent_requests", "rate_limit_exceeded", "system_busy", "max_active_conversations"})
_STALE = frozenset({"input_timeout_exceeded", "max_active_conversations"})  # a fresh socket cures these


# ---- sans-I/O: server messages and error mapping ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServerAudio:
    context_id: str | None
    pcm: bytes
    alignment: Mapping[str, object] | None = None
    final: bool = False


@dataclass(frozen=True, slots=True)
class ServerFinal:
    context_id: str | None


@dataclass(frozen=True, slots=True)
class ServerError:
    context_id: str | None
    error: str
    message: str


ServerMessage: TypeAlias = ServerAudio | ServerFinal | ServerError | None


def parse_message(raw: str | bytes) -> ServerMessage:
    """One server frame -> event (None: nothing for us, e.g. an empty audio field). Unknown fields ignored."""
    if isinstance(raw, bytes):
        raise ProviderProtocolError(f"{PROVIDER}: unexpected binary frame", provider=PROVIDER)
    try:
        data: object = wire_json.loads(raw)
    except wire_json.WireJsonError as exc:
        raise ProviderProtocolError(f"{PROVIDER}: message is not JSON ({exc})", provider=PROVIDER) from exc
    if not isinstance(data, dict):
        raise ProviderProtocolError(f"{PROVIDER}: message is not a JSON object", provider=PROVIDER)
    cid = data.get("contextId", data.get("context_id"))  # both spellings are seen
    context_id = cid if isinstance(cid, str) else None
    if data.get("error") is not None:
        error = str(data["error"])
        return ServerError(context_id, error, str(data.get("message") or error))
    final = data.get("isFinal") is True
    audio = data.get("audio")
    if isinstance(audio, str) and audio:
        try:
            pcm = base64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ProviderProtocolError(f"{PROVIDER}: audio is not base64 ({exc})", provider=PROVIDER) from exc
        alignment = data.get("alignment") or data.get("normalizedAlignment")
        return ServerAudio(context_id, pcm, alignment if isinstance(alignment, dict) else None, final)
    if audio is not None and not isinstance(audio, str):
        raise ProviderProtocolError(f"{PROVIDER}: 'audio' is not a string", provider=PROVIDER)
    return ServerFinal(context_id) if final else None


def error_for_message(error: str, message: str) -> ProviderError:
    """The error for an in-band ``{"error": ..., "message": ...}`` message."""
    text = f"{PROVIDER}: {error}: {message}"
    if error in _AUTH:
        return ProviderAuthError(text, provider=PROVIDER, status=401, code=error)
    if error in _FINAL:
        return ProviderError(text, provider=PROVIDER, code=error, retryable=False)
    if error in _BUSY:
        return ProviderError(text, provider=PROVIDER, status=429, code=error, retryable=True)
    if error == "input_timeout_exceeded":
        return ProviderTimeout(text, provider=PROVIDER, code=error)
    retryable = "internal" in error or "server" in error
    return ProviderError(text, provider=PROVIDER, code=error, retryable=retryable)


def error_for_close(code: int | None, reason: str) -> ProviderError:
    """The error for a socket that closed while a request still expected audio."""
    text = f"{PROVIDER}: connection closed ({code if code is not None else 1006}{' ' + reason if reason else ''})"
    low = reason.lower()
    if code in (4001, 4003) or any(word in low for word in ("api key", "api_key", "unauthori", "authenticat")):
        return ProviderAuthError(text, provider=PROVIDER, code="invalid_api_key")
    if "timeout" in low:
        return ProviderConnectionError(text, provider=PROVIDER, code="input_timeout_exceeded")
    if code == 1008:
        return ProviderError(text, provider=PROVIDER, code="policy_violation", retryable=False)
    if code == 1009:
        return ProviderProtocolError(text, provider=PROVIDER, code="message_too_big")
    return ProviderConnectionError(text, provider=PROVIDER)


def error_for_handshake(status: int, body: bytes) -> ProviderError:
    """The error for a refused upgrade; the body is ElevenLabs' ``{"detail": {"status", "message"}}``."""
    text = body.decode("utf-8", "replace").strip()
    code: str | None = None
    try:
        parsed = wire_json.loads(text) if text else None
    except wire_json.WireJsonError:
        parsed = None
    detail = parsed.get("detail") if isinstance(parsed, dict) else None
    if isinstance(detail, dict):
        code = str(detail["status"]) if detail.get("status") else None
        text = str(detail.get("message") or text)
    elif isinstance(detail, str):
        text = detail
    if code in _FINAL:
        return ProviderError(f"{PROVIDER}: HTTP {status}: {text[:300]}", provider=PROVIDER, status=status, code=code)
    return error_for_status(status, text[:300], provider=PROVIDER, code=code)


# ---- the provider --------------------------------------------------------------------------------------


class ElevenLabsTTS(PooledVoice, TTSRequests):
    """A :class:`~parley.providers.base.TTSProvider` speaking raw PCM (``pcm_<rate>``) from ElevenLabs."""

    name: str = PROVIDER

    def __init__(
        self,
        api_key: str,
        voice_id: str,
        *,
        model: str = "eleven_flash_v2_5",
        sample_rate: int = 16000,
        url_base: str = "wss://api.elevenlabs.io",
        voice_settings: Mapping[str, float | bool] | None = None,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 10.0,
        inactivity_timeout_s: int | None = 180,
        close_grace_s: float = 0.5,
    ) -> None:
        if sample_rate not in PCM_RATES:
            raise ConfigError(f"elevenlabs: no raw PCM output at {sample_rate} Hz (choose from {sorted(PCM_RATES)})")
        if model == "eleven_v3":
            raise ConfigError("elevenlabs: eleven_v3 is not available on the WebSocket API")
        self.voice_id = voice_id
        self.model = model
        self.sample_rate = sample_rate
        self.url_base = url_base.rstrip("/")
        self.voice_settings = dict(voice_settings) if voice_settings else None
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.inactivity_timeout_s = inactivity_timeout_s
        self.close_grace_s = close_grace_s  # longest wait for the first audio before close_context anyway
        self.last_alignment: Mapping[str, object] | None = None  # of the last chunk that had one
        self._api_key = api_key
        self._ws_log = QuietWsLog(log.getChild("websockets"), {})
        self._redactor = Redactor([api_key])
        # a socket with too many contexts still waiting for isFinal is closed instead of reused
        self._pool = SocketPool(self._open_ws, provider=PROVIDER, closed_error=self._closed,
                                read_timeout_s=read_timeout_s, max_idle=MAX_IDLE,
                                reusable=lambda sock: len(sock.pending) < RETIRE_AT)

    def __repr__(self) -> str:
        return f"ElevenLabsTTS(voice_id={self.voice_id!r}, model={self.model!r}, sample_rate={self.sample_rate})"

    @property
    def url(self) -> str:
        query: dict[str, str | int] = {"model_id": self.model, "output_format": f"pcm_{self.sample_rate}"}
        if self.inactivity_timeout_s is not None:
            query["inactivity_timeout"] = self.inactivity_timeout_s
        path = f"/v1/text-to-speech/{quote(self.voice_id, safe='')}/multi-stream-input"
        return f"{self.url_base}{path}?{urlencode(query)}"

    def synthesize(self, text: str, *, on_cancel: UsageSink | None = None) -> AsyncGenerator[TTSEvent, None]:
        return pooled_synthesis(self._pool, text, sample_rate=self.sample_rate, attempt=self._attempt,
                                retry=self._retry, goodbye=self._goodbye, usage=self._usage,
                                on_cancel=on_cancel)

    async def _attempt(self, sock: PooledSocket, req: WsRequest) -> AsyncIterator[bytes]:
        opening, flushed, closing = self._messages(req.ctx, req.text)
        for message in (opening, flushed):
            await self._pool.send(sock, message)
            sock.pending.add(req.ctx)
            req.sent += 1
        req.billed = True  # the text went out with its flush
        heard = False
        while True:
            if req.sent < 3:  # close only after the first audio (or a grace period): pipecat#4681
                try:
                    async with asyncio.timeout(self.close_grace_s):
                        pcm, final = await self._next_audio(sock, req.ctx)
                except TimeoutError:
                    pcm, final = b"", False
                if not final:
                    await self._pool.send(sock, closing)
                req.sent = 3
            else:
                pcm, final = await self._next_audio(sock, req.ctx)
            heard = heard or bool(pcm)
            if pcm:
                yield pcm
            if final:
                break
        if not heard and any(ch.isalnum() for ch in req.text):
            raise ProviderError(
                f"{PROVIDER}: the context ended with no audio (isFinal only)",
                provider=PROVIDER, code="empty_audio", retryable=True,
            )

    @staticmethod
    def _retry(exc: ProviderError, req: WsRequest) -> bool:
        """Once on a fresh socket: a pooled socket that went stale while idle, or a context that ended with no
        audio (the server-side race of a close right after the flush)."""
        stale = isinstance(exc, ProviderConnectionError) or exc.code in _STALE
        return (req.sock is not None and req.sock.pooled and stale) or exc.code == "empty_audio"

    @staticmethod
    def _goodbye(req: WsRequest) -> Mapping[str, object] | None:
        """Close the context unless all three messages (the last closes it) already went out."""
        return {"context_id": req.ctx, "close_context": True} if 0 < req.sent < 3 else None

    # ---- one request's wire traffic ----------------------------------------------------------------

    def _messages(self, ctx: str, text: str) -> list[dict[str, object]]:
        opening: dict[str, object] = {"text": " ", "context_id": ctx}
        if self.voice_settings:
            opening["voice_settings"] = self.voice_settings
        return [
            opening,
            {"text": text.strip() + " ", "context_id": ctx, "flush": True},
            {"context_id": ctx, "close_context": True},
        ]

    async def _next_audio(self, sock: PooledSocket, ctx: str) -> tuple[bytes, bool]:
        """The next audio of ``ctx`` and whether it was the last; other contexts' frames are dropped."""
        while True:
            match parse_message(await self._pool.recv(sock)):
                case ServerAudio(context_id=str(cid)) | ServerError(context_id=str(cid)) if cid != ctx:
                    continue  # late frames of a context closed by barge-in
                case ServerFinal(context_id=str(cid)) if cid != ctx:
                    sock.pending.discard(cid)
                case ServerError(error=error, message=message):
                    raise self._redacted(error_for_message(error, message))
                case ServerFinal():
                    sock.pending.discard(ctx)
                    return b"", True
                case ServerAudio(pcm=pcm, alignment=alignment, final=final):
                    if alignment is not None:
                        self.last_alignment = alignment
                    if final:
                        sock.pending.discard(ctx)
                    return pcm, final
                case None:
                    continue

    async def _open_ws(self) -> ClientConnection:
        return await open_ws(
            self.url,
            {"xi-api-key": self._api_key},
            provider=PROVIDER,
            connect_timeout_s=self.connect_timeout_s,
            handshake_error=error_for_handshake,
            redactor=self._redactor,
            logger=self._ws_log,
            shown_url=self.url_base,
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
