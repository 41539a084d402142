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
backchannel and leaves no trace. In ``paused``, a burst of speech shorter than ``resume_min_speech_ms`` is
treated as noise: it suspends the endpoint timers while it lasts but does not move ``speech_end_t``.

Revocable end of turn: after ``EndOfTurn`` and until the agent is audible (``AgentSpeaking``), for at most
``revoke_window_ms``, speech lasting ``resume_min_speech_ms`` gives ``TurnResumed``: the machine returns to
``speaking`` with the turn's original onset and the agent loses the floor (its reply was never heard).

Endpoint in ``paused``: smart-turn (``ScoreTurn`` after ``score_after_ms``) ends the turn when its score
reaches the threshold, once the pause's ``TranscriptHint`` arrived (or ``hint_wait_ms`` of silence passed);
otherwise the fallback silence does. A hint that looks unfinished (:mod:`parley.turns.lexical`) raises the
threshold and the fallback; the fallback also grows to cover the caller's remembered internal pauses.
All silences are measured from ``speech_end_t`` corrected by ``vad_offset_lag_ms``.
The idle timer runs whenever the floor is free and no caller turn is active (after ``AgentDone``, and also
after ``EndOfTurn`` until the agent takes the turn, so a turn the engine drops still gets a prompt).
"""

from __future__ import annotations

from collections import deque
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
    ReleaseReply,
    ScoreTurn,
    SttSpeechFinal,
    Tick,
    TranscriptHint,
    TurnAction,
    TurnEvent,
    TurnResumed,
    TurnScore,
    UserPaused,
    UserResumed,
    UserSpeechStarted,
    VadFrame,
)
from parley.turns.lexical import looks_unfinished
from parley.turns.policy import TurnPolicy

Phase = Literal["idle", "speaking", "pausing", "paused"]
_Confirm = Callable[[float, float], list[TurnAction]]  # runs once a candidate has lasted long enough

_EPS = 1e-6  # seconds; frame times are sums of 0.02 and must not miss a deadline by float rounding
_PAUSE_MEMORY = 4  # internal pauses remembered for the adaptive wait (the caller's recent habit)


@dataclass(frozen=True, slots=True)
class _Ended:
    """The last EndOfTurn, while it can still be revoked."""

    t: float
    turn_onset: float
    speech_end: float


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
        self._speech_end = 0.0  # end of the last speech frame, as the VAD said
        self._run_onset = 0.0  # start of the current run of speech frames
        self._pause_id = 0
        self._scored = False
        self._verdict: float | None = None
        self._hint: bool | None = None  # this pause's transcript looks unfinished (None: no hint yet)
        self._hint_words: int | None = None  # how many words the turn's latest transcript has
        self._release_at: float | None = None  # a held EndOfTurn's reply may be heard from then on
        self._pauses: deque[float] = deque(maxlen=_PAUSE_MEMORY)  # seconds, internal pauses that resumed
        self._ended: _Ended | None = None
        self._audible = False  # AgentSpeaking seen since the floor was last free
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

    @property
    def remembered_pauses(self) -> tuple[float, ...]:
        """This caller's recent internal pauses (seconds), which the adaptive wait covers."""
        return tuple(self._pauses)

    def endpoint_silence_s(self) -> float:
        """The silence that ends the current pause without a positive smart-turn verdict."""
        p = self.policy
        ms = p.endpoint_silence_ms
        if p.adaptive_wait and self._pauses:
            ms = max(ms, min(max(self._pauses) * 1000 + p.adaptive_margin_ms, p.adaptive_max_silence_ms))
        if self._hint:
            ms = max(ms, p.unfinished_silence_ms)
        return ms / 1000

    def next_deadline(self) -> float | None:
        """The earliest time a ``Tick`` could produce an action, if no audio arrives before it (or None).

        Frames drive the timers during a call; the engine needs this only when the audio stalls.
        """
        p = self.policy
        if self._phase == "idle":
            if self._release_at is not None:
                return self._release_at
            if self._idle_since is None or self._agent_floor or self._candidate is not None:
                return None
            return self._idle_since + p.idle_timeout_s
        deadlines = [self._turn_onset + p.max_turn_s]
        end = self._end_ref()
        if self._candidate is None and self._phase == "pausing":
            deadlines.append(end + p.pause_ms / 1000)
        elif self._candidate is None and self._phase == "paused":
            deadlines.append(end + self.endpoint_silence_s())
            if p.smart_turn and not self._scored:
                deadlines.append(end + p.score_after_ms / 1000)
            if self._verdict is not None and self._hint is None:
                deadlines.append(end + p.hint_wait_ms / 1000)
        return min(deadlines)

    def _end_ref(self) -> float:
        """The speech end silences are measured from: the VAD's, corrected by its offset lag."""
        return max(self._speech_end - self.policy.vad_offset_lag_ms / 1000, self._run_onset)

    def feed(self, event: TurnEvent) -> list[TurnAction]:
        out: list[TurnAction] = []
        match event:
            case VadFrame(t=t, speech=speech, dur=dur):
                out += self._advance(t - dur)  # deadlines that passed before this frame's audio began
                out += self._on_frame(t, dur, speech)
            case TurnScore(pause_id=pause_id, p=p):
                if self._phase == "paused" and pause_id == self._pause_id and self._scored and self._verdict is None:
                    self._verdict = p
            case TranscriptHint(pause_id=pause_id, text=text):
                if self.policy.lexical_hints and self._phase == "paused" and pause_id == self._pause_id:
                    self._hint = looks_unfinished(text)
                    self._hint_words = len(text.split())
            case AgentTurnTaken():
                self._agent_floor = True
                self._idle_since = None
            case AgentSpeaking():
                self._agent_floor = True
                self._audible = True
                self._ended = None  # the caller heard us: from now on speech is a barge-in
                self._idle_since = None
            case AgentDone(t=t):
                self._agent_floor = False
                self._audible = False
                self._ended = None
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
                    if self._phase == "pausing":
                        self._run_onset = t - dur
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
        resuming = self._phase == "paused" or (self._phase == "idle" and self._revocable(c.onset_t))
        interrupting = self._agent_floor and self._phase == "idle" and not resuming
        if interrupting and not p.barge_in:
            return []
        if resuming:
            need_ms = p.resume_min_speech_ms
        else:
            need_ms = p.barge_in_min_speech_ms if interrupting else p.min_speech_ms
        if c.speech_s + _EPS < need_ms / 1000:
            return []
        self._candidate = None
        return (self._revoke if resuming and self._phase == "idle" else confirm)(t, c.onset_t)

    def _start_turn(self, t: float, onset_t: float) -> list[TurnAction]:
        out: list[TurnAction] = []
        if self._agent_floor:
            out.append(BargeIn(t, onset_t))
            self._agent_floor = False
            self._audible = False  # the engine stops playback; the next reply announces itself again
        self._phase = "speaking"
        self._turn_onset = self._run_onset = onset_t
        self._speech_end = t
        self._ended = None
        self._idle_since = None
        self._idle_prompts = 0
        out.append(UserSpeechStarted(t, onset_t))
        return out

    def _resume(self, t: float, onset_t: float) -> list[TurnAction]:
        self._pauses.append(max(0.0, onset_t - self._end_ref()))
        self._phase = "speaking"
        self._speech_end = t
        self._run_onset = onset_t
        self._clear_pause()
        return [UserResumed(t, self._pause_id, onset_t)]

    def _revocable(self, onset_t: float) -> bool:
        e = self._ended
        return (
            e is not None
            and not self._audible
            and onset_t - e.t <= self.policy.revoke_window_ms / 1000 + _EPS
        )

    def _revoke(self, t: float, onset_t: float) -> list[TurnAction]:
        """Speech right after EndOfTurn, nothing audible yet: the turn goes on (``TurnResumed``)."""
        e = self._ended
        assert e is not None
        self._pauses.append(max(0.0, onset_t - e.speech_end))
        self._ended = None
        self._release_at = None  # the held reply is dropped with the end of turn
        self._agent_floor = False
        self._audible = False
        self._phase = "speaking"
        self._turn_onset = e.turn_onset
        self._speech_end = t
        self._run_onset = onset_t
        self._idle_since = None
        return [TurnResumed(t, onset_t, e.turn_onset)]

    def _clear_pause(self) -> None:
        self._scored = False
        self._verdict = None
        self._hint = None

    # ------------------------------------------------------------------------------------------ timers

    def _advance(self, now: float) -> list[TurnAction]:
        """Fire every deadline that ``now`` has reached, in the order they fall due."""
        p = self.policy
        if self._release_at is not None and now + _EPS >= self._release_at and self._phase == "idle":
            at, self._release_at = self._release_at, None
            return [ReleaseReply(at), *self._advance(now)]
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
        end = self._end_ref()
        silence = now - end + _EPS
        out: list[TurnAction] = []
        if self._phase == "pausing" and silence >= p.pause_ms / 1000:
            self._phase = "paused"
            self._pause_id += 1
            self._clear_pause()
            out.append(UserPaused(now, self._pause_id, end))
        if self._phase != "paused":
            return out
        endpoint = self.endpoint_silence_s()
        if p.smart_turn and not self._scored and p.score_after_ms / 1000 <= silence < endpoint:
            self._scored = True
            out.append(ScoreTurn(now, self._pause_id))
        threshold = p.unfinished_smart_turn_threshold if self._hint else p.smart_turn_threshold
        waiting_for_hint = p.lexical_hints and self._hint is None and silence < p.hint_wait_ms / 1000
        if p.smart_turn and self._verdict is not None and self._verdict >= threshold and not waiting_for_hint:
            out.append(self._end_turn(now, "smart_turn"))
        elif silence >= endpoint:
            out.append(self._end_turn(now, "silence"))
        return out

    def _end_turn(self, now: float, reason: EndReason) -> EndOfTurn:
        end = self._end_ref()
        p = self.policy
        short = self._hint_words is not None and self._hint_words <= p.short_turn_words
        hold = p.short_turn_hold_ms / 1000 if short and p.revoke_window_ms > 0 and reason != "max_turn" else 0.0
        self._release_at = now + hold if hold > 0 else None
        self._hint_words = None
        action = EndOfTurn(now, end, reason, self._turn_onset, self._release_at)
        self._phase = "idle"
        self._candidate = None
        self._clear_pause()
        if self.policy.revoke_window_ms > 0:
            self._ended = _Ended(now, self._turn_onset, end)
        self._idle_since = None if self._agent_floor else now
        return action
