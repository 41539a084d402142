"""parley bench: the density run works end to end (2 calls x 3 s), and the latency summary aggregates
turn dicts correctly. Figures are checked for shape and sanity only, never for speed."""

from __future__ import annotations

import asyncio
import io
import json
import math
from pathlib import Path

import pytest

from parley.bench import write_json
from parley.bench.instant import BENCH_REPLY, BENCH_TRANSCRIPT, InstantLLM, InstantSTT, InstantTTS
from parley.bench.latency import STAGES, latency_report, policy_summary, print_latency
from parley.providers.base import (
    AudioChunk,
    LLMProvider,
    Message,
    STTProvider,
    TextDelta,
    Transcript,
    TTSProvider,
    Usage,
)
from parley.turns.policy import TurnPolicy


def _turn(base: float, *, v2v: float | None, overhead: float | None, barge: dict[str, float] | None = None,
          reason: str = "silence", scenario: str = "s1") -> dict[str, object]:
    stages = {"speech_end": 0.0, **{s: base + 10.0 * i for i, s in enumerate(STAGES)}}
    return {"index": 1, "timings_ms": stages, "voice_to_voice_ms": v2v, "overhead_ms": overhead,
            "barge_in_timings": barge, "endpoint_reason": reason, "scenario": scenario}


def test_latency_report_aggregates_turn_dicts() -> None:
    turns = [
        _turn(100.0, v2v=200.0, overhead=1.0, reason="smart_turn"),
        _turn(200.0, v2v=300.0, overhead=3.0,
              barge={"onset_to_detect_ms": 250.0, "onset_to_break_ms": 252.0, "onset_to_stop_ms": 275.0,
                     "heard_ms": 900.0}),
        _turn(300.0, v2v=400.0, overhead=2.0, scenario="s2"),
        {"index": 4, "timings_ms": {}, "voice_to_voice_ms": None},  # an idle prompt: not a caller turn
        {**_turn(400.0, v2v=None, overhead=None), "timings_ms": {"speech_end": 0.0, "endpoint": 700.0}},
    ]
    policy = policy_summary(TurnPolicy())
    r = latency_report(turns, runs=2, policy=policy)
    assert r["runs"] == 2 and r["turns"] == 4
    stages = r["stages_ms"]
    assert isinstance(stages, dict) and set(stages) == set(STAGES)
    assert stages["endpoint"] == {"p50": 250.0, "p95": 640.0, "n": 4}  # 100, 200, 300, 700
    assert stages["playback_start"] == {"p50": 260.0, "p95": 350.0, "n": 3}  # 160, 260, 360
    assert r["voice_to_voice_ms"] == {"p50": 300.0, "p95": 390.0, "n": 3}
    assert r["overhead_ms"] == {"p50": 2.0, "p95": 2.9, "n": 3}
    barge = r["barge_in_ms"]
    assert isinstance(barge, dict) and r["barge_ins"] == 1
    assert barge["onset_to_break"] == {"p50": 252.0, "p95": 252.0, "n": 1}
    assert barge["onset_to_stop"]["p50"] == 275.0
    assert r["endpoint_reasons"] == {"silence": 3, "smart_turn": 1}
    assert r["voice_to_voice_by_scenario_ms"] == {"s1": {"p50": 250.0, "p95": 295.0, "n": 2},
                                                  "s2": {"p50": 400.0, "p95": 400.0, "n": 1}}
    assert r["policy"] == policy and policy["smart_turn"] is True and policy["endpoint_silence_ms"] == 800.0
    out = io.StringIO()
    print_latency(r, out)
    assert "voice-to-voice" in out.getvalue() and "smart-turn ON" in out.getvalue()


def test_latency_report_of_nothing_has_empty_percentiles(tmp_path: Path) -> None:
    r = latency_report([], runs=1)
    assert r["turns"] == 0 and r["voice_to_voice_ms"] == {"p50": None, "p95": None, "n": 0}
    write_json(tmp_path / "r.json", {**r, "x": math.nan})
    assert json.loads((tmp_path / "r.json").read_text())["x"] is None  # strict JSON: NaN written as null


async def test_instant_fakes_implement_the_provider_protocols() -> None:
    stt, llm, tts = InstantSTT(), InstantLLM(), InstantTTS()
    assert isinstance(stt, STTProvider) and isinstance(llm, LLMProvider) and isinstance(tts, TTSProvider)
    stream = await stt.open(sample_rate=16000)
    await stream.finalize()
    await stream.close()
    events = [ev async for ev in stream]
    assert isinstance(events[0], Transcript) and events[0].text == BENCH_TRANSCRIPT and events[0].speech_final
    assert isinstance(events[1], Usage) and events[1].kind == "stt"
    out = [ev async for ev in llm.stream([Message("user", "hi")])]
    assert "".join(ev.text for ev in out if isinstance(ev, TextDelta)) == BENCH_REPLY
    assert 1 < sum(isinstance(ev, TextDelta) for ev in out) and isinstance(out[-1], Usage)
    (chunk, usage) = [ev async for ev in tts.synthesize("Hello there.")]
    assert isinstance(chunk, AudioChunk) and chunk.sample_rate == 8000 and chunk.samples.size == 12 * 400
    assert isinstance(usage, Usage) and usage.characters == 12


def test_density_runs_two_calls_and_reports_sane_figures() -> None:
    pytest.importorskip("onnxruntime")
    from parley.bench.density import measure

    r = asyncio.run(measure(2, 3.0))
    for key in ("calls", "dropped_frames", "frame_lag_ms", "cpu_ms_per_call_second", "rss_mb_per_call"):
        assert key in r
    assert r["calls"] == 2 and r["calls_streaming"] == 2 and r["sessions"] == 2 and r["agent_errors"] == 0
    assert isinstance(r["dropped_frames"], int) and r["dropped_frames"] >= 0
    lag = r["frame_lag_ms"]
    assert isinstance(lag, dict) and math.isfinite(lag["p50"]) and lag["p99"] >= lag["p50"]
    assert isinstance(r["cpu_ms_per_call_second"], float) and r["cpu_ms_per_call_second"] > 0
    assert isinstance(r["rss_mb_per_call"], float)
    assert isinstance(r["baseline_rss_mb"], float) and r["baseline_rss_mb"] > 10
    frames = r["frames"]
    assert isinstance(frames, int) and frames >= 2 * 3 * 50 * 0.9  # both calls streamed the whole window
    assert isinstance(r["loadgen_playbacks"], int) and r["loadgen_playbacks"] >= 2  # the greetings were played
    assert r["vad"] == "batched"
    per_run = r["vad_windows_per_run"]  # the two callers' Silero windows went through the batcher
    assert isinstance(per_run, float) and per_run >= 1.0
