"""Fallback chains, one per capability: when a provider fails, the next one takes over mid-call.

Owns: the order in which providers are tried, remembering for a while that a provider failed (so the next
request does not pay its timeout again), logging and counting every switch, and what may be retried.
Must not know any vendor: it sees only the Protocols of :mod:`parley.providers.base` and ParleyErrors
(providers translate their library's exceptions at their own edge).

What is safe to retry:
- LLM and TTS requests are retried on the next provider only while nothing has been produced yet. Once
  text was spoken or audio queued, re-asking another provider would repeat or contradict it, so the error
  goes up (the session then apologises with a local voice).
- An STT stream is replaced mid-call: the audio of the turn in progress is buffered and replayed into the
  next provider's stream, so the caller does not have to repeat themselves. Besides failing outright, a
  recognizer can stop answering with its connection open (issue 10): after a finalize, the turn's closing
  transcript is due within ``final_timeout_s``, else the stream counts as failed and is replaced the same
  way (with no provider left, the chain's iterator raises :class:`AllProvidersFailed`). A failed stream is
  closed off the switch's path, so a hung peer's close handshake does not hold the next provider up, and
  the usage it reports then is passed on, marked failed.

A switch is told to the call as a :class:`~parley.providers.base.Switched` event in the same stream as the
audio, text and usage (``on_switch`` is an extra observer for whoever built the chain). A chain's per-call
stream opens each provider's own per-call stream the first time it needs that provider, and closes them all
with the call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Generic, Literal, Protocol, TypeVar

import numpy as np

from parley.audio.pcm import Int16Array
from parley.errors import ParleyError
from parley.providers.base import (
    Lifecycle,
    LLMEvent,
    LLMProvider,
    LLMStream,
    Message,
    STTEvent,
    STTProvider,
    STTStream,
    Switched,
    ToolSpec,
    Transcript,
    TTSEvent,
    TTSProvider,
    TTSStream,
    Usage,
    UsageSink,
)
from parley.providers.errors import ProviderError, ProviderTimeout

log = logging.getLogger("parley.fallback")

RETIRE_S = 2.0  # a failed STT stream's close and its last usage, awaited off the switch's path

E = TypeVar("E")
S = TypeVar("S", LLMStream, TTSStream)
SwitchHook = Callable[[str, str, str, BaseException], None]  # capability, from, to, error


class AllProvidersFailed(ProviderError):
    """Every provider of a capability failed for this request."""

    def __init__(self, capability: str, errors: Sequence[BaseException]) -> None:
        detail = "; ".join(f"{type(e).__name__}: {e}" for e in errors)
        super().__init__(f"all {capability} providers failed: {detail}", provider=capability, retryable=False)
        self.errors = list(errors)


@dataclass(slots=True)
class FallbackStats:
    switches: int = 0
    failures: dict[str, int] = field(default_factory=dict)


class Health:
    """Providers that failed recently are tried last until their cooldown ends (shared by all calls)."""

    def __init__(self, names: Sequence[str], cooldown_s: float, clock: Callable[[], float]) -> None:
        self.names = list(names)
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._failed_at: dict[int, float] = {}

    def order(self) -> list[int]:
        now = self._clock()
        healthy = [i for i in range(len(self.names)) if now - self._failed_at.get(i, -1e18) >= self.cooldown_s]
        cooling = sorted((i for i in range(len(self.names)) if i not in healthy), key=lambda i: self._failed_at[i])
        return healthy + cooling

    def failed(self, i: int) -> None:
        self._failed_at[i] = self._clock()

    def ok(self, i: int) -> None:
        self._failed_at.pop(i, None)


@dataclass(frozen=True, slots=True)
class _PumpFailure:
    """A provider stream failed; ``generation`` says which provider (a switch since makes it stale)."""

    error: BaseException
    generation: int


class _Named(Protocol):
    name: str

    async def prewarm(self) -> None: ...

    async def aclose(self) -> None: ...


P = TypeVar("P", bound=_Named)


class _Chain(Lifecycle, Generic[P]):
    capability: ClassVar[Literal["stt", "llm", "tts"]]

    def __init__(
        self,
        providers: Sequence[P],
        *,
        cooldown_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        on_switch: SwitchHook | None = None,
        first_output_s: float | None = None,
        patient: Sequence[int] = (),
    ) -> None:
        names = [p.name for p in providers]
        if not names:
            raise ValueError(f"a {self.capability} fallback chain needs at least one provider")
        self.providers = list(providers)
        self.health = Health(names, cooldown_s, clock)
        self.stats = FallbackStats()
        self._on_switch = on_switch
        # A provider that produced nothing (text, a tool call, audio; not Usage) this long after the request
        # failed: a queued or overloaded vendor stream can stay open sending only pings while the caller
        # waits in silence (issue 11). None: no deadline.
        self.first_output_s = first_output_s
        # providers the deadline does not apply to (local models): no connection to hang, and on a loaded box
        # their late answer beats the apology, which needs the same CPU
        self.patient = frozenset(patient)
        self.name = names[0] if len(names) == 1 else "fallback(" + ",".join(names) + ")"

    async def _first_working(
        self, start: Callable[[int], AsyncGenerator[E, None]]
    ) -> AsyncGenerator[E | Switched, None]:
        """Run ``start(i)`` for the healthiest provider; on failure before any output, the next one."""
        errors: list[BaseException] = []
        order = self.health.order()
        for pos, i in enumerate(order):
            produced = False
            gen = start(i)
            deadline = (None if self.first_output_s is None or i in self.patient
                        else asyncio.get_running_loop().time() + self.first_output_s)
            try:
                async with contextlib.aclosing(gen):
                    while True:
                        try:
                            async with asyncio.timeout_at(None if produced else deadline):
                                ev = await anext(gen)
                        except StopAsyncIteration:
                            break
                        except TimeoutError:
                            name = self.health.names[i]
                            raise ProviderTimeout(
                                f"{name}: nothing produced within {self.first_output_s:.1f} s", provider=name
                            ) from None
                        produced = produced or not isinstance(ev, Usage)
                        yield ev
            except ParleyError as exc:
                switched = self._failed(i, order[pos + 1] if pos + 1 < len(order) and not produced else None, exc)
                if produced:
                    raise
                errors.append(exc)
                if switched is not None:
                    yield switched
                continue
            self.health.ok(i)
            return
        raise AllProvidersFailed(self.capability, errors)

    async def aclose(self) -> None:
        """Close every provider of the chain (each closes what it holds across calls)."""
        for provider in self.providers:
            with contextlib.suppress(ParleyError):
                await provider.aclose()

    def _failed(self, i: int, nxt: int | None, exc: BaseException) -> Switched | None:
        """Provider ``i`` failed; the switch to ``nxt`` (if any) as the event the stream carries to the call."""
        names = self.health.names
        self.health.failed(i)
        self.stats.failures[names[i]] = self.stats.failures.get(names[i], 0) + 1
        return None if nxt is None else self._switched(names[i], names[nxt], exc)

    def _switched(self, old: str, new: str, exc: BaseException) -> Switched:
        self.stats.switches += 1
        log.warning("%s provider %s failed (%s); switching to %s", self.capability, old, exc, new)
        if self._on_switch is not None:
            self._on_switch(self.capability, old, new, exc)
        return Switched(self.capability, old, new, str(exc)[:300])


class _Links(Generic[S]):
    """The per-call streams of a chain's providers for one call, each opened the first time it is needed."""

    def __init__(self, opener: Callable[[int], Awaitable[S]]) -> None:
        self._opener: Callable[[int], Awaitable[S]] = opener
        self._streams: dict[int, S] = {}

    async def get(self, i: int) -> S:
        if i not in self._streams:
            self._streams[i] = await self._opener(i)  # a ParleyError here is provider i failing the request
        return self._streams[i]

    async def close(self) -> None:
        streams, self._streams = list(self._streams.values()), {}
        for stream in streams:
            with contextlib.suppress(ParleyError):
                await stream.close()


