"""Printing a simulated conversation: both sides' transcript and a per-turn latency table."""

from __future__ import annotations

from typing import TextIO

from parley.observe import timings as tm
from parley.testing.simulate import SimulationResult

COLUMNS = (
    ("endpoint", tm.ENDPOINT),
    ("stt", tm.STT_FINAL),
    ("llm", tm.LLM_FIRST_TOKEN),
    ("chunk", tm.FIRST_CHUNK),
    ("tts", tm.TTS_FIRST_AUDIO),
    ("cmd", tm.PLAYBACK_COMMAND),
    ("start", tm.PLAYBACK_START),
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
    w(f"\n  call ended: {result.session.call.hangup_cause}\n")
    w("\nlatency per turn, ms after the caller stopped speaking (VAD):\n")
    w("  turn " + "".join(f"{name:>8}" for name, _ in COLUMNS) + "  overhead  reason\n")
    for turn in s.turns:
        ms = turn.timings.ms()
        cells = "".join(" " + _cell(ms.get(stage)) for _, stage in COLUMNS)
        over = turn.timings.overhead_ms()
        w(f"  {turn.index:>4}{cells}  {_cell(over)}   {turn.endpoint_reason or turn.caller[:12]}\n")
    d = result.as_dict()
    v2v = d["voice_to_voice_ms"]
    w(f"\n  voice-to-voice (speech end -> PLAYBACK_START): {v2v}\n")
    for turn in s.turns:
        if turn.barge is not None:
            b = turn.barge.as_dict()
            w(f"  barge-in on turn {turn.index}: onset -> detected {b['onset_to_detect_ms']} ms, -> uuid_break "
              f"{b['onset_to_break_ms']} ms, -> PLAYBACK_STOP {b['onset_to_stop_ms']} ms; heard {b['heard_ms']} ms\n")
    w(f"  spool files left after hangup: {result.spool_left}\n")
