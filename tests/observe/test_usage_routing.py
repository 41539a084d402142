"""Usage of a request cancelled by a barge-in reaches the call that cancelled it, not another call."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator

import numpy as np

from parley.observe import usage
from parley.providers.base import AudioChunk, TTSEvent, Usage


async def shared_provider(text: str) -> AsyncGenerator[TTSEvent, None]:
    """Shaped like the real TTS providers: on early close, Usage goes to on_cancel (= usage.report)."""
    finished = False
    try:
        for _ in range(10):
            yield AudioChunk(np.zeros(160, np.int16), 8000, text)
            await asyncio.sleep(0)
        finished = True
    finally:
        if not finished:
            usage.report(Usage("vendor", "m", "tts", characters=len(text), cancelled=True))
    yield Usage("vendor", "m", "tts", characters=len(text))


async def call(name: str, sink: list[Usage], cut_after: int) -> None:
    usage.CURRENT.set(sink.append)
    gen = shared_provider(name)
    async with contextlib.aclosing(gen):
        n = 0
        async for ev in gen:
            if isinstance(ev, Usage):
                sink.append(ev)
            n += 1
            if n == cut_after:
                break  # barge-in


async def test_cancelled_usage_lands_on_the_right_call() -> None:
    a: list[Usage] = []
    b: list[Usage] = []
    await asyncio.gather(call("call-a", a, cut_after=3), call("call-bb", b, cut_after=99))
    assert [(u.characters, u.cancelled) for u in a] == [(6, True)]
    assert [(u.characters, u.cancelled) for u in b] == [(7, False)]
