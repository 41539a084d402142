"""Shared fixtures for the turn tests: the two bundled models (loaded once) and the recorded caller audio.

The model tests skip when onnxruntime/webrtcvad are not installed (they are not core dependencies);
the turn-machine tests need neither.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import pytest

from parley.audio.pcm import Int16Array, from_bytes, rms_dbfs
from parley.audio.wav import read_wav

if TYPE_CHECKING:
    from parley.turns.smart_turn import SmartTurnModel
    from parley.turns.vad import SileroModel

FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "freeswitch"
CALLER_8K = FIXTURES / "media" / "caller_shared.wav"  # espeak, 8 kHz, 11.2 s, digital silence between phrases
WS_RX_16K = FIXTURES / "call-playback-plain.ws-rx.wav"  # what mod_audio_stream sent us: s16le 16 kHz after 44 bytes

Labeller = Callable[[Int16Array, int], npt.NDArray[np.int8]]


@pytest.fixture(scope="session")
def silero() -> SileroModel:
    pytest.importorskip("onnxruntime")
    from parley.turns.vad import SileroModel

    return SileroModel.load()


@pytest.fixture(scope="session")
def smart_turn() -> SmartTurnModel:
    pytest.importorskip("onnxruntime")
    from parley.turns.smart_turn import SmartTurnModel

    return SmartTurnModel.load()


@pytest.fixture(scope="session")
def caller_8k() -> Int16Array:
    if not CALLER_8K.is_file():
        pytest.skip("shared fixtures not present")
    samples, rate = read_wav(CALLER_8K)
    assert rate == 8000
    return samples


@pytest.fixture(scope="session")
def ws_rx_16k() -> Int16Array:
    if not WS_RX_16K.is_file():
        pytest.skip("shared fixtures not present")
    return from_bytes(WS_RX_16K.read_bytes()[44:])


def frames_of(samples: Int16Array, rate: int) -> list[Int16Array]:
    n = rate // 50
    return [samples[i : i + n] for i in range(0, samples.size - n + 1, n)]


def energy_labels(samples: Int16Array, rate: int, *, loud: float = -35.0, quiet: float = -55.0) -> npt.NDArray[np.int8]:
    """Per 20 ms frame: 1 = clearly speech (louder than ``loud``), 0 = clearly silent (every frame within
    200 ms quieter than ``quiet``, so VAD onset/offset lag is not scored), -1 = not scored."""
    levels = np.array([rms_dbfs(f) for f in frames_of(samples, rate)])
    labels = np.full(levels.size, -1, dtype=np.int8)
    guard = 10
    for i, level in enumerate(levels):
        if level > loud:
            labels[i] = 1
        elif (levels[max(0, i - guard) : i + guard + 1] < quiet).all():
            labels[i] = 0
    return labels


@pytest.fixture(scope="session")
def labels() -> Labeller:
    """The energy ground truth, as a fixture (test modules here do not import each other or conftest)."""
    return energy_labels


@pytest.fixture(scope="session")
def framer() -> Callable[[Int16Array, int], list[Int16Array]]:
    return frames_of