class FallbackLLM(_Chain[LLMProvider]):
    capability = "llm"

    async def open(self, on_usage: UsageSink) -> LLMStream:
        return FallbackLLMStream(self, on_usage)

    async def stream(
        self, messages: Sequence[Message], tools: Sequence[ToolSpec] = (), *, on_cancel: UsageSink | None = None
    ) -> AsyncGenerator[LLMEvent, None]:
        gen = self._first_working(lambda i: self.providers[i].stream(messages, tools, on_cancel=on_cancel))
        async with contextlib.aclosing(gen):
            async for ev in gen:
                yield ev


class FallbackLLMStream:
    """One call's brain through the chain: each request goes to the healthiest provider's per-call stream."""

    def __init__(self, chain: FallbackLLM, on_usage: UsageSink) -> None:
        self._chain = chain
        self._links: _Links[LLMStream] = _Links(lambda i: chain.providers[i].open(on_usage))

    async def stream(
        self, messages: Sequence[Message], tools: Sequence[ToolSpec] = ()
    ) -> AsyncGenerator[LLMEvent, None]:
        gen = self._chain._first_working(lambda i: self._one(i, messages, tools))
        async with contextlib.aclosing(gen):
            async for ev in gen:
                yield ev

    async def _one(
        self, i: int, messages: Sequence[Message], tools: Sequence[ToolSpec]
    ) -> AsyncGenerator[LLMEvent, None]:
        link = await self._links.get(i)
        gen = link.stream(messages, tools)
        async with contextlib.aclosing(gen):
            async for ev in gen:
                yield ev

    async def close(self) -> None:
        await self._links.close()


