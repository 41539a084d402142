"""Text-to-speech through OpenAI's Realtime API: the successor of the retiring ``/v1/audio/speech`` models.

Owns: a small pool of speech-only Realtime sessions (opened with
:meth:`~parley.providers.openai_realtime.OpenAIRealtime.open_speech`, the same WebSocket client the
speech-to-speech engine uses, not a second one), one out-of-band response per text, audio deltas as
:class:`AudioChunk` (PCM16, 24 kHz), usage in tokens and cancellation. Must not know calls, sentences,
playback or the price table.

Why: OpenAI shuts down ``tts-1``, ``tts-1-hd`` and ``gpt-4o-mini-tts`` on 2027-01-06 and names
``gpt-realtime-2.1-mini`` as the replacement, which is served only through the Realtime API
(developers.openai.com/api/docs/guides/text-to-speech: "Migrate to gpt-realtime-2.1-mini using the Realtime
API ... isn't a supported model for /v1/audio/speech"; read with the search tool on 2026-12-05). The model
is a voice model, not a reader: the instructions ask it to read verbatim, and a transcript that differs
from the text is logged (micdrop.dev's OpenAI TTS does the same).

Usage: every response's ``response.done`` usage becomes the Realtime cost lines (provider
``openai-realtime``, models ``<model>/text`` and ``<model>/audio``; the price table prices them as tokens).
They are yielded after the audio. A cancelled synthesis (barge-in: the iterator is closed or its task
cancelled) sends ``response.cancel`` and parks the session; its ``response.done`` (status ``cancelled``,
with the tokens billed so far) is read before the session is used again, when the call that cancelled it
closes its stream (so the cost is on its record before the record is written), or at :meth:`aclose`, and
goes to the cancelled request's own ``on_cancel`` sink, kept with the parked session (in a call, the sink
the call's stream was opened with, even when another call's request is the one that drains it). A session
that failed is closed, never reused; a pooled session found dead before any audio is replaced once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator
from types import TracebackType

from parley.providers.base import (
    AudioChunk,
    Lifecycle,
    RequestsTTSStream,
    TTSEvent,
    TTSStream,
    Usage,
    UsageSink,
    Verdict,
)
from parley.providers.errors import ProviderConnectionError, ProviderError
from parley.providers.openai_realtime import PCM_RATE, URL, OpenAIRealtime, OpenAIRealtimeStream
from parley.providers.realtime_base import ModelAudio, ModelText, ResponseDone

__all__ = ["DEFAULT_MODEL", "READ_VERBATIM", "OpenAIRealtimeTTS"]

log = logging.getLogger("parley.providers.openai_realtime_tts")

PROVIDER = "openai-realtime"
DEFAULT_MODEL = "gpt-realtime-2.1-mini"  # OpenAI's named replacement for the /v1/audio/speech models
READ_VERBATIM = (
    "You are a text-to-speech voice. Read the user's text aloud exactly as written, word for word, in a warm, "
    "natural phone voice. Do not answer it, comment on it, translate it, or add anything."
)
DRAIN_S = 2.0  # how long a parked (cancelled) session may take to report its response.done


class OpenAIRealtimeTTS(Lifecycle):
    """A :class:`~parley.providers.base.TTSProvider` speaking through Realtime sessions (24 kHz PCM16)."""

    name = PROVIDER
    sample_rate = PCM_RATE

    def __init__(self, api_key: str, *, model: str = DEFAULT_MODEL, voice: str = "marin", url: str = URL,
                 instructions: str = READ_VERBATIM, connect_timeout_s: float = 5.0, max_idle: int = 2) -> None:
        self.realtime = OpenAIRealtime(api_key, model=model, voice=voice, url=url, connect_timeout_s=connect_timeout_s)
        self.instructions = instructions
        self.max_idle = max_idle
        self._idle: list[OpenAIRealtimeStream] = []
        # cancelled mid-response, with the sink its cost goes to: drain before reuse
        self._parked: list[tuple[OpenAIRealtimeStream, UsageSink | None]] = []

    @property
    def model(self) -> str:
        return self.realtime.model

    def __repr__(self) -> str:
        return f"OpenAIRealtimeTTS(url={self.realtime.url!r}, model={self.model!r}, voice={self.realtime.voice!r})"

    async def __aenter__(self) -> OpenAIRealtimeTTS:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def prewarm(self) -> None:
        """Open one session ahead of the first sentence (authenticates; bills nothing)."""
        if not self._idle:
            self._idle.append(await self.realtime.open_speech(self.instructions))

    async def check(self) -> Verdict | None:
        """Open a session (authenticates, bills nothing) and judge the model by the model list."""
        await self.prewarm()
        return await self.realtime.model_verdict()

    async def open(self, on_usage: UsageSink) -> TTSStream:
        """The voice of one call: its requests share the pool; closing it reads what its barge-ins cost."""
        return _CallVoice(self, on_usage)

    async def settle(self, on_cancel: UsageSink) -> None:
        """Read the cost of the responses cancelled with ``on_cancel`` as their sink (a call ending), bounded by
        ``DRAIN_S`` each; a session that drains cleanly goes back to the pool."""
        mine = [entry for entry in self._parked if entry[1] == on_cancel]
        self._parked = [entry for entry in self._parked if entry[1] != on_cancel]
        for stream, sink in mine:
            if await self._drain(stream, sink) and len(self._idle) < self.max_idle:
                self._idle.append(stream)
            else:
                await stream.close()

    async def aclose(self) -> None:
        """Report what parked sessions' cancelled responses cost, then close every session."""
        while self._parked:
            stream, on_cancel = self._parked.pop()
            await self._drain(stream, on_cancel)
            await stream.close()
        while self._idle:
            await self._idle.pop().close()

    async def synthesize(self, text: str, *, on_cancel: UsageSink | None = None) -> AsyncGenerator[TTSEvent, None]:
        stream, pooled = await self._take()
        usages: list[Usage] = []
        state = "open"  # open -> done (reusable) | failed
        try:
            try:
                await stream.speak(text, self.instructions)
                chunk = await self._next_audio(stream, usages, None)
            except ProviderConnectionError:
                if not pooled:
                    raise
                log.info("%s: a pooled session had gone; opening a new one", PROVIDER)
                await stream.close()
                usages.clear()
                stream = await self.realtime.open_speech(self.instructions)
                await stream.speak(text, self.instructions)
                chunk = await self._next_audio(stream, usages, None)
            first = True
            while chunk is not None:
                yield AudioChunk(chunk.samples, chunk.sample_rate, text=text if first else None)
                first = False
                chunk = await self._next_audio(stream, usages, text)
            state = "done"
        except ProviderError:
            state = "failed"
            for line in usages or [Usage(PROVIDER, f"{self.model}/audio", "llm", failed=True)]:
                yield line
            raise
        finally:
            await self._release(stream, state, on_cancel)
        for line in usages:
            yield line

    # ---- internals ---------------------------------------------------------------------------------

    async def _next_audio(self, stream: OpenAIRealtimeStream, usages: list[Usage], text: str | None
                          ) -> ModelAudio | None:
        """The next audio of the response in progress; ``None`` at its ``response.done``."""
        async for event in stream:
            match event:
                case ModelAudio():
                    return event
                case Usage():
                    usages.append(event)
                case ModelText(final=True, text=said) if text is not None and _words(said) != _words(text):
                    log.info("%s read the text differently (%d vs %d characters)", PROVIDER, len(said), len(text))
                case ResponseDone():
                    return None
        raise ProviderConnectionError(f"{PROVIDER}: the session ended mid-response", provider=PROVIDER)

    async def _take(self) -> tuple[OpenAIRealtimeStream, bool]:
        while self._parked:
            stream, on_cancel = self._parked.pop()
            if await self._drain(stream, on_cancel):
                self._idle.append(stream)
            else:
                await stream.close()
        while self._idle:
            stream = self._idle.pop()
            if not stream.finished:
                return stream, True
            await stream.close()
        return await self.realtime.open_speech(self.instructions), False

    async def _release(self, stream: OpenAIRealtimeStream, state: str, on_cancel: UsageSink | None) -> None:
        if state == "done" and not stream.finished and len(self._idle) < self.max_idle:
            self._idle.append(stream)
            return
        if state == "open" and not stream.finished:  # cancelled: stop the response, read its cost later
            with contextlib.suppress(Exception):
                await stream.cancel()
            self._parked.append((stream, on_cancel))
            return
        with contextlib.suppress(Exception):
            await stream.close()

    async def _drain(self, stream: OpenAIRealtimeStream, on_cancel: UsageSink | None) -> bool:
        """Read a cancelled response to its ``response.done``; its usage goes to ``on_cancel``. Reusable?"""
        try:
            async with asyncio.timeout(DRAIN_S):
                async for event in stream:
                    if isinstance(event, Usage) and on_cancel is not None:
                        on_cancel(event)
                    if isinstance(event, ResponseDone):
                        return not stream.finished
        except (TimeoutError, ProviderError):
            pass
        if on_cancel is not None:
            on_cancel(Usage(PROVIDER, f"{self.model}/audio", "llm", cancelled=True))
        return False


class _CallVoice(RequestsTTSStream):
    """One call's stream on the shared pool: each text is one request with the call's sink; closing it reads
    what the call's barge-ins cost."""

    def __init__(self, provider: OpenAIRealtimeTTS, on_usage: UsageSink) -> None:
        super().__init__(provider, on_usage)
        self._realtime = provider

    async def close(self) -> None:
        await self._realtime.settle(self._on_usage)


def _words(text: str) -> list[str]:
    return "".join(c.lower() if c.isalnum() or c.isspace() else " " for c in text).split()
