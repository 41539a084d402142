"""parley bench latency's headline: the ear's figures aggregated over caller turns (pure; no calls run)."""

from __future__ import annotations

import io

from parley.bench.latency import ear_report, latency_report, print_latency


def _caller(v2v: float | None, *, scenario: str = "s1", cut_in: bool = False, talk: float = 0.0,
            barge: bool = False, silent: float | None = None) -> dict[str, object]:
    return {"first_audible_ms": v2v, "cut_in": cut_in, "talk_over_ms": talk, "barge_in": barge,
            "onset_to_silent_ms": silent, "scenario": scenario}


def _turn(diff: float | None, end_lag: float | None, answered: bool = True) -> dict[str, object]:
    ear = {"answered_here": answered, "disagreement_ms": diff, "speech_end_offset_ms": end_lag,
           "first_audible_offset_ms": 2.0}
    return {"timings_ms": {"speech_end": 0.0, "endpoint": 250.0}, "voice_to_voice_ms": 300.0, "ear": ear}


def test_ear_report_aggregates_caller_turns_and_disagreement() -> None:
    callers = [
        _caller(400.0), _caller(600.0, cut_in=True, talk=300.0), _caller(800.0, scenario="s2"),
        _caller(500.0, barge=True, talk=250.0, silent=290.0), _caller(None),
    ]
    turns = [_turn(100.0, 110.0), _turn(150.0, 140.0), _turn(900.0, 0.0, answered=False), {"ear": None},
             {"ear": None, "ear_barge_in": {"onset_to_silent_ms": 270.0}}, {"ear_barge_in": None}]
    r = ear_report(callers, turns)
    assert r["voice_to_voice_ms"] == {"p50": 550.0, "p90": 740.0, "p95": 770.0, "n": 4}
    assert r["by_scenario_ms"] == {"s1": {"p50": 500.0, "p90": 580.0, "p95": 590.0, "n": 3},
                                   "s2": {"p50": 800.0, "p90": 800.0, "p95": 800.0, "n": 1}}
    assert (r["caller_turns"], r["unanswered"], r["cut_ins"]) == (5, 1, 1)
    assert r["talk_over_ms"] == 300.0  # scripted barge-ins talk over by design: not counted
    assert r["barge_in_silent_ms"] == {"p50": 290.0, "p90": 290.0, "p95": 290.0, "n": 1}
    assert r["interruption_silent_ms"] == {"p50": 270.0, "p90": 270.0, "p95": 270.0, "n": 1}
    # only the session turn that answered a caller turn is compared
    assert r["disagreement_ms"] == {"p50": 125.0, "p90": 145.0, "p95": 147.5, "n": 2, "max": 150.0}
    assert r["speech_end_offset_ms"]["p50"] == 125.0  # type: ignore[index]


def test_the_ear_is_the_headline_of_the_printed_report() -> None:
    r = latency_report([_turn(100.0, 110.0)], runs=1, ear_turns=[_caller(420.0), _caller(None)])
    out = io.StringIO()
    print_latency(r, out)
    text = out.getvalue()
    assert text.index("AT THE CALLER EAR") < text.index("playback_start")
    ear_line = next(line for line in text.splitlines() if "true speech end -> first audible" in line)
    assert ear_line.split()[-4:] == ["420", "420", "420", "1"]
    assert "cut-ins (agent audible inside a caller turn): 0 of 2 caller turns" in text


def test_no_ear_turns_gives_empty_percentiles() -> None:
    r = ear_report([])
    assert r["voice_to_voice_ms"] == {"p50": None, "p90": None, "p95": None, "n": 0}
    assert r["disagreement_ms"] == {"p50": None, "p90": None, "p95": None, "n": 0, "max": None}
