"""smart-turn v3.2 through our wrapper: input preparation exactly as pipecat does it, and a real run."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("webrtcvad")

from parley.audio.pcm import Int16Array
from parley.turns.smart_turn import WINDOW_SAMPLES, SmartTurnModel, last_window, to_model_rate

PHRASE_END_S = 10.84  # caller_shared.wav: the last phrase ends here (digital silence follows)


def test_short_clip_is_left_padded_and_long_clip_keeps_the_end() -> None:
    short = np.arange(1, 1001, dtype=np.float32)
    w = last_window(short)
    assert w.shape == (WINDOW_SAMPLES,) and w.dtype == np.float32
    assert not w[:-1000].any() and (w[-1000:] == short).all()
    long = np.arange(WINDOW_SAMPLES + 500, dtype=np.float32)
    assert (last_window(long) == long[-WINDOW_SAMPLES:]).all()


def test_to_model_rate_scales_int16_and_resamples_8k() -> None:
    x = np.full(8000, 16384, dtype=np.int16)
    y = to_model_rate(x, 8000)
    assert y.dtype == np.float32 and y.size == 16000
    assert float(np.median(y)) == pytest.approx(0.5, abs=1e-3)
    assert to_model_rate(x.astype(np.float32) / 32768, 16000).size == 8000
    with pytest.raises(ValueError):
        to_model_rate(np.zeros((2, 10), dtype=np.int16), 16000)


def test_features_shape(smart_turn: SmartTurnModel, caller_8k: Int16Array) -> None:
    f = smart_turn.features(caller_8k[:16000], 8000)
    assert f.shape == (1, 80, 800) and f.dtype == np.float32 and np.isfinite(f).all()


@pytest.mark.parametrize(("label", "end_s"), [("complete", PHRASE_END_S + 0.2), ("cut mid-word", 1.2)])
def test_predict_returns_a_probability(
    smart_turn: SmartTurnModel, caller_8k: Int16Array, label: str, end_s: float
) -> None:
    clip = caller_8k[: int(end_s * 8000)]
    p = smart_turn.predict(clip, 8000)
    assert 0.0 <= p <= 1.0, label
    assert smart_turn.predict(clip, 8000) == p  # deterministic
    assert smart_turn.predict(to_model_rate(clip, 8000)) == pytest.approx(p, abs=1e-6)  # 8k path == helper


def test_predict_on_silence_and_empty_audio(smart_turn: SmartTurnModel) -> None:
    assert 0.0 <= smart_turn.predict(np.zeros(0, dtype=np.int16)) <= 1.0
    assert 0.0 <= smart_turn.predict(np.zeros(16000, dtype=np.float32)) <= 1.0
