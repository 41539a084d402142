"""The turn machine: who holds the floor, decided from VAD frames, model scores and agent playback.

Owns: the pure turn-taking state of one call. ``TurnMachine.feed(event)`` takes one event from
``turns/events.py`` (each carries its own time ``t``) and returns the actions the engine must perform.
No asyncio, sockets, clock or sleeping: timers are deadlines compared against the ``t`` of whatever event
comes next (``VadFrame`` every 20 ms, or ``Tick`` when audio stalls). Must not know about audio samples,
models, STT/LLM/TTS or FreeSWITCH; the engine owns those and reports back with events.

Phases of a caller turn::

    idle ──speech ≥ min_speech_ms──▶ speaking ──silence──▶ pausing ──pause_ms──▶ paused ──▶ EndOfTurn ─▶ idle
      (candidate onset)                 ▲      ◀─speech──┘                          │
                                        └────────── speech ≥ min_speech_ms (UserResumed) ◀┘

While the agent holds the floor (``AgentTurnTaken``/``AgentSpeaking`` until ``AgentDone``) a candidate onset
needs ``barge_in_min_speech_ms`` and then produces ``BargeIn`` + ``UserSpeechStarted``; shorter speech is a
backchannel and leaves no trace. In ``paused``, a burst of speech shorter than ``min_speech_ms`` is treated
as noise: it suspends the endpoint timers while it lasts but does not move ``speech_end_t``.
The idle timer runs whenever the floor is free and no caller turn is active (after ``AgentDone``, and also
after ``EndOfTurn`` until the agent takes the turn, so a turn the engine drops still gets a prompt).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from parley.turns.events import (
    AgentDone,
    AgentSpeaking,
    AgentTurnTaken,
    BargeIn,
    EndOfTurn,
    EndReason,
    IdleHangup,
    IdlePrompt,
    ScoreTurn,
    SttSpeechFinal,
    Tick,
    TurnAction,
    TurnEvent,
    TurnScore,
    UserPaused,
    UserResumed,
    UserSpeechStarted,
    VadFrame,
)
from parley.turns.policy import TurnPolicy

Phase = Literal["idle", "speaking", "pausing", "paused"]
_Confirm = Callable[[float, float], list[TurnAction]]  # runs once a candidate has lasted long enough

_EPS = 1e-6  # seconds; frame times are sums of 0.02 and must not miss a deadline by float rounding


@dataclass(slots=True)
class _Candidate:
    """Speech that has not (yet) lasted long enough to count."""

    onset_t: float
    last_speech_t: float
    speech_s: float = 0.0


class TurnMachine:
    """One call's turn-taking state. Feed events in time order; perform the returned actions in order."""

    def __init__(self, policy: TurnPolicy | None = None) -> None:
        self.policy = policy or TurnPolicy()  # may be replaced between events (per-state policies)
        self._phase: Phase = "idle"
        self._agent_floor = False
        self._candidate: _Candidate | None = None
        self._turn_onset = 0.0
        self._speech_end = 0.0
        self._pause_id = 0
        self._scored = False
        self._verdict: float | None = None
        self._idle_since: float | None = None
        self._idle_prompts = 0

    @property
    def phase(self) -> Phase:
        return self._phase

    @property
    def agent_has_floor(self) -> bool:
        return self._agent_floor

    @property
    def pause_id(self) -> int:
        """The current (or last) pause's id; a ``TurnScore`` for any other id is stale."""
        return self._pause_id

    def next_deadline(self) -> float | None:
        """The earliest time a ``Tick`` could produce an action, if no audio arrives before it (or None).

        Frames drive the timers during a call; the engine needs this only when the audio stalls.
        """
        p = self.policy
        if self._phase == "idle":
            if self._idle_since is None or self._agent_floor or self._candidate is not None:
                return None
            return self._idle_since + p.idle_timeout_s
        deadlines = [self._turn_onset + p.max_turn_s]
        if self._candidate is None and self._phase == "pausing":
            deadlines.append(self._speech_end + p.pause_ms / 1000)
        elif self._candidate is None and self._phase == "paused":
            deadlines.append(self._speech_end + p.endpoint_silence_ms / 1000)
            if p.smart_turn and not self._scored:
                deadlines.append(self._speech_end + p.score_after_ms / 1000)
        return min(deadlines)

    def feed(self, event: TurnEvent) -> list[TurnAction]:
        out: list[TurnAction] = []
        match event:
            case VadFrame(t=t, speech=speech, dur=dur):
                out += self._advance(t - dur)  # deadlines that passed before this frame's audio began
                out += self._on_frame(t, dur, speech)
            case TurnScore(pause_id=pause_id, p=p):
                if self._phase == "paused" and pause_id == self._pause_id and self._scored and self._verdict is None:
                    self._verdict = p
            case AgentTurnTaken() | AgentSpeaking():
                self._agent_floor = True
                self._idle_since = None
            case AgentDone(t=t):
                self._agent_floor = False
                if self._phase == "idle":
                    self._idle_since = t
            case SttSpeechFinal(t=t):
                if self.policy.stt_endpointing and self._phase in ("pausing", "paused") and self._candidate is None:
                    out.append(self._end_turn(t, "stt"))
            case Tick():
                pass
        out += self._advance(event.t)
        return out

    # ------------------------------------------------------------------------------------------ frames

    def _on_frame(self, t: float, dur: float, speech: bool) -> list[TurnAction]:
        if speech:
            match self._phase:
                case "speaking" | "pausing":
                    self._phase = "speaking"
                    self._speech_end = t
                    return []
                case "paused":
                    return self._grow_candidate(t, dur, self._resume)
                case _:
                    return self._grow_candidate(t, dur, self._start_turn)
        if self._phase == "speaking":
            self._phase = "pausing"
        elif self._candidate is not None and t - self._candidate.last_speech_t > self.policy.onset_gap_ms / 1000 + _EPS:
            self._candidate = None  # too short: a click, cough or backchannel
        return []

    def _grow_candidate(self, t: float, dur: float, confirm: _Confirm) -> list[TurnAction]:
        c = self._candidate
        if c is None:
            c = self._candidate = _Candidate(onset_t=t - dur, last_speech_t=t)
        c.speech_s += dur
        c.last_speech_t = t
        p = self.policy
        interrupting = self._agent_floor and self._phase == "idle"
        if interrupting and not p.barge_in:
            return []
        need_ms = p.barge_in_min_speech_ms if interrupting else p.min_speech_ms
        if c.speech_s + _EPS < need_ms / 1000:
            return []
        self._candidate = None
        return confirm(t, c.onset_t)

    def _start_turn(self, t: float, onset_t: float) -> list[TurnAction]:
        out: list[TurnAction] = []
        if self._agent_floor:
            out.append(BargeIn(t, onset_t))
            self._agent_floor = False
        self._phase = "speaking"
        self._turn_onset = onset_t
        self._speech_end = t
        self._idle_since = None
        self._idle_prompts = 0
        out.append(UserSpeechStarted(t, onset_t))
        return out

    def _resume(self, t: float, onset_t: float) -> list[TurnAction]:
        self._phase = "speaking"
        self._speech_end = t
        self._scored = False
        self._verdict = None
        return [UserResumed(t, self._pause_id, onset_t)]

    # ------------------------------------------------------------------------------------------ timers

    def _advance(self, now: float) -> list[TurnAction]:
        """Fire every deadline that ``now`` has reached, in the order they fall due."""
        p = self.policy
        if self._phase != "idle":
            if now - self._turn_onset + _EPS >= p.max_turn_s:
                return [self._end_turn(now, "max_turn")]
            if self._candidate is None:
                return self._advance_silence(now)
            return []
        if self._idle_since is None or self._agent_floor or self._candidate is not None:
            return []
        if now - self._idle_since + _EPS < p.idle_timeout_s:
            return []
        if self._idle_prompts < p.idle_max_prompts:
            self._idle_prompts += 1
            self._idle_since = now  # re-armed by AgentDone after the prompt plays; this covers a lost prompt
            return [IdlePrompt(now, self._idle_prompts)]
        self._idle_since = None
        return [IdleHangup(now)]

    def _advance_silence(self, now: float) -> list[TurnAction]:
        p = self.policy
        silence = now - self._speech_end + _EPS
        out: list[TurnAction] = []
        if self._phase == "pausing" and silence >= p.pause_ms / 1000:
            self._phase = "paused"
            self._pause_id += 1
            self._scored = False
            self._verdict = None
            out.append(UserPaused(now, self._pause_id, self._speech_end))
        if self._phase != "paused":
            return out
        endpoint = p.endpoint_silence_ms / 1000
        if p.smart_turn and not self._scored and p.score_after_ms / 1000 <= silence < endpoint:
            self._scored = True
            out.append(ScoreTurn(now, self._pause_id))
        if p.smart_turn and self._verdict is not None and self._verdict >= p.smart_turn_threshold:
            out.append(self._end_turn(now, "smart_turn"))
        elif silence >= endpoint:
            out.append(self._end_turn(now, "silence"))
        return out

    def _end_turn(self, now: float, reason: EndReason) -> EndOfTurn:
        action = EndOfTurn(now, self._speech_end, reason, self._turn_onset)
        self._phase = "idle"
        self._candidate = None
        self._scored = False
        self._verdict = None
        self._idle_since = None if self._agent_floor else now
        return action
