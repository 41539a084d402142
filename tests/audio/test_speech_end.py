"""Refining the VAD's speech end from the audio (a measurement for timings; turns are not decided here)."""

from __future__ import annotations

import numpy as np
import pytest

from parley.audio.speech_end import refine_speech_end

RATE = 16000


def clip(speech_ms: float, silence_ms: float, *, noise_dbfs: float | None = None) -> np.ndarray:
    rng = np.random.default_rng(7)
    t = np.arange(int(RATE * speech_ms / 1000)) / RATE
    speech = 6000 * np.sin(2 * np.pi * 220 * t)
    audio = np.concatenate([speech, np.zeros(int(RATE * silence_ms / 1000))])
    if noise_dbfs is not None:
        audio += rng.normal(0, 32768 * 10 ** (noise_dbfs / 20), audio.size)
    return np.clip(audio, -32768, 32767).astype(np.int16)


@pytest.mark.parametrize("noise", [None, -60.0, -35.0])
@pytest.mark.parametrize("vad_late_ms", [0.0, 110.0, 165.0])
def test_the_end_is_where_the_speech_stops_not_where_the_vad_noticed(noise: float | None, vad_late_ms: float) -> None:
    audio = clip(1000, 600, noise_dbfs=noise)  # speech ends 1.0 s into a clip that ends at t=11.6
    true_end = 10.0 + 1.0
    got = refine_speech_end(audio, RATE, 11.6, true_end + vad_late_ms / 1000)
    assert got == pytest.approx(true_end, abs=0.006)


def test_nothing_audible_in_range_keeps_the_vad_end() -> None:
    audio = clip(200, 2000)
    assert refine_speech_end(audio, RATE, 12.2, 11.8) == 11.8


def test_a_lone_click_after_the_speech_is_not_its_end() -> None:
    audio = clip(1000, 600)
    audio[int(RATE * 1.1)] = 30000  # one loud sample, 100 ms after the speech
    assert refine_speech_end(audio, RATE, 11.6, 11.1) == pytest.approx(11.0, abs=0.006)


def test_too_little_audio_keeps_the_vad_end() -> None:
    assert refine_speech_end(np.zeros(10, np.int16), RATE, 1.0, 0.9) == 0.9


def test_a_decay_that_flickers_around_the_threshold_ends_at_its_last_audible_window() -> None:
    audio = clip(1000, 600)
    win = RATE * 5 // 1000
    tail = int(RATE * 1.0)
    for k, loud in enumerate([1, 0, 1, 0, 1]):  # 25 ms of decay: loud, quiet, loud, quiet, loud
        if loud:
            audio[tail + k * win : tail + (k + 1) * win] = 1000
    got = refine_speech_end(audio, RATE, 11.6, 11.12)
    assert got == pytest.approx(11.0 + 0.025, abs=0.001)
