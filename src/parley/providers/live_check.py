"""One short real request per capability, timed: what ``parley providers check --live`` runs.

Owns: the three probes (a 2 s utterance through an STT stream, a one-sentence LLM reply, a one-sentence
TTS), the realtime probe (one spoken greeting), the utterance itself (the shipped ``caller_1.wav`` padded
with silence to 2 s) and :class:`LiveResult` (status, time to first result, total time, what came back).
Must not know vendors, settings or keys: it gets provider objects through the Protocols of
:mod:`parley.providers.base` and :mod:`parley.providers.realtime_base`, and a clock (``now``) so tests can
count instead of measure.

Time to first result: STT, from the utterance's first frame to the first final transcript (with ``pace``
the audio goes at real time, so this includes the speech still arriving); LLM, request -> first text
delta; TTS, request -> first audio chunk; realtime, ``say()`` -> first model audio. Every probe has a
deadline; a probe that fails reports the error's text (providers redact keys at their edge).
"""

from __future__ import annotations

import asyncio
import contextlib
import wave
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import resources

import numpy as np

from parley.audio.pcm import Int16Array
from parley.errors import ParleyError
from parley.providers.base import AudioChunk, LLMProvider, Message, STTProvider, TextDelta, Transcript, TTSProvider
from parley.providers.realtime_base import ModelAudio, RealtimeConfig, RealtimeProvider, ResponseDone

__all__ = ["LLM_PROMPT", "TTS_TEXT", "LiveResult", "live_llm", "live_realtime", "live_stt", "live_tts", "utterance"]

UTTERANCE_S = 2.0
FRAME_MS = 20
LLM_PROMPT = "Answer in one short sentence: can you hear me?"
TTS_TEXT = "Hello, this is parley checking the line."
Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class LiveResult:
    capability: str
    provider: str
    status: str  # ok | failed | timed out | no result
    first_ms: float = 0.0
    total_ms: float = 0.0
    detail: str = ""


def utterance(rate: int = 8000) -> Int16Array:
    """The shipped caller sample (8 kHz, 1.3 s) padded with silence to 2 s, at ``rate``."""
    with resources.files("parley.data").joinpath("caller_1.wav").open("rb") as f, wave.open(f) as w:
        source_rate = w.getframerate()
        samples = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.int16)
    if rate != source_rate:
        from parley.audio.resample import StreamResampler

        samples = StreamResampler(source_rate, rate).process(samples)
    out = np.zeros(int(UTTERANCE_S * rate), dtype=np.int16)
    out[: min(out.size, samples.size)] = samples[: out.size]
    return out


def _ms(t: float) -> float:
    return round(t * 1000, 1)


async def _probe(capability: str, provider: str, now: Clock, timeout_s: float,
                 run: Callable[[], Awaitable[tuple[float | None, str]]]) -> LiveResult:
    t0 = now()
    try:
        async with asyncio.timeout(timeout_s):
            first, text = await run()
    except TimeoutError:
        return LiveResult(capability, provider, "timed out", 0.0, _ms(now() - t0), f"no result within {timeout_s:g} s")
    except ParleyError as exc:
        return LiveResult(capability, provider, "failed", 0.0, _ms(now() - t0), str(exc)[:300])
    except ExceptionGroup as group:  # the STT reader's failure, from its TaskGroup
        matched, _ = group.split(ParleyError)
        if matched is None:
            raise
        leaf: BaseException = matched
        while isinstance(leaf, BaseExceptionGroup):
            leaf = leaf.exceptions[0]
        return LiveResult(capability, provider, "failed", 0.0, _ms(now() - t0), str(leaf)[:300])
    if first is None:
        return LiveResult(capability, provider, "no result", 0.0, _ms(now() - t0), text)
    return LiveResult(capability, provider, "ok", _ms(first), _ms(now() - t0), text)


async def live_stt(provider: STTProvider, *, now: Clock, timeout_s: float = 15.0, rate: int = 8000,
                   pace: bool = True) -> LiveResult:
    """Send the 2 s utterance in 20 ms frames (at real time when ``pace``), finalize, await a final transcript."""

    async def run() -> tuple[float | None, str]:
        stream = await provider.open(sample_rate=rate)
        texts: list[str] = []
        got_final = asyncio.Event()
        first: list[float] = []
        t0 = now()

        async def read() -> None:
            async for event in stream:
                if isinstance(event, Transcript) and event.final and event.text.strip():
                    texts.append(event.text.strip())
                    if not first:
                        first.append(now() - t0)
                    got_final.set()

        try:
            async with asyncio.TaskGroup() as tg:
                reader = tg.create_task(read(), name="live-stt-reader")
                step = rate * FRAME_MS // 1000
                audio = utterance(rate)
                for i in range(0, audio.size, step):
                    await stream.send_audio(audio[i:i + step])
                    await asyncio.sleep(FRAME_MS / 1000 if pace else 0)
                await stream.finalize()
                await got_final.wait()
                reader.cancel()
        finally:
            with contextlib.suppress(ParleyError):
                await stream.close()
        return first[0], " ".join(texts)

    return await _probe("stt", provider.name, now, timeout_s, run)


async def live_llm(provider: LLMProvider, *, now: Clock, timeout_s: float = 15.0) -> LiveResult:
    async def run() -> tuple[float | None, str]:
        t0 = now()
        first: float | None = None
        parts: list[str] = []
        gen = provider.stream([Message("user", LLM_PROMPT)])
        async with contextlib.aclosing(gen):
            async for event in gen:
                if isinstance(event, TextDelta) and event.text:
                    first = now() - t0 if first is None else first
                    parts.append(event.text)
        return first, "".join(parts).strip()[:120]

    return await _probe("llm", provider.name, now, timeout_s, run)


async def live_tts(provider: TTSProvider, *, now: Clock, timeout_s: float = 15.0) -> LiveResult:
    async def run() -> tuple[float | None, str]:
        t0 = now()
        first: float | None = None
        seconds = 0.0
        gen = provider.synthesize(TTS_TEXT)
        async with contextlib.aclosing(gen):
            async for event in gen:
                if isinstance(event, AudioChunk) and event.samples.size:
                    first = now() - t0 if first is None else first
                    seconds += event.samples.size / event.sample_rate
        return first, f"{seconds:.2f} s of audio for {len(TTS_TEXT)} characters"

    return await _probe("tts", provider.name, now, timeout_s, run)


async def live_realtime(provider: RealtimeProvider, *, now: Clock, timeout_s: float = 15.0) -> LiveResult:
    """Open a session, have the model say one sentence, time its first audio, close."""

    async def run() -> tuple[float | None, str]:
        stream = await provider.open(RealtimeConfig("You are checking a phone line.", server_vad=False))
        try:
            t0 = now()
            await stream.say(TTS_TEXT)
            first: float | None = None
            seconds = 0.0
            async for event in stream:
                if isinstance(event, ModelAudio) and event.samples.size:
                    first = now() - t0 if first is None else first
                    seconds += event.samples.size / event.sample_rate
                elif isinstance(event, ResponseDone):
                    break
            return first, f"{seconds:.2f} s of audio"
        finally:
            await stream.close()

    return await _probe("realtime", provider.name, now, timeout_s, run)
