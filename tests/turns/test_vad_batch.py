"""Silero windows of many calls in one ONNX run: same results as one run per window, fewer runs."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("webrtcvad")

from parley.audio.pcm import Int16Array
from parley.audio.resample import resample
from parley.turns.vad import FrameVad, SileroModel, SileroVad, VadResult
from parley.turns.vad_batch import SileroBatcher


def _calls(caller_8k: Int16Array, n: int, rate: int) -> list[Int16Array]:
    """n different caller streams: the recording at different offsets and gains."""
    audio = caller_8k if rate == 8000 else resample(caller_8k, 8000, 16000)
    out = []
    for i in range(n):
        shifted = np.roll(audio, i * rate // 7)
        out.append((shifted.astype(np.float32) * (0.4 + 0.15 * i)).clip(-32768, 32767).astype(np.int16))
    return out


@pytest.mark.parametrize("rate", [8000, 16000])
async def test_batched_calls_get_exactly_the_results_of_one_run_per_window(
    silero: SileroModel, caller_8k: Int16Array, rate: int
) -> None:
    calls = _calls(caller_8k, 6, rate)
    frame = rate // 50
    expected: list[list[VadResult]] = []
    for audio in calls:
        vad = FrameVad.create(silero, rate)
        expected.append([vad.process(audio[i : i + frame]) for i in range(0, audio.size - frame + 1, frame)])
    batcher = SileroBatcher(silero)
    model = SileroModel(silero.session)
    model._batcher = batcher

    async def one_call(audio: Int16Array) -> list[VadResult]:
        vad = FrameVad.create(model, rate)
        out = []
        for i in range(0, audio.size - frame + 1, frame):
            out.append(await vad.aprocess(audio[i : i + frame]))
            await asyncio.sleep(0)  # frames of all calls interleave, as on a live server
        return out

    got = await asyncio.gather(*(one_call(a) for a in calls))
    assert got == expected  # bit-identical probabilities and decisions, frame by frame
    assert batcher.windows > 0
    assert batcher.runs < batcher.windows / 2  # windows of several calls shared each run


async def test_a_cancelled_call_does_not_disturb_the_others(silero: SileroModel, caller_8k: Int16Array) -> None:
    batcher = SileroBatcher(silero)
    window = caller_8k[8000 : 8000 + 256].astype(np.float32)[None, :] / 32768.0
    x = np.concatenate([np.zeros((1, 32), np.float32), window], axis=1)
    state = np.zeros((2, 1, 128), np.float32)
    alone = silero.infer(x, state, 8000)
    doomed = asyncio.ensure_future(batcher.infer(x, state, 8000))
    kept = asyncio.ensure_future(batcher.infer(x, state, 8000))
    await asyncio.sleep(0)
    doomed.cancel()
    prob, state_n = await kept
    assert prob == alone[0] and np.array_equal(state_n, alone[1])
    assert batcher.windows == 1  # the cancelled window was not scored


async def test_a_model_error_reaches_every_waiting_call(silero: SileroModel) -> None:
    batcher = SileroBatcher(silero)
    bad = np.zeros((1, 7), np.float32)  # not a window the model accepts
    state = np.zeros((2, 1, 128), np.float32)
    results = await asyncio.gather(*(batcher.infer(bad, state, 8000) for _ in range(3)), return_exceptions=True)
    assert all(isinstance(r, Exception) for r in results)
    ok = np.zeros((1, 288), np.float32)
    prob, _ = await batcher.infer(ok, state, 8000)  # and the batcher keeps working
    assert 0.0 <= prob <= 1.0


def test_one_model_serves_several_event_loops(silero: SileroModel) -> None:
    """A process-wide model is shared by loops that come and go (tests, a restarted server)."""
    model = SileroModel(silero.session)
    vad_frames = np.zeros(160, np.int16)

    async def run() -> float:
        vad = SileroVad(model, 8000)
        return await vad.aprocess(np.concatenate([vad_frames, vad_frames]))

    assert asyncio.run(run()) == asyncio.run(run())
    assert model.batcher.runs == 2
