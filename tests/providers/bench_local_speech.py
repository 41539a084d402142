"""Benchmark of the local speech providers on this machine. Prints figures; asserts nothing.

    .venv/bin/python tests/providers/bench_local_speech.py [--quick]

Whisper latency per utterance length for cpu_threads 1 vs 2 and encoder window 10 s vs faster-whisper's
standard 30 s (also with hibari synthesizing in a background thread, as during a call with two
parties), speculative-hit latency (finalize() to Transcript), hibari / piper time to first audio and
RTF, espeak-ng time to first audio. Test speech is hibari's, sent through the phone path
(24 kHz -> 8 kHz -> 16 kHz), so it is synthetic: real callers are harder.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import threading
import time
from collections.abc import Callable
from functools import partial

import numpy as np

from parley.audio.pcm import Int16Array
from parley.audio.resample import resample
from parley.providers.base import AudioChunk, Transcript, TTSProvider
from parley.providers.espeak_tts import EspeakTTS
from parley.providers.hibari_tts import HibariModel, HibariTTS
from parley.providers.piper_tts import PiperModel, PiperTTS, piper_available
from parley.providers.whisper_stt import WhisperModelPool, WhisperSTT

UTTERANCES = {
    "1 s": "Yes, please.",
    "2.5 s": "Your appointment is confirmed for Tuesday.",
    "5 s": "I would like to book a cleaning appointment for next Thursday afternoon, please.",
}
PARAGRAPH = (
    "Thank you for calling Riverside Dental. Our office is open Monday to Friday from eight in the morning "
    "until six in the evening, and on Saturday from nine until one. We are at four hundred Main Street, next "
    "to the pharmacy, and there is free parking behind the building. How can I help you today?"
)
RUNS = 5


def median_ms(fn: Callable[[], object], runs: int = RUNS) -> tuple[float, object]:
    times, out = [], None
    for _ in range(runs):
        start = time.perf_counter()
        out = fn()
        times.append(1000.0 * (time.perf_counter() - start))
    return statistics.median(times), out


def phone_audio(hibari: HibariModel) -> dict[str, Int16Array]:
    """Each utterance as the agent hears it: 8 kHz phone audio (hibari 24 kHz -> 8 kHz)."""
    out = {}
    for label, text in UTTERANCES.items():
        pieces = [a for _, a in hibari.pieces(text, speed=1.0, seed=1)]
        audio = np.round(np.clip(np.concatenate(pieces), -1, 1) * 32767).astype(np.int16)
        out[label] = resample(audio, 24_000, 8_000)
    return out


def bench_whisper(audio8k: dict[str, Int16Array], hibari: HibariModel) -> None:
    print(f"\n== whisper tiny.en: decode latency (median of {RUNS}), 8 kHz phone audio upsampled to 16 kHz")
    print(
        f"{'threads':>7} {'window':>7} {'load':>5}  "
        + "  ".join(f"{k + ' (' + f'{v.size / 8000:.1f}s)':>14}" for k, v in audio8k.items())
    )
    audio16k = {k: resample(v, 8_000, 16_000) for k, v in audio8k.items()}
    texts: dict[tuple[int, float | None], list[str]] = {}
    for threads in (1, 2):
        for window in (10.0, None):
            start = time.perf_counter()
            pool = WhisperModelPool.load(cpu_threads=threads, window_s=window)
            load_s = time.perf_counter() - start
            cells, row_texts = [], []
            for audio in audio16k.values():
                ms, dec = median_ms(partial(pool.decode_blocking, audio))
                cells.append(f"{ms:10.0f} ms")
                row_texts.append(getattr(dec, "text", ""))
            texts[(threads, window)] = row_texts
            print(
                f"{threads:>7} {('10 s' if window else '30 s'):>7} {load_s:4.1f}s  "
                + "  ".join(f"{c:>14}" for c in cells)
            )
            pool.close()
    for (threads, window), row in texts.items():
        if threads == 1:
            print(f"   texts, {'10 s' if window else '30 s'} window: {row}")

    print("\n== whisper while hibari synthesizes continuously in another thread (contended 2-core box)")
    stop = threading.Event()

    def hog() -> None:
        while not stop.is_set():
            for _ in hibari.pieces(PARAGRAPH, speed=1.0, seed=0):
                if stop.is_set():
                    break

    worker = threading.Thread(target=hog, daemon=True)
    worker.start()
    try:
        for threads in (1, 2):
            pool = WhisperModelPool.load(cpu_threads=threads, window_s=10.0)
            cells = [f"{median_ms(partial(pool.decode_blocking, a))[0]:10.0f} ms" for a in audio16k.values()]
            print(f"{threads:>7} {'10 s':>7}        " + "  ".join(f"{c:>14}" for c in cells))
            pool.close()
    finally:
        stop.set()
        worker.join()


async def bench_speculation(audio8k: Int16Array) -> None:
    seconds = audio8k.size / 8000
    print(
        f"\n== speculative decode: finalize() -> Transcript (utterance {seconds:.1f} s, 8 kHz, 1 thread, 10 s window)"
    )
    pool = WhisperModelPool.load(cpu_threads=1, window_s=10.0)
    stt = WhisperSTT(pool)
    for label, gap_s, hint in (
        ("no pause_hint", 0.0, False),
        ("hint, finalize at once", 0.0, True),
        ("hint, finalize after 150 ms", 0.15, True),
        ("hint, finalize after 400 ms", 0.4, True),
    ):
        latencies = []
        for _ in range(RUNS):
            stream = await stt.open(sample_rate=8_000)
            for i in range(0, audio8k.size, 160):
                await stream.send_audio(audio8k[i : i + 160])
            if hint:
                stream.pause_hint()
            for _ in range(int(gap_s / 0.02)):  # silence frames in real time, as a call sends them
                await stream.send_audio(np.zeros(160, dtype=np.int16))
                await asyncio.sleep(0.02)
            start = time.perf_counter()
            await stream.finalize()
            async for event in stream:
                if isinstance(event, Transcript):
                    latencies.append(1000.0 * (time.perf_counter() - start))
                    break
            await stream.close()
        print(
            f"   {label:30s} median {statistics.median(latencies):6.0f} ms   (stats {stt.stats.speculative_hits} hits)"
        )
    pool.close()


async def first_audio(tts: TTSProvider, text: str) -> tuple[float, float, float]:
    """(time to first audio ms, total ms, audio seconds)."""
    start = time.perf_counter()
    first, seconds = 0.0, 0.0
    async for event in tts.synthesize(text):
        if isinstance(event, AudioChunk):
            if not first:
                first = 1000.0 * (time.perf_counter() - start)
            seconds += event.samples.size / event.sample_rate
    return first, 1000.0 * (time.perf_counter() - start), seconds


async def bench_tts() -> None:
    short = "Your appointment is confirmed for Tuesday at nine."
    print(f"\n== TTS: time to first audio (short sentence, median of {RUNS}) and RTF ({len(PARAGRAPH)}-char paragraph)")
    engines: list[tuple[str, Callable[[int], tuple[TTSProvider, Callable[[], None]]]]] = []

    def hibari(threads: int) -> tuple[TTSProvider, Callable[[], None]]:
        model = HibariModel.load(threads=threads)
        return HibariTTS(model), model.close

    engines.append(("hibari heart", hibari))
    if piper_available():

        def piper(threads: int) -> tuple[TTSProvider, Callable[[], None]]:
            model = PiperModel.load(threads=threads)
            return PiperTTS(model), model.close

        engines.append(("piper joe", piper))
    else:
        print("   (piper-tts not installed: skipped)")
    for name, make in engines:
        for threads in (1, 2):
            tts, close = make(threads)
            ttfa = statistics.median([(await first_audio(tts, short))[0] for _ in range(RUNS)])
            _, total_ms, secs = await first_audio(tts, PARAGRAPH)
            print(
                f"   {name:13s} {threads} thr: first audio {ttfa:6.1f} ms   paragraph {secs:5.1f} s audio in "
                f"{total_ms:6.0f} ms: RTF {total_ms / 1000 / secs:.4f} ({secs * 1000 / total_ms:.0f}x realtime)"
            )
            close()
    espeak = EspeakTTS()
    ttfa = statistics.median([(await first_audio(espeak, short))[0] for _ in range(RUNS)])
    _, total_ms, secs = await first_audio(espeak, PARAGRAPH)
    print(
        f"   {'espeak-ng':13s} proc : first audio {ttfa:6.1f} ms   paragraph {secs:5.1f} s audio in "
        f"{total_ms:6.0f} ms: RTF {total_ms / 1000 / secs:.4f} (process spawn included)"
    )


async def main() -> None:
    global RUNS
    if "--quick" in sys.argv:
        RUNS = 2
    hibari = HibariModel.load(threads=1)
    audio8k = phone_audio(hibari)
    bench_whisper(audio8k, hibari)
    await bench_speculation(audio8k["2.5 s"])
    await bench_tts()
    hibari.close()


if __name__ == "__main__":
    asyncio.run(main())
