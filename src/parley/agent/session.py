"""One call's conversation: turn-taking, streaming STT -> brain -> chunker -> TTS -> playback, barge-in.

Owns: the per-call tasks and the order of operations of a turn, the timing of every stage, what is
recorded (turns as heard, barge-ins, usage), and the one log line per turn (its words wrapped in the
:mod:`parley.observe.redact` markers, so the log handler decides whether they show). Must not know which
vendors are behind the providers, how audio reaches FreeSWITCH (that is
:class:`~parley.freeswitch.call.Call`'s playback), or how turns are decided (that is the pure
:mod:`parley.turns.machine`; this module only feeds it and carries out what it says).

Barge-in is one action: cancel the response task (LLM + TTS stop at once), ``uuid_break <uuid> all``, and
cut the assistant's last message to what the PLAYBACK events say the caller heard.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from array import array
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from parley.agent.chunker import SentenceChunker
from parley.agent.engine import Engine
from parley.agent.memory import Conversation, SpokenSegment, heard_text
from parley.agent.tools import TERMINAL_TOOLS, tool_specs
from parley.audio.pcm import Int16Array, from_bytes
from parley.errors import CallGone, ParleyError
from parley.freeswitch.call import Call, CallLog, Dtmf, Hangup, StreamLost
from parley.freeswitch.playback import Utterance
from parley.observe import timings as tm
from parley.observe import usage as usage_sink
from parley.observe.redact import CallerText
from parley.providers.base import AudioChunk, STTStream, TextDelta, ToolCall, Transcript, Usage
from parley.turns import events as turns
from parley.turns.machine import TurnMachine

log = logging.getLogger("parley.session")

PREROLL_S = 0.3  # audio before the detected onset that still goes to STT (soft word starts)
CONTEXT_S = 8.0  # audio kept for the end-of-turn model
STT_FINAL_TIMEOUT_S = 5.0
HANGUP_FINAL_TIMEOUT_S = 1.5  # a caller who hangs up mid-sentence: how long their last words may take to transcribe


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
    utterance: Utterance | None = None

    def as_dict(self) -> dict[str, object]:
        return {
            "index": self.index,
            "caller": self.caller,
            "agent": self.agent,
            "agent_full": self.agent_full,
            "barge_in": self.barge_in,
            "endpoint_reason": self.endpoint_reason,
            "timings_ms": self.timings.ms(),
            "voice_to_voice_ms": self.timings.voice_to_voice_ms,
            "overhead_ms": self.timings.overhead_ms(),
            "barge_in_timings": self.barge.as_dict() if self.barge else None,
            "tool_calls": [{"name": c.name, "arguments": dict(c.arguments)} for c in self.tool_calls],
        }


@dataclass(slots=True)
class _Reply:
    """The reply being produced: what has been turned into audio so far, for truncation."""

    turn: TurnRecord
    segments: list[SpokenSegment] = field(default_factory=list)
    current_text: str = ""
    current_ms: float = 0.0
    utterance: Utterance | None = None
    task: asyncio.Task[None] | None = None
    recorded: bool = False  # its text is in the conversation (replaced by the heard part on barge-in)


class CallSession:
    def __init__(
        self,
        call: Call,
        engine: Engine,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_turn: Callable[[TurnRecord], Awaitable[None]] | None = None,
    ) -> None:
        self.call = call
        self.log = CallLog(log, {"call": call.uuid})
        self.on_turn = on_turn  # a finished turn (answered, interrupted or failed): records write it now
        self.engine = engine
        self._clock = clock
        self.conversation = Conversation(engine.conversation.system_prompt)
        self.turns: list[TurnRecord] = []
        self._logged: list[TurnRecord] = []  # turns whose log line is out (a superseded reply may finish late)
        # replies whose turn is not yet recorded: a reply cut short (superseded, hangup) is recorded as it stands
        self._unrecorded: dict[int, _Reply] = {}
        self.usage: list[Usage] = []
        self.greeting: _Reply | None = None
        self._machine = TurnMachine(engine.policy)
        self._rate = call.stream_rate
        self._vad = engine.new_vad(self._rate)
        self._ring: deque[Int16Array] = deque(maxlen=int(CONTEXT_S * 50))
        self._in_turn = False
        self._turn: TurnRecord | None = None
        self._reply: _Reply | None = None
        self._stt: STTStream | None = None
        self._finals: list[str] = []
        self._final_event = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._dtmf: list[str] = []
        self._dtmf_task: asyncio.Task[None] | None = None
        self._ended = False
        self.failed = False  # the providers failed and the caller got the apology
        self.hung_up_by_agent = False
        self.events: list[tuple[float, str, dict[str, str]]] = []  # e.g. provider fallback switches
        self._tools = tool_specs(engine.conversation)
        # frame lag: processing time minus the frame's due time on the 20 ms grid (benchmarks read it)
        self.frame_lag_ms: array[float] = array("f")
        self._first_frame: tuple[int, float] | None = None

    # ---- lifecycle -----------------------------------------------------------------------------------

    async def run(self) -> None:
        usage_sink.CURRENT.set(self.usage.append)  # cancelled requests' usage (see parley.observe.usage)
        usage_sink.EVENTS.set(lambda kind, detail: self.events.append((self._clock(), kind, detail)))
        self._stt = await self.engine.stt.open(sample_rate=self._rate)
        stt_task = self._spawn(self._stt_events())
        self._spawn(self._call_events())
        self._spawn(self._ticks())
        self._spawn(self._prewarm())
        try:
            text = self.engine.conversation.greeting
            if text:
                self.greeting = self._start_reply(TurnRecord(index=0), fixed_text=text)
            await self._audio_loop()
        finally:
            self._ended = True
            for task in list(self._tasks):
                if task is not stt_task:
                    task.cancel()
            if self._reply and self._reply.task:
                self._reply.task.cancel()
            # the caller hung up mid-sentence: what they said so far is still theirs to be recorded
            unfinished = self._turn if self._in_turn else None
            if unfinished is not None:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(HANGUP_FINAL_TIMEOUT_S):
                        await self._stt.finalize()
                        await self._final_event.wait()
            # close STT first and let its consumer take the last events: vendors report usage on close
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2.0):
                    await self._stt.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    await asyncio.shield(stt_task)
            stt_task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            # the caller hung up mid-turn (or a superseded turn's task never ran): record them as they stand
            for reply in list(self._unrecorded.values()):
                await self._record_cut_short(reply, "hangup")
            if unfinished is not None:
                await self._record_unfinished_speech(unfinished)

    async def _prewarm(self) -> None:
        """Cloud TTS: open the vendor socket now, so the first reply does not pay a TLS handshake."""
        warm = getattr(self.engine.tts, "prewarm", None)
        if warm is not None:
            try:
                await warm()
            except ParleyError as exc:
                self.log.warning("could not prewarm %s: %s", self.engine.tts.name, exc)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ---- caller audio -> turn machine ------------------------------------------------------------

    async def _audio_loop(self) -> None:
        async for frame in self.call.frames():
            samples = from_bytes(frame.pcm)
            dur = samples.size / self._rate
            if self._first_frame is None:
                self._first_frame = (frame.seq, frame.t)
            seq0, t0 = self._first_frame
            self.frame_lag_ms.append(1000.0 * (self._clock() - (t0 + (frame.seq - seq0) * dur)))
            self._ring.append(samples)
            if self._in_turn and self._stt is not None:
                await self._stt.send_audio(samples)
            result = await self._vad.aprocess(samples)  # Silero batched with the other calls' frames
            await self._handle(turns.VadFrame(t=frame.t, speech=result.speech, prob=result.prob, dur=dur))

    async def _handle(self, event: turns.TurnEvent) -> None:
        for action in self._machine.feed(event):
            await self._act(action)

    async def _ticks(self) -> None:
        """Timers must fire even if caller audio stalls (frames normally arrive every 20 ms)."""
        while True:
            await asyncio.sleep(0.1)
            deadline = self._machine.next_deadline()
            now = self._clock()
            if deadline is not None and now >= deadline:
                await self._handle(turns.Tick(t=now))

    async def _act(self, action: turns.TurnAction) -> None:
        match action:
            case turns.UserSpeechStarted(onset_t=onset):
                await self._begin_turn(onset)
            case turns.UserPaused():
                if self._stt is not None:
                    self._stt.pause_hint()
            case turns.UserResumed():
                if self._stt is not None:
                    self._stt.speech_resumed()
            case turns.ScoreTurn():
                if self.engine.smart_turn is not None:
                    self._spawn(self._score(action))
            case turns.BargeIn(t=t, onset_t=onset):
                await self._barge_in(t, onset)
            case turns.EndOfTurn(t=t, speech_end_t=speech_end, reason=reason):
                await self._end_turn(t, speech_end, reason)
            case turns.IdlePrompt():
                self._start_reply(self._new_turn(), fixed_text=self.engine.conversation.idle_prompt)
            case turns.IdleHangup():
                self._start_reply(self._new_turn(), fixed_text=self.engine.conversation.goodbye, then_hangup=True)

    async def _begin_turn(self, onset: float) -> None:
        if self._in_turn:
            return
        self._in_turn = True
        self._turn = self._new_turn()
        self._finals.clear()
        self._final_event.clear()
        if self._stt is not None:
            n = max(1, int((self._clock() - onset + PREROLL_S) * 50))
            for samples in list(self._ring)[-n:]:
                await self._stt.send_audio(samples)

    def _new_turn(self) -> TurnRecord:
        turn = TurnRecord(index=len(self.turns) + 1)
        self.turns.append(turn)
        return turn

    async def _score(self, action: turns.ScoreTurn) -> None:
        model = self.engine.smart_turn
        assert model is not None
        audio = np.concatenate(list(self._ring)) if self._ring else np.zeros(0, np.int16)
        p = await asyncio.to_thread(model.predict, audio, self._rate)
        await self._handle(turns.TurnScore(t=self._clock(), pause_id=action.pause_id, p=p))

    async def _end_turn(self, t: float, speech_end: float, reason: str) -> None:
        turn = self._turn
        self._in_turn = False
        if turn is None or self._stt is None:
            return
        turn.endpoint_reason = reason
        turn.timings.mark(tm.SPEECH_END, speech_end)
        turn.timings.mark(tm.ENDPOINT, t)
        await self._stt.finalize()
        try:
            async with asyncio.timeout(STT_FINAL_TIMEOUT_S):
                await self._final_event.wait()
        except TimeoutError:
            self.log.warning("no final transcript within %.0f s", STT_FINAL_TIMEOUT_S)
        turn.timings.mark(tm.STT_FINAL, self._clock())
        text = " ".join(s for s in self._finals if s).strip()
        self._finals.clear()
        self._final_event.clear()
        turn.caller = text
        if not text:
            self.turns.remove(turn)
            return
        self.conversation.add_user(text)
        self._start_reply(turn)

    async def _stt_events(self) -> None:
        assert self._stt is not None
        try:
            await self._consume_stt(self._stt)
        except ParleyError as exc:
            self._final_event.set()
            if self._ended:  # the call is over: nobody to apologise to
                self.log.warning("speech recognition failed during teardown: %s", exc)
                return
            self.log.error("speech recognition failed: %s", exc)
            await self._apologise(self._new_turn())

    async def _consume_stt(self, stt: STTStream) -> None:
        async for ev in stt:
            match ev:
                case Transcript(final=True, text=text, speech_final=sf):
                    self._finals.append(text)
                    if sf:
                        self._final_event.set()
                case Usage():
                    self.usage.append(ev)
                case _:
                    pass

    # ---- call events -----------------------------------------------------------------------------

    async def _call_events(self) -> None:
        while True:
            ev = await self.call.events.get()
            match ev:
                case Dtmf(digit=d):
                    if self._reply is not None and self._reply.utterance and not self._reply.utterance.done:
                        await self._barge_in(self._clock(), self._clock())
                    self._dtmf.append(d)
                    if self._dtmf_task is not None:
                        self._dtmf_task.cancel()
                    self._dtmf_task = self._spawn(self._dtmf_done(immediate=d == "#"))
                case Hangup() | StreamLost():
                    return

    async def _dtmf_done(self, *, immediate: bool) -> None:
        if not immediate:
            await asyncio.sleep(self.engine.conversation.dtmf_gap_s)
        digits, self._dtmf = "".join(self._dtmf), []
        turn = self._new_turn()
        turn.caller = f"[DTMF {digits}]"
        now = self._clock()
        for stage in (tm.SPEECH_END, tm.ENDPOINT, tm.STT_FINAL):
            turn.timings.mark(stage, now)
        self.conversation.add_user(turn.caller)
        self._start_reply(turn)

    # ---- replies ---------------------------------------------------------------------------------

    def _start_reply(self, turn: TurnRecord, *, fixed_text: str | None = None, then_hangup: bool = False) -> _Reply:
        if self._reply is not None and self._reply.task is not None and not self._reply.task.done():
            self._reply.task.cancel()
            self._spawn(self._record_cut_short(self._reply, "superseded"))  # e.g. the caller went on talking
        for action in self._machine.feed(turns.AgentTurnTaken(t=self._clock())):
            self.log.debug("ignoring %s while taking the turn", action)
        reply = _Reply(turn)
        if turn.index > 0:
            self._unrecorded[turn.index] = reply
        reply.task = self._spawn(self._reply_task(reply, fixed_text, then_hangup))
        self._reply = reply
        return reply

    async def _reply_task(self, reply: _Reply, fixed_text: str | None, then_hangup: bool) -> None:
        turn = reply.turn
        chunks: asyncio.Queue[str | None] = asyncio.Queue()
        tool_calls: list[ToolCall] = []
        full: list[str] = []

        async def brain() -> None:
            if fixed_text is not None:
                full.append(fixed_text)
                await chunks.put(fixed_text)
                await chunks.put(None)
                return
            chunker = SentenceChunker()
            started = self._clock()
            stream = self.engine.llm.stream(self.conversation.for_llm(), self._tools)
            async with contextlib.aclosing(stream):  # a barge-in closes the vendor stream at once
                async for ev in stream:
                    match ev:
                        case TextDelta(text=text):
                            if tm.LLM_FIRST_TOKEN not in turn.timings.marks:
                                now = self._clock()
                                turn.timings.mark(tm.LLM_FIRST_TOKEN, now)
                                turn.timings.add_provider_time(tm.LLM_FIRST_TOKEN, now - started)
                            full.append(text)
                            for piece in chunker.push(text):
                                turn.timings.mark(tm.FIRST_CHUNK, self._clock())
                                await chunks.put(piece)
                        case ToolCall():
                            turn.timings.mark(tm.LLM_FIRST_TOKEN, self._clock())
                            tool_calls.append(ev)
                        case Usage():
                            self.usage.append(ev)
            for piece in chunker.flush():
                turn.timings.mark(tm.FIRST_CHUNK, self._clock())
                await chunks.put(piece)
            await chunks.put(None)

        async def voice() -> None:
            while (text := await chunks.get()) is not None:
                reply.current_text, reply.current_ms = text, 0.0
                started = self._clock()
                synth = self.engine.tts.synthesize(text)
                async with contextlib.aclosing(synth):
                    async for ev in synth:
                        match ev:
                            case AudioChunk(samples=samples, sample_rate=rate):
                                if tm.TTS_FIRST_AUDIO not in turn.timings.marks:
                                    now = self._clock()
                                    turn.timings.mark(tm.TTS_FIRST_AUDIO, now)
                                    turn.timings.add_provider_time(tm.TTS_FIRST_AUDIO, now - started)
                                if reply.utterance is None:
                                    reply.utterance = self.call.playback.utterance(rate)
                                    turn.utterance = reply.utterance
                                await reply.utterance.write(samples)
                                reply.current_ms += 1000.0 * samples.size / rate
                                self._note_first_command(reply)
                            case Usage():
                                self.usage.append(ev)
                reply.segments.append(SpokenSegment(text, reply.current_ms))
                reply.current_text, reply.current_ms = "", 0.0
            if reply.utterance is not None:
                await reply.utterance.finish()
                self._note_first_command(reply)

        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(brain())
                tg.create_task(voice())
            turn.agent_full = "".join(full).strip()
            turn.tool_calls = tool_calls
            self.conversation.add_assistant(turn.agent_full, tool_calls)
            reply.recorded = True
            utt = reply.utterance
            if utt is not None:
                report = await utt.wait_played()
                if report.first_start_at is not None:
                    turn.timings.mark(tm.PLAYBACK_START, report.first_start_at)
                turn.agent = turn.agent_full if report.complete else heard_text(reply.segments, report.heard_ms)[0]
                await self._handle(turns.AgentDone(t=self._clock()))
            await self._turn_done(turn)
            await self._run_tools(turn, tool_calls, then_hangup)
        except* CallGone:
            pass
        except* ParleyError as group:
            if not self._ended:
                self.log.error("reply failed: %s", group.exceptions[0])
                self._spawn(self._apologise(reply.turn))

    def _note_first_command(self, reply: _Reply) -> None:
        utt = reply.utterance
        if utt is None or not utt.chunks or utt.chunks[0].queued_at is None:
            return
        if tm.PLAYBACK_COMMAND not in reply.turn.timings.marks:
            reply.turn.timings.mark(tm.PLAYBACK_COMMAND, utt.chunks[0].queued_at)
            for action in self._machine.feed(turns.AgentSpeaking(t=self._clock())):
                self.log.debug("ignoring %s when the agent starts speaking", action)

    async def _run_tools(self, turn: TurnRecord, calls: Sequence[ToolCall], then_hangup: bool) -> None:
        for call in calls:
            if call.name not in TERMINAL_TOOLS:
                self.conversation.add_tool_result(call, "unknown tool")
                continue
            if call.name == "hangup":
                self.conversation.add_tool_result(call, "ok")
                self.hung_up_by_agent = True
                await self.call.hangup("NORMAL_CLEARING")
                return
            if call.name == "transfer":
                dest = str(call.arguments.get("destination") or self.engine.conversation.transfer_destination)
                self.conversation.add_tool_result(call, f"transferring to {dest}")
                await self.call.transfer(dest)
                return
        if then_hangup:
            self.hung_up_by_agent = True
            await self.call.hangup("NORMAL_CLEARING")

    async def _record_unfinished_speech(self, turn: TurnRecord) -> None:
        text = " ".join(s for s in self._finals if s).strip()
        self._finals.clear()
        if not text:
            if turn in self.turns:
                self.turns.remove(turn)
            return
        turn.caller = text
        turn.endpoint_reason = "hangup"
        await self._turn_done(turn, "hung up mid-sentence")

    async def _record_cut_short(self, reply: _Reply, outcome: str) -> None:
        """A reply that will not finish: record its turn with what the caller heard of it (maybe nothing)."""
        if self._unrecorded.get(reply.turn.index) is not reply:
            return  # recorded already (it finished, was barged in on, or failed)
        turn = reply.turn
        segments = list(reply.segments)
        if reply.current_text:
            segments.append(SpokenSegment(reply.current_text, reply.current_ms))
        if not turn.agent_full:
            turn.agent_full = " ".join(seg.text for seg in segments).strip()
        utt = reply.utterance
        if utt is not None:
            if utt.chunks and utt.chunks[0].started_at is not None:
                turn.timings.mark(tm.PLAYBACK_START, utt.chunks[0].started_at)
            turn.agent = heard_text(segments, utt.heard_ms())[0]
        await self._turn_done(turn, outcome)

    async def _turn_done(self, turn: TurnRecord, outcome: str = "") -> None:
        self._unrecorded.pop(turn.index, None)
        self._log_turn(turn, outcome)
        if self.on_turn is not None and turn.index > 0:
            try:
                await self.on_turn(turn)
            except Exception:  # a record that cannot be written must never break the call
                self.log.exception("recording turn %d failed", turn.index)

    def _log_turn(self, turn: TurnRecord, outcome: str = "") -> None:
        """One line per finished turn; the words print as placeholders unless caller-text logging is on."""
        if any(t is turn for t in self._logged):
            return
        self._logged.append(turn)
        outcome = outcome or ("barge-in" if turn.barge_in else "")
        v2v = turn.timings.voice_to_voice_ms
        self.log.info(
            "turn %d: caller said %r | agent said %r (heard %d of %d chars, v2v %s%s)",
            turn.index, CallerText(turn.caller), CallerText(turn.agent, who="agent"), len(turn.agent),
            len(turn.agent_full), "-" if v2v is None else f"{v2v:.0f} ms", f", {outcome}" if outcome else "",
        )

    async def _apologise(self, turn: TurnRecord) -> None:
        """The providers failed: a local voice says so, then the call ends or goes to a person."""
        conv = self.engine.conversation
        tts = self.engine.emergency_tts or self.engine.tts
        turn.agent_full = turn.agent = conv.apology
        self.failed = True
        try:
            utt = None
            gen = tts.synthesize(conv.apology)
            async with contextlib.aclosing(gen):
                async for ev in gen:
                    if isinstance(ev, AudioChunk):
                        utt = utt or self.call.playback.utterance(ev.sample_rate)
                        await utt.write(ev.samples)
            if utt is not None:
                await utt.finish()
                await utt.wait_played(timeout=15)
        except (ParleyError, TimeoutError) as exc:
            self.log.error("even the apology failed: %s", exc)
        await self._turn_done(turn)
        with contextlib.suppress(ParleyError):
            if conv.on_failure == "transfer" and conv.transfer_destination:
                await self.call.transfer(conv.transfer_destination)
            else:
                self.hung_up_by_agent = True
                await self.call.hangup("TEMPORARY_FAILURE")

    # ---- barge-in --------------------------------------------------------------------------------

    async def _barge_in(self, detected: float, onset: float) -> None:
        reply = self._reply
        if reply is None:
            return
        if reply.task is not None and not reply.task.done():
            reply.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reply.task
        barge = await self.call.playback.barge_in()
        await self._handle(turns.AgentDone(t=self._clock()))
        if barge is None:
            return
        utt = reply.utterance
        heard = next((u.heard_ms for u in barge.utterances if utt is not None and u.utterance_id == utt.id), 0.0)
        segments = list(reply.segments)
        if reply.current_text:
            segments.append(SpokenSegment(reply.current_text, reply.current_ms))
        turn = reply.turn
        turn.barge_in = True
        turn.agent = heard_text(segments, heard)[0]
        if utt is not None and utt.chunks and utt.chunks[0].started_at is not None:
            turn.timings.mark(tm.PLAYBACK_START, utt.chunks[0].started_at)
        if reply.recorded and self.conversation.messages and self.conversation.messages[-1].role == "assistant":
            self.conversation.messages.pop()  # the whole reply was recorded: keep only what was heard
        self.conversation.add_interrupted(segments, heard)
        turn.barge = tm.BargeInTimings(onset, detected, barge.break_written_at, barge.stopped_at, heard)
        self._reply = None
        await self._turn_done(turn)