class FallbackTTS(_Chain[TTSProvider]):
    capability = "tts"

    def __init__(self, providers: Sequence[TTSProvider], **options: Any) -> None:
        super().__init__(providers, **options)
        self.sample_rate = providers[0].sample_rate

    async def prewarm(self) -> None:
        """Open the preferred provider's connection ahead of the first turn (best effort)."""
        for i in self.health.order()[:1]:
            with contextlib.suppress(ParleyError):
                await self.providers[i].prewarm()

    async def open(self, on_usage: UsageSink) -> TTSStream:
        return FallbackTTSStream(self, on_usage)

    async def synthesize(self, text: str, *, on_cancel: UsageSink | None = None) -> AsyncGenerator[TTSEvent, None]:
        gen = self._first_working(lambda i: self.providers[i].synthesize(text, on_cancel=on_cancel))
        async with contextlib.aclosing(gen):
            async for ev in gen:
                yield ev


class FallbackTTSStream:
    """One call's voice through the chain: each piece of text goes to the healthiest provider's per-call stream."""

    def __init__(self, chain: FallbackTTS, on_usage: UsageSink) -> None:
        self._chain = chain
        self.sample_rate = chain.sample_rate
        self._links: _Links[TTSStream] = _Links(lambda i: chain.providers[i].open(on_usage))

    async def synthesize(self, text: str) -> AsyncGenerator[TTSEvent, None]:
        gen = self._chain._first_working(lambda i: self._one(i, text))
        async with contextlib.aclosing(gen):
            async for ev in gen:
                yield ev

    async def _one(self, i: int, text: str) -> AsyncGenerator[TTSEvent, None]:
        link = await self._links.get(i)
        gen = link.synthesize(text)
        async with contextlib.aclosing(gen):
            async for ev in gen:
                yield ev

    async def close(self) -> None:
        await self._links.close()


class FallbackSTT(_Chain[STTProvider]):
    capability = "stt"

    def __init__(self, providers: Sequence[STTProvider], *, final_timeout_s: float | None = None,
                 **options: Any) -> None:
        super().__init__(providers, **options)
        # After a finalize, the turn's closing transcript must come within this long (None: no deadline).
        self.final_timeout_s = final_timeout_s

    async def open(self, *, sample_rate: int, language: str | None = None) -> STTStream:
        stream = FallbackSTTStream(self, sample_rate, language)
        await stream.start()
        return stream


