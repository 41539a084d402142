"""Benchmark: CPU per 20 ms caller frame for the VAD stages, and per smart-turn decision.

Run: ``.venv/bin/python tests/turns/bench_vad.py``. Prints, never asserts (timings depend on the box).
Single-threaded onnxruntime sessions, as a call uses them. The recorded calls are the shared FreeSWITCH
fixtures: a speech-heavy caller (call-playback-plain) and a mostly silent one (timing: the caller listens).
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from parley.audio.pcm import Int16Array, from_bytes
from parley.audio.resample import resample
from parley.turns.smart_turn import SmartTurnModel
from parley.turns.vad import FrameVad, SileroModel, SileroVad, VadParams, WebRtcGate

FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "freeswitch"


def load(name: str) -> Int16Array:
    return from_bytes((FIXTURES / name).read_bytes()[44:])


def frames_of(audio: Int16Array, rate: int) -> list[Int16Array]:
    n = rate // 50
    return [audio[i : i + n] for i in range(0, audio.size - n + 1, n)]


def per_frame_us(
    frames: list[Int16Array], rate: int, make: Callable[[int], Callable[[Int16Array], object]], repeats: int = 3
) -> float:
    """Best of ``repeats`` passes, each with a fresh per-call state from ``make``."""
    best = float("inf")
    for _ in range(repeats):
        fn = make(rate)
        t0 = time.perf_counter()
        for f in frames:
            fn(f)
        best = min(best, (time.perf_counter() - t0) / len(frames) * 1e6)
    return best


def bench_vad(silero: SileroModel) -> None:
    calls = {"speech-heavy": load("call-playback-plain.ws-rx.wav"), "mostly silent": load("timing.ws-rx.wav")}
    print("VAD, µs per 20 ms frame (best of 3 passes)")
    print(f"{'call':14s} {'rate':>5s} {'webrtc':>7s} {'silero':>7s} {'FrameVad':>9s} {'no gate':>8s} {'skipped':>8s}")
    for name, audio16 in calls.items():
        for rate in (8000, 16000):
            audio = audio16 if rate == 16000 else resample(audio16, 16000, 8000)
            frames = frames_of(audio, rate)
            webrtc = per_frame_us(frames, rate, lambda r: WebRtcGate(r).is_speech)
            sil = per_frame_us(frames, rate, lambda r: SileroVad(silero, r).process)
            plain = per_frame_us(
                frames, rate, lambda r: FrameVad.create(silero, r, VadParams(skip_below_dbfs=None)).process
            )
            gated = per_frame_us(frames, rate, lambda r: FrameVad.create(silero, r).process)
            counter = FrameVad.create(silero, rate)
            for f in frames:
                counter.process(f)
            skipped = counter.skipped / len(frames)
            print(f"{name:14s} {rate:5d} {webrtc:7.1f} {sil:7.1f} {gated:9.1f} {plain:8.1f} {skipped:8.0%}")


def bench_smart_turn() -> None:
    t0 = time.perf_counter()
    model = SmartTurnModel.load()
    load_s = time.perf_counter() - t0
    audio = load("call-playback-plain.ws-rx.wav")
    clips = {"3 s @16k": (audio[: 3 * 16000], 16000), "8 s @16k": (audio[: 8 * 16000], 16000)}
    clips["3 s @8k"] = (resample(audio[: 3 * 16000], 16000, 8000), 8000)
    blas = os.environ.get("OPENBLAS_NUM_THREADS", "default")
    print(f"\nsmart-turn v3.2: load {load_s * 1000:.0f} ms; ms per decision (median of 7, 1 ORT thread, BLAS {blas})")
    for name, (clip, rate) in clips.items():
        model.predict(clip, rate)  # warm-up
        runs = []
        for _ in range(7):
            t0 = time.perf_counter()
            model.predict(clip, rate)
            runs.append((time.perf_counter() - t0) * 1000)
        feats = []
        for _ in range(7):
            t0 = time.perf_counter()
            model.features(clip, rate)
            feats.append((time.perf_counter() - t0) * 1000)
        print(f"  {name:9s} {statistics.median(runs):6.1f} ms (features alone {statistics.median(feats):5.1f} ms)")


def main() -> None:
    t0 = time.perf_counter()
    silero = SileroModel.load()
    print(f"Silero load {(time.perf_counter() - t0) * 1000:.0f} ms")
    bench_vad(silero)
    bench_smart_turn()


if __name__ == "__main__":
    main()
