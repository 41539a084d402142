"""Silero VAD, the webrtcvad gate and FrameVad on the recorded caller audio (real models, offline, fast)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("webrtcvad")

from parley.audio.pcm import Int16Array
from parley.audio.resample import resample
from parley.errors import ConfigError
from parley.turns.vad import FrameVad, SileroModel, SileroVad, VadParams, VadResult, WebRtcGate

Framer = Callable[[Int16Array, int], list[Int16Array]]
Labeller = Callable[[Int16Array, int], npt.NDArray[np.int8]]


def _agreement(results: list[VadResult], truth: npt.NDArray[np.int8]) -> tuple[float, int, int]:
    speech = np.array([r.speech for r in results])
    scored = truth >= 0
    agree = float((speech[scored] == (truth[scored] == 1)).mean())
    return agree, int((truth == 1).sum()), int((truth == 0).sum())


@pytest.mark.parametrize("rate", [8000, 16000])
@pytest.mark.parametrize("source", ["caller_8k", "ws_rx_16k"])
def test_frame_vad_agrees_with_energy_truth(
    source: str, rate: int, silero: SileroModel, framer: Framer, labels: Labeller, request: pytest.FixtureRequest
) -> None:
    audio: Int16Array = request.getfixturevalue(source)
    native = 8000 if source == "caller_8k" else 16000
    if source == "caller_8k":  # its pauses are short: add 1 s of an idle phone line (-60 dBFS noise) each side
        line = np.random.default_rng(7).normal(0.0, 32768 * 10 ** (-60 / 20), 8000)
        pad = np.round(line).astype(np.int16)
        audio = np.concatenate([pad, audio, pad])
    audio = resample(audio, native, rate)
    vad = FrameVad.create(silero, rate)
    results = [vad.process(f) for f in framer(audio, rate)]
    agree, n_speech, n_silence = _agreement(results, labels(audio, rate))
    assert n_speech > 150 and n_silence > 40  # the ground truth has enough of both
    print(f"{source}@{rate}: agreement {agree:.3f} on {n_speech} speech + {n_silence} silent frames")
    assert agree > 0.85, f"{source}@{rate}: agreement {agree:.3f}"
    assert all(0.0 <= r.prob <= 1.0 for r in results)


def test_gate_skips_silence_without_losing_accuracy(
    silero: SileroModel, ws_rx_16k: Int16Array, framer: Framer, labels: Labeller
) -> None:
    frames = framer(ws_rx_16k, 16000)
    truth = labels(ws_rx_16k, 16000)
    gated = FrameVad.create(silero, 16000)
    plain = FrameVad.create(silero, 16000, VadParams(skip_below_dbfs=None))
    a = [gated.process(f) for f in frames]
    b = [plain.process(f) for f in frames]
    assert gated.skipped > 50 and plain.skipped == 0
    assert gated.silero.windows_run < plain.silero.windows_run
    # Decisions differ only around transitions (a skip restarts the window phase), never on clear frames.
    assert _agreement(a, truth)[0] >= _agreement(b, truth)[0] - 0.01
    assert np.mean([x.speech == y.speech for x, y in zip(a, b, strict=True)]) > 0.9


def test_silero_takes_any_frame_size(silero: SileroModel, caller_8k: Int16Array) -> None:
    whole = SileroVad(silero, 8000)
    p_whole = whole.process(caller_8k)
    chunked = SileroVad(silero, 8000)
    for i in range(0, caller_8k.size, 97):
        p_chunked = chunked.process(caller_8k[i : i + 97])
    assert chunked.windows_run == whole.windows_run == caller_8k.size // 256
    assert p_chunked == pytest.approx(p_whole, abs=1e-6)
    assert chunked.resets == whole.resets


def test_silero_reset_forgets_the_call(silero: SileroModel, caller_8k: Int16Array) -> None:
    vad = SileroVad(silero, 8000)
    speech = caller_8k[:8000]
    first = vad.process(speech)
    assert vad.prob == first
    vad.reset()
    assert vad.prob == 0.0
    assert vad.process(speech) == pytest.approx(first, abs=1e-6)


def test_silero_scores_speech_high_and_silence_low(silero: SileroModel, caller_8k: Int16Array) -> None:
    vad = SileroVad(silero, 16000)
    audio = resample(caller_8k, 8000, 16000)
    assert vad.process(audio[:16000]) > 0.5  # inside the first phrase
    assert vad.process(np.zeros(16000, dtype=np.int16)) < 0.1


def test_webrtc_gate(caller_8k: Int16Array) -> None:
    gate = WebRtcGate(8000, mode=2)
    assert gate.is_speech(caller_8k[1600:1760])  # 0.2 s: loud speech
    assert not WebRtcGate(8000).is_speech(np.zeros(160, dtype=np.int16))  # a fresh gate: no hangover
    with pytest.raises(ValueError, match="10, 20 or 30 ms"):
        gate.is_speech(np.zeros(100, dtype=np.int16))


def test_frame_vad_hysteresis(silero: SileroModel) -> None:
    class Fixed(SileroVad):
        def __init__(self, probs: list[float]) -> None:
            super().__init__(silero, 16000)
            self._probs = iter(probs)

        def process(self, frame: Int16Array) -> float:
            return next(self._probs)

    probs = [0.1, 0.49, 0.5, 0.4, 0.36, 0.34, 0.45, 0.6]
    vad = FrameVad(Fixed(probs))
    got = [vad.process(np.zeros(320, dtype=np.int16)).speech for _ in probs]
    assert got == [False, False, True, True, True, False, False, True]


@pytest.mark.parametrize(
    "bad", [lambda m: SileroVad(m, 44100), lambda m: WebRtcGate(11025), lambda m: WebRtcGate(8000, 4)]
)
def test_bad_rates_and_modes(silero: SileroModel, bad: Callable[[SileroModel], object]) -> None:
    with pytest.raises(ConfigError):
        bad(silero)


def test_vad_params_validated() -> None:
    with pytest.raises(ConfigError):
        VadParams(start=0.3, stop=0.5)
