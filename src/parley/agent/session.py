"""One call's conversation, the asyncio shell: caller frames -> VAD -> turn machine -> core -> commands.

Owns: the per-call tasks under one ``asyncio.TaskGroup`` and carrying out the commands of the pure
:class:`~parley.agent.core.ConversationCore`: STT (fed from a bounded queue by its own task), the
end-of-turn model, reply runners (:mod:`parley.agent.reply`), ``uuid_break``, tools, the apology, and
recording finished turns (the one log line per turn, words wrapped in :mod:`parley.observe.redact`
markers). Must not decide anything about turns (the pure :mod:`parley.turns.machine` does) or replies
(the core does), and must not know which vendors are behind the providers or how audio reaches
FreeSWITCH (the call's playback, behind :class:`~parley.agent.port.CallPort`).

The frame path never waits on I/O: a frame goes to the ring buffer, to the STT queue (put_nowait), to
the VAD (batched with the other calls' frames on this loop) and to the turn machine; whatever the machine
and the core decide is started as a task or queued, never awaited there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from array import array
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine, Iterable
from dataclasses import replace
from typing import Any

import numpy as np

from parley.agent import core as c
from parley.agent.engine import Engine
from parley.agent.memory import Conversation
from parley.agent.port import CallPort
from parley.agent.reply import ReplyRunner
from parley.agent.tools import Authorized, Refused, authorize, tool_specs
from parley.agent.turn import TurnRecord
from parley.audio.pcm import Int16Array, from_bytes
from parley.audio.speech_end import refine_speech_end
from parley.config import LEGACY_TRANSFER_TARGET
from parley.errors import CallGone, ParleyError, SpoolError
from parley.freeswitch.call import CallLog, Dtmf, Hangup, StreamLost
from parley.observe.redact import CallerText
from parley.providers.base import (
    AudioChunk,
    LLMStream,
    STTStream,
    Switched,
    ToolCall,
    Transcript,
    TTSEvent,
    TTSStream,
    Usage,
)
from parley.turns import events as turns
from parley.turns.machine import TurnMachine

__all__ = ["CallSession", "TurnRecord"]

log = logging.getLogger("parley.session")

PREROLL_S = 0.3  # audio before the detected onset that still goes to STT (soft word starts)
CONTEXT_S = 8.0  # audio kept for the end-of-turn model
STT_QUEUE_FRAMES = 500  # 10 s of 20 ms frames waiting for a slow STT socket; the oldest audio drops past it
STT_FINAL_TIMEOUT_S = 5.0
# a call's brain and voice streams at its end: room for a vendor to report a cancelled request's cost (the
# OpenAI Realtime voice waits up to 2 s for it), before the call's record is written
STREAM_CLOSE_S = 3.0
HANGUP_FINAL_TIMEOUT_S = 1.5  # a caller who hangs up mid-sentence: how long their last words may take
# When nothing can be written for FreeSWITCH to play and no apology recording is configured: three short
# beeps (teletone syntax: 250 ms of 480+620 Hz, 250 ms of silence, three times), not silence.
APOLOGY_TONE = "tone_stream://%(250,250,480,620);loops=3"

_SttItem = tuple[str, Int16Array | None]
_MachineEvent = (
    turns.VadFrame | turns.TurnScore | turns.TranscriptHint | turns.AgentTurnTaken | turns.AgentSpeaking
    | turns.AgentDone | turns.SttSpeechFinal | turns.Tick
)


class CallSession:
    def __init__(
        self,
        call: CallPort,
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
        conv = engine.conversation
        self.core = c.ConversationCore(Conversation(conv.system_prompt), speculate=engine.speculate)
        self.core.set_prompts(conv.idle_prompt, conv.goodbye)
        self.usage: list[Usage] = []
        self.events: list[tuple[float, str, dict[str, str]]] = []  # e.g. provider fallback switches
        self.hung_up_by_agent = False
        self.stt_dropped_frames = 0
        self._machine = TurnMachine(engine.policy)
        self._rate = call.stream_rate
        self._vad = engine.new_vad(self._rate)
        self._ring: deque[Int16Array] = deque(maxlen=int(CONTEXT_S * 50))
        self._ring_end_t = 0.0  # when the last frame in the ring ended (media time)
        self._media_t0 = float("inf")  # min over frames of (received at - seq * frame duration)
        self._tools = tool_specs(conv)
        self._hold = (conv.hold_line, conv.hold_after_s) if conv.hold_line and conv.hold_after_s > 0 else None
        self._tg: asyncio.TaskGroup | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._runners: dict[int, ReplyRunner] = {}
        self._records: set[asyncio.Task[None]] = set()
        self._logged: set[int] = set()
        # STT: frames and control marks in order, sent by one task
        self._stt: STTStream | None = None
        # the call's own brain and voice streams (opened at the start, closed at the end); usage of a request
        # a barge-in stopped comes back through the sink they were opened with, a fallback switch as an event
        self._llm: LLMStream | None = None
        self._tts: TTSStream | None = None
        self._stt_q: asyncio.Queue[_SttItem] = asyncio.Queue(maxsize=STT_QUEUE_FRAMES)
        self._stt_open = False
        self._finals: list[str] = []
        self._finals_due = 0  # finalizes sent whose final transcript has not come back
        # the provider closed the turn by itself (Deepgram speech_final) while the caller was in a pause: its
        # Finalize answer may bring nothing more, so the turn's text is complete without waiting for it
        self._closed_early = False
        self._final_timer: asyncio.TimerHandle | None = None
        self._final_seen = asyncio.Event()
        # breaks on their way: a new reply's audio waits for them (uuid_break all would flush it)
        self._no_break = asyncio.Event()
        self._no_break.set()
        self._breaks = 0
        self._dtmf: list[str] = []
        self._dtmf_timer: asyncio.TimerHandle | None = None
        self._ended = False
        self._handed_over = False  # the call was transferred: the session stops listening
        # frame lag: processing time minus the frame's due time on the 20 ms grid (benchmarks read it)
        self.frame_lag_ms: array[float] = array("f")
        self._first_frame: tuple[int, float] | None = None

    # ---- what the rest of parley reads ---------------------------------------------------------------

    @property
    def turns(self) -> list[TurnRecord]:
        return self.core.turns

    @property
    def failed(self) -> bool:
        return self.core.failed

    @property
    def conversation(self) -> Conversation:
        return self.core.memory

    @property
    def greeting(self) -> c.Reply | None:
        return next((r for r in self.core.replies.values() if r.turn.index == 0), None)

    # ---- lifecycle -----------------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            await self._run()
        finally:
            await self._close_streams()

    async def _run(self) -> None:
        try:
            self._llm = await self.engine.llm.open(self.usage.append)
            self._tts = await self.engine.tts.open(self.usage.append)
        except ParleyError as exc:  # no brain or no voice for this call: the caller hears why, never silence
            self.log.error("the brain or the voice could not start: %s", exc)
            self.events.append((self._clock(), "agent_failed", {"error": str(exc)[:300]}))
            self.core.failed = True
            self._ended = True
            await self._apologise(self.core.new_turn())
            return
        try:
            self._stt = await self.engine.stt.open(sample_rate=self._rate)
        except ParleyError as exc:  # no speech recognition at all: the caller hears why, never silence
            self.log.error("speech recognition could not start: %s", exc)
            self.events.append((self._clock(), "stt_failed", {"error": str(exc)[:300]}))
            self._ended = True
            await self._apologise(self.core.new_turn())
            return
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                sender = self._spawn(self._stt_sender(self._stt))
                consumer = self._spawn(self._stt_events(self._stt))
                background = [self._spawn(coro) for coro in (self._call_events(), self._ticks(), self._prewarm())]
                self._execute(self.core.greet(self._clock(), self.engine.conversation.greeting))
                await self._audio_loop()
                self._ended = True
                for task in background:
                    task.cancel()
                await self._wind_down(sender, consumer)
        finally:
            self._ended = True
            await asyncio.gather(*self._records, return_exceptions=True)

    async def _close_streams(self) -> None:
        """The call's brain and voice streams release what they hold (a vendor socket bound to the call)."""
        for stream in (self._llm, self._tts):
            if stream is None:
                continue
            try:
                async with asyncio.timeout(STREAM_CLOSE_S):
                    await stream.close()
            except TimeoutError:
                self.log.warning("closing a provider stream took over %.0f s; left behind", STREAM_CLOSE_S)
            except Exception as exc:  # one stream's failure must not keep the next one open
                self.log.warning("closing a provider stream failed: %s", exc)
        self._llm = self._tts = None

    def _report(self, ev: Usage | Switched) -> None:
        """What a provider stream says besides text and audio: usage, or a fallback switch (an event)."""
        if isinstance(ev, Usage):
            self.usage.append(ev)
            return
        detail = {"capability": ev.capability, "from": ev.old, "to": ev.new, "error": ev.error}
        self.events.append((self._clock(), "fallback", detail))

    async def _wind_down(self, sender: asyncio.Task[None], consumer: asyncio.Task[None]) -> None:
        """The call is over: the caller's last words, what each reply was heard of, then close STT."""
        assert self._stt is not None
        if self.core.caller_turn_open and self._stt_open:
            self._stt_open = False
            self._put_stt(("finalize", None))
            self._finals_due += 1
            self._final_seen.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(HANGUP_FINAL_TIMEOUT_S):
                    await self._final_seen.wait()
        heard = {rid: r.heard_ms() for rid, r in self._runners.items()}
        for runner in self._runners.values():
            if runner.task is not None:
                runner.task.cancel()
        self._execute(self.core.handle(c.CallEnded(self._clock(), heard)))
        sender.cancel()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2.0):
                await self._stt.close()  # vendors report usage on close: let the consumer take it
        with contextlib.suppress(Exception, asyncio.CancelledError):
            async with asyncio.timeout(1.0):
                await asyncio.shield(consumer)
        consumer.cancel()
        if self._final_timer is not None:
            self._final_timer.cancel()
        if self._dtmf_timer is not None:
            self._dtmf_timer.cancel()

    async def _prewarm(self) -> None:
        """Open the voice's vendor socket now (a local voice has nothing to open), so the first reply does not
        pay a TLS handshake."""
        try:
            await self.engine.tts.prewarm()
        except ParleyError as exc:
            self.log.warning("could not prewarm %s: %s", self.engine.tts.name, exc)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        assert self._tg is not None
        task = self._tg.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ---- the frame path: frame -> VAD -> turn machine -> core, nothing awaited on I/O ------------------

    async def _audio_loop(self) -> None:
        async for frame in self.call.frames():
            if self._handed_over:
                break  # transferred: the caller talks to a person now, not to us
            samples = from_bytes(frame.pcm)
            dur = samples.size / self._rate
            if self._first_frame is None:
                self._first_frame = (frame.seq, frame.t)
            seq0, t0 = self._first_frame
            self.frame_lag_ms.append(1000.0 * (self._clock() - (t0 + (frame.seq - seq0) * dur)))
            self._ring.append(samples)
            # media time: anchored on the frame that arrived with the least delay, so a frame delayed by a
            # busy loop or network does not move where the caller's words are placed in time
            self._media_t0 = min(self._media_t0, frame.t - frame.seq * dur)
            self._ring_end_t = self._media_t0 + frame.seq * dur
            if self._stt_open:
                self._put_stt(("audio", samples))
            result = await self._vad.aprocess(samples)  # Silero batched with the other calls' frames
            self._feed(turns.VadFrame(t=frame.t, speech=result.speech, prob=result.prob, dur=dur))

    def _feed(self, event: _MachineEvent) -> None:
        for action in self._machine.feed(event):
            if isinstance(action, turns.EndOfTurn) and self._ring:
                action = replace(action, speech_end_t=self._true_speech_end(action.speech_end_t))
            self._execute(self.core.handle(action))

    def _true_speech_end(self, vad_end: float) -> float:
        """Where the caller's speech ended by the audio itself (timings only; the machine has decided)."""
        audio = np.concatenate(list(self._ring))
        return refine_speech_end(audio, self._rate, self._ring_end_t, vad_end)

    def _handle(self, event: c.CoreEvent) -> None:
        self._execute(self.core.handle(event))

    def _execute(self, commands: Iterable[c.Command]) -> None:
        for cmd in commands:
            match cmd:
                case c.SttOpen(onset_t=onset):
                    n = max(1, int((self._clock() - onset + PREROLL_S) * 50))
                    for samples in list(self._ring)[-n:]:
                        self._put_stt(("audio", samples))
                    self._stt_open = True
                case c.SttSpeculate():
                    self._put_stt(("hint", None))
                case c.SttResume():
                    self._closed_early = False  # words after the provider's own close: wait for Finalize
                    self._put_stt(("resumed", None))
                case c.SttFinalize():
                    self._stt_open = False
                    self._put_stt(("finalize", None))
                    self._finals_due += 1
                    if self._closed_early:
                        self._closed_early = False
                        self._deliver_final()
                    else:
                        self._arm_final_timer()
                case c.Score(pause_id=pid):
                    if self.engine.smart_turn is not None:
                        self._spawn(self._score(pid))
                case c.FeedMachine(event=ev):
                    self._feed(ev)
                case c.StartReply():
                    self._start_reply(cmd)
                case c.CommitReply(reply_id=rid):
                    if (runner := self._runners.get(rid)) is not None:
                        runner.commit()
                case c.CancelReply(reply_id=rid):
                    if (runner := self._runners.get(rid)) is not None and runner.task is not None:
                        runner.task.cancel()
                case c.BreakPlayback(reply_ids=ids):
                    if ids:
                        self._breaks += 1
                        self._no_break.clear()
                        self._spawn(self._break(ids))
                case c.RecordTurn(turn=turn, outcome=outcome):
                    task = asyncio.get_running_loop().create_task(self._turn_done(turn, outcome))
                    self._records.add(task)
                    task.add_done_callback(self._records.discard)
                case c.RunTools(turn=turn, calls=calls, then_hangup=then_hangup):
                    self._spawn(self._run_tools(turn, calls, then_hangup))
                case c.Apologise(turn=turn):
                    self._spawn(self._apologise(turn))

    async def _ticks(self) -> None:
        """Timers must fire even if caller audio stalls (frames normally arrive every 20 ms)."""
        while True:
            await asyncio.sleep(0.1)
            deadline = self._machine.next_deadline()
            now = self._clock()
            if deadline is not None and now >= deadline:
                self._feed(turns.Tick(t=now))

    async def _score(self, pause_id: int) -> None:
        model = self.engine.smart_turn
        assert model is not None
        audio = np.concatenate(list(self._ring)) if self._ring else np.zeros(0, np.int16)
        p = await asyncio.to_thread(model.predict, audio, self._rate)
        self._feed(turns.TurnScore(t=self._clock(), pause_id=pause_id, p=p))

    # ---- STT -----------------------------------------------------------------------------------------

    def _put_stt(self, item: _SttItem) -> None:
        if self._stt_q.full():
            with contextlib.suppress(asyncio.QueueEmpty):
                self._stt_q.get_nowait()  # a stalled STT socket: the oldest audio goes
            self.stt_dropped_frames += 1
        self._stt_q.put_nowait(item)

    async def _stt_sender(self, stt: STTStream) -> None:
        while True:
            kind, samples = await self._stt_q.get()
            try:
                match kind:
                    case "audio":
                        assert samples is not None
                        await stt.send_audio(samples)
                    case "hint":
                        stt.pause_hint()
                    case "resumed":
                        stt.speech_resumed()
                    case "finalize":
                        await stt.finalize()
            except ParleyError as exc:
                self._stt_failed(exc)
                return

    def _arm_final_timer(self) -> None:
        if self._final_timer is not None:
            self._final_timer.cancel()
        self._final_timer = asyncio.get_running_loop().call_later(STT_FINAL_TIMEOUT_S, self._final_overdue)

    def _final_overdue(self) -> None:
        if self._finals_due > 0:
            self.log.warning("no final transcript within %.0f s", STT_FINAL_TIMEOUT_S)
            self._deliver_final()

    def _deliver_final(self) -> None:
        self._finals_due = max(0, self._finals_due - 1)
        text = " ".join(s for s in self._finals if s).strip()
        self._finals.clear()
        self._final_seen.set()
        if self._finals_due == 0 and self._final_timer is not None:
            self._final_timer.cancel()
        self._handle(c.FinalText(self._clock(), text))

    async def _stt_events(self, stt: STTStream) -> None:
        try:
            async for ev in stt:
                match ev:
                    case Transcript(final=False, text=text):
                        pid = self.core.pause_id
                        if pid is not None:  # even empty: the turn machine waits for each pause's hint
                            joined = " ".join(s for s in [*self._finals, text] if s)
                            self._handle(c.SpeculativeText(self._clock(), pid, joined))
                    case Transcript(final=True, text=text, speech_final=sf):
                        self._finals.append(text)
                        if sf and self._finals_due > 0:
                            self._deliver_final()
                        elif sf:
                            self._closed_early = self.core.pause_id is not None
                    case Usage() | Switched():
                        self._report(ev)
                    case _:
                        pass
        except ParleyError as exc:
            self._stt_failed(exc)

    def _stt_failed(self, exc: ParleyError) -> None:
        self._final_seen.set()
        if self._ended:  # the call is over: nobody to apologise to
            self.log.warning("speech recognition failed during teardown: %s", exc)
            return
        self.log.error("speech recognition failed: %s", exc)
        self.events.append((self._clock(), "stt_failed", {"error": str(exc)[:300]}))  # the record says why
        self.core.failed = True
        self._spawn(self._apologise(self.core.new_turn()))

    # ---- replies -------------------------------------------------------------------------------------

    def _start_reply(self, cmd: c.StartReply) -> None:
        assert self._llm is not None and self._tts is not None
        runner = ReplyRunner(
            cmd.reply_id,
            llm=self._llm,
            tts=self._tts,
            tools=self._tools,
            playback=self.call.playback,
            emit=self._handle,
            report=self._report,
            clock=self._clock,
            gate=self._wait_no_break,
            messages=cmd.messages,
            fixed_text=cmd.fixed_text,
            held=cmd.held,
            hold=self._hold,
        )
        self._runners[cmd.reply_id] = runner
        runner.task = self._spawn(runner.run())

    async def _break(self, reply_ids: tuple[int, ...]) -> None:
        written = asyncio.Event()
        opened = self._spawn(self._open_gate_when(written))
        heard: dict[int, float] = {}
        barge = None
        try:
            barge = await self.call.playback.barge_in(written=written)
        except CallGone:
            pass
        except ParleyError as exc:
            self.log.error("could not stop playback: %s", exc)
        finally:
            written.set()
        await opened
        utterances = {u.utterance_id: u.heard_ms for u in barge.utterances} if barge is not None else {}
        for rid in reply_ids:
            runner = self._runners.get(rid)
            utt = runner.utterance if runner is not None else None
            heard[rid] = utterances.get(utt.id, utt.heard_ms()) if utt is not None else 0.0
        now = self._clock()
        self._handle(c.BreakDone(
            now,
            barge.break_written_at if barge is not None else now,
            barge.stopped_at if barge is not None else None,
            heard,
        ))

    async def _wait_no_break(self) -> None:
        await self._no_break.wait()

    async def _open_gate_when(self, written: asyncio.Event) -> None:
        await written.wait()
        self._breaks -= 1
        if self._breaks == 0:
            self._no_break.set()

    # ---- call events ---------------------------------------------------------------------------------

    async def _call_events(self) -> None:
        while True:
            ev = await self.call.events.get()
            match ev:
                case Dtmf(digit=d):
                    if not self._dtmf:  # the first key stops the agent at once; the digits follow
                        self._execute(self.core.stop_current(self._clock()))
                    self._dtmf.append(d)
                    if self._dtmf_timer is not None:
                        self._dtmf_timer.cancel()
                    if d == "#":
                        self._dtmf_done()
                    else:
                        loop = asyncio.get_running_loop()
                        self._dtmf_timer = loop.call_later(self.engine.conversation.dtmf_gap_s, self._dtmf_done)
                case Hangup() | StreamLost():
                    return

    def _dtmf_done(self) -> None:
        digits, self._dtmf = "".join(self._dtmf), []
        if digits and not self._ended:
            self._handle(c.DtmfInput(self._clock(), digits))

    # ---- tools, apology, records -------------------------------------------------------------------

    async def _run_tools(self, turn: TurnRecord, calls: tuple[ToolCall, ...], then_hangup: bool) -> None:
        """Every tool call the brain returned passes :func:`~parley.agent.tools.authorize` first: a tool not
        offered, or a transfer to anything but a target name the operator configured, is refused, logged
        and told to the brain; nothing the brain (or a caller talking to it) chose is ever dialled."""
        try:
            for call in calls:
                match authorize(call, self._tools, self.engine.conversation):
                    case Refused(reason=reason):
                        self.log.warning("refused tool call %s: %s", call.name, reason)
                        self.core.memory.add_tool_result(call, f"refused: {reason}")
                        self.events.append((self._clock(), "tool_refused", {"tool": call.name, "reason": reason}))
                    case Authorized(extension=ext, context=ctx, target=target) if call.name == "transfer":
                        self.core.memory.add_tool_result(call, f"transferring to {target}")
                        await self.call.transfer(ext, context=ctx)
                        self._handed_over = True
                        return
                    case Authorized() if call.name == "hangup":
                        self.core.memory.add_tool_result(call, "ok")
                        self.hung_up_by_agent = True
                        await self.call.hangup("NORMAL_CLEARING")
                        return
                    case Authorized():
                        self.core.memory.add_tool_result(call, "unknown tool")
            if then_hangup:
                self.hung_up_by_agent = True
                await self.call.hangup("NORMAL_CLEARING")
        except CallGone:
            pass
        except (ParleyError, ValueError) as exc:
            self.log.error("tool call failed: %s", exc)

    def _failure_target(self) -> tuple[str, str | None] | None:
        """Where ``on_failure: transfer`` sends the caller: the front desk target, else the first one."""
        targets = self.engine.conversation.transfer_targets
        target = targets.get(LEGACY_TRANSFER_TARGET) or next(iter(targets.values()), None)
        return None if target is None else (target.extension, target.context or None)

    async def _apologise(self, turn: TurnRecord) -> None:
        """The providers or the spool failed: the caller hears an apology, then the call ends or goes to a
        person. Never silence: a local voice through the spool; if the spool cannot be written, a file
        FreeSWITCH already has (``apology_fs_file``), else a tone."""
        conv = self.engine.conversation
        turn.agent_full = turn.agent = conv.apology
        self.core.failed = True
        await self._no_break.wait()
        try:
            await self._say_apology()
        except SpoolError as exc:
            self.log.error("cannot write the spool (%s): apologising with %s", exc, conv.apology_fs_file or "a tone")
            self.events.append((self._clock(), "spool_failed", {"error": str(exc)}))
            fallback = conv.apology_fs_file or APOLOGY_TONE
            try:
                utt = await self.call.playback.play_file(fallback)
                await utt.wait_played(timeout=15)
            except (ParleyError, TimeoutError) as again:
                self.log.error("even the apology from FreeSWITCH's side failed: %s", again)
        except (ParleyError, TimeoutError) as exc:
            self.log.error("even the apology failed: %s", exc)
        await self._turn_done(turn)
        with contextlib.suppress(ParleyError, ValueError):
            target = self._failure_target() if conv.on_failure == "transfer" else None
            if target is not None:
                await self.call.transfer(target[0], context=target[1])
                self._handed_over = True
            else:
                self.hung_up_by_agent = True
                await self.call.hangup("TEMPORARY_FAILURE")

    async def _say_apology(self) -> None:
        apology = self.engine.conversation.apology
        gen: AsyncGenerator[TTSEvent, None]
        if self.engine.emergency_tts is not None:
            gen = self.engine.emergency_tts.synthesize(apology, on_cancel=self.usage.append)
        elif self._tts is not None:
            gen = self._tts.synthesize(apology)
        else:
            gen = self.engine.tts.synthesize(apology, on_cancel=self.usage.append)
        utt = None
        async with contextlib.aclosing(gen):
            async for ev in gen:
                if isinstance(ev, AudioChunk):
                    utt = utt or self.call.playback.utterance(ev.sample_rate)
                    await utt.write(ev.samples)
                else:
                    self._report(ev)  # the apology is billed like any speech
        if utt is not None:
            await utt.finish()
            await utt.wait_played(timeout=15)

    async def _turn_done(self, turn: TurnRecord, outcome: str = "") -> None:
        if id(turn) in self._logged:
            return
        self._logged.add(id(turn))
        self._log_turn(turn, outcome)
        if self.on_turn is not None and turn.index > 0:
            try:
                await self.on_turn(turn)
            except Exception:  # a record that cannot be written must never break the call
                self.log.exception("recording turn %d failed", turn.index)

    def _log_turn(self, turn: TurnRecord, outcome: str = "") -> None:
        """One line per finished turn; the words print as placeholders unless caller-text logging is on."""
        outcome = outcome or ("barge-in" if turn.barge_in else "")
        v2v = turn.timings.voice_to_voice_ms
        self.log.info(
            "turn %d: caller said %r | agent said %r (heard %d of %d chars, v2v %s%s)",
            turn.index, CallerText(turn.caller), CallerText(turn.agent, who="agent"), len(turn.agent),
            len(turn.agent_full), "-" if v2v is None else f"{v2v:.0f} ms", f", {outcome}" if outcome else "",
        )
