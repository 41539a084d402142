"""Acoustic end-of-turn probability: smart-turn v3.2 (ONNX, BSD-2) on the caller's last 8 seconds.

Owns: preparing a turn's audio exactly as pipecat's ``LocalSmartTurnAnalyzerV3`` does (16 kHz float32,
keep the last 8 s, left-pad shorter clips with zeros, Whisper log-mel features ``[1, 80, 800]`` with
zero-mean/unit-variance normalisation) and running the model: input ``input_features``, output a
sigmoid probability ``[1, 1]`` that the turn is complete. Pure, blocking computation (~0.1 s per decision
on one core): the engine runs ``predict`` in a worker thread after the turn machine asks with
``ScoreTurn``. No asyncio, no clock. Must not know about VAD, timers or thresholds.

Measured on the 2-core dev box: ~50 ms per decision with ``OPENBLAS_NUM_THREADS=1``, but ~105-120 ms with
numpy's default BLAS threads on a busy box (the mel projection's BLAS threads spin after the matmul and
steal the core the ONNX run needs). Set ``OPENBLAS_NUM_THREADS=1`` in the service environment.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import soxr

from parley.audio.pcm import Float32Array, Int16Array
from parley.errors import ConfigError
from parley.turns.assets import SMART_TURN_RELPATH, LogMelFn, load_log_mel_features, pipecat_file
from parley.turns.onnx import OnnxSession

MODEL_RATE = 16000
WINDOW_S = 8
WINDOW_SAMPLES = MODEL_RATE * WINDOW_S  # 128000

AudioArray = Int16Array | Float32Array | npt.NDArray[np.float64]


def to_model_rate(audio: AudioArray, sample_rate: int) -> Float32Array:
    """Mono int16 or float audio at ``sample_rate`` -> float32 in [-1, 1) at 16 kHz (soxr HQ, as pipecat).

    Phone audio is 8 kHz G.711; the model was trained at 16 kHz, so 8 kHz input is resampled first.
    """
    if audio.ndim != 1:
        raise ValueError(f"expected mono 1-D audio, got shape {audio.shape}")
    if np.issubdtype(audio.dtype, np.integer):
        x = audio.astype(np.float32) * np.float32(1.0 / 32768.0)
    else:
        x = audio.astype(np.float32, copy=False)
    if sample_rate == MODEL_RATE or x.size == 0:
        return x
    if sample_rate <= 0:
        raise ValueError(f"bad sample rate {sample_rate}")
    return np.asarray(soxr.resample(x, sample_rate, MODEL_RATE, quality="HQ"), dtype=np.float32)


def last_window(audio_16k: Float32Array) -> Float32Array:
    """The last 8 s, or the whole clip left-padded with zeros to 8 s (speech ends at the right edge)."""
    if audio_16k.size >= WINDOW_SAMPLES:
        return audio_16k[-WINDOW_SAMPLES:]
    out = np.zeros(WINDOW_SAMPLES, dtype=np.float32)
    if audio_16k.size:
        out[-audio_16k.size :] = audio_16k
    return out


class SmartTurnModel:
    """The smart-turn session plus its feature code. Share one per process; ``predict`` is thread-safe."""

    def __init__(self, session: OnnxSession, features: LogMelFn) -> None:
        self.session = session
        self._features = features

    @classmethod
    def load(cls, path: Path | None = None, *, threads: int = 1) -> SmartTurnModel:
        session = OnnxSession.load(path or pipecat_file(SMART_TURN_RELPATH), threads=threads)
        if session.input_names != ["input_features"]:
            raise ConfigError(f"{session.path} is not a smart-turn v3 model (inputs {session.input_names})")
        return cls(session, load_log_mel_features())

    def features(self, audio: AudioArray, sample_rate: int = MODEL_RATE) -> Float32Array:
        """The model input ``[1, 80, 800]`` for a turn's audio (any length; only the last 8 s count)."""
        window = last_window(to_model_rate(audio, sample_rate))
        log_mel = self._features(window, do_normalize=True)
        return np.asarray(log_mel, dtype=np.float32)[np.newaxis, :, :]

    def predict(self, audio: AudioArray, sample_rate: int = MODEL_RATE) -> float:
        """P(the caller has finished their turn) for audio that ends where the caller went quiet."""
        (out,) = self.session.run({"input_features": self.features(audio, sample_rate)})
        return float(np.clip(out.reshape(-1)[0], 0.0, 1.0))
