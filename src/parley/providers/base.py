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

Per call: every provider is shared by all calls of the process, and each call opens its own stream on it
(``open()``), as STT always did: a recognition session, an :class:`LLMStream` or a :class:`TTSStream`. A
stream is where a provider keeps what one call needs (a vendor socket bound to the call) and where the
call's usage goes: usage travels as stream events, and the usage of a request the consumer stopped early
(a barge-in closes the generator, which can then yield nothing) goes to the ``on_usage`` sink the stream
was opened with: explicit, per call, never an ambient variable. A fallback chain that moves a request to its
next provider says so with a :class:`Switched` event in the same stream. Outside a call (a check, a tool,
the simulated caller's voice), ``stream()`` / ``synthesize()`` on the provider serve one request, with an
optional ``on_cancel`` sink of their own; :class:`LLMRequests` / :class:`TTSRequests` give the per-call
``open()`` of a provider whose requests share nothing within a call.

Every provider also has a lifecycle, the same for the three kinds: ``prewarm()`` (open what the first
request would otherwise pay for, e.g. a vendor socket; best effort), ``aclose()`` (close what it holds
across calls) and ``check()`` (is it reachable, authenticated, and its model still served; billing nothing
where the vendor allows: :class:`Verdict`, or None when there is nothing to judge). :class:`Lifecycle`
gives the do-nothing versions to a provider with nothing to warm, close or judge, so callers never probe.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
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


UsageSink: TypeAlias = Callable[[Usage], None]


@dataclass(frozen=True, slots=True)
class Switched:
    """A fallback chain moved the request (or the recognition) from provider ``old`` to ``new``: an event of
    the call, carried in the stream like usage."""

    capability: Literal["stt", "llm", "tts"]
    old: str
    new: str
    error: str


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


STTEvent: TypeAlias = SpeechStarted | Transcript | UtteranceEnd | Usage | Switched


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


LLMEvent: TypeAlias = TextDelta | ToolCall | Usage | Switched


class LLMStream(Protocol):
    """One call's use of a language model. Each :meth:`stream` is one request: text deltas and tool calls as
    they are produced, Usage at the end; a request stopped early reports its Usage to the stream's sink."""

    def stream(self, messages: Sequence[Message], tools: Sequence[ToolSpec] = ()) -> AsyncGenerator[LLMEvent, None]:
        ...

    async def close(self) -> None:
        """The call ended: release what the stream holds (usage still owed goes to the sink)."""


@runtime_checkable
class LLMProvider(_Lifecycle, Protocol):
    name: str

    async def open(self, on_usage: UsageSink) -> LLMStream:
        """The stream of one call; ``on_usage`` receives the usage of its requests stopped early."""
        ...

    def stream(
        self, messages: Sequence[Message], tools: Sequence[ToolSpec] = (), *, on_cancel: UsageSink | None = None
    ) -> AsyncGenerator[LLMEvent, None]:
        """One request outside a call; Usage at the end, or to ``on_cancel`` when stopped early."""
        ...


class _LLMRequester(Protocol):
    def stream(
        self, messages: Sequence[Message], tools: Sequence[ToolSpec] = (), *, on_cancel: UsageSink | None = None
    ) -> AsyncGenerator[LLMEvent, None]: ...


class LLMRequests:
    """``open()`` for a provider whose requests share nothing within a call (one HTTP request each)."""

    async def open(self: _LLMRequester, on_usage: UsageSink) -> LLMStream:
        return _RequestsLLMStream(self, on_usage)


class _RequestsLLMStream:
    def __init__(self, provider: _LLMRequester, on_usage: UsageSink) -> None:
        self._provider = provider
        self._on_usage = on_usage

    def stream(self, messages: Sequence[Message], tools: Sequence[ToolSpec] = ()) -> AsyncGenerator[LLMEvent, None]:
        return self._provider.stream(messages, tools, on_cancel=self._on_usage)

    async def close(self) -> None:
        return None


# ---- TTS --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AudioChunk:
    """Synthesized audio: mono int16 at ``sample_rate``; ``text`` is the text it speaks, when known."""

    samples: Int16Array = field(repr=False)
    sample_rate: int
    text: str | None = None


TTSEvent: TypeAlias = AudioChunk | Usage | Switched


class TTSStream(Protocol):
    """One call's voice. Each :meth:`synthesize` is one piece of text (a sentence or clause), its audio
    streamed as it is produced, Usage at the end; a request stopped early reports its Usage to the sink."""

    sample_rate: int

    def synthesize(self, text: str) -> AsyncGenerator[TTSEvent, None]: ...

    async def close(self) -> None:
        """The call ended: release what the stream holds (a socket bound to the call goes back or closes)."""


@runtime_checkable
class TTSProvider(_Lifecycle, Protocol):
    name: str
    sample_rate: int

    async def open(self, on_usage: UsageSink) -> TTSStream:
        """The voice of one call; ``on_usage`` receives the usage of its requests stopped early."""
        ...

    def synthesize(self, text: str, *, on_cancel: UsageSink | None = None) -> AsyncGenerator[TTSEvent, None]:
        """Audio for one piece of text outside a call, streamed as it is produced."""
        ...


class _Synthesizer(Protocol):
    sample_rate: int

    def synthesize(self, text: str, *, on_cancel: UsageSink | None = None) -> AsyncGenerator[TTSEvent, None]: ...


class TTSRequests:
    """``open()`` for a voice whose requests share nothing within a call (a local model, one HTTP request)."""

    async def open(self: _Synthesizer, on_usage: UsageSink) -> TTSStream:
        return RequestsTTSStream(self, on_usage)


class RequestsTTSStream:
    """A call's voice made of one request per text, each with the call's sink (a provider with something to
    settle at the call's end subclasses it and overrides :meth:`close`)."""

    def __init__(self, provider: _Synthesizer, on_usage: UsageSink) -> None:
        self._provider = provider
        self._on_usage = on_usage
        self.sample_rate = provider.sample_rate

    def synthesize(self, text: str) -> AsyncGenerator[TTSEvent, None]:
        return self._provider.synthesize(text, on_cancel=self._on_usage)

    async def close(self) -> None:
        return None


class LocalVoice(Lifecycle, TTSRequests):
    """The lifecycle of a local voice: nothing to warm or close, a per-call stream that is one request per
    piece of text; ``check()`` speaks a word, which proves the model (or the binary) runs on this machine,
    and costs nothing."""

    async def check(self: _Synthesizer) -> Verdict | None:
        gen = self.synthesize("OK.")
        async with contextlib.aclosing(gen):
            async for _ in gen:
                pass
        return None
