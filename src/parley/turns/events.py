"""The turn machine's vocabulary: the events it is fed and the actions it asks for.

Owns: frozen, slotted dataclasses and the ``TurnEvent`` / ``TurnAction`` unions. Every event carries ``t``,
the engine's monotonic clock (seconds) when the event happened; the machine takes no other notion of time.
Must not know about audio arrays, models, asyncio or FreeSWITCH.

Timeline conventions: a ``VadFrame`` is stamped with the time its audio *ended* (when it was received) and
covers ``[t - dur, t]``. An ``onset_t`` is the start of the first speech frame; a ``speech_end_t`` is the end
of the last speech frame, moved earlier by the policy's ``vad_offset_lag_ms`` (the VAD's measured lag in
noticing that speech stopped), but never before the start of that run of speech frames. ``pause_id``
numbers every pause once per call so that late answers to a ``ScoreTurn`` (or a ``TranscriptHint``) can
be recognised as stale.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# ---------------------------------------------------------------------------------------------- events in


@dataclass(frozen=True, slots=True)
class VadFrame:
    """One caller frame's VAD decision (one per 20 ms frame, in order)."""

    t: float
    speech: bool
    prob: float = 0.0
    dur: float = 0.02


@dataclass(frozen=True, slots=True)
class TurnScore:
    """The smart-turn result the engine computed for ``ScoreTurn(pause_id)``."""

    t: float
    pause_id: int
    p: float  # P(turn complete)


@dataclass(frozen=True, slots=True)
class AgentTurnTaken:
    """The engine started producing a response (LLM request sent): the agent has the floor."""

    t: float


@dataclass(frozen=True, slots=True)
class AgentSpeaking:
    """The caller can hear us: ``t`` is when the first audible agent sample reaches the caller (PLAYBACK_START
    plus the leading silence of the queued audio), not when a playback command is written. Until then an
    ``EndOfTurn`` can still be revoked by ``TurnResumed``."""

    t: float


@dataclass(frozen=True, slots=True)
class AgentDone:
    """Our audio finished or was stopped, and nothing more is queued: the floor is free."""

    t: float


@dataclass(frozen=True, slots=True)
class SttSpeechFinal:
    """The STT provider's own endpoint (e.g. Deepgram ``speech_final``); used when the policy allows."""

    t: float


@dataclass(frozen=True, slots=True)
class TranscriptHint:
    """The speculative transcript of the turn so far, decoded at pause ``pause_id`` (after ``UserPaused``).

    ``text`` covers the turn's audio up to that pause. The machine reads it with
    :func:`parley.turns.lexical.unfinished_reason`; a hint for any other pause is stale and ignored."""

    t: float
    pause_id: int
    text: str


@dataclass(frozen=True, slots=True)
class Tick:
    """Time passed (drive timers when no audio arrives)."""

    t: float


TurnEvent = (
    VadFrame | TurnScore | TranscriptHint | AgentTurnTaken | AgentSpeaking | AgentDone | SttSpeechFinal | Tick
)

# -------------------------------------------------------------------------------------------- actions out

EndReason = Literal["smart_turn", "silence", "stt", "max_turn"]


@dataclass(frozen=True, slots=True)
class UserSpeechStarted:
    """The caller holds the floor: speech lasted ``min_speech_ms`` (or the barge-in minimum)."""

    t: float
    onset_t: float


@dataclass(frozen=True, slots=True)
class UserPaused:
    """The caller went quiet mid-turn: a good moment to start a speculative STT decode."""

    t: float
    pause_id: int
    speech_end_t: float


@dataclass(frozen=True, slots=True)
class UserResumed:
    """Speech came back before the turn ended: discard whatever was started for ``pause_id``."""

    t: float
    pause_id: int
    onset_t: float


@dataclass(frozen=True, slots=True)
class ScoreTurn:
    """Run smart-turn on the turn's audio up to now and answer with ``TurnScore(pause_id=...)``."""

    t: float
    pause_id: int


@dataclass(frozen=True, slots=True)
class EndOfTurn:
    """The caller finished; the turn's speech spans ``[onset_t, speech_end_t]``.

    ``release_t``: the reply may be made audible from then on (``ReleaseReply`` comes at that time); None
    means at once. A short turn ("At three", "No") is held briefly: speech in the hold takes it back
    silently (``TurnResumed``) instead of the caller hearing the agent start."""

    t: float
    speech_end_t: float
    reason: EndReason
    onset_t: float
    release_t: float | None = None


@dataclass(frozen=True, slots=True)
class ReleaseReply:
    """The hold after a short turn's ``EndOfTurn`` is over: the reply may be heard now."""

    t: float


@dataclass(frozen=True, slots=True)
class BargeIn:
    """The caller talked over the agent long enough: cancel the response and stop playback."""

    t: float
    onset_t: float


@dataclass(frozen=True, slots=True)
class TurnResumed:
    """The caller spoke again after ``EndOfTurn`` before any agent audio was audible: the end is revoked.

    Cancel the not-yet-audible reply silently (nothing was heard, nothing to record as heard) and keep
    collecting the caller's turn, which still starts at ``turn_onset_t``; ``onset_t`` is where the resumed
    speech began. The agent no longer holds the floor; the machine is back in ``speaking``."""

    t: float
    onset_t: float
    turn_onset_t: float


@dataclass(frozen=True, slots=True)
class IdlePrompt:
    """The caller has been silent too long after the agent finished ("are you still there?")."""

    t: float
    n: int  # 1 for the first prompt


@dataclass(frozen=True, slots=True)
class IdleHangup:
    """Still silent after the last idle prompt: say goodbye and hang up."""

    t: float


TurnAction = (
    UserSpeechStarted
    | UserPaused
    | UserResumed
    | ScoreTurn
    | EndOfTurn
    | ReleaseReply
    | TurnResumed
    | BargeIn
    | IdlePrompt
    | IdleHangup
)
