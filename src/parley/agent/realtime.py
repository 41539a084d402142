"""One call's speech-to-speech conversation: caller audio to a realtime model, its audio to the caller.

Owns: the per-call tasks under one ``asyncio.TaskGroup`` (caller frames -> a bounded queue -> the model;
model events -> playback; call events), turn records with the pipeline's timings (speech end, the
model's first audio, playback command, PLAYBACK_START, first audible sample = voice-to-voice), barge-in
(break the playback, then cut the model's item at the millisecond FreeSWITCH says the caller heard, from
PLAYBACK_START/STOP, never from a byte count), tool calls through :func:`~parley.agent.tools.authorize`,
and the switch to the pipeline when the model fails (connect, auth, mid-call drop): an apology in the
local voice, then a :class:`~parley.agent.session.CallSession` on the same
:class:`~parley.agent.port.CallPort` for the rest of the call, recorded as a ``fallback`` event.
Must not know which vendor is behind the provider, or how audio reaches FreeSWITCH.

Exposes what :class:`~parley.app.ConversationAgent` reads of a pipeline session: ``run()``, ``turns``,
``usage``, ``failed``, ``events``, ``hung_up_by_agent``, ``greeting``, ``frame_lag_ms``. Turn detection is
the model's (``server``: its speech-started event is the barge-in) or parley's own turn machine
(``parley``: onset, barge-in and end of turn from :mod:`parley.turns`, the model told by commit + respond).

About 500 lines, above the house target: the frame path, the model's events and the barge-in share the
state of the item being heard (``Spoken``) and are read together when a truncation is questioned; the
pure parts live in :mod:`~parley.agent.realtime_engine`, the switch in :mod:`~parley.agent.realtime_fallback`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from array import array
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from parley.agent.engine import Engine
from parley.agent.port import CallPort
from parley.agent.realtime_engine import Greeting, RealtimeEngine, Spoken, call_codec, utterance_id
from parley.agent.realtime_fallback import pipeline_session, say_locally
from parley.agent.session import CallSession
from parley.agent.tools import Authorized, Refused, authorize, tool_specs
from parley.agent.turn import TurnRecord
from parley.audio.pcm import Int16Array, from_bytes, rms_dbfs
from parley.errors import CallGone, ParleyError
from parley.freeswitch.call import CallLog, Hangup, StreamLost
from parley.observe import timings as tm
from parley.providers.base import Switched, ToolCall, Usage
from parley.providers.errors import ProviderError
from parley.providers.realtime_base import (
    CallerSpeech,
    CallerText,
    ModelAudio,
    ModelInterrupted,
    ModelText,
    ModelToolCall,
    RealtimeConfig,
    RealtimeStream,
    ResponseDone,
)
from parley.turns import events as te
from parley.turns.machine import TurnMachine

__all__ = ["RealtimeSession", "new_session"]

log = logging.getLogger("parley.realtime")

AUDIO_QUEUE_FRAMES = 250  # 5 s of caller audio waiting for a slow socket; the oldest drops past it
LOUD_DBFS = -45.0  # a frame this loud is caller speech, for the speech-end timing under server VAD


class RealtimeSession:
    def __init__(self, call: CallPort, engine: RealtimeEngine, *, clock: Callable[[], float] = time.monotonic,
                 on_turn: Callable[[TurnRecord], Awaitable[None]] | None = None) -> None:
        assert engine.realtime is not None
        self.call = call
        self.engine = engine
        self.provider = engine.realtime
        self.on_turn = on_turn
        self.log = CallLog(log, {"call": call.uuid})
        self._clock = clock
        self._turns: list[TurnRecord] = []
        self._usage: list[Usage] = []
        self._events: list[tuple[float, str, dict[str, str]]] = []
        self._failed = False
        self._hung_up = False
        self._lag: array[float] = array("f")
        self._greeting: Greeting | None = None
        self._tools = tool_specs(engine.conversation)
        self._rate = call.stream_rate
        self._stream: RealtimeStream | None = None
        self._audio_q: asyncio.Queue[Int16Array] = asyncio.Queue(maxsize=AUDIO_QUEUE_FRAMES)
        self.dropped_frames = 0
        self._tg: asyncio.TaskGroup | None = None
        self._frames_task: asyncio.Task[None] | None = None
        self._lost: ProviderError | None = None
        self._ended = False
        self._spoken: Spoken | None = None  # the item being played now
        self._answering: TurnRecord | None = None  # the turn the next response answers
        self._untranscribed: deque[TurnRecord] = deque()
        self._caller: TurnRecord | None = None  # the caller turn in progress
        self._onset: float | None = None
        self._loud_end = 0.0
        self._recorded: set[int] = set()
        self._cut: set[str] = set()  # items cut by a barge-in: whatever of them still arrives is dropped
        self._tasks: set[asyncio.Task[None]] = set()
        self._machine = TurnMachine(engine.policy) if engine.turn_detection == "parley" else None
        self._vad = engine.new_vad(self._rate) if self._machine is not None else None
        self._first_frame: tuple[int, float] | None = None
        self._fallback: CallSession | None = None

    # ---- what the rest of parley reads ---------------------------------------------------------------

    @property
    def turns(self) -> list[TurnRecord]:
        return self._fallback.turns if self._fallback is not None else self._turns

    @property
    def usage(self) -> list[Usage]:
        return self._usage + self._fallback.usage if self._fallback is not None else self._usage

    @property
    def events(self) -> list[tuple[float, str, dict[str, str]]]:
        return self._events + self._fallback.events if self._fallback is not None else self._events

    @property
    def failed(self) -> bool:
        return self._fallback.failed if self._fallback is not None else self._failed

    @property
    def hung_up_by_agent(self) -> bool:
        return self._hung_up or (self._fallback is not None and self._fallback.hung_up_by_agent)

    @property
    def greeting(self) -> Greeting | None:
        return self._greeting

    @property
    def frame_lag_ms(self) -> array[float]:
        return self._lag + self._fallback.frame_lag_ms if self._fallback is not None else self._lag

    # ---- lifecycle -----------------------------------------------------------------------------------

    async def run(self) -> None:
        conv = self.engine.conversation
        config = RealtimeConfig(conv.system_prompt, self._tools, self._rate, call_codec(self.call),
                                server_vad=self._machine is None)
        try:
            self._stream = await self.provider.open(config)
        except ProviderError as exc:
            await self._switch(exc)
            return
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                sender = tg.create_task(self._send_audio())
                model = tg.create_task(self._model_events())
                calls = tg.create_task(self._call_events())
                ticks = tg.create_task(self._ticks()) if self._machine is not None else None
                if conv.greeting:
                    self._greeting = Greeting(TurnRecord(index=0))
                    self._answering = self._greeting.turn
                    tg.create_task(self._guard(self._stream.say(conv.greeting)))
                self._frames_task = tg.create_task(self._frames())
                await asyncio.wait({self._frames_task})  # ends with the call, or cancelled by a lost model
                self._ended = True
                for task in (sender, calls, ticks):
                    if task is not None:
                        task.cancel()
                await self._wind_down(model)
        finally:
            self._ended = True
        if self._lost is not None and not self._hung_up:
            await self._switch(self._lost)

    async def _wind_down(self, model: asyncio.Task[None]) -> None:
        assert self._stream is not None
        if self._lost is None:
            spoken = self._spoken
            if spoken is not None and not spoken.finished:
                self._done_speaking(spoken, spoken.utterance.heard_ms(), barged=True)
            with contextlib.suppress(ParleyError, TimeoutError):
                async with asyncio.timeout(2.0):
                    await self._stream.close()
        model.cancel()
        if self._lost is not None:  # nothing the model started will complete: the switch takes over now
            for task in list(self._tasks):
                task.cancel()

    async def _guard(self, coro: Coroutine[Any, Any, None]) -> None:
        """Sends to the model: a failure there is reported by the event stream, which switches once."""
        with contextlib.suppress(ParleyError):
            await coro

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        if self._tg is not None and not self._ended:
            task = self._tg.create_task(coro)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            coro.close()

    # ---- caller audio: frame -> queue (and parley's VAD -> turn machine); nothing awaits the model -----

    async def _frames(self) -> None:
        async for frame in self.call.frames():
            samples = from_bytes(frame.pcm)
            dur = samples.size / self._rate
            if self._first_frame is None:
                self._first_frame = (frame.seq, frame.t)
            seq0, t0 = self._first_frame
            self._lag.append(1000.0 * (self._clock() - (t0 + (frame.seq - seq0) * dur)))
            if self._audio_q.full():
                self._audio_q.get_nowait()
                self.dropped_frames += 1
            self._audio_q.put_nowait(samples)
            if rms_dbfs(samples) > LOUD_DBFS:
                if self._onset is None or frame.t - self._loud_end > 0.5:
                    self._onset = frame.t - dur  # a new stretch of caller speech
                self._loud_end = frame.t
            if self._vad is not None:
                result = await self._vad.aprocess(samples)
                self._feed(te.VadFrame(t=frame.t, speech=result.speech, prob=result.prob, dur=dur))

    async def _send_audio(self) -> None:
        assert self._stream is not None
        while True:
            samples = await self._audio_q.get()
            try:
                await self._stream.send_audio(samples)
            except ParleyError:
                return  # the model's event stream reports the broken connection

    async def _ticks(self) -> None:
        assert self._machine is not None
        while True:
            await asyncio.sleep(0.1)
            deadline = self._machine.next_deadline()
            if deadline is not None and self._clock() >= deadline:
                self._feed(te.Tick(t=self._clock()))

    def _feed(self, event: te.VadFrame | te.Tick | te.AgentSpeaking | te.AgentDone) -> None:
        assert self._machine is not None and self._stream is not None
        for action in self._machine.feed(event):
            match action:
                case te.UserSpeechStarted(onset_t=onset):
                    self._caller_started(onset)
                    self._spawn(self._guard(self._stream.start_turn()))
                case te.BargeIn(t=t, onset_t=onset):
                    self._spawn(self._barge_in(onset, t))
                case te.EndOfTurn(t=t, speech_end_t=end, reason=reason):
                    self._caller_ended(end, t, reason)
                    self._spawn(self._guard(self._stream.end_turn()))
                case te.IdlePrompt():
                    self._answering = self._answering or TurnRecord(index=len(self._turns) + 1)
                    self._spawn(self._guard(self._stream.say(self.engine.conversation.idle_prompt)))
                case te.IdleHangup():
                    self._spawn(self._hangup())
                case _:
                    pass

    def _caller_started(self, onset: float) -> None:
        if self._caller is None:
            self._caller = TurnRecord(index=len(self._turns) + 1)
            self._turns.append(self._caller)
            self._untranscribed.append(self._caller)
        self._onset = onset

    def _caller_ended(self, speech_end: float, now: float, reason: str) -> None:
        turn = self._caller or TurnRecord(index=len(self._turns) + 1)
        if self._caller is None:
            self._turns.append(turn)
        self._caller, self._onset = None, None
        turn.endpoint_reason = reason
        turn.timings.mark(tm.SPEECH_END, speech_end)
        turn.timings.mark(tm.ENDPOINT, now)
        self._answering = turn

    # ---- model events --------------------------------------------------------------------------------

    async def _model_events(self) -> None:
        assert self._stream is not None
        try:
            async for ev in self._stream:
                now = self._clock()
                match ev:
                    case CallerSpeech(started=True):
                        onset = self._onset if self._onset is not None else now
                        if self._spoken is not None and not self._spoken.finished:
                            self._spawn(self._barge_in(onset, now))
                        self._caller_started(onset)
                    case CallerSpeech(started=False):
                        self._caller_ended(min(self._loud_end or now, now), now, "model_vad")
                    case ModelInterrupted():
                        if self._spoken is not None and not self._spoken.finished:
                            self._spawn(self._barge_in(self._onset or now, now))
                    case CallerText(text=text):
                        if self._untranscribed:
                            self._untranscribed.popleft().caller = text
                    case ModelAudio():
                        await self._model_audio(ev, now)
                    case ModelText(item_id=item, text=text, final=final):
                        self._model_text(item, text, final, now)
                    case ModelToolCall(call=call):
                        self._spawn(self._tool(call))
                    case ResponseDone():
                        self._response_done()
                    case Usage():
                        self._usage.append(ev)
        except ProviderError as exc:
            if not self._ended:
                self.log.error("the realtime model failed mid-call: %s", exc)
                self._lost = exc
                if self._frames_task is not None:
                    self._frames_task.cancel()

    def _turn_for_response(self) -> TurnRecord:
        turn = self._answering
        if turn is None:  # the model spoke on its own (or after a tool result): the last turn goes on
            turn = self._turns[-1] if self._turns else TurnRecord(index=len(self._turns) + 1)
        return turn

    async def _model_audio(self, ev: ModelAudio, now: float) -> None:
        if ev.item_id in self._cut:
            return
        spoken = self._spoken
        if spoken is None or spoken.item_id != ev.item_id or spoken.finished:
            if spoken is not None and not spoken.finished:
                await spoken.utterance.finish()
            turn = self._turn_for_response()
            self._answering = None
            turn.timings.mark(tm.LLM_FIRST_TOKEN, now)
            turn.timings.mark(tm.TTS_FIRST_AUDIO, now)
            utterance = self.call.playback.utterance(ev.sample_rate, utterance_id(ev.item_id))
            spoken = self._spoken = Spoken(ev.item_id, turn, utterance, ev.sample_rate, now)
            self._spawn(self._watch(spoken))
        spoken.add(ev.samples)
        try:
            await spoken.utterance.write(ev.samples)
        except CallGone:
            return
        if spoken.command_audio_at is None and spoken.utterance.first_command_at is not None:
            spoken.command_audio_at = now
            # waiting for the model to deliver the first chunk's worth of audio is the model's time
            spoken.turn.timings.add_provider_time(tm.TTS_FIRST_AUDIO, now - spoken.first_audio_at)
            spoken.turn.timings.mark(tm.PLAYBACK_COMMAND, spoken.utterance.first_command_at)

    def _model_text(self, item: str, text: str, final: bool, now: float) -> None:
        spoken = self._spoken
        if item in self._cut:
            return
        if spoken is None or spoken.item_id != item:
            self._turn_for_response().timings.mark(tm.LLM_FIRST_TOKEN, now)
            return
        if final:
            spoken.final_text = text
        else:
            spoken.deltas.append(text)
        spoken.turn.agent_full = spoken.text

    def _response_done(self) -> None:
        spoken = self._spoken
        if spoken is not None and not spoken.finished:
            self._spawn(self._finish(spoken))

    async def _finish(self, spoken: Spoken) -> None:
        with contextlib.suppress(ParleyError):
            await spoken.utterance.finish()
            if spoken.utterance.first_command_at is not None:
                spoken.turn.timings.mark(tm.PLAYBACK_COMMAND, spoken.utterance.first_command_at)
            report = await spoken.utterance.wait_played()
            if not spoken.finished:
                self._done_speaking(spoken, report.heard_ms, barged=not report.complete)

    async def _watch(self, spoken: Spoken) -> None:
        with contextlib.suppress(ParleyError):
            started = await spoken.utterance.wait_started()
            if started is None:
                return
            spoken.turn.timings.mark(tm.PLAYBACK_START, started)
            spoken.turn.timings.mark(tm.FIRST_AUDIBLE, started + spoken.lead_s)
            if self._machine is not None and not spoken.finished:
                self._feed(te.AgentSpeaking(t=self._clock()))

    def _done_speaking(self, spoken: Spoken, heard_ms: float, *, barged: bool) -> None:
        spoken.finished = True
        turn = spoken.turn
        turn.agent_full = spoken.text
        turn.agent = spoken.heard(heard_ms) if barged else spoken.text
        turn.agent_audio_end = self._clock()
        if self._machine is not None:
            self._feed(te.AgentDone(t=self._clock()))
        if self._spoken is spoken:
            self._spoken = None
        self._record(turn)

    # ---- barge-in: break the playback, then cut the model's item to what FreeSWITCH says was heard ------

    async def _barge_in(self, onset: float, detected: float) -> None:
        spoken = self._spoken
        if spoken is None or spoken.finished:
            return
        spoken.finished = True  # from here on, its audio is not written
        self._cut.add(spoken.item_id)
        barge = None
        with contextlib.suppress(CallGone):
            try:
                barge = await self.call.playback.barge_in()
            except ParleyError as exc:
                self.log.error("could not stop playback: %s", exc)
        reports = {u.utterance_id: u.heard_ms for u in barge.utterances} if barge is not None else {}
        heard_ms = reports.get(spoken.utterance.id, spoken.utterance.heard_ms())
        heard = spoken.heard(heard_ms)
        if self._stream is not None:
            await self._guard(self._stream.interrupt(spoken.item_id, heard_ms, heard))
        now = self._clock()
        spoken.turn.barge_in = True
        spoken.turn.barge = tm.BargeInTimings(
            speech_onset=onset, detected=detected,
            break_written=barge.break_written_at if barge is not None else now,
            playback_stopped=barge.stopped_at if barge is not None else None,
            heard_ms=heard_ms, agent_silent=barge.stopped_at if barge is not None else None,
        )
        self._events.append((now, "truncated", {"item": spoken.item_id, "heard_ms": f"{heard_ms:.0f}"}))
        spoken.finished = False
        self._done_speaking(spoken, heard_ms, barged=True)

    # ---- tools and call events ------------------------------------------------------------------------

    async def _tool(self, call: ToolCall) -> None:
        assert self._stream is not None
        turn = self._spoken.turn if self._spoken is not None else self._turn_for_response()
        turn.tool_calls.append(call)
        match authorize(call, self._tools, self.engine.conversation):
            case Refused(reason=reason):
                self.log.warning("refused tool call %s: %s", call.name, reason)
                self._events.append((self._clock(), "tool_refused", {"tool": call.name, "reason": reason}))
                await self._guard(self._stream.tool_result(call, f"refused: {reason}", respond=True))
            case Authorized(extension=ext, context=ctx, target=target) if call.name == "transfer":
                await self._guard(self._stream.tool_result(call, f"transferring to {target}", respond=False))
                await self._after_speech()
                with contextlib.suppress(CallGone, ParleyError, ValueError):
                    await self.call.transfer(ext, context=ctx)
            case Authorized() if call.name == "hangup":
                await self._guard(self._stream.tool_result(call, "ok", respond=False))
                await self._after_speech()
                await self._hangup()
            case Authorized():
                await self._guard(self._stream.tool_result(call, "unknown tool", respond=True))

    async def _after_speech(self) -> None:
        """A goodbye or handover sentence is heard to its end before the call is ended or moved."""
        spoken = self._spoken
        if spoken is not None:
            with contextlib.suppress(ParleyError, TimeoutError):
                await spoken.utterance.finish()
                await spoken.utterance.wait_played(timeout=30)

    async def _hangup(self) -> None:
        self._hung_up = True
        with contextlib.suppress(CallGone, ParleyError):
            await self.call.hangup("NORMAL_CLEARING")

    async def _call_events(self) -> None:
        while True:
            ev = await self.call.events.get()
            if isinstance(ev, Hangup | StreamLost):
                return

    def _record(self, turn: TurnRecord) -> None:
        if id(turn) in self._recorded:
            return
        self._recorded.add(id(turn))
        v2v = turn.timings.voice_to_voice_ms
        self.log.info("turn %d (realtime): v2v %s%s", turn.index, "-" if v2v is None else f"{v2v:.0f} ms",
                      ", barge-in" if turn.barge_in else "")
        if self.on_turn is not None and turn.index > 0:
            asyncio.get_running_loop().create_task(self._write(turn))

    async def _write(self, turn: TurnRecord) -> None:
        assert self.on_turn is not None
        try:
            await self.on_turn(turn)
        except Exception:  # a record that cannot be written must never break the call
            self.log.exception("recording turn %d failed", turn.index)

    # ---- the switch to the pipeline ------------------------------------------------------------------

    def _report(self, ev: Usage | Switched) -> None:
        """The local voice's cost, or a switch of its chain (an event of the call)."""
        if isinstance(ev, Usage):
            self._usage.append(ev)
            return
        detail = {"capability": ev.capability, "from": ev.old, "to": ev.new, "error": ev.error}
        self._events.append((self._clock(), "fallback", detail))

    async def _switch(self, exc: ProviderError) -> None:
        """The model is gone: the caller hears an apology in the local voice, then the pipeline goes on."""
        self.log.error("realtime model %s failed (%s): the pipeline takes the call", self.provider.name, exc)
        self._events.append((self._clock(), "fallback", {"capability": "conversation", "from": self.provider.name,
                                                         "to": "pipeline", "error": str(exc)[:300]}))
        with contextlib.suppress(ParleyError):
            await self.call.playback.barge_in()
        if self._spoken is not None and not self._spoken.finished:
            self._done_speaking(self._spoken, self._spoken.utterance.heard_ms(), barged=True)
        if self._hung_up or self.call.hangup_cause is not None:
            return
        await say_locally(self.call, self.engine, self.engine.switch_apology, self.log, self._report)
        self._fallback = pipeline_session(self.call, self.engine, self._turns, clock=self._clock,
                                          on_turn=self.on_turn)
        await self._fallback.run()


def new_session(call: CallPort, engine: Engine, *, on_turn: Callable[[TurnRecord], Awaitable[None]] | None = None
                ) -> CallSession | RealtimeSession:
    """The conversation the engine asks for: a realtime one when it carries a realtime provider."""
    if isinstance(engine, RealtimeEngine) and engine.realtime is not None:
        return RealtimeSession(call, engine, on_turn=on_turn)
    return CallSession(call, engine, on_turn=on_turn)
