"""The provider interfaces: streaming STT, streaming LLM, streaming TTS, and the usage they report.

Owns: the typed Protocols every provider implements and the frozen event dataclasses they exchange with
the conversation engine. Must not know any vendor. Providers depend only on this module, ``parley.audio``
and ``parley.errors`` (plus their own client library); only the composition root imports them.

Streams are async iterators: the consumer drives them, and cancelling the consumer (``aclose()`` on the
iterator, or cancelling the task iterating it) cancels the provider's work, which must close its
connection or stop its computation promptly and still report the usage it incurred.

Usage is what cost is computed from: audio seconds for STT, input/output tokens for LLMs, characters for
TTS (tokens for a token-billed voice). A provider emits :class:`Usage` at least once per request, also for
cancelled and failed requests (failed calls still cost money).

Every provider also has a lifecycle, the same for the three kinds: ``prewarm()`` (open what the first
request would otherwise pay for, e.g. a vendor socket; best effort), ``aclose()`` (close what it holds
across calls) and ``check()`` (is it reachable, authenticated, and its model still served; billing nothing
where the vendor allows: :class:`Verdict`, or None when there is nothing to judge). :class:`Lifecycle`
gives the do-nothing versions to a provider with nothing to warm, close or judge, so callers never probe.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, TypeAlias, runtime_checkable

from parley.audio.pcm import Int16Array


@dataclass(frozen=True, slots=True)
class Usage:
    """What one request consumed, in the units its vendor bills."""

    provider: str
    model: str
    kind: Literal["stt", "llm", "tts"]
    audio_seconds: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0
    characters: int = 0
    requests: int = 1
    cancelled: bool = False
    failed: bool = False


@dataclass(frozen=True, slots=True)
class Verdict:
    """What ``check()`` found out about the configured model."""

    status: str  # ok | deprecated model | unknown model
    detail: str = ""


class Lifecycle:
    """The provider lifecycle for a provider with nothing to do: nothing to warm, hold or judge beyond what its
    constructor already did (a local model loaded, a rules file parsed)."""

    async def prewarm(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    async def check(self) -> Verdict | None:
        return None


class _Lifecycle(Protocol):
    async def prewarm(self) -> None:
        """Open what the first request would pay for (a vendor socket, a TLS session); best effort."""

    async def aclose(self) -> None:
        """Close what the provider holds across requests and calls."""

    async def check(self) -> Verdict | None:
        """Reachable, authenticated, model served? Raises the provider errors; bills nothing where avoidable."""


# ---- STT --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    """The recognizer heard speech begin (a hint; parley's own VAD decides turns)."""

    t: float


@dataclass(frozen=True, slots=True)
class Transcript:
    """Recognized text. ``final``: this span will not change. ``speech_final``: the provider thinks the
    caller finished a turn (usable as an endpoint signal)."""

    text: str
    final: bool
    t: float
    speech_final: bool = False
    confidence: float | None = None


@dataclass(frozen=True, slots=True)
class UtteranceEnd:
    """The provider's own end-of-utterance signal (e.g. Deepgram ``UtteranceEnd``)."""

    t: float


STTEvent: TypeAlias = SpeechStarted | Transcript | UtteranceEnd | Usage


class STTStream(Protocol):
    """One recognition session for one call. Audio in (mono int16 at the rate it was opened with)."""

    async def send_audio(self, samples: Int16Array) -> None: ...

    def pause_hint(self) -> None:
        """The VAD sees silence after speech: a provider may start working on a result early."""

    def speech_resumed(self) -> None:
        """Speech came back before the turn ended: discard any early result."""

    async def finalize(self) -> None:
        """The turn ended: emit the final transcript of everything sent since the last finalize."""

    async def close(self) -> None: ...

    def __aiter__(self) -> AsyncIterator[STTEvent]: ...


@runtime_checkable
class STTProvider(_Lifecycle, Protocol):
    name: str

    async def open(self, *, sample_rate: int, language: str | None = None) -> STTStream: ...


# ---- LLM --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ToolCall:
    id: str
    name: str
    arguments: Mapping[str, object]


@dataclass(frozen=True, slots=True)
class Message:
    role: Literal["system", "user", "assistant", "tool"]
    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    name: str | None = None


@dataclass(frozen=True, slots=True)
class ToolSpec:
    name: str
    description: str
    parameters: Mapping[str, object] = field(default_factory=lambda: {"type": "object", "properties": {}})


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


LLMEvent: TypeAlias = TextDelta | ToolCall | Usage


@runtime_checkable
class LLMProvider(_Lifecycle, Protocol):
    name: str

    def stream(self, messages: Sequence[Message], tools: Sequence[ToolSpec] = ()) -> AsyncGenerator[LLMEvent, None]:
        """Text deltas and tool calls as they are produced; Usage at the end (or on cancel/failure)."""
        ...


# ---- TTS --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AudioChunk:
    """Synthesized audio: mono int16 at ``sample_rate``; ``text`` is the text it speaks, when known."""

    samples: Int16Array = field(repr=False)
    sample_rate: int
    text: str | None = None


TTSEvent: TypeAlias = AudioChunk | Usage


class _Synthesizer(Protocol):
    def synthesize(self, text: str) -> AsyncGenerator[TTSEvent, None]: ...


@runtime_checkable
class TTSProvider(_Lifecycle, Protocol):
    name: str
    sample_rate: int

    def synthesize(self, text: str) -> AsyncGenerator[TTSEvent, None]:
        """Audio for one piece of text (a sentence or clause), streamed as it is produced."""
        ...


class LocalVoice(Lifecycle):
    """The lifecycle of a local voice: nothing to warm or close; ``check()`` speaks a word, which proves the
    model (or the binary) runs on this machine, and costs nothing."""

    async def check(self: _Synthesizer) -> Verdict | None:
        gen = self.synthesize("OK.")
        async with contextlib.aclosing(gen):
            async for _ in gen:
                pass
        return None
