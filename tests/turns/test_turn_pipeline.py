"""Recorded caller audio through FrameVad -> TurnMachine, with smart-turn answering ScoreTurn like the engine.

A miniature engine: one 20 ms frame at a time, the call's audio kept in a list, ``ScoreTurn`` answered
synchronously from the turn's audio (500 ms of pre-roll, as pipecat does). Asserts the invariants the
engine relies on rather than exact timings.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("webrtcvad")

from parley.audio.pcm import Int16Array, rms_dbfs
from parley.turns.events import (
    EndOfTurn,
    ScoreTurn,
    TurnAction,
    TurnResumed,
    TurnScore,
    UserPaused,
    UserSpeechStarted,
    VadFrame,
)
from parley.turns.machine import TurnMachine
from parley.turns.policy import TurnPolicy
from parley.turns.smart_turn import SmartTurnModel
from parley.turns.vad import FrameVad, SileroModel


def run_call(
    audio: Int16Array, rate: int, silero: SileroModel, smart_turn: SmartTurnModel, policy: TurnPolicy
) -> tuple[list[TurnAction], list[float]]:
    vad = FrameVad.create(silero, rate)
    machine = TurnMachine(policy)
    n = rate // 50
    actions: list[TurnAction] = []
    scores: list[float] = []
    onset = 0.0
    for i in range(0, audio.size - n + 1, n):
        t = (i + n) / rate
        result = vad.process(audio[i : i + n])
        pending = machine.feed(VadFrame(t, result.speech, result.prob))
        while pending:
            action = pending.pop(0)
            actions.append(action)
            match action:
                case UserSpeechStarted(onset_t=onset_t):
                    onset = onset_t
                case ScoreTurn(pause_id=pause_id):
                    start = max(0, int((onset - 0.5) * rate))
                    p = smart_turn.predict(audio[start : i + n], rate)
                    scores.append(p)
                    pending += machine.feed(TurnScore(t, pause_id, p))
    return actions, scores


@pytest.mark.parametrize("smart", [True, False])
def test_recorded_call_turns(
    smart: bool, silero: SileroModel, smart_turn: SmartTurnModel, ws_rx_16k: Int16Array
) -> None:
    rate = 16000
    # no STT in this miniature engine: no transcript hints; fixed fallback so the silence check below is exact
    policy = TurnPolicy(smart_turn=smart, lexical_hints=False, adaptive_wait=False)
    actions, scores = run_call(ws_rx_16k, rate, silero, smart_turn, policy)
    # nobody answers in this miniature engine, so speech soon after an end of turn revokes it (TurnResumed)
    starts = [a for a in actions if isinstance(a, UserSpeechStarted | TurnResumed)]
    ends = [a for a in actions if isinstance(a, EndOfTurn)]
    assert starts and ends and len(ends) <= len(starts)
    assert all(0.0 <= p <= 1.0 for p in scores)
    assert bool(scores) == smart
    for end in ends:
        assert end.reason in ("smart_turn", "silence")
        assert end.onset_t < end.speech_end_t < end.t
        # the machine announced this pause before ending the turn on it
        pauses = [a for a in actions if isinstance(a, UserPaused) and a.speech_end_t == end.speech_end_t]
        assert pauses and pauses[-1].t <= end.t
        # what the machine called silence really is quiet in the recording
        # (speech_end_t is corrected for the VAD's offset lag; the VAD's own silence starts lag_ms later)
        vad_end = end.speech_end_t + policy.vad_offset_lag_ms / 1000
        quiet = ws_rx_16k[int(vad_end * rate) : int(end.t * rate)]
        assert rms_dbfs(quiet) < -45.0, f"turn ended on loud audio at {end.t:.2f}s"
    if not smart:
        assert all(round(e.t - e.speech_end_t, 3) == 0.7 for e in ends)


def test_digital_silence_makes_no_turns(silero: SileroModel, smart_turn: SmartTurnModel) -> None:
    actions, _ = run_call(np.zeros(16000 * 3, dtype=np.int16), 16000, silero, smart_turn, TurnPolicy())
    assert actions == []
