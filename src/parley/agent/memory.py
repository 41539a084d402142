"""Conversation memory: what the agent and the caller said, as the caller really heard it.

Owns: the message list given to the brain (system prompt, turns, tool calls and results), and cutting
an interrupted assistant message down to the text the caller heard. The heard position comes from the
bridge (milliseconds of the utterance FreeSWITCH played, from PLAYBACK_START/STOP); within the sentence
that was playing when the caller cut in, words are apportioned by their share of that sentence's audio.
Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from parley.providers.base import Message, ToolCall


@dataclass(frozen=True, slots=True)
class SpokenSegment:
    """A piece of text and the duration of the audio that speaks it (ms, at any rate)."""

    text: str
    audio_ms: float


def heard_text(segments: Sequence[SpokenSegment], heard_ms: float) -> tuple[str, bool]:
    """The prefix of the segments' text covered by ``heard_ms`` of audio; and whether it is all of it.

    Whole segments inside the heard span are kept; in the segment being played when playback stopped,
    whole words up to the heard share of its audio are kept (a half-heard word is dropped).
    """
    kept: list[str] = []
    remaining = heard_ms
    for seg in segments:
        if remaining >= seg.audio_ms - 1e-6:
            kept.append(seg.text)
            remaining -= seg.audio_ms
            continue
        words = seg.text.split()
        if seg.audio_ms > 0 and words:
            share = max(0.0, remaining) / seg.audio_ms
            # apportion by characters (longer words take longer to say), keep whole words only
            total = sum(len(w) + 1 for w in words)
            acc, n = 0, 0
            for w in words:
                acc += len(w) + 1
                if acc / total <= share + 1e-9:
                    n += 1
                else:
                    break
            if n:
                kept.append(" ".join(words[:n]))
        return " ".join(k for k in kept if k).strip(), False
    return " ".join(k for k in kept if k).strip(), True


@dataclass(slots=True)
class Conversation:
    system_prompt: str
    messages: list[Message] = field(default_factory=list)
    max_turns: int = 40  # oldest turns beyond this are dropped (the system prompt always stays)

    def for_llm(self) -> list[Message]:
        return [Message("system", self.system_prompt), *self.messages]

    def add_user(self, text: str) -> None:
        self.messages.append(Message("user", text))
        self._trim()

    def add_assistant(self, text: str, tool_calls: Sequence[ToolCall] = ()) -> None:
        if text or tool_calls:
            self.messages.append(Message("assistant", text, tool_calls=tuple(tool_calls)))
            self._trim()

    def add_tool_result(self, call: ToolCall, result: str) -> None:
        self.messages.append(Message("tool", result, tool_call_id=call.id, name=call.name))

    def add_interrupted(self, segments: Sequence[SpokenSegment], heard_ms: float) -> str:
        """Record an interrupted reply as what was heard; returns that text."""
        text, _complete = heard_text(segments, heard_ms)
        if text:
            self.messages.append(Message("assistant", text))
            self._trim()
        return text

    def _trim(self) -> None:
        users = [i for i, m in enumerate(self.messages) if m.role == "user"]
        if len(users) > self.max_turns:
            cut = users[len(users) - self.max_turns]
            self.messages = self.messages[cut:]
