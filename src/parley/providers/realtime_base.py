"""The speech-to-speech provider interface: one model that hears the caller and speaks back.

Owns: the Protocols a realtime model client implements (:class:`RealtimeProvider` opens one
:class:`RealtimeStream` per call) and the frozen events such a stream yields, in parley's vocabulary, not
a vendor's: model audio (int16 at a stated rate, per assistant item), transcripts of both sides, the
model's own voice-activity verdicts, tool calls, the end of a response, and :class:`~parley.providers.base.Usage`.
Must not know any vendor, the call, FreeSWITCH or turns. Like :mod:`parley.providers.base`, providers
depend only on this module, :mod:`parley.audio` and :mod:`parley.errors`.

A stream is an async iterator; a failure (dropped socket, in-band fatal error, malformed message) is
raised from it once, after a ``Usage(failed=True)`` where something was consumed, so the conversation can
switch to the pipeline exactly once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeAlias

from parley.audio.pcm import Int16Array
from parley.providers.base import ToolCall, ToolSpec, Usage, Verdict
from parley.providers.errors import ProviderError


@dataclass(frozen=True, slots=True)
class RealtimeConfig:
    """What a call asks of the model. ``call_rate``: the caller audio's rate (L16 from the stream);
    ``codec``: the call's codec name as FreeSWITCH reports it (``PCMU``/``PCMA`` allow G.711 end to end);
    ``server_vad``: the model detects turns (else parley commits each turn itself)."""

    instructions: str
    tools: Sequence[ToolSpec] = ()
    call_rate: int = 8000
    codec: str | None = None
    server_vad: bool = True


@dataclass(frozen=True, slots=True)
class ModelAudio:
    """Audio of one assistant item, in order; ``item_id`` names the item a truncation cuts."""

    item_id: str
    samples: Int16Array = field(repr=False)
    sample_rate: int


@dataclass(frozen=True, slots=True)
class ModelText:
    """The transcript of what the model says in ``item_id``: a delta, or the whole text when ``final``."""

    item_id: str
    text: str
    final: bool = False


@dataclass(frozen=True, slots=True)
class CallerText:
    """The transcript of the caller's turn (the model's own transcription, guidance only)."""

    text: str
    final: bool = True


@dataclass(frozen=True, slots=True)
class CallerSpeech:
    """The model's VAD heard the caller start (``started``) or stop speaking."""

    started: bool


@dataclass(frozen=True, slots=True)
class ModelInterrupted:
    """The vendor stopped its own response because the caller spoke (Gemini ``interrupted``)."""


@dataclass(frozen=True, slots=True)
class ModelToolCall:
    call: ToolCall


@dataclass(frozen=True, slots=True)
class ResponseDone:
    """The model finished (or abandoned, ``cancelled``) the response in progress."""

    cancelled: bool = False


RealtimeEvent: TypeAlias = (
    ModelAudio | ModelText | CallerText | CallerSpeech | ModelInterrupted | ModelToolCall | ResponseDone | Usage
)


class RealtimeStream(Protocol):
    """One call's connection to the model."""

    async def send_audio(self, samples: Int16Array) -> None:
        """Caller audio at ``RealtimeConfig.call_rate``, as it arrives."""

    async def start_turn(self) -> None:
        """parley's turn machine heard the caller start (manual activity detection only)."""

    async def end_turn(self) -> None:
        """parley's turn machine ended the caller's turn: the model answers now."""

    async def say(self, text: str) -> None:
        """Have the model speak ``text`` (the greeting) as its next response."""

    async def interrupt(self, item_id: str | None, heard_ms: float, heard_text: str) -> None:
        """The caller barged in: stop the response and cut ``item_id`` to what the caller heard."""

    async def tool_result(self, call: ToolCall, output: str, *, respond: bool) -> None:
        """The result of a tool call; ``respond``: let the model speak again after it."""

    async def close(self) -> None: ...

    def __aiter__(self) -> AsyncIterator[RealtimeEvent]: ...


class RealtimeProvider(Protocol):
    name: str
    model: str

    async def open(self, config: RealtimeConfig) -> RealtimeStream: ...

    async def check(self) -> Verdict | None:
        """Reachable, authenticated, model served? (``parley providers check``; bills nothing.)"""


class EventQueue:
    """What a stream's reader task produced, handed out in order by ``next()``: ``None`` ends the stream, a
    :class:`ProviderError` is raised once (the stream is over after it). ``done`` is also set by a reader that
    failed, so that the stream stops taking audio before its error is read."""

    def __init__(self) -> None:
        self._items: asyncio.Queue[RealtimeEvent | ProviderError | None] = asyncio.Queue()
        self.done = False

    def put(self, item: RealtimeEvent | ProviderError | None) -> None:
        self._items.put_nowait(item)

    async def next(self) -> RealtimeEvent:
        if self.done and self._items.empty():
            raise StopAsyncIteration
        item = await self._items.get()
        if item is None:
            self.done = True
            raise StopAsyncIteration
        if isinstance(item, ProviderError):
            self.done = True
            raise item
        return item
