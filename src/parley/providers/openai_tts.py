"""Streaming text-to-speech from OpenAI's speech endpoint (``POST /v1/audio/speech``), spoken with ``httpx``.

Retiring: ``tts-1``, ``tts-1-hd`` and ``gpt-4o-mini-tts`` (every model this endpoint serves) shut down on
2027-01-06 (developers.openai.com/api/docs/guides/text-to-speech). This provider keeps working until then;
``parley providers check`` flags the configured model, and the successor is ``tts: [openai-realtime]``
(:mod:`parley.providers.openai_realtime_tts`, ``gpt-realtime-2.1-mini`` through the Realtime API).

Owns: the request (``response_format: "pcm"``: raw 24 kHz mono s16le), reading the body as it arrives and
turning it into :class:`AudioChunk` events (a byte left over at an odd boundary waits for the next chunk),
one :class:`Usage` per request, and translating failures into :mod:`parley.providers.errors` at this edge.
Must not know about calls, sentences or playback; resampling to the phone's rate is the caller's business.

Usage in the vendor's unit (docs/provider-protocols.md §8): ``tts-1`` / ``tts-1-hd`` bill input characters
and stream raw audio (``stream_format: audio``, no usage in it); ``gpt-4o-mini-tts`` bills tokens, which
only the SSE form reports, so it is asked for ``stream_format: sse``: ``speech.audio.delta`` events carry
base64 PCM, ``speech.audio.done`` the ``usage`` (input and output tokens). The SSE lines go through the
same decoder as the chat stream (:class:`~parley.providers.openai_llm.SSEDecoder`). Characters are always
counted too: the cost table's estimate when no token count came (a stream cut short, a cancel).

One ``httpx.AsyncClient`` per provider (created on first use, or injected) so consecutive sentences reuse
a kept-alive connection; ``aclose()`` / ``async with`` releases it.

Failures: 401/403 -> :class:`ProviderAuthError`; 429 and 5xx -> retryable :class:`ProviderError`
(``insufficient_quota`` is not); timeouts -> :class:`ProviderTimeout`; refused or dropped connections ->
:class:`ProviderConnectionError`; a 200 that is not audio (JSON, HTML) -> :class:`ProviderProtocolError`.
A body ending with half a sample is logged and the stray byte dropped. A failed request yields
``Usage(failed=True)`` (characters counted only if the server accepted the request) and then raises.

Cancellation (barge-in): closing the iterator or cancelling its task closes the response at once (there is
no cancel endpoint); the request's ``on_cancel`` sink (in a call, the sink the call's stream was opened
with; ``open()`` is :class:`~parley.providers.base.TTSRequests`'s, one HTTP request per sentence) receives
``Usage(cancelled=True)`` with the characters sent, which are billed anyway. The key is sent only in the
``Authorization`` header, never logged or shown in ``repr``, and redacted from error messages (OpenAI echoes
a wrong key in its 401 message).
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import AsyncGenerator
from contextlib import aclosing
from types import TracebackType
from typing import Literal, TypeAlias

import httpx

from parley import wire_json
from parley.audio.pcm import from_bytes
from parley.providers.base import AudioChunk, Lifecycle, TTSEvent, TTSRequests, Usage, UsageSink, Verdict
from parley.providers.errors import (
    ProviderError,
    ProviderProtocolError,
    error_for_status,
    redact,
)
from parley.providers.http_session import HttpSession, decode_event, metered, require_event_stream, sse_data
from parley.providers.model_list import openai_verdict
from parley.providers.tts_shell import PcmAssembler

__all__ = ["OpenAITTS", "PcmAssembler", "stream_format_for"]

PROVIDER = "openai"
SAMPLE_RATE = 24000
log = logging.getLogger("parley.providers.openai_tts")
CHARACTER_BILLED = ("tts-1", "tts-1-hd")  # and their dated snapshots; the others bill tokens
StreamFormat: TypeAlias = Literal["auto", "audio", "sse"]


def stream_format_for(model: str, wanted: StreamFormat = "auto") -> Literal["audio", "sse"]:
    """``sse`` for a token-billed model (its usage comes only there), raw ``audio`` for tts-1 / tts-1-hd."""
    if wanted != "auto":
        return wanted
    return "audio" if model in CHARACTER_BILLED or model.startswith(tuple(m + "-" for m in CHARACTER_BILLED)) else "sse"


class _Request:
    """What one synthesize() call learned, for its Usage."""

    __slots__ = ("accepted", "tokens")

    def __init__(self) -> None:
        self.accepted = False  # the server answered 200 (the characters are billed from here on)
        self.tokens: tuple[int, int] | None = None  # (input, output) from speech.audio.done


def _error_details(body: bytes) -> tuple[str, str | None]:
    text = body.decode("utf-8", "replace").strip()
    try:
        parsed: object = wire_json.loads(text)
    except wire_json.WireJsonError:
        return text[:300], None
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if not isinstance(error, dict):
        return (error if isinstance(error, str) else text)[:300], None
    code = error.get("code")
    return str(error.get("message") or text)[:300], str(code) if code else None


class OpenAITTS(Lifecycle, TTSRequests):
    """A :class:`~parley.providers.base.TTSProvider` for OpenAI's ``/audio/speech`` (raw PCM, 24 kHz)."""

    name = PROVIDER
    sample_rate = SAMPLE_RATE

    def __init__(
        self,
        api_key: str,
        *,
        model: str = "gpt-4o-mini-tts",
        voice: str = "alloy",
        base_url: str = "https://api.openai.com/v1",
        instructions: str | None = None,
        speed: float | None = None,
        stream_format: StreamFormat = "auto",
        timeout_s: float = 30.0,
        connect_timeout_s: float = 5.0,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        self.model = model
        self.voice = voice
        self.base_url = base_url.rstrip("/")
        self.url = self.base_url + "/audio/speech"
        self.instructions = instructions
        self.speed = speed
        self.stream_format = stream_format_for(model, stream_format)
        self._api_key = api_key
        self._http = HttpSession(timeout_s=timeout_s, connect_timeout_s=connect_timeout_s, client=http_client)

    def __repr__(self) -> str:
        return f"OpenAITTS(url={self.url!r}, model={self.model!r}, voice={self.voice!r})"

    async def __aenter__(self) -> OpenAITTS:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP client this provider created (an injected client belongs to its owner)."""
        await self._http.aclose()

    async def check(self) -> Verdict | None:
        """The model list (free, needs a valid key; synthesizing would bill) and the voice model's place in it:
        ``gpt-4o-mini-tts`` and ``tts-1*`` are flagged as retiring."""
        return await openai_verdict(self.base_url, self._api_key, self.model, provider=PROVIDER)

    def request_body(self, text: str) -> dict[str, object]:
        body: dict[str, object] = {"model": self.model, "input": text, "voice": self.voice, "response_format": "pcm"}
        if self.stream_format == "sse":
            body["stream_format"] = "sse"
        if self.instructions:
            body["instructions"] = self.instructions
        if self.speed is not None:
            body["speed"] = self.speed
        return body

    async def synthesize(self, text: str, *, on_cancel: UsageSink | None = None) -> AsyncGenerator[TTSEvent, None]:
        state = _Request()

        def usage(*, failed: bool = False, cancelled: bool = False) -> Usage:
            if failed:  # characters are billed once the server accepted the request
                return self._usage(text if state.accepted else "", failed=True)
            return self._usage(text, cancelled=cancelled, tokens=None if cancelled else state.tokens)

        async with aclosing(metered(self._audio(text, state), usage, on_cancel)) as events:
            async for event in events:
                yield event

    def _usage(self, text: str, *, tokens: tuple[int, int] | None = None, failed: bool = False,
               cancelled: bool = False) -> Usage:
        tokens_in, tokens_out = tokens or (0, 0)
        return Usage(PROVIDER, self.model, "tts", characters=len(text), input_tokens=tokens_in,
                     output_tokens=tokens_out, failed=failed, cancelled=cancelled)

    async def _audio(self, text: str, state: _Request) -> AsyncGenerator[AudioChunk, None]:
        headers = {"Authorization": f"Bearer {self._api_key}", "Content-Type": "application/json"}
        log.debug("%s: POST %s model=%s voice=%s chars=%d", PROVIDER, self.url, self.model, self.voice, len(text))
        async with self._http.post(self.url, self.request_body(text), headers, provider=PROVIDER,
                                   status_error=self._status_error, redact=self._redact) as response:
            state.accepted = True
            sse = self.stream_format == "sse"
            if sse:
                require_event_stream(response, PROVIDER)
            elif (content_type := response.headers.get("content-type", "")).startswith(("application/json", "text/")):
                raise ProviderProtocolError(f"{PROVIDER}: expected raw audio, got {content_type!r}", provider=PROVIDER)
            pcm = PcmAssembler()
            first = True
            async for data in self._sse_audio(response, state) if sse else response.aiter_bytes():
                if whole := pcm.feed(data):
                    yield AudioChunk(from_bytes(whole), SAMPLE_RATE, text=text if first else None)
                    first = False
            if pcm.leftover:
                log.warning("%s: the audio ended with half a sample; dropped it", PROVIDER)

    def _status_error(self, response: httpx.Response, content: bytes) -> ProviderError:
        message, code = _error_details(content)
        return error_for_status(response.status_code, self._redact(message), provider=PROVIDER, code=code)

    async def _sse_audio(self, response: httpx.Response, state: _Request) -> AsyncGenerator[bytes, None]:
        """The PCM of ``speech.audio.delta`` events; ``speech.audio.done`` leaves its token usage in ``state``."""
        async for data in sse_data(response):
            if data == "[DONE]":
                continue
            event = decode_event(data, PROVIDER, [self._api_key])
            event = event if isinstance(event, dict) else {}
            if isinstance(error := event.get("error"), dict):
                raise ProviderError(f"{PROVIDER}: {self._redact(str(error.get('message', error)))}",
                                    provider=PROVIDER, retryable=True)
            match event.get("type"):
                case "speech.audio.delta":
                    try:
                        yield base64.b64decode(str(event.get("audio") or ""), validate=True)
                    except binascii.Error as exc:
                        raise ProviderProtocolError(f"{PROVIDER}: audio delta is not base64",
                                                    provider=PROVIDER) from exc
                case "speech.audio.done":
                    usage = event.get("usage")
                    usage = usage if isinstance(usage, dict) else {}
                    state.tokens = (_count(usage.get("input_tokens")), _count(usage.get("output_tokens")))
                case _:
                    pass  # unknown event types are ignored, as OpenAI adds them

    def _redact(self, text: str) -> str:
        return redact(text, [self._api_key])


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0
