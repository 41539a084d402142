"""Printing a simulated conversation: both sides' transcript, a per-turn latency table with parley's own
stages next to what the caller heard (voice-to-voice at the ear, cut-ins), and a summary."""

from __future__ import annotations

from typing import TextIO

from parley.observe import timings as tm
from parley.sim.simulate import SimulationResult

COLUMNS = (
    ("endpoint", tm.ENDPOINT),
    ("stt", tm.STT_FINAL),
    ("llm", tm.LLM_FIRST_TOKEN),
    ("chunk", tm.FIRST_CHUNK),
    ("tts", tm.TTS_FIRST_AUDIO),
    ("cmd", tm.PLAYBACK_COMMAND),
    ("start", tm.PLAYBACK_START),
    ("audible", tm.FIRST_AUDIBLE),
)


def _cell(value: float | None) -> str:
    return f"{value:7.0f}" if value is not None else "      -"


def print_simulation(result: SimulationResult, out: TextIO) -> None:
    w = out.write
    s = result.session
    w(f"scenario {result.scenario.name}: {result.scenario.description}\n\n")
    if s.greeting is not None:
        w(f"  agent : {s.greeting.turn.agent_full}\n")
    for turn in s.turns:
        w(f"  caller: {turn.caller or '(silence)'}\n")
        if turn.barge_in:
            w(f"  agent : {turn.agent} [interrupted; the reply was: {turn.agent_full!r}]\n")
        elif turn.agent_full:
            w(f"  agent : {turn.agent_full}\n")
    w(f"\n  call ended: {result.fake_call.hangup_cause}\n")
    d = result.as_dict()
    rows = d["turns"]
    assert isinstance(rows, list)
    w("\nlatency per turn, ms after the caller stopped speaking (parley's own stages, from its VAD speech end);\n"
      "ear v2v = the caller's true speech end -> first audible agent sample, from the rendered audio\n")
    w("  turn " + "".join(f"{name:>8}" for name, _ in COLUMNS) + "  overhead  ear v2v  |diff|  cut  reason\n")
    for turn, row in zip(s.turns, rows, strict=True):
        ms = turn.timings.ms()
        cells = "".join(" " + _cell(ms.get(stage)) for _, stage in COLUMNS)
        over = turn.timings.overhead_ms()
        ear = row.get("ear")
        ear_v2v = diff = None
        flag = "   "
        if isinstance(ear, dict):
            ear_v2v = ear.get("first_audible_ms") if ear.get("answered_here") else None
            diff = ear.get("disagreement_ms")
            flag = "CUT" if ear.get("cut_in") else ("spl" if ear.get("split") else "  .")
        w(f"  {turn.index:>4}{cells}  {_cell(over)}  {_cell(ear_v2v)} {_cell(diff)}  {flag}  "
          f"{turn.endpoint_reason or turn.caller[:12]}\n")
    w(f"\n  voice-to-voice at the ear: {_pct(d['voice_to_voice_ms'])}; parley's own: "
      f"{_pct(d['parley_voice_to_voice_ms'])}; to PLAYBACK_START: {_pct(d['playback_start_ms'])}\n")
    agreement = d["agreement"]
    assert isinstance(agreement, dict)
    w(f"  parley vs the ear: max |diff| {_num(agreement.get('max_ms'))} ms over {len(agreement['per_turn_ms'])} "
      f"turns; cut-ins {d['cut_ins']}, split turns {d['split_turns']}, dropped turns {d['dropped_turns']}, "
      f"talk-over {d['talk_over_ms']} ms (+{d['talk_over_barge_in_ms']} ms in scripted barge-ins)\n")
    for turn, row in zip(s.turns, rows, strict=True):
        if turn.barge is not None:
            b = turn.barge.as_dict()
            at_ear = row.get("ear_barge_in")
            silent = at_ear.get("onset_to_silent_ms") if isinstance(at_ear, dict) else None
            w(f"  barge-in on turn {turn.index}: onset -> detected {b['onset_to_detect_ms']} ms, -> uuid_break "
              f"{b['onset_to_break_ms']} ms, -> PLAYBACK_STOP {b['onset_to_stop_ms']} ms, -> silent "
              f"{b.get('onset_to_silent_ms')} ms (at the ear {silent} ms); heard {b['heard_ms']} ms\n")
    w(f"  spool files left after hangup: {result.spool_left}\n")


def _num(value: object) -> str:
    return f"{value:.0f}" if isinstance(value, int | float) else "-"


def _pct(d: object) -> str:
    if not isinstance(d, dict):
        return "-"
    return " ".join(f"{k} {_num(d.get(k))}" for k in ("p50", "p90") if k in d) + f" ms (n {d.get('n', '?')})"
