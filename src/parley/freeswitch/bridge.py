"""The bridge: which calls are ours, and when each is ready for the agent.

Owns: discovering calls from ESL events and mod_audio_stream connections (which arrive in either order:
live, the WebSocket usually opens before the call's ESL events reach us), checking a stream's call UUID
against FreeSWITCH before accepting its audio, starting one agent task per ready call, and retiring
calls on hangup, stream failure or an ESL outage that FreeSWITCH no longer knows them after. Must not know
what an agent does.

A call is ours when a stream for it connects to us, or when its events carry ``variable_parley_agent``
(set by the dialplan we render). Events of other calls on the same FreeSWITCH are only remembered briefly
(a bounded cache) so that a stream that arrives later can be matched with the call's details.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from parley.config import FreeSwitchSettings
from parley.errors import CallGone, FreeSwitchError
from parley.freeswitch import esl_protocol as esl
from parley.freeswitch.audio_stream import AudioStream
from parley.freeswitch.call import Call
from parley.freeswitch.esl_client import EslClient
from parley.observe.redact import PhoneNumber

log = logging.getLogger("parley.bridge")

Agent = Callable[[Call], Awaitable[None]]
_CACHE_MAX = 2048
_INFO_EVENTS = frozenset({"CHANNEL_CREATE", "CHANNEL_ANSWER", "CHANNEL_PARK", "CHANNEL_EXECUTE", "CUSTOM"})
AGENT_TEARDOWN_S = 8.0  # after a hangup, how long the agent may take to record its last turn and outcome


@dataclass(slots=True)
class BridgeStats:
    calls_started: int = 0
    calls_ended: int = 0
    streams_rejected: int = 0
    stream_errors: int = 0
    stream_restarts: int = 0
    agent_errors: int = 0
    dropped_frames: int = 0


class Bridge:
    def __init__(
        self,
        settings: FreeSwitchSettings,
        esl_client: EslClient,
        agent: Agent,
        *,
        clock: Callable[[], float] = time.monotonic,
        hangup_grace_s: float = 2.0,
    ) -> None:
        self.settings = settings
        self.esl = esl_client
        self.agent = agent
        self._clock = clock
        self._grace = hangup_grace_s
        self.calls: dict[str, Call] = {}
        self._seen: OrderedDict[str, esl.Event] = OrderedDict()  # latest info event of not-yet-ours calls
        self._anonymous: list[AudioStream] = []
        self._connects: OrderedDict[str, float] = OrderedDict()  # ::connect of calls with no stream yet
        self._retiring: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._agents: dict[str, asyncio.Task[None]] = {}
        self._closing = False
        self.stats = BridgeStats()
        esl_client.on_event(self.on_esl_event)
        esl_client.on_reconnect(self.on_esl_reconnect)

    # ---- inputs ------------------------------------------------------------------------------------

    def on_stream(self, stream: AudioStream) -> None:
        """AudioStreamServer callback: a mod_audio_stream connection, possibly not yet identified."""
        if self._closing:
            self._spawn(stream.close(1001, "parley shutting down"))
            return
        if stream.call_uuid is None:
            if not self.settings.audio_stream.allow_anonymous:
                self._spawn(stream.close(1008, "call UUID required in the path or metadata"))
                return
            self._anonymous.append(stream)
            self._spawn(self._forget_anonymous(stream))
            self._correlate()
            return
        self._connects.pop(stream.call_uuid, None)
        self._attach(stream.call_uuid, stream)

    def on_esl_event(self, event: esl.Event) -> None:
        """ESL events of calls not (yet) routed to a Call."""
        uuid = event.unique_id
        if not uuid or self._closing:
            return
        call = self.calls.get(uuid)
        if event.subclass == "mod_audio_stream::connect" and (call is None or call.stream is None):
            self._connects[uuid] = self._clock()
            while len(self._connects) > _CACHE_MAX:
                self._connects.popitem(last=False)
        elif event.name == "CHANNEL_HANGUP":
            self._connects.pop(uuid, None)
        if call is None and event.variable("parley_agent") == "true":
            call = self._new_call(uuid)
        if call is not None:
            self._call_event(call, event)
            return
        if event.subclass == "mod_audio_stream::connect":
            self._seen[uuid] = event
            self._correlate()
        elif event.name in _INFO_EVENTS:
            self._seen[uuid] = event
            self._seen.move_to_end(uuid)
            while len(self._seen) > _CACHE_MAX:
                self._seen.popitem(last=False)
        elif event.name == "CHANNEL_HANGUP_COMPLETE":
            self._seen.pop(uuid, None)

    def _correlate(self) -> None:
        """Tie an unidentified stream to a call by its ``mod_audio_stream::connect`` event.

        Only when exactly one stream and exactly one recent connect are waiting: with more, which is
        which cannot be told, and guessing would hand one caller's audio to another call.
        """
        now = self._clock()
        window = self.settings.audio_stream.unidentified_timeout_s
        for uuid, t in list(self._connects.items()):
            if now - t > window or (uuid in self.calls and self.calls[uuid].stream is not None):
                del self._connects[uuid]
        waiting = [st for st in self._anonymous if not st.closed.is_set()]
        if len(waiting) != 1 or len(self._connects) != 1:
            if waiting and self._connects:
                log.warning("%d unidentified streams and %d connecting calls: cannot pair them; put ${uuid} "
                            "in the stream URL or metadata", len(waiting), len(self._connects))
            return
        stream = waiting[0]
        uuid, _ = self._connects.popitem()
        self._anonymous.remove(stream)
        try:
            stream.bind(uuid)
        except Exception as exc:
            log.warning("could not bind unidentified stream #%s to call %s: %s", stream.conn_id, uuid, exc)
            return
        log.info("bound unidentified stream #%s to call %s by its mod_audio_stream::connect", stream.conn_id, uuid)
        self._attach(uuid, stream)

    def on_esl_reconnect(self) -> None:
        """Events were lost during the outage: ask FreeSWITCH which of our calls still exist."""
        self._spawn(self._resync())

    # ---- lifecycle -----------------------------------------------------------------------------------

    async def close(self, *, hangup_calls: bool = True) -> None:
        """Stop every agent; hang up the calls we still hold (a parked call with no agent is dead air)."""
        self._closing = True
        calls = list(self.calls.values())
        if hangup_calls:  # first, while every call is still ours: a parked call with no agent is dead air
            await asyncio.gather(*(self._hangup_quietly(c) for c in calls if not c.hungup.is_set()))
        for call in calls:
            call.mark_hungup("parley shutdown")  # no-op where the hangup event came; the runner stops its agent
        runners = list(self._agents.values())
        if runners:  # the agents tear down (record their last turn and outcome) together, within one budget
            _done, late = await asyncio.wait(runners, timeout=AGENT_TEARDOWN_S + 2.0)
            for task in late:
                task.cancel()
        for call in list(self.calls.values()):
            if call.uuid in self._retiring:  # a hangup event's retire is finishing: let it
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(2):
                        await call.retired.wait()
            else:
                await self._retire(call, "parley shutdown")
        for stream in self._anonymous:
            await stream.close(1001, "parley shutting down")
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, *self._agents.values(), return_exceptions=True)

    # ---- internals -----------------------------------------------------------------------------------

    @staticmethod
    async def _hangup_quietly(call: Call) -> None:
        with contextlib.suppress(FreeSwitchError, CallGone, TimeoutError):
            async with asyncio.timeout(2):
                await call.hangup("NORMAL_CLEARING")

    def _new_call(self, uuid: str) -> Call:
        call = Call(uuid, self.esl, self.settings, clock=self._clock)
        self.calls[uuid] = call
        self.esl.route_call(uuid, lambda ev, c=call: self._call_event(c, ev))  # type: ignore[misc]
        cached = self._seen.pop(uuid, None)
        if cached is not None:
            call.handle_event(cached)
        return call

    def _attach(self, uuid: str, stream: AudioStream) -> None:
        call = self.calls.get(uuid) or self._new_call(uuid)
        if call.stream is not None and call.stream is not stream:
            call.log.warning("a second stream connected; closing the old one")
            self._spawn(call.stream.close(1000, "replaced"))
        call.attach_stream(stream)
        self._spawn(self._watch_stream(call, stream))
        if call.esl_confirmed:
            self._maybe_start(call)
        else:
            self._spawn(self._confirm(call))

    async def _confirm(self, call: Call) -> None:
        """A stream named a call ESL has not told us about: wait for its events, then ask FreeSWITCH."""
        deadline = self.settings.audio_stream.unidentified_timeout_s
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(deadline):
                await Call.wait_any(call.confirmed, call.hungup)
        if not call.esl_confirmed:
            try:
                exists = (await self.esl.api(f"uuid_exists {call.uuid}", check=False)).strip() == "true"
            except FreeSwitchError as exc:
                call.log.warning("cannot confirm with FreeSWITCH (%s)", exc)
                exists = False
            if not exists:
                self.stats.streams_rejected += 1
                call.log.warning("FreeSWITCH does not know this UUID; refusing its stream")
                if call.stream is not None:
                    await call.stream.close(1008, "unknown call")
                await self._retire(call, "unknown call")
                return
            call.confirmed.set()
        self._maybe_start(call)

    def _maybe_start(self, call: Call) -> None:
        if call.uuid in self._agents or call.hungup.is_set() or self._closing:
            return
        if not (call.esl_confirmed and call.stream is not None):
            return
        self.stats.calls_started += 1
        task = asyncio.create_task(self._run_agent(call), name=f"agent-{call.uuid}")
        self._agents[call.uuid] = task

    async def _run_agent(self, call: Call) -> None:
        call.log.info("call ready: from %s to %s, %s %d Hz, stream %d Hz",
                      PhoneNumber(call.info.caller_number), call.info.destination, call.info.codec,
                      call.info.codec_rate, call.stream_rate)
        try:
            # The dialplan sets this too; repeating it means DTMF '*' can never cut the agent off.
            with contextlib.suppress(FreeSwitchError):
                await call.set_var("playback_terminators", "none")
            agent = asyncio.ensure_future(self.agent(call))
            hung = asyncio.ensure_future(call.hungup.wait())
            try:
                await asyncio.wait({agent, hung}, return_when=asyncio.FIRST_COMPLETED)
                if not agent.done():
                    # Hung up: the agent's frames end and it winds down by itself, recording the turn in
                    # flight. Cancelling it now would land inside that teardown; cancel only if it hangs.
                    await asyncio.wait({agent}, timeout=AGENT_TEARDOWN_S)
            finally:
                hung.cancel()
                if not agent.done():
                    agent.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    exc = await asyncio.gather(agent, return_exceptions=True)
                    if exc and isinstance(exc[0], Exception) and not isinstance(exc[0], CallGone):
                        self.stats.agent_errors += 1
                        call.log.error("agent failed: %r", exc[0], exc_info=exc[0])
        finally:
            if not call.hungup.is_set() and not self._closing:
                call.log.info("agent finished; hanging up")
                with contextlib.suppress(FreeSwitchError, CallGone):
                    await call.hangup("NORMAL_CLEARING")
            await self._retire(call, call.hangup_cause or "agent finished")

    def _call_event(self, call: Call, event: esl.Event) -> None:
        call.handle_event(event)
        sub = event.subclass
        if sub == "mod_audio_stream::error":
            self.stats.stream_errors += 1
            call.log.error("mod_audio_stream error: %s", (event.body or "").strip()[:200])
            if call.stream is None:
                self._spawn(self._restart_stream(call, "stream failed to connect"))
            else:
                call.stream_lost("mod_audio_stream error")
        elif sub == "mod_audio_stream::disconnect":
            if call.stream is not None and not call.stream.closed.is_set():
                return  # our own close in progress; nothing lost
            if not call.hungup.is_set() and not self._closing:
                call.stream_lost("mod_audio_stream disconnected")
                self._spawn(self._restart_stream(call, "stream disconnected"))
        elif event.name == "CHANNEL_HANGUP":
            self._spawn(self._retire_later(call))
        elif event.name == "CHANNEL_HANGUP_COMPLETE":
            self._spawn(self._retire(call, call.hangup_cause or "hangup"))
        elif call.stream is not None:
            self._maybe_start(call)

    async def _restart_stream(self, call: Call, why: str) -> None:
        """mod_audio_stream never reconnects by itself: stop the dead media bug and start a new one."""
        stream = self.settings.audio_stream
        rate = "16k" if stream.sample_rate == 16000 else "8k" if stream.sample_rate == 8000 else str(stream.sample_rate)
        self.stats.stream_restarts += 1
        call.log.warning("%s; restarting mod_audio_stream", why)
        try:
            await self.esl.api(f"uuid_audio_stream {call.uuid} stop", check=False)
            await self.esl.api(f"uuid_audio_stream {call.uuid} start {stream.dial_url}/{call.uuid} {stream.mix} {rate}")
        except FreeSwitchError as exc:
            call.log.error("could not restart the stream (%s); ending the call", exc)
            fallback = self.settings.dialplan.fallback_extension
            with contextlib.suppress(FreeSwitchError, CallGone, ValueError):
                if fallback:
                    await call.transfer(fallback)
                else:
                    await call.hangup("TEMPORARY_FAILURE")

    async def _watch_stream(self, call: Call, stream: AudioStream) -> None:
        await stream.closed.wait()
        self.stats.dropped_frames += stream.stats.dropped
        if call.hungup.is_set() or self._closing or call.stream is not stream:
            return
        # FreeSWITCH closes the socket on hangup, sometimes before CHANNEL_HANGUP reaches us.
        await asyncio.sleep(self._grace)
        if call.hungup.is_set() or call.stream is not stream:
            return
        try:
            exists = (await self.esl.api(f"uuid_exists {call.uuid}", check=False)).strip() == "true"
        except FreeSwitchError:
            exists = True
        if not exists:
            call.mark_hungup("UNKNOWN_AFTER_STREAM_CLOSE")
            await self._retire(call, "stream closed and call gone")

    async def _retire_later(self, call: Call) -> None:
        """HANGUP_COMPLETE normally follows within milliseconds; do not wait for it forever."""
        await asyncio.sleep(self._grace)
        await self._retire(call, call.hangup_cause or "hangup")

    async def _retire(self, call: Call, why: str) -> None:
        if self.calls.get(call.uuid) is not call or call.uuid in self._retiring:
            return
        self._retiring.add(call.uuid)
        if not call.hungup.is_set():
            call.mark_hungup(why)
        self.stats.calls_ended += 1
        task = self._agents.get(call.uuid)  # popped once done: close() waits for every runner still here
        if task is not None and task is not asyncio.current_task() and not task.done():
            # The runner cancels the agent once it sees the hangup; cancelling the runner too would cut the
            # agent's own teardown short (the turn in flight, the last usage, the call record's outcome).
            try:
                async with asyncio.timeout(AGENT_TEARDOWN_S + 2.0):  # the runner's own budget, then some
                    await asyncio.shield(task)
            except TimeoutError:
                call.log.warning("agent still busy %.0f s after the hangup; cancelling it", AGENT_TEARDOWN_S)
                task.cancel()
            except asyncio.CancelledError:
                if (me := asyncio.current_task()) is not None and me.cancelling():
                    raise  # we are being cancelled ourselves; the runner merely ended cancelled
            except Exception:  # the runner logs its agent's failures itself
                pass
        self._agents.pop(call.uuid, None)
        await call.playback.close()
        if call.stream is not None and not call.stream.closed.is_set():
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1):
                    await call.stream.close(1000, "call ended")
        self.esl.route_call(call.uuid, lambda ev: None)()  # drop the route
        del self.calls[call.uuid]
        self._retiring.discard(call.uuid)
        call.retired.set()
        call.log.info("retired (%s)", why)

    async def _forget_anonymous(self, stream: AudioStream) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.settings.audio_stream.unidentified_timeout_s + 0.5):
                await stream.closed.wait()
        if stream in self._anonymous:
            self._anonymous.remove(stream)
        if stream.call_uuid is not None and stream.call_uuid not in self.calls and not stream.closed.is_set():
            self._attach(stream.call_uuid, stream)  # identified later by its own metadata

    async def _resync(self) -> None:
        for call in list(self.calls.values()):
            try:
                exists = (await self.esl.api(f"uuid_exists {call.uuid}", check=False)).strip() == "true"
            except FreeSwitchError as exc:
                call.log.warning("resync failed: %s", exc)
                continue
            if not exists:
                call.mark_hungup("UNKNOWN_AFTER_ESL_OUTAGE")
                await self._retire(call, "gone after ESL outage")

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
