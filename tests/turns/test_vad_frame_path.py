"""The VAD's per-frame shortcuts give exactly what the plain computation gives: a skipped frame's context is
written only when the model runs next, and the gate compares a sum of squares instead of a dBFS level."""

from __future__ import annotations

import numpy as np
import pytest

from parley.audio.pcm import Int16Array, rms_dbfs
from parley.turns.vad import FrameVad, SileroModel, SileroVad, VadParams


class EagerSkip(SileroVad):
    """The skip as it was: the frame's tail written into the context at once."""

    def skip(self, frame: Int16Array) -> float:
        self._fill = 0
        ctx = self.context
        tail = frame[-ctx:].astype(np.float32) * np.float32(1.0 / 32768.0)
        self._buf[0, :ctx] = 0.0
        self._buf[0, ctx - tail.size : ctx] = tail
        self._prob = 0.0
        self._account(frame.size, low=True)
        return 0.0


@pytest.mark.parametrize("rate", [8000, 16000])
def test_deferred_skip_scores_like_the_eager_one(silero: SileroModel, caller_8k: Int16Array, rate: int) -> None:
    audio = np.resize(caller_8k, rate * 6)
    n = rate // 50
    frames = [audio[i : i + n] for i in range(0, audio.size - n + 1, n)]
    pattern = np.random.default_rng(7).random(len(frames)) < 0.6  # skip 60 % of frames, in runs and alone
    lazy, eager = SileroVad(silero, rate), EagerSkip(silero, rate)
    for frame, skip in zip(frames, pattern, strict=True):
        buf = frame.copy()
        got = lazy.skip(buf) if skip else lazy.process(buf)
        buf[:] = 12345  # the caller reuses its buffer: the deferred context must not see it
        want = eager.skip(frame) if skip else eager.process(frame)
        assert got == want
    assert lazy.resets == eager.resets and lazy.windows_run == eager.windows_run > 0


def test_gate_level_test_matches_rms_dbfs(silero: SileroModel) -> None:
    rng = np.random.default_rng(3)
    for limit in (-50.0, -30.0, -119.0, -120.0, -130.0):
        vad = FrameVad.create(silero, 16000, VadParams(skip_below_dbfs=limit))
        for level in (0.0, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0):
            frame = np.rint(rng.normal(0.0, level, 320)).astype(np.int16)
            quiet = vad._gate_says_silence(frame)
            assert vad.gate is not None
            assert quiet == (rms_dbfs(frame) < limit and not vad.gate.is_speech(frame)), (limit, level)
