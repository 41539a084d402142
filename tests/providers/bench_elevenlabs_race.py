"""The ElevenLabs close race (pipecat#4681) injected at a rate into the loopback fake. Prints figures; asserts nothing.

    PYTHONPATH=tests .venv/bin/python tests/providers/bench_elevenlabs_race.py [N] [RATE]

Runs N sentences (default 1,000) with the race at RATE (default 5 %) twice: closing each context at once
after its flush (``close_grace_s=0``: the wire traffic parley sent before the fix), and closing it only after
the first audio (the default). A sentence is *silent* when synthesize() ends without error and without
audio; *failed* when it raises (the fallback chain would take it); races are the fake's own count.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time

from parley.providers.base import AudioChunk
from parley.providers.elevenlabs_tts import ElevenLabsTTS
from parley.providers.errors import ProviderError
from testkit.fakes.elevenlabs import FakeElevenLabs

KEY = "xi-bench-key-0123456789"


async def run(n: int, rate: float, close_grace_s: float) -> str:
    silent = failed = 0
    codes: dict[str, int] = {}
    started = time.perf_counter()
    async with FakeElevenLabs(api_key=KEY, close_race_rate=rate, first_audio_delay_s=0.001, seconds_per_char=0.001) as fake:
        tts = ElevenLabsTTS(KEY, "voice-1", url_base=fake.url_base, read_timeout_s=0.25, close_grace_s=close_grace_s)
        async with tts:
            for i in range(n):
                audio = 0
                try:
                    gen = tts.synthesize(f"Sentence {i} of the benchmark reply. ")
                    async with contextlib.aclosing(gen):
                        async for ev in gen:
                            if isinstance(ev, AudioChunk):
                                audio += len(ev.samples)
                except ProviderError as exc:
                    failed += 1
                    codes[exc.code or type(exc).__name__] = codes.get(exc.code or type(exc).__name__, 0) + 1
                    continue
                silent += audio == 0
        races = len(fake.races)
    took = time.perf_counter() - started
    return (f"close_grace_s={close_grace_s:g}: {n} sentences, race {rate:.0%}: races {races}, silent {silent}, "
            f"failed {failed} {codes or ''} ({took:.1f} s)")


async def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    rate = float(sys.argv[2]) if len(sys.argv) > 2 else 0.05
    print(await run(n, rate, 0.0))  # close at once (before the fix)
    print(await run(n, rate, 0.5))  # close after the first audio (the default)


if __name__ == "__main__":
    asyncio.run(main())
