"""One turn of a call as it is recorded: what the caller said, what the agent said and what was heard.

Owns: :class:`TurnRecord`, the unit that records, metrics, traces and the dashboard read (its timings,
barge-in figures and tool calls), and its JSON shape (``as_dict``). Pure data: no I/O, no clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from parley.observe import timings as tm
from parley.providers.base import ToolCall


@dataclass(slots=True)
class TurnRecord:
    index: int
    caller: str = ""
    agent: str = ""  # what the caller heard of the reply
    agent_full: str = ""  # what the brain said
    barge_in: bool = False  # this reply was interrupted by the caller
    endpoint_reason: str = ""
    timings: tm.TurnTimings = field(default_factory=tm.TurnTimings)
    barge: tm.BargeInTimings | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)
    # how often an end of turn was taken back because the caller went on before the reply was audible
    resumed: int = 0
    # the reply was made before the turn ended, from the speculative transcript, and used as it was
    speculative: bool = False
    agent_audio_end: float | None = None  # the reply's audio ended (played out or broken), our clock

    def as_dict(self) -> dict[str, object]:
        return {
            "index": self.index,
            "caller": self.caller,
            "agent": self.agent,
            "agent_full": self.agent_full,
            "barge_in": self.barge_in,
            "endpoint_reason": self.endpoint_reason,
            "resumed": self.resumed,
            "speculative": self.speculative,
            "timings_ms": self.timings.ms(),
            "voice_to_voice_ms": self.timings.voice_to_voice_ms,
            "playback_start_ms": self.timings.playback_start_ms,
            "overhead_ms": self.timings.overhead_ms(),
            "barge_in_timings": self.barge.as_dict() if self.barge else None,
            "tool_calls": [{"name": c.name, "arguments": dict(c.arguments)} for c in self.tool_calls],
        }
