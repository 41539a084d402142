"""One fake FreeSWITCH call: the dialplan, the park loop's queue of executes, playback, DTMF, hangup.

Owns: a call's channel (via :class:`~parley.sim.fake_channel.ChannelState`), the events it emits, its
queue of ``sendmsg``/``uuid_broadcast`` executes (event-locked, FIFO, as the park loop runs them), the
playback timing measured on FreeSWITCH 1.10.12 (start ~21 ms after the command, back-to-back with no
gap, ``uuid_break`` -> PLAYBACK_STOP ``break`` ~21 ms later, ``all`` flushes queued ones without any
event), the ``mod_audio_stream`` streams attached to it, and what the caller heard. One runner task per
call executes the queue; the streams own their pacing tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import uuid as uuidlib
from collections import deque
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from parley.sim.esl_wire import FsEvent
from parley.sim.fake_audio_stream import AudioStream
from parley.sim.fake_call_media import CallMedia
from parley.sim.fake_channel import (
    Q850,
    STATE_HANGUP,
    STATE_REPORTING,
    ChannelState,
    EventFactory,
)
from parley.sim.fake_dialplan import INLINE_APPS, STREAM_DIALPLAN, ChannelEvents
from parley.sim.fake_playback import (
    Int16Array,
    PlaybackRecord,
    heard_audio,
    heard_between,
    load_audio,
    split_file_arg,
)


@dataclass(frozen=True, slots=True)
class CallContext:
    """What a call needs from its FreeSWITCH: events out, the clock, the measured delays, a temp dir."""

    events: EventFactory
    fire: Callable[[FsEvent], None]
    clock: Callable[[], float]
    temp_dir: Path
    playback_start_delay_s: float
    break_stop_delay_s: float
    broadcast_lead_s: float


@dataclass(slots=True)
class _Exec:
    app: str
    arg: str
    app_uuid: str
    ready_at: float
    record: PlaybackRecord | None


class _Interrupt(NamedTuple):
    kind: str  # "break" | "dtmf" | "hangup"
    at: float
    digit: str = ""


class FakeCall:
    """A parked inbound call on the fake FreeSWITCH (see :class:`~parley.sim.FakeFreeSwitch`)."""

    def __init__(
        self,
        ctx: CallContext,
        channel: ChannelState,
        *,
        caller_audio: Int16Array | None,
        caller_rate: int,
        frame_jitter_s: float = 0.0,
    ) -> None:
        self._ctx = ctx
        self.channel = channel
        self._ev = ChannelEvents(ctx.events, ctx.fire, channel, ctx.clock)
        self.uuid = channel.uuid
        self.codec = channel.codec
        self.codec_rate = channel.codec_rate
        self.variables: dict[str, str] = channel.variables
        self.playbacks: list[PlaybackRecord] = []
        self.hungup = False
        self.hangup_cause: str | None = None
        self.created_at = ctx.clock()
        self.answered_at: float | None = None
        self.hungup_at: float | None = None
        self.media = CallMedia(
            call_uuid=channel.uuid,
            caller_audio=np.zeros(0, np.int16) if caller_audio is None else np.asarray(caller_audio, np.int16),
            caller_rate=caller_rate,
            frame_jitter_s=frame_jitter_s,
            heard=self._heard_between,
            on_event=self._custom,
            is_ending=lambda: self._ending,
            clock=ctx.clock,
            temp_dir=ctx.temp_dir,
        )
        self._queue: deque[_Exec] = deque()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._interrupt: asyncio.Future[_Interrupt] | None = None
        self._current: PlaybackRecord | None = None
        self._park_uuid: str | None = None
        self._runner: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._ending = False
        self._killed = False  # a hangup was ordered; the park loop runs nothing more
        self._done = asyncio.Event()

    # ---- public, for tests ----------------------------------------------------------------------

    @property
    def audio_stream(self) -> AudioStream | None:
        """The attached mod_audio_stream stream (it stays attached, dead, after the app closes it)."""
        return self.media.attached

    @property
    def streams(self) -> list[AudioStream]:
        """Every stream the call had, oldest first."""
        return self.media.streams

    @property
    def ws_close(self) -> tuple[int, str] | None:
        """(code, reason) of the close frame the app sent, if the app closed a stream."""
        return self.media.ws_close

    @property
    def stream_texts(self) -> list[str]:
        """Every text frame the app sent over the stream(s)."""
        return self.media.stream_texts

    async def hangup(self, cause: str = "NORMAL_CLEARING") -> None:
        """The caller hangs up (SIP BYE)."""
        await self._hangup(cause, remote=True)

    def say(self, samples: Int16Array, rate: int) -> None:
        """The caller speaks now: ``samples`` (int16 mono at ``rate``) go out in the next frames."""
        self.media.say(samples, rate)

    async def send_dtmf(self, digit: str, duration_ms: int = 100) -> None:
        """The caller presses a key (RFC 2833); the DTMF event arrives when the tone ends."""
        await asyncio.sleep(duration_ms / 1000)
        if self._ending:
            return
        dur = str(duration_ms * self.codec_rate // 1000)
        self._ev.emit("DTMF", {"DTMF-Digit": digit, "DTMF-Duration": dur, "DTMF-Source": "RTP"})
        if self._current is not None and digit in self._terminators():
            self._raise(_Interrupt("dtmf", self._ctx.clock(), digit))

    async def wait_hungup(self, timeout: float = 10) -> None:
        async with asyncio.timeout(timeout):
            await self._done.wait()

    def heard_audio(self) -> Int16Array:
        """What the caller heard, int16 mono at ``codec_rate``; sample 0 = the call's answer."""
        origin = self.answered_at if self.answered_at is not None else self.created_at
        end = self.hungup_at if self.hungup_at is not None else self._ctx.clock()
        return heard_audio(self.playbacks, origin, end, self.codec_rate, now=self._ctx.clock())

    # ---- the dialplan (called by FakeFreeSwitch.place_call) --------------------------------------

    async def setup(
        self,
        *,
        ws_url: str | None,
        mix: str,
        stream_rate: int,
        metadata: str | None,
        extra_headers: Mapping[str, str] | None,
        ws_first: bool,
        channel_vars: Mapping[str, str] | None = None,
    ) -> None:
        # what the dialplan will have set when it starts the stream (mod_audio_stream reads it then)
        stream_vars = {**dict(STREAM_DIALPLAN), **(channel_vars or {})}
        stream = None
        if ws_url is not None:
            stream = self.media.new_stream(ws_url, mix, stream_rate, metadata, extra_headers, stream_vars)
        error = await stream.open() if stream is not None and ws_first else None
        self.answered_at, self._park_uuid = self._ev.run_dialplan(
            ws_url, extra_headers, self.created_at, channel_vars or {}
        )
        if stream is not None:
            if not ws_first:
                error = await stream.open()
            self.media.opened(stream, error)
        self.channel.apply("ack")
        self._runner = asyncio.create_task(self._run_queue(), name=f"fake-call-{self.uuid}")

    def _custom(self, suffix: str, body: str) -> None:
        if not self._ending:  # mod_audio_stream clears its callbacks before the channel goes away
            self._ev.emit("CUSTOM", {"Event-Subclass": f"mod_audio_stream::{suffix}"}, body)

    # ---- the execute queue (sendmsg execute / uuid_broadcast) -----------------------------------

    def queue_execute(
        self, app: str, arg: str, *, app_uuid: str | None = None, delay_s: float | None = None, via: str = "sendmsg"
    ) -> PlaybackRecord | None:
        """Queue an execute the way the park loop receives a private event; returns the playback record."""
        now = self._ctx.clock()
        ready = now + (self._ctx.playback_start_delay_s if delay_s is None else delay_s)
        app_uuid = app_uuid or str(uuidlib.uuid4())
        record = None
        if app == "playback":
            record = PlaybackRecord(arg, app_uuid, now, via="broadcast" if via == "broadcast" else "sendmsg")
            self.playbacks.append(record)
        self._queue.append(_Exec(app, arg, app_uuid, ready, record))
        self._wake.set()
        return record

    def request_break(self, flush: bool) -> None:
        """``uuid_break`` (``flush`` = ``all``): flush queued executes, then stop the current playback."""
        if flush:
            for item in self._queue:
                if item.record is not None:
                    item.record.flushed = True
            self._queue.clear()
            self._wake.set()
        self._raise(_Interrupt("break", self._ctx.clock()))

    def _raise(self, why: _Interrupt) -> None:
        fut = self._interrupt
        if fut is not None and not fut.done():
            fut.set_result(why)

    def _terminators(self) -> str:
        value = self.variables.get("playback_terminators", "*")
        return {"none": "", "any": "1234567890*#"}.get(value, value)

    async def _run_queue(self) -> None:
        resume_at = -math.inf
        while not (self._ending or self._killed):
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            item = self._queue[0]
            start = max(item.ready_at, resume_at)
            delay = start - self._ctx.clock()
            if delay > 0:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._wake.wait()
                continue
            self._queue.popleft()
            self._idle.clear()
            try:
                resume_at = await self._execute(item, start)
            finally:
                self._idle.set()

    async def _execute(self, item: _Exec, start: float) -> float:
        if item.app == "playback":
            return await self._play(item, start)
        if item.app in INLINE_APPS:
            self._ev.inline(item.app, item.arg, item.app_uuid, loops=True)
        elif item.app == "hangup":
            self._ev.exec_event("hangup", item.arg, item.app_uuid, loops=True)
            self.kill(item.arg or "NORMAL_CLEARING", remote=False)
        elif item.app == "sleep":
            self._ev.exec_event("sleep", item.arg, item.app_uuid, loops=True)
            fut = self._interrupt = asyncio.get_running_loop().create_future()
            ms = int(item.arg) if item.arg.isdigit() else 0
            await self._wait(fut, start + ms / 1000)
            self._interrupt = None
            self._ev.exec_done("sleep", item.arg, item.app_uuid, None, loops=True)
        # any other application: FreeSWITCH logs "Invalid Application" and emits nothing
        return max(start, self._ctx.clock())

    async def _play(self, item: _Exec, start: float) -> float:
        rec = item.record
        assert rec is not None
        ctx, ch = self._ctx, self.channel
        self._ev.exec_event("playback", item.arg, item.app_uuid, loops=True)
        params, path = split_file_arg(item.arg)
        audio = load_audio(path, self.codec_rate)
        if audio is None:
            rec.found = False
            self._ev.exec_done("playback", item.arg, item.app_uuid, "FILE NOT FOUND", loops=True)
            return start
        rec.found, rec.samples, rec.duration_s, rec.started_at = True, audio.samples, audio.duration_s, start
        self._current = rec
        fut = self._interrupt = asyncio.get_running_loop().create_future()
        self._ev.emit("PLAYBACK_START", {"Playback-File-Path": item.arg, **params})
        deadline, status = start + audio.duration_s, "done"
        while True:
            why = await self._wait(fut, deadline)
            if why is None:
                break
            if why.kind == "hangup":  # recorded: a hangup mid-file still reports "done"
                deadline, status = min(deadline, why.at), "done"
                break
            if why.kind == "dtmf":
                deadline, status = why.at, "break"
                ch.set_var("playback_terminator_used", why.digit)
                break
            if status == "done" and why.at + ctx.break_stop_delay_s < deadline:
                deadline, status = why.at + ctx.break_stop_delay_s, "break"
            fut = self._interrupt = asyncio.get_running_loop().create_future()
        self._interrupt = self._current = None
        rec.stopped_at, rec.status = max(start, deadline), "break" if status == "break" else "done"
        played = rec.stopped_at - start
        ch.set_var("playback_last_offset_pos", str(int(played * self.codec_rate)))
        ch.set_var("playback_seconds", str(int(played)))
        ch.set_var("playback_ms", str(int(played * 1000)))
        ch.set_var("playback_samples", str(int(played * audio.file_rate)))
        self._ev.emit("PLAYBACK_STOP", {"Playback-File-Path": item.arg, "Playback-Status": rec.status, **params})
        self._ev.exec_done("playback", item.arg, item.app_uuid, "FILE PLAYED", loops=True)
        return rec.stopped_at if rec.status == "done" else rec.stopped_at + ctx.playback_start_delay_s

    async def _wait(self, fut: asyncio.Future[_Interrupt], deadline: float) -> _Interrupt | None:
        """Wait for an interrupt until ``deadline`` (on the fake's clock); None when the deadline passed."""
        if fut.done():
            return fut.result()
        if math.isinf(deadline):
            return await fut
        delay = deadline - self._ctx.clock()
        if delay <= 0:
            return None
        try:
            async with asyncio.timeout(delay):
                return await fut
        except TimeoutError:
            return None

    # ---- mod_audio_stream -----------------------------------------------------------------------

    def _heard_between(self, t0: float, t1: float) -> Int16Array | None:
        return heard_between(self.playbacks, t0, t1, self.codec_rate)

    # ---- hangup, transfer, shutdown -------------------------------------------------------------

    def kill(self, cause: str, *, remote: bool = False) -> None:
        """``uuid_kill`` / ``sendmsg`` hangup: FreeSWITCH hangs up (sends the BYE)."""
        self._killed = True
        self._spawn(self._hangup(cause, remote=remote))

    async def _hangup(self, cause: str, *, remote: bool) -> None:
        if self._ending:
            await self._done.wait()
            return
        self._ending = self.hungup = True
        self.hangup_cause = cause
        ctx, ch = self._ctx, self.channel
        now = ctx.clock()
        self._queue.clear()
        self._wake.set()
        ch.hangup_cause = cause
        if remote:
            ch.apply("hangup")
            ch.set_var("sip_term_cause", str(Q850.get(cause, 16)))
        ch.state = STATE_HANGUP
        self._ev.emit("CHANNEL_HANGUP")
        closing = self.media.close_all()
        self._raise(_Interrupt("hangup", now))
        if self._runner is not None:
            await asyncio.gather(self._runner, return_exceptions=True)
        if self._park_uuid is not None:
            ch.set_var("sip_hangup_disposition", "recv_bye" if remote else "send_bye")
            last = self.variables.get("current_application_response", "_none_")
            self._ev.exec_done("park", "", self._park_uuid, None, reported=last)
        self.hungup_at = now
        ch.hangup_us = ch.created_us + max(0, round((ctx.clock() - self.created_at) * 1e6))
        ch.state = STATE_REPORTING
        ch.apply("hangup_complete")
        self._ev.emit("CHANNEL_HANGUP_COMPLETE")
        await asyncio.gather(*closing, return_exceptions=True)
        self._done.set()

    def transfer(self) -> None:
        """``uuid_transfer``: the park loop ends (queued executes flushed) and the call is parked again."""

        async def run() -> None:
            self.request_break(flush=True)
            await self._idle.wait()
            if self._ending or self._park_uuid is None:
                return
            self._ev.exec_done("park", "", self._park_uuid, None)
            self._park_uuid = str(uuidlib.uuid4())
            self._ev.exec_event("park", "", self._park_uuid)
            self._ev.emit("CHANNEL_PARK")

        self._spawn(run())

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def shutdown(self) -> None:
        """Stop everything without events (the fake FreeSWITCH is closing)."""
        self._ending = True
        self._wake.set()
        for task in [*self._tasks, *([self._runner] if self._runner else [])]:
            task.cancel()
        await self.media.abort_all()
        await asyncio.gather(*self._tasks, *([self._runner] if self._runner else []), return_exceptions=True)
        self._done.set()
