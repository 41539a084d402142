"""What a speech-to-speech conversation needs besides the call: the engine, and one item being heard.

Owns: :class:`RealtimeEngine` (the pipeline :class:`~parley.agent.engine.Engine`, kept whole because it is
the fallback, plus the realtime provider and who detects turns), :func:`pipeline_engine` (the same engine
as the pipeline sees it), and :class:`Spoken`: one assistant item being played, its audio so far, its
text, where its first audible sample is, and the text a caller heard of it. Pure data and arithmetic; no
I/O. Must not know any vendor or FreeSWITCH.

``RealtimeEngine`` extends ``Engine`` (a frozen dataclass) by one provider field, so every place that takes
an engine (the agent, ``parley simulate``, the dashboard) keeps working; a field on ``Engine`` itself
would be the cleaner shape (see the issue 13 note).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Literal

from parley.agent.engine import Engine
from parley.agent.memory import SpokenSegment, heard_text
from parley.agent.port import CallPort, UtterancePort
from parley.agent.turn import TurnRecord
from parley.audio.pcm import Int16Array
from parley.audio.trim import first_audible_index
from parley.providers.realtime_base import RealtimeProvider

# said in the local voice when the realtime model fails mid-call, before the pipeline takes the call over
SWITCH_APOLOGY = "I'm sorry, I lost you for a moment. Could you say that again, please?"


@dataclass(frozen=True, slots=True)
class RealtimeEngine(Engine):
    realtime: RealtimeProvider | None = None
    # "server": the model's own voice activity detection ends turns and interrupts itself;
    # "parley": parley's VAD and turn machine decide, the model is told (commit + respond)
    turn_detection: Literal["server", "parley"] = "server"
    switch_apology: str = SWITCH_APOLOGY


def pipeline_engine(engine: Engine) -> Engine:
    """The pipeline's own engine (a plain :class:`Engine`) out of a realtime one."""
    return Engine(**{f.name: getattr(engine, f.name) for f in fields(Engine)})


@dataclass(slots=True)
class Spoken:
    """One assistant item as it is played: audio written so far, its transcript, its first audible sample."""

    item_id: str
    turn: TurnRecord
    utterance: UtterancePort
    rate: int
    first_audio_at: float
    samples: int = 0
    lead: int = 0  # samples before the first audible one
    audible: bool = False
    deltas: list[str] = field(default_factory=list)
    final_text: str | None = None
    finished: bool = False
    # when the model audio arrived whose write sent the first playback command (the engine's own overhead
    # is that command minus this; before it, the playback waits for its first chunk's worth of audio)
    command_audio_at: float | None = None

    def add(self, samples: Int16Array) -> None:
        if not self.audible:
            at = first_audible_index(samples, self.rate)
            self.lead += int(samples.size) if at is None else at
            self.audible = at is not None
        self.samples += int(samples.size)

    @property
    def audio_ms(self) -> float:
        return 1000.0 * self.samples / self.rate

    @property
    def lead_s(self) -> float:
        return self.lead / self.rate

    @property
    def text(self) -> str:
        return (self.final_text if self.final_text is not None else "".join(self.deltas)).strip()

    def heard(self, heard_ms: float) -> str:
        """The words a caller heard of this item after ``heard_ms`` of its audio (apportioned by characters)."""
        return heard_text([SpokenSegment(self.text, self.audio_ms)], heard_ms)[0]


@dataclass(frozen=True, slots=True)
class Greeting:
    """What ``session.greeting`` gives the records: the greeting's turn (index 0)."""

    turn: TurnRecord


def call_codec(call: CallPort) -> str | None:
    """The call's codec (PCMU/PCMA allow G.711 to the model)."""
    return call.codec


def utterance_id(item_id: str) -> str:
    """A spool-safe utterance id that names the model's item (so a playback can be traced to it)."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in item_id)[:48] or "item"
