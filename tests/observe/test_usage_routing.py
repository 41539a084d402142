"""Usage of a request cancelled by a barge-in reaches the call that cancelled it, not another call.

One real shared voice (espeak-ng, a process per request), two calls each with the stream it opened: the
routing is the sink each call opened its stream with, so nothing ambient can cross calls."""

from __future__ import annotations

import asyncio
import contextlib

from parley.providers.base import AudioChunk, TTSProvider, Usage
from parley.providers.espeak_tts import EspeakTTS

TEXT = "This sentence is long enough to come back in more than one piece of audio."


async def call(voice: TTSProvider, sink: list[Usage], cut_after: int | None) -> None:
    stream = await voice.open(sink.append)
    gen = stream.synthesize(TEXT)
    async with contextlib.aclosing(gen):
        chunks = 0
        async for ev in gen:
            if isinstance(ev, Usage):
                sink.append(ev)
            elif isinstance(ev, AudioChunk):
                chunks += 1
                if chunks == cut_after:
                    break  # barge-in: the generator is closed and can yield nothing more
    await stream.close()


async def test_cancelled_usage_lands_on_the_call_that_cancelled() -> None:
    voice = EspeakTTS()
    cut: list[Usage] = []
    whole: list[Usage] = []
    await asyncio.gather(call(voice, cut, cut_after=1), call(voice, whole, cut_after=None))
    assert [(u.characters, u.cancelled) for u in cut] == [(len(TEXT), True)]
    assert [(u.characters, u.cancelled) for u in whole] == [(len(TEXT), False)]
