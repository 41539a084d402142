"""One reply being produced: brain -> clause chunker -> TTS -> silence trim -> held back or played.

Owns: the asyncio work of one reply of :class:`~parley.agent.core.ConversationCore` (``StartReply``):
streaming the brain into the chunker, each chunk through TTS, trimming the voice's silence (leading
silence, overlong pauses between sentences) so the caller hears the first word as soon as it exists,
and either holding the audio back (a speculative reply, until :meth:`ReplyRunner.commit`) or writing it
into the call's playback. It reports what happened to the core as events (stage marks, the audio of each
text piece, the whole text, PLAYBACK_START and the first audible sample, the end of playback) through
``emit``. Must not decide anything: cancelling, committing and breaking are the core's decisions.

A brain that says nothing for ``hold`` seconds after the reply may be heard (a slow or stalled vendor, which
the fallback chain fails over only at its first-token deadline) gets the hold line ("One moment.") spoken
meanwhile: the request goes on, the line is queued for the voice first and is part of the reply's text.

The first audible sample is PLAYBACK_START of the first chunk plus the silence still at the head of the
queued audio (the trimmer leaves a ~15 ms pad): that is the figure the caller's ear gets.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from parley.agent import core as c
from parley.agent.chunker import SentenceChunker
from parley.agent.port import PlaybackPort, UtterancePort
from parley.audio.pcm import Int16Array
from parley.audio.trim import SpeechTrimmer, first_audible_index
from parley.errors import CallGone, ParleyError
from parley.observe import timings as tm
from parley.providers.base import (
    AudioChunk,
    LLMEvent,
    LLMStream,
    Message,
    Switched,
    TextDelta,
    ToolCall,
    ToolSpec,
    TTSStream,
    Usage,
)

log = logging.getLogger("parley.reply")


@dataclass(slots=True)
class _Held:
    """Audio produced before the reply may be heard (speculative), in order."""

    pieces: list[tuple[Int16Array, int]] = field(default_factory=list)


class ReplyRunner:
    def __init__(
        self,
        reply_id: int,
        *,
        llm: LLMStream,
        tts: TTSStream,
        tools: Sequence[ToolSpec],
        playback: PlaybackPort,
        emit: Callable[[c.CoreEvent], None],
        report: Callable[[Usage | Switched], None],
        clock: Callable[[], float],
        gate: Callable[[], Awaitable[None]],
        messages: Sequence[Message] | None,
        fixed_text: str | None,
        held: bool,
        hold: tuple[str, float] | None = None,
    ) -> None:
        self.id = reply_id
        self._llm = llm
        self._tts = tts
        self._tools = tools
        self._playback = playback
        self._emit = emit
        self._report = report  # usage and fallback switches: the call's record
        self._clock = clock
        self._gate = gate  # resolves when no break is on its way (a break would flush what we queue)
        self._messages = messages
        self._fixed = fixed_text
        self._hold = hold  # (line, seconds) for a brain slow to start, or None
        self._committed = asyncio.Event()
        if not held:
            self._committed.set()
        self._held = _Held()
        self._write_lock = asyncio.Lock()
        self._trimmer: SpeechTrimmer | None = None
        self._lead_samples = 0  # queued samples before the first audible one
        self._audible_found = False
        self.utterance: UtterancePort | None = None
        self.task: asyncio.Task[None] | None = None

    def commit(self) -> None:
        """The core found the speculative reply right: what is held is queued now, the rest as it comes."""
        self._committed.set()

    def heard_ms(self) -> float:
        return self.utterance.heard_ms() if self.utterance is not None else 0.0

    async def run(self) -> None:
        try:
            text, calls = await self._produce()
            self._emit(c.ReplyText(self.id, text, tuple(calls)))
            await self._committed.wait()
            async with self._write_lock:
                await self._release_held()
                await self._finish_audio()
            await self._played()
        except Exception as exc:  # a bug must cost this reply, never the call's other tasks
            err = _first_error(exc)
            if isinstance(err, CallGone):
                return  # the call ended under us: the session's teardown records what happened
            if isinstance(err, ParleyError):
                self._emit(c.ReplyFailed(self.id, self._clock(), str(err)))
                return
            log.exception("reply %d failed", self.id)
            self._emit(c.ReplyFailed(self.id, self._clock(), repr(exc)))

    # ---- production --------------------------------------------------------------------------------

    async def _produce(self) -> tuple[str, list[ToolCall]]:
        chunks: asyncio.Queue[str | None] = asyncio.Queue()
        full: list[str] = []
        calls: list[ToolCall] = []
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._brain(chunks, full, calls))
            tg.create_task(self._voice(chunks))
            if not self._committed.is_set():
                tg.create_task(self._release_on_commit())
        return "".join(full).strip(), calls

    async def _brain(self, chunks: asyncio.Queue[str | None], full: list[str], calls: list[ToolCall]) -> None:
        if self._fixed is not None:
            full.append(self._fixed)
            await chunks.put(self._fixed)
            await chunks.put(None)
            return
        chunker = SentenceChunker()
        started = self._clock()
        first = True
        stream = self._llm.stream(list(self._messages or ()), self._tools)
        async with contextlib.aclosing(stream):  # a cancel closes the vendor stream at once
            ev = await self._first_event(stream, chunks, full)
            while ev is not None:
                match ev:
                    case TextDelta(text=text):
                        if first:
                            now = self._clock()
                            self._emit(c.ReplyMark(self.id, tm.LLM_FIRST_TOKEN, now, now - started))
                            first = False
                        full.append(text)
                        for piece in chunker.push(text):
                            self._emit(c.ReplyMark(self.id, tm.FIRST_CHUNK, self._clock()))
                            await chunks.put(piece)
                    case ToolCall():
                        if first:
                            self._emit(c.ReplyMark(self.id, tm.LLM_FIRST_TOKEN, self._clock()))
                            first = False
                        calls.append(ev)
                    case Usage() | Switched():
                        self._report(ev)
                ev = await anext(stream, None)
        for piece in chunker.flush():
            self._emit(c.ReplyMark(self.id, tm.FIRST_CHUNK, self._clock()))
            await chunks.put(piece)
        await chunks.put(None)

    async def _first_event(
        self, stream: AsyncGenerator[LLMEvent, None], chunks: asyncio.Queue[str | None], full: list[str]
    ) -> LLMEvent | None:
        """The brain's first event; with a hold line, its first text or tool call (usage and fallback switches
        before it are reported here, so a provider that failed fast does not stop the clock). If that keeps the
        caller waiting past the hold time, counted from when the reply may be heard (the commit, for a
        speculative one), the hold line goes to the voice meanwhile."""
        if self._hold is None:
            return await anext(stream, None)
        line, after_s = self._hold
        loop = asyncio.get_running_loop()
        due = loop.time() + after_s if self._committed.is_set() else None
        said = False
        committed: asyncio.Future[Any] | None = None
        nxt: asyncio.Future[LLMEvent | None] | None = None
        try:
            while True:
                nxt = asyncio.ensure_future(anext(stream, None))
                while not nxt.done() and not said:
                    if due is None:  # speculative: the caller is not waiting yet
                        committed = committed or asyncio.ensure_future(self._committed.wait())
                        either: set[asyncio.Future[Any]] = {nxt, committed}
                        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
                        if committed.done():
                            due = loop.time() + after_s
                        continue
                    await asyncio.wait({nxt}, timeout=max(0.0, due - loop.time()))
                    if not nxt.done():
                        said = True
                        self._emit(c.ReplyMark(self.id, tm.FIRST_CHUNK, self._clock()))
                        full.append(line + " ")
                        await chunks.put(line)
                ev = await nxt
                nxt = None
                if isinstance(ev, Usage | Switched):
                    self._report(ev)
                    continue
                return ev
        finally:
            if committed is not None:
                committed.cancel()
            if nxt is not None:  # cancelled while waiting: the step in flight must end before the stream closes
                nxt.cancel()
                while not nxt.done():
                    with contextlib.suppress(asyncio.CancelledError):
                        await asyncio.wait({nxt})
                if not nxt.cancelled():
                    nxt.exception()  # retrieved: the cancel that brought us here is what goes up

    async def _voice(self, chunks: asyncio.Queue[str | None]) -> None:
        first = True
        while (text := await chunks.get()) is not None:
            started = self._clock()
            synth = self._tts.synthesize(text)
            async with contextlib.aclosing(synth):
                async for ev in synth:
                    match ev:
                        case AudioChunk(samples=samples, sample_rate=rate):
                            if first:
                                now = self._clock()
                                self._emit(c.ReplyMark(self.id, tm.TTS_FIRST_AUDIO, now, now - started))
                                first = False
                            await self._audio(text, self._trim(rate).feed(samples), rate)
                        case Usage() | Switched():
                            self._report(ev)

    def _trim(self, rate: int) -> SpeechTrimmer:
        if self._trimmer is None or self._trimmer.rate != rate:
            self._trimmer = SpeechTrimmer(rate)
        return self._trimmer

    async def _audio(self, text: str, samples: Int16Array, rate: int) -> None:
        if not samples.size:
            return
        self._emit(c.ReplyAudio(self.id, text, 1000.0 * samples.size / rate))
        async with self._write_lock:
            if not self._committed.is_set():
                self._held.pieces.append((samples, rate))
                return
            await self._release_held()
            await self._write(samples, rate)

    async def _release_on_commit(self) -> None:
        await self._committed.wait()
        async with self._write_lock:
            await self._release_held()

    async def _release_held(self) -> None:
        pieces, self._held.pieces = self._held.pieces, []
        for samples, rate in pieces:
            await self._write(samples, rate)

    async def _write(self, samples: Int16Array, rate: int) -> None:
        if self.utterance is None:
            await self._gate()
            self.utterance = self._playback.utterance(rate)
            asyncio.get_running_loop().create_task(self._watch_start(rate)).add_done_callback(_quiet)
        if not self._audible_found:
            at = first_audible_index(samples, rate)
            if at is None:
                self._lead_samples += int(samples.size)
            else:
                self._lead_samples += at
                self._audible_found = True
        await self.utterance.write(samples)
        self._note_queued()

    async def _finish_audio(self) -> None:
        if self._trimmer is not None:
            tail = self._trimmer.finish()
            if tail.size:
                await self._write(tail, self._trimmer.rate)
        if self.utterance is not None:
            await self.utterance.finish()
            self._note_queued()

    def _note_queued(self) -> None:
        if self.utterance is not None and self.utterance.first_command_at is not None and not self._queued_sent:
            self._queued_sent = True
            self._emit(c.ReplyQueued(self.id, self.utterance.first_command_at))

    _queued_sent = False

    # ---- playing -----------------------------------------------------------------------------------

    async def _watch_start(self, rate: int) -> None:
        utt = self.utterance
        if utt is None:
            return
        started = await utt.wait_started()
        if started is not None:
            self._emit(c.ReplyStarted(self.id, started, started + self._lead_samples / rate))

    async def _played(self) -> None:
        utt = self.utterance
        if utt is None:
            self._emit(c.ReplyPlayed(self.id, self._clock(), 0.0, complete=True))
            return
        report = await utt.wait_played()
        self._emit(c.ReplyPlayed(self.id, self._clock(), report.heard_ms, report.complete))


def _first_error(exc: BaseException) -> BaseException:
    """The error inside the brain/voice TaskGroup's ExceptionGroup (the first one), or ``exc`` itself."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def _quiet(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("watching playback start failed: %s", task.exception())
