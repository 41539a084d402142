"""Turn timings: stage offsets, voice-to-voice, engine overhead, percentiles."""

from __future__ import annotations

import numpy as np
import pytest

from parley.observe import timings as tm


def test_turn_timings() -> None:
    t = tm.TurnTimings()
    base = 100.0
    for stage, ms in [(tm.SPEECH_END, 0), (tm.ENDPOINT, 300), (tm.STT_FINAL, 420), (tm.LLM_FIRST_TOKEN, 421),
                      (tm.FIRST_CHUNK, 422), (tm.TTS_FIRST_AUDIO, 460), (tm.PLAYBACK_COMMAND, 463),
                      (tm.PLAYBACK_START, 485), (tm.FIRST_AUDIBLE, 500)]:
        t.mark(stage, base + ms / 1000)
    t.mark(tm.ENDPOINT, base + 5.0)  # first mark wins
    t.add_provider_time(tm.LLM_FIRST_TOKEN, 0.001)
    t.add_provider_time(tm.TTS_FIRST_AUDIO, 0.036)
    assert t.ms()[tm.ENDPOINT] == 300.0
    # the ear: PLAYBACK_START is not what the caller hears, the first audible sample is
    assert t.voice_to_voice_ms == 500.0 and t.playback_start_ms == 485.0
    assert t.stage_ms()[tm.STT_FINAL] == 120.0
    # 463 total - 300 silence - 120 stt - 1 llm - 36 tts = 6 ms of engine overhead
    assert t.overhead_ms() == pytest.approx(6.0, abs=0.01)


def test_a_stage_ready_before_the_one_it_follows_added_nothing() -> None:
    t = tm.TurnTimings()
    # a speculative reply: first token and audio before the final transcript
    for stage, ms in [(tm.SPEECH_END, 0), (tm.LLM_FIRST_TOKEN, 180), (tm.FIRST_CHUNK, 181),
                      (tm.TTS_FIRST_AUDIO, 200), (tm.ENDPOINT, 250), (tm.STT_FINAL, 251), (tm.PLAYBACK_COMMAND, 252)]:
        t.mark(stage, ms / 1000)
    stages = t.stage_ms()
    assert stages[tm.LLM_FIRST_TOKEN] == 0.0 and stages[tm.TTS_FIRST_AUDIO] == 0.0
    assert stages[tm.PLAYBACK_COMMAND] == 1.0 and all(v >= 0 for v in stages.values())


def test_incomplete_turn_has_no_overhead_or_v2v() -> None:
    t = tm.TurnTimings()
    t.mark(tm.SPEECH_END, 1.0)
    assert t.voice_to_voice_ms is None and t.overhead_ms() is None


def test_percentiles_match_numpy() -> None:
    xs = [float(x) for x in np.random.default_rng(3).integers(0, 1000, 57)]
    got = tm.percentiles(xs)
    assert got["p50"] == pytest.approx(np.percentile(xs, 50), abs=0.01)
    assert got["p95"] == pytest.approx(np.percentile(xs, 95), abs=0.01)