class FallbackSTTStream:
    """Forwards to the current provider's stream; on failure opens the next and replays the turn's audio."""

    def __init__(self, chain: FallbackSTT, sample_rate: int, language: str | None) -> None:
        self._chain = chain
        self._rate = sample_rate
        self._language = language
        self._inner: STTStream | None = None
        self._index = -1
        self._turn_audio: list[Int16Array] = []
        self._events: asyncio.Queue[STTEvent | _PumpFailure | None] = asyncio.Queue()
        self._pump: asyncio.Task[None] | None = None
        self._closed = False
        self._finalize_pending = False
        # Audio goes out in order, also across a switch: the replay of the turn and live frames must not
        # interleave (whisper heard "two. stay" for "Tuesday" when they did), and two failures noticed at
        # once (the reader and a send) switch once, not twice.
        self._lock = asyncio.Lock()
        self._generation = 0  # bumped by every switch
        # audio after a finalize belongs to the next turn. A provider may close a turn by itself (Deepgram
        # speech_final) and answer the Finalize with nothing, so the answer cannot be what ends the turn here:
        # a switch during the next turn once replayed the old turn's "finalize" halfway through the new one
        # (whisper heard "Tuesday, please" as "two." + "stay").
        self._after_finalize = False
        # the result deadline: finalizes whose closing transcript has not come, and the timer for the oldest
        self._finals_owed = 0
        self._final_timer: asyncio.TimerHandle | None = None
        # the provider closed the turn by itself (a closing transcript with no finalize outstanding) and the
        # caller has not resumed since: it may answer the finalize with nothing, and owes nothing
        self._closed_by_provider = False
        self._retiring: set[asyncio.Task[None]] = set()  # failed streams being closed, off the switch's path

    async def start(self, exclude: set[int] | None = None) -> None:
        errors: list[BaseException] = []
        tried = exclude or set()
        for i in self._chain.health.order():
            if i in tried:
                continue
            try:
                inner = await self._chain.providers[i].open(sample_rate=self._rate, language=self._language)
            except ParleyError as exc:
                self._chain._failed(i, None, exc)
                errors.append(exc)
                tried.add(i)
                continue
            self._inner, self._index = inner, i
            self._pump = asyncio.create_task(
                self._pump_events(inner, self._generation), name=f"stt-{self._chain.health.names[i]}"
            )
            return
        raise AllProvidersFailed("stt", errors)

    async def _pump_events(self, inner: STTStream, generation: int) -> None:
        try:
            async for ev in inner:
                await self._events.put(ev)
        except ParleyError as exc:
            await self._events.put(_PumpFailure(exc, generation))
            return
        if not self._closed:  # the provider ended the stream on its own: treat it as a failure
            name = self._chain.health.names[self._index]
            ended = ProviderError(f"{name} stream ended unexpectedly", provider=name, retryable=True)
            await self._events.put(_PumpFailure(ended, generation))

    async def _switch(self, exc: BaseException, generation: int | None = None) -> None:
        async with self._lock:
            if generation is not None and generation != self._generation:
                return  # another failure of the same provider already switched
            await self._switch_locked(exc)
            self._generation += 1

    async def _switch_locked(self, exc: BaseException) -> None:
        failed = self._index
        self._chain._failed(failed, None, exc)
        self._cancel_final_timer()
        if self._inner is not None:
            task = asyncio.create_task(self._retire(self._inner, self._pump), name="stt-retire")
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)
        old = self._index
        try:
            await self.start(exclude={failed})
        except AllProvidersFailed as total:
            raise AllProvidersFailed("stt", [exc, *total.errors]) from exc
        names = self._chain.health.names
        self._events.put_nowait(self._chain._switched(names[old], names[self._index], exc))  # told to the call
        assert self._inner is not None
        for samples in self._turn_audio:  # the caller need not repeat the turn in progress
            await self._inner.send_audio(samples)
        if self._finalize_pending:
            await self._inner.finalize()
            if self._finals_owed:
                self._arm_final_timer(self._generation + 1)  # the new provider's own deadline

    async def _retire(self, inner: STTStream, pump: asyncio.Task[None] | None) -> None:
        """Close a failed provider's stream and pass on the usage it reports at the end (bounded)."""
        if pump is not None:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pump
        with contextlib.suppress(TimeoutError, Exception):
            async with asyncio.timeout(RETIRE_S):
                await inner.close()
                async for ev in inner:
                    if isinstance(ev, Usage):
                        await self._events.put(ev if ev.failed else replace(ev, failed=True))

    def _arm_final_timer(self, generation: int) -> None:
        timeout = self._chain.final_timeout_s
        if timeout is None:
            return
        self._cancel_final_timer()
        self._final_timer = asyncio.get_running_loop().call_later(timeout, self._final_overdue, generation)

    def _cancel_final_timer(self) -> None:
        if self._final_timer is not None:
            self._final_timer.cancel()
            self._final_timer = None

    def _final_overdue(self, generation: int) -> None:
        self._final_timer = None
        if generation != self._generation or self._closed:
            return
        name = self._chain.health.names[self._index]
        timeout = self._chain.final_timeout_s or 0.0
        stalled = ProviderTimeout(f"{name}: no final transcript within {timeout:.1f} s of the end of the turn",
                                  provider=name)
        self._events.put_nowait(_PumpFailure(stalled, generation))

    async def send_audio(self, samples: Int16Array) -> None:
        async with self._lock:
            if self._after_finalize:
                self._turn_audio.clear()
                self._finalize_pending = self._after_finalize = False
            self._turn_audio.append(samples.copy() if isinstance(samples, np.ndarray) else samples)
            assert self._inner is not None
            generation = self._generation
            try:
                await self._inner.send_audio(samples)
                return
            except ParleyError as exc:
                failure = exc
        await self._switch(failure, generation)

    def pause_hint(self) -> None:
        if self._inner is not None:
            self._inner.pause_hint()

    def speech_resumed(self) -> None:
        self._closed_by_provider = False  # words after the provider's own close: the finalize must bring them
        if self._inner is not None:
            self._inner.speech_resumed()

    async def finalize(self) -> None:
        async with self._lock:
            self._finalize_pending = self._after_finalize = True
            if not self._closed_by_provider:
                self._finals_owed += 1
                if self._final_timer is None:
                    self._arm_final_timer(self._generation)
            self._closed_by_provider = False
            assert self._inner is not None
            generation = self._generation
            try:
                await self._inner.finalize()
                return
            except ParleyError as exc:
                failure = exc
        await self._switch(failure, generation)

    async def close(self) -> None:
        """Close the current provider's stream and pass on what it says last (vendors report usage then)."""
        self._closed = True
        self._cancel_final_timer()
        if self._inner is not None:
            with contextlib.suppress(ParleyError):
                await self._inner.close()
        if self._pump is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                async with asyncio.timeout(2.0):
                    await asyncio.shield(self._pump)
            self._pump.cancel()
        if self._retiring:
            await asyncio.wait(set(self._retiring), timeout=RETIRE_S)
        await self._events.put(None)

    def __aiter__(self) -> AsyncIterator[STTEvent]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[STTEvent]:
        while True:
            item = await self._events.get()
            if item is None:
                return
            if isinstance(item, _PumpFailure):
                await self._switch(item.error, item.generation)
                continue
            if isinstance(item, Transcript) and item.speech_final:
                self._turn_audio.clear()  # the turn is transcribed: nothing to replay any more
                self._finalize_pending = False
                if self._finals_owed:
                    self._finals_owed -= 1
                    self._cancel_final_timer()
                    if self._finals_owed:
                        self._arm_final_timer(self._generation)
                else:
                    self._closed_by_provider = True
            yield item
