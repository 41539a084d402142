"""The conversation core's vocabulary: the events it is told and the commands it gives.

Owns: frozen, slotted dataclasses and the ``CoreEvent`` / ``Command`` unions (besides the turn machine's
actions, which the core is fed as they are). Every event that happened at a time carries ``t``, the
engine's monotonic clock in seconds. Must not know asyncio, audio samples, providers or FreeSWITCH.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TypeAlias

from parley.agent.turn import TurnRecord
from parley.providers.base import Message, ToolCall
from parley.turns import events as turns

# ------------------------------------------------------------------------------------------- events in


@dataclass(frozen=True, slots=True)
class SpeculativeText:
    """The transcript of the open turn so far, made at a pause (``pause_id``) before the turn ended."""

    t: float
    pause_id: int
    text: str


@dataclass(frozen=True, slots=True)
class FinalText:
    """The final transcript asked for by ``SttFinalize`` (one per finalize)."""

    t: float
    text: str


@dataclass(frozen=True, slots=True)
class ReplyMark:
    reply_id: int
    stage: str
    t: float
    provider_s: float | None = None  # time spent inside the provider for this stage


@dataclass(frozen=True, slots=True)
class ReplyAudio:
    """``ms`` of audio (as queued, after trimming) that speaks ``text``, one piece of the reply."""

    reply_id: int
    text: str
    ms: float


@dataclass(frozen=True, slots=True)
class ReplyText:
    """The brain finished: the whole reply text and its tool calls."""

    reply_id: int
    text: str
    tool_calls: tuple[ToolCall, ...] = ()


@dataclass(frozen=True, slots=True)
class ReplyQueued:
    """The reply's first playback command was written (FreeSWITCH has audio of it)."""

    reply_id: int
    t: float


@dataclass(frozen=True, slots=True)
class ReplyStarted:
    """PLAYBACK_START of the reply's first chunk, and when its first audible sample reached the caller."""

    reply_id: int
    t: float
    audible_t: float


@dataclass(frozen=True, slots=True)
class ReplyPlayed:
    """The reply's audio ended by itself (or it had none): ``heard_ms`` of it reached the caller."""

    reply_id: int
    t: float
    heard_ms: float
    complete: bool


@dataclass(frozen=True, slots=True)
class ReplyFailed:
    reply_id: int
    t: float
    error: str


@dataclass(frozen=True, slots=True)
class BreakDone:
    """``uuid_break`` for ``reply_ids`` was written at ``written``; playback stopped at ``stopped``."""

    t: float
    written: float
    stopped: float | None
    heard_ms: Mapping[int, float]


@dataclass(frozen=True, slots=True)
class DtmfInput:
    t: float
    digits: str


@dataclass(frozen=True, slots=True)
class CallEnded:
    """The call is over; ``heard_ms`` says how much of each unfinished reply was heard."""

    t: float
    heard_ms: Mapping[int, float] = field(default_factory=dict)


CoreEvent: TypeAlias = (
    turns.TurnAction | SpeculativeText | FinalText | ReplyMark | ReplyAudio | ReplyText | ReplyQueued
    | ReplyStarted | ReplyPlayed | ReplyFailed | BreakDone | DtmfInput | CallEnded
)

# ------------------------------------------------------------------------------------------ commands out


@dataclass(frozen=True, slots=True)
class SttOpen:
    """The caller holds the floor: send STT the audio from ``onset_t`` (with preroll) and keep sending."""

    onset_t: float


@dataclass(frozen=True, slots=True)
class SttSpeculate:
    """A pause: transcribe what there is (answered with ``SpeculativeText``)."""

    pause_id: int


@dataclass(frozen=True, slots=True)
class SttResume:
    """Speech came back: the speculative transcript is stale."""


@dataclass(frozen=True, slots=True)
class SttFinalize:
    """The turn ended: the final transcript, please (answered with ``FinalText``)."""


@dataclass(frozen=True, slots=True)
class Score:
    """Run the end-of-turn model for ``pause_id`` (answered to the turn machine with ``TurnScore``)."""

    pause_id: int


@dataclass(frozen=True, slots=True)
class FeedMachine:
    """Tell the turn machine (who has the floor, what the transcript looks like)."""

    event: turns.TurnEvent


@dataclass(frozen=True, slots=True)
class StartReply:
    """Produce a reply: from the brain with ``messages``, or say ``fixed_text``. ``held``: keep its audio
    back (speculative) until ``CommitReply``."""

    reply_id: int
    messages: tuple[Message, ...] | None
    fixed_text: str | None
    held: bool


@dataclass(frozen=True, slots=True)
class CommitReply:
    """A held reply was right: queue what it has and go on live."""

    reply_id: int


@dataclass(frozen=True, slots=True)
class CancelReply:
    """Stop producing the reply (brain and TTS) at once. Does not touch what FreeSWITCH has queued."""

    reply_id: int


@dataclass(frozen=True, slots=True)
class BreakPlayback:
    """``uuid_break all``: silence the caller's line now (answered with ``BreakDone``)."""

    reply_ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class RecordTurn:
    turn: TurnRecord
    outcome: str = ""


@dataclass(frozen=True, slots=True)
class RunTools:
    """The reply was heard to its end: carry out its tool calls (authorized by the shell), then hang up
    if ``then_hangup``."""

    turn: TurnRecord
    calls: tuple[ToolCall, ...]
    then_hangup: bool


@dataclass(frozen=True, slots=True)
class Apologise:
    """The providers failed: a local voice apologises, then the call ends or goes to a person."""

    turn: TurnRecord


Command: TypeAlias = (
    SttOpen | SttSpeculate | SttResume | SttFinalize | Score | FeedMachine | StartReply | CommitReply
    | CancelReply | BreakPlayback | RecordTurn | RunTools | Apologise
)
