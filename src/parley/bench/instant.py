"""Benchmark fakes: STT, LLM and TTS providers that answer at once, for measuring parley itself.

Owns: ``InstantSTT``, ``InstantLLM`` and ``InstantTTS``, which implement the Protocols of
:mod:`parley.providers.base` with no model and no network, so a density benchmark sees only parley's own
cost (sockets, VAD, turn machine, chunker, playback, ESL). They are **benchmark fakes**, not providers: a
call through them always hears the same canned reply as a tone. Must not be used by ``parley serve``.

- ``InstantSTT``: ``finalize()`` emits one fixed final ``Transcript`` (``speech_final``) and its ``Usage``
  immediately; audio sent is only counted (for the usage's audio seconds).
- ``InstantLLM``: streams a canned reply as a few ``TextDelta`` pieces, then ``Usage``.
- ``InstantTTS``: returns one tone ``AudioChunk`` at 8 kHz, ``MS_PER_CHAR`` per character of text.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Sequence

import numpy as np

from parley.audio.pcm import Int16Array
from parley.providers.base import (
    AudioChunk,
    LLMEvent,
    LLMRequests,
    Message,
    STTEvent,
    TextDelta,
    ToolSpec,
    Transcript,
    TTSEvent,
    TTSRequests,
    Usage,
    UsageSink,
)

BENCH_TRANSCRIPT = "what are your opening hours"
BENCH_REPLY = "We are open from nine to five. Anything else?"
TTS_RATE = 8000
MS_PER_CHAR = 50.0  # ~20 characters per second: a brisk speaking rate
TONE_HZ = 440.0
TONE_DBFS = -20.0


class InstantSTTStream:
    """One call's fake recognition session: a fixed final transcript per ``finalize()``."""

    def __init__(self, provider: InstantSTT, sample_rate: int) -> None:
        self._provider = provider
        self._rate = sample_rate
        self._samples = 0
        self._events: asyncio.Queue[STTEvent | None] = asyncio.Queue()
        self._closed = False

    async def send_audio(self, samples: Int16Array) -> None:
        self._samples += int(samples.size)

    def pause_hint(self) -> None:
        return None

    def speech_resumed(self) -> None:
        return None

    async def finalize(self) -> None:
        seconds = self._samples / self._rate
        self._samples = 0
        self._events.put_nowait(Transcript(self._provider.text, final=True, t=seconds, speech_final=True))
        self._events.put_nowait(Usage(self._provider.name, "instant", "stt", audio_seconds=seconds))

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._events.put_nowait(None)

    def __aiter__(self) -> AsyncIterator[STTEvent]:
        return self

    async def __anext__(self) -> STTEvent:
        event = await self._events.get()
        if event is None:
            self._events.put_nowait(None)
            raise StopAsyncIteration
        return event


class InstantSTT:
    """Benchmark fake STT (see the module docstring)."""

    def __init__(self, text: str = BENCH_TRANSCRIPT) -> None:
        self.name = "bench-instant-stt"
        self.text = text

    # the provider lifecycle: nothing to warm, hold across calls or judge
    async def prewarm(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    async def check(self) -> None:
        return None

    async def open(self, *, sample_rate: int, language: str | None = None) -> InstantSTTStream:
        return InstantSTTStream(self, sample_rate)


class InstantLLM(LLMRequests):
    """Benchmark fake LLM: the canned reply in ``pieces`` deltas, no waiting (only a yield between them)."""

    def __init__(self, reply: str = BENCH_REPLY, pieces: int = 4) -> None:
        self.name = "bench-instant-llm"
        self.reply = reply
        self.pieces = max(1, pieces)

    # the provider lifecycle: nothing to warm, hold across calls or judge
    async def prewarm(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    async def check(self) -> None:
        return None

    async def stream(
        self, messages: Sequence[Message], tools: Sequence[ToolSpec] = (), *, on_cancel: UsageSink | None = None
    ) -> AsyncGenerator[LLMEvent, None]:
        words = self.reply.split(" ")
        step = max(1, -(-len(words) // self.pieces))
        for i in range(0, len(words), step):
            piece = " ".join(words[i : i + step])
            yield TextDelta(piece if i + step >= len(words) else piece + " ")
            await asyncio.sleep(0)  # a cancellation point, like a real stream
        prompt = sum(len(m.content.split()) for m in messages)
        yield Usage(self.name, "instant", "llm", input_tokens=prompt, output_tokens=len(words))


class InstantTTS(TTSRequests):
    """Benchmark fake TTS: a quiet tone at 8 kHz, ``MS_PER_CHAR`` per character, returned at once."""

    def __init__(self, ms_per_char: float = MS_PER_CHAR) -> None:
        self.name = "bench-instant-tts"
        self.sample_rate = TTS_RATE
        self.ms_per_char = ms_per_char

    # the provider lifecycle: nothing to warm, hold across calls or judge
    async def prewarm(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    async def check(self) -> None:
        return None

    async def synthesize(self, text: str, *, on_cancel: UsageSink | None = None) -> AsyncGenerator[TTSEvent, None]:
        yield AudioChunk(tone(len(text) * self.ms_per_char), TTS_RATE, text)
        yield Usage(self.name, "instant", "tts", characters=len(text))


def tone(ms: float, rate: int = TTS_RATE) -> Int16Array:
    """A sine at ``TONE_HZ`` and ``TONE_DBFS`` (peak), ``ms`` long."""
    n = max(1, round(ms * rate / 1000.0))
    amp = 32767.0 * 10 ** (TONE_DBFS / 20.0)
    t = np.arange(n, dtype=np.float64) / rate
    return (amp * np.sin(2.0 * np.pi * TONE_HZ * t)).astype(np.int16)
