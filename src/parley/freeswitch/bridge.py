"""The bridge: which calls are ours, when each is ready for the agent, and keeping its media alive.

Owns: discovering calls from ESL events and mod_audio_stream connections (which arrive in either order:
live, the WebSocket usually opens before the call's ESL events reach us), checking a stream's call UUID
against FreeSWITCH before accepting its audio, starting one agent task per ready call, restarting a lost,
stalled or replaced stream, concluding a call the agent cannot carry on (the apology rendered at start,
then the fallback extension or a hangup), and retiring calls on hangup, transfer or an ESL outage that
FreeSWITCH no longer knows them after. Must not know what an agent does.

The media stream is not the call (recorded on FreeSWITCH 1.10.12, ``shared/fixtures/freeswitch``):
mod_audio_stream never reconnects by itself; a reset gives ``::error`` code 1 and no ``::disconnect``; a
refused upgrade (our 401) gives ``::error`` code 6 "WebSocket upgrade failed"; ``start`` answers
``-ERR Operation Failed`` while a stream (even a dead one the app closed) is attached, hence ``stop``
first. So a stream that is lost (closed while the call lives, ``::error``, or silent past
``stall_timeout_s``) is restarted over ESL, ``restart_attempts`` in a row with a doubling backoff and at
most ``max_restarts`` per call; after that the caller hears the apology and goes to the fallback. A
refused upgrade is never retried: the same token would be refused again (the old behaviour: ~45 restarts
a second, forever, with the caller in silence).

A call is ours when a stream for it connects to us, or when its events carry ``variable_parley_agent`` (set by
the dialplan we render). With several workers on one FreeSWITCH (``claim_by_event=False``, `parley serve
--call-ownership stream`) only the first holds: a worker owns the calls whose stream it holds (and the ones
whose upgrade it refused, to record them), ignores every other call's events, and when a stream it restarted
connects to another worker (FreeSWITCH's ``::connect`` comes, the stream does not come here) it lets the call
go without hanging up: the other worker owns it from then on. Events of other calls on the same FreeSWITCH are
only remembered briefly (a bounded cache) so that a stream that arrives later can be matched with the call's
details.

Several FreeSWITCH nodes (:class:`~parley.freeswitch.esl_nodes.EslNodes`): each call belongs to the node that
placed it, named by its stream's metadata (``node``), else by the node whose ESL told us about it, else the only
node. Its playback, breaks, hangup, transfer, restarts and events go through that node's ESL alone; a stream
naming a node we do not know, or another node than its call's, is refused (1008, counted as rejected). A node
whose ESL is down holds up only its own calls. With owned-call filters (``EslClient(filter_calls=True)``, set
for ``--call-ownership stream``) a worker adds ``filter Unique-ID <uuid>`` on the call's node when it takes
the call (on every node for a refused upgrade, whose node is not known yet) and deletes it when it lets the
call go; the call's early events were filtered out, so it is confirmed with ``uuid_exists`` at once. Streams
without a call UUID cannot be paired by ``::connect`` then (other calls' events never arrive).

Drain (:meth:`Bridge.drain`, for SIGTERM or ``parley drain``): the calls held when it starts (and their
restarted streams) go on; a new call's upgrade is refused by the server (503) and the call goes to the
fallback without the apology (it was never answered by the agent); after ``grace_s`` the calls still up
hear a short goodbye and are hung up; their records are written by their agents as on any hangup.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from parley.audio.pcm import Int16Array
from parley.config import FreeSwitchSettings
from parley.errors import CallGone, ConfigError, FreeSwitchError, ParleyError
from parley.freeswitch import esl_protocol as esl
from parley.freeswitch.audio_stream import AudioStream
from parley.freeswitch.call import Call
from parley.freeswitch.esl_client import EslClient
from parley.freeswitch.esl_nodes import EslNodes
from parley.observe.redact import PhoneNumber

log = logging.getLogger("parley.bridge")

Agent = Callable[[Call], Awaitable[None]]
_CACHE_MAX = 2048
RESTART_WAIT_S = 3.0  # after a restart's `start`: the new stream, or its ::error (libwsc's connect timeout is 2 s)
CLOSE_HANGUP_GRACE_S = 0.3  # FreeSWITCH closes the socket on hangup up to ~20 ms before CHANNEL_HANGUP reaches us
APOLOGY_MAX_S = 20.0
STALL_CHECK_S = 0.25
_INFO_EVENTS = frozenset({"CHANNEL_CREATE", "CHANNEL_ANSWER", "CHANNEL_PARK", "CHANNEL_EXECUTE", "CUSTOM"})
MOVED_GRACE_S = 1.5  # after ::connect, how long our own stream may take to reach us (announced <= 0.5 s)
# capacity: a new call let in counts against max_calls until its agent starts, at most this long (its stream's
# first message, the bind and the agent's start take well under a second; a refused or lost one stops counting)
ADMITTED_S = 5.0
AGENT_TEARDOWN_S = 8.0  # after a hangup, how long the agent may take to record its last turn and outcome


@dataclass(slots=True)
class BridgeStats:
    calls_started: int = 0
    calls_ended: int = 0
    streams_rejected: int = 0  # upgrades refused (token, path, format) and streams of unknown calls
    stream_errors: int = 0
    stream_restarts: int = 0
    streams_replaced: int = 0  # a second stream for a call took over from the first
    streams_stalled: int = 0  # mono streams that went silent with their connection open
    media_given_up: int = 0  # calls whose media could not be restored: apology, then fallback or hangup
    refused_draining: int = 0  # new calls sent to the fallback because this process was draining
    refused_full: int = 0  # new calls sent to the fallback because this process had max_calls calls up
    drain_hangups: int = 0  # calls still up when the drain grace ran out (goodbye, then hangup)
    streams_moved: int = 0  # calls let go because their restarted stream connected to another worker
    agent_errors: int = 0
    dropped_frames: int = 0


@dataclass(frozen=True, slots=True)
class Apology:
    """What a caller hears when parley cannot carry the call on, ready before any call: int16 mono
    ``samples`` at ``rate`` rendered once at start by a local voice (never a TTS that may be down by then),
    and/or a FreeSWITCH-side ``fs_path`` (a sound file or ``tone_stream://``) for when nothing can be
    written to the spool."""

    samples: Int16Array | None = None
    rate: int = 8000
    fs_path: str = ""


class Bridge:
    def __init__(
        self,
        settings: FreeSwitchSettings,
        esl_client: EslClient | EslNodes,
        agent: Agent,
        *,
        clock: Callable[[], float] = time.monotonic,
        hangup_grace_s: float = 2.0,
        apology: Apology | None = None,
        unserved: Agent | None = None,
        claim_by_event: bool = True,
    ) -> None:
        self.settings = settings
        self.claim_by_event = claim_by_event  # False: a call is ours only when we hold (or refused) its stream
        self.nodes = esl_client if isinstance(esl_client, EslNodes) else EslNodes.single(esl_client)
        self.agent = agent
        self.apology = apology
        self.unserved = unserved  # called for a call concluded before any agent ran (its record)
        self._clock = clock
        self._grace = hangup_grace_s
        self.calls: dict[str, Call] = {}
        self._seen: OrderedDict[str, tuple[str, esl.Event]] = OrderedDict()  # (node, latest info event), not ours
        # calls parley let go of (retired) that FreeSWITCH may still carry, e.g. transferred to a person:
        # their later events and streams must not bring them back as a new call (a second greeting)
        self._let_go: OrderedDict[str, None] = OrderedDict()
        self._anonymous: list[AudioStream] = []
        self._connects: OrderedDict[str, tuple[float, str]] = OrderedDict()  # (t, node) of ::connect, no stream yet
        self._retiring: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._agents: dict[str, asyncio.Task[None]] = {}
        # capacity: new calls whose stream was let in and whose agent has not started yet (uuid -> when)
        self._admitted: dict[str, float] = {}
        self._closing = False
        self._recovering: dict[str, asyncio.Task[None]] = {}
        self._stream_failed: dict[str, asyncio.Event] = {}  # pulsed by each ::error of the call
        self._refusals: OrderedDict[str, str] = OrderedDict()  # call uuid -> why our server refused its upgrade
        self._restarts: dict[str, int] = {}
        self._kept: frozenset[str] | None = None  # while draining: the calls held when the drain began
        self._giving_up: set[asyncio.Future[None]] = set()  # refused calls being concluded and recorded
        self.stats = BridgeStats()
        for name, client in self.nodes.items():
            client.on_event(lambda ev, n=name: self.on_esl_event(ev, n))  # type: ignore[misc]
            client.on_reconnect(lambda n=name: self.on_esl_reconnect(n))  # type: ignore[misc]

    def client(self, call: Call) -> EslClient:
        """The ESL client of the node that placed ``call``."""
        return self.nodes[call.node]

    # ---- inputs ------------------------------------------------------------------------------------

    def on_stream(self, stream: AudioStream) -> None:
        """AudioStreamServer callback: a mod_audio_stream connection, possibly not yet identified."""
        if self._closing:
            self._spawn(stream.close(1001, "parley shutting down"))
            return
        if stream.node is not None and stream.node not in self.nodes:
            self._reject(stream, f"unknown FreeSWITCH node {stream.node!r} (configured: {', '.join(self.nodes)})")
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

    def _reject(self, stream: AudioStream, why: str) -> None:
        """Refuse a stream after its metadata (1008), counted as a rejected stream."""
        self.stats.streams_rejected += 1
        log.warning("refusing stream #%s of call %s: %s", stream.conn_id, stream.call_uuid or "-", why)
        self._spawn(stream.close(1008, why[:120]))

    def on_refused(self, call_uuid: str | None, reason: str) -> Awaitable[None] | None:
        """AudioStreamServer callback: an upgrade refused before the WebSocket opened (a 401 for a token).

        With owned-call filters, returns the filters being added for the call on every node (its node is not
        known yet): the server awaits them before refusing, so the ``::error`` FreeSWITCH fires on the refusal
        (which the call's record and fallback hang on) cannot pass before the filter is in place."""
        self.stats.streams_rejected += 1
        if call_uuid is None:
            return None
        self._refusals[call_uuid] = reason
        while len(self._refusals) > _CACHE_MAX:
            gone, _ = self._refusals.popitem(last=False)
            if gone not in self.calls:
                for client in self.nodes.clients.values():
                    self._spawn(self._release(client, gone))
        filtering = [client for client in self.nodes.clients.values() if client.filter_calls]
        if not filtering:
            return None
        return self._own_everywhere(filtering, call_uuid)

    async def _own_everywhere(self, clients: list[EslClient], uuid: str) -> None:
        await asyncio.gather(*(self._own(client, uuid) for client in clients))

    def on_esl_event(self, event: esl.Event, node: str | None = None) -> None:
        """ESL events of calls not (yet) routed to a Call, from ``node`` (default: the first node)."""
        uuid = event.unique_id
        if not uuid or self._closing:
            return
        node = node or self.nodes.names[0]
        call = self.calls.get(uuid)
        if call is None and uuid in self._let_go:
            if event.name == "CHANNEL_HANGUP_COMPLETE":
                self._let_go.pop(uuid, None)
            return
        if event.subclass == "mod_audio_stream::connect" and (call is None or call.stream is None):
            self._connects[uuid] = (self._clock(), node)
            while len(self._connects) > _CACHE_MAX:
                self._connects.popitem(last=False)
        elif event.name == "CHANNEL_HANGUP":
            self._connects.pop(uuid, None)
        if call is None and event.variable("parley_agent") == "true" and (
            self.claim_by_event or uuid in self._refusals
        ):
            call = self._new_call(uuid, node)
            for other, client in self.nodes.items():  # a refused call's filter was added on every node
                if other != node and client.filter_calls:
                    self._spawn(self._release(client, uuid))
        if call is not None:
            self._call_event(call, event)
            return
        if event.subclass == "mod_audio_stream::connect":
            self._seen[uuid] = (node, event)
            self._correlate()
        elif event.name in _INFO_EVENTS:
            self._seen[uuid] = (node, event)
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
        for uuid, (t, _node) in list(self._connects.items()):
            if now - t > window or (uuid in self.calls and self.calls[uuid].stream is not None):
                del self._connects[uuid]
        waiting = [st for st in self._anonymous if not st.closed.is_set()]
        if len(waiting) != 1 or len(self._connects) != 1:
            if waiting and self._connects:
                log.warning("%d unidentified streams and %d connecting calls: cannot pair them; put ${uuid} "
                            "in the stream URL or metadata", len(waiting), len(self._connects))
            return
        stream = waiting[0]
        uuid, (_t, node) = self._connects.popitem()
        self._anonymous.remove(stream)
        try:
            stream.bind(uuid)
        except Exception as exc:
            log.warning("could not bind unidentified stream #%s to call %s: %s", stream.conn_id, uuid, exc)
            return
        log.info("bound unidentified stream #%s to call %s by its mod_audio_stream::connect", stream.conn_id, uuid)
        self._attach(uuid, stream, node)

    def on_esl_reconnect(self, node: str | None = None) -> None:
        """Events were lost during the outage: ask FreeSWITCH (``node``'s; default every node) which of our
        calls still exist."""
        self._spawn(self._resync(node))

    # ---- lifecycle -----------------------------------------------------------------------------------

    @property
    def draining(self) -> bool:
        return self._kept is not None

    def owns(self, call_uuid: str) -> bool:
        """While draining: is a stream for this call still welcome (a call held when the drain began, or
        one whose agent runs)? The server's upgrade check asks this."""
        return call_uuid in self._agents or (self._kept is not None and call_uuid in self._kept)

    def has_room(self, call_uuid: str | None) -> bool:
        """May a stream for this call be taken (the server's upgrade check asks)? A call whose agent runs always
        (a restarted stream); a new one while fewer than ``max_calls`` calls are up or let in (0: no limit).
        A new call let in counts until its agent starts (or ``ADMITTED_S``), so a burst does not pass the cap."""
        limit = self.settings.audio_stream.max_calls
        if limit <= 0 or (call_uuid is not None and call_uuid in self._agents):
            return True
        if self._load() >= limit:
            return False
        if call_uuid is not None:
            self._admitted[call_uuid] = time.monotonic()
        return True

    @property
    def full(self) -> bool:
        """At ``max_calls``: no new call is taken until one ends (``/ready`` says so)."""
        limit = self.settings.audio_stream.max_calls
        return 0 < limit <= self._load()

    def _load(self) -> int:
        """Calls whose agent runs, plus new calls let in whose agent has not started yet."""
        now = time.monotonic()
        for uuid, at in list(self._admitted.items()):
            if uuid in self._agents or now - at > ADMITTED_S:
                del self._admitted[uuid]
        return len(self._agents) + len(self._admitted)

    def begin_drain(self) -> None:
        """Take no new call from now on (idempotent); the calls held now go on."""
        if self._kept is None:
            self._kept = frozenset(self.calls)
            log.info("draining: %d call(s) up, no new ones", len(self._agents))

    async def drain(self, grace_s: float, *, goodbye: Apology | None = None) -> int:
        """Wait until no agent runs, at most ``grace_s``; then the calls still up hear ``goodbye`` and are
        hung up (NORMAL_CLEARING), and their agents get their teardown budget. Returns how many were cut."""
        self.begin_drain()
        await self._agents_done(grace_s)
        late = [c for c in self.calls.values() if c.uuid in self._agents and not c.hungup.is_set()]
        if late:
            log.warning("drain grace of %.0f s over: saying goodbye to %d call(s)", grace_s, len(late))
            self.stats.drain_hangups += len(late)
            await asyncio.gather(*(self._say_goodbye(c, goodbye) for c in late))
        await self._agents_done(AGENT_TEARDOWN_S + 2.0)
        return len(late)

    async def _agents_done(self, timeout_s: float) -> None:
        """Until no agent runs (a kept call's agent may start meanwhile) and no refused call is still being
        concluded and recorded, at most ``timeout_s``."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                while self._agents or self._giving_up:
                    await asyncio.wait([*self._agents.values(), *self._giving_up])

    async def _say_goodbye(self, call: Call, goodbye: Apology | None) -> None:
        try:
            async with asyncio.timeout(APOLOGY_MAX_S):
                with contextlib.suppress(ParleyError, OSError):
                    await call.playback.barge_in()
                if goodbye is not None and goodbye.samples is not None and goodbye.samples.size:
                    utt = await call.playback.play(goodbye.samples, goodbye.rate, "goodbye")
                    await utt.wait_played()
        except (ParleyError, OSError, TimeoutError) as exc:
            call.log.warning("the goodbye could not be played: %s", exc)
        await self._hangup_quietly(call)

    async def close(self, *, hangup_calls: bool = True) -> None:
        """Stop every agent; hang up the calls we still hold (a parked call with no agent is dead air)."""
        self._closing = True
        calls = list(self.calls.values())
        for call in calls:
            call.shutdown = not call.hungup.is_set()
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

    def _new_call(self, uuid: str, node: str) -> Call:
        client = self.nodes[node]
        call = Call(uuid, client, self.settings, clock=self._clock, node=node)
        call.concluder = self._conclude
        self.calls[uuid] = call
        client.route_call(uuid, lambda ev, c=call: self._call_event(c, ev))  # type: ignore[misc]
        cached = self._seen.pop(uuid, None)
        if cached is not None and cached[0] == node:
            call.handle_event(cached[1])
        return call

    def _node_of(self, uuid: str, stream: AudioStream, hint: str | None) -> str | None:
        """The node of a new call: what its stream's metadata says, else the node whose events told us about
        it, else the only node. None: several nodes and nothing says which."""
        if stream.node is not None:
            return stream.node
        if hint is not None:
            return hint
        seen = self._seen.get(uuid)
        if seen is not None:
            return seen[0]
        return self.nodes.default

    def _attach(self, uuid: str, stream: AudioStream, hint: str | None = None) -> None:
        if uuid not in self.calls and uuid in self._let_go:  # ended or handed over: nobody streams to it now
            self.stats.streams_rejected += 1
            self._spawn(stream.close(1008, "call no longer handled by parley"))
            return
        call = self.calls.get(uuid)
        if call is not None and stream.node is not None and stream.node != call.node:
            self._reject(stream, f"names FreeSWITCH node {stream.node!r}, its call is on {call.node!r}")
            return
        if call is None:
            node = self._node_of(uuid, stream, hint)
            if node is None:
                self._spawn(self._find_node(uuid, stream))
                return
            call = self._new_call(uuid, node)
        if call.media_ended or call.transferred_to is not None:
            self._spawn(stream.close(1008, "call no longer handled by parley"))
            return
        old = call.stream
        if old is not None and old is not stream and not old.closed.is_set():
            self.stats.streams_replaced += 1
            call.log.warning("a second stream connected (#%s); it replaces #%s", stream.conn_id, old.conn_id)
            self._spawn(old.close(1000, "replaced"))
        call.attach_stream(stream)
        self._spawn(self._watch_stream(call, stream))
        if call.esl_confirmed:
            self._maybe_start(call)
        else:
            self._spawn(self._confirm(call))

    async def _find_node(self, uuid: str, stream: AudioStream) -> None:
        """A stream whose metadata names no node, with several nodes: the node whose FreeSWITCH knows the UUID
        (``uuid_exists`` on each), else the stream is refused."""
        async def knows(client: EslClient) -> bool:
            try:
                async with asyncio.timeout(self.settings.audio_stream.unidentified_timeout_s):
                    return (await client.api(f"uuid_exists {uuid}", check=False)).strip() == "true"
            except (FreeSwitchError, TimeoutError):
                return False

        names = list(self.nodes)
        found = [n for n, yes in zip(names, await asyncio.gather(*(knows(self.nodes[n]) for n in names)),
                                     strict=True) if yes]
        if stream.closed.is_set() or self._closing:
            return
        if uuid in self.calls:  # its events came meanwhile (claimed by event)
            self._attach(uuid, stream)
        elif len(found) == 1:
            self._attach(uuid, stream, found[0])
        else:
            self._reject(stream, f"its metadata names no FreeSWITCH node and {len(found)} of the {len(names)} "
                                 "nodes know the call")

    async def _confirm(self, call: Call) -> None:
        """A stream named a call ESL has not told us about: wait for its events, then ask FreeSWITCH."""
        deadline = self.settings.audio_stream.unidentified_timeout_s
        client = self.client(call)
        if client.filter_calls:  # its events so far were filtered out: take them from now on, then ask at once
            await self._own(client, call.uuid)
            deadline = 0.0
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(deadline):
                await Call.wait_any(call.confirmed, call.hungup)
        if not call.esl_confirmed:
            try:
                exists = (await client.api(f"uuid_exists {call.uuid}", check=False)).strip() == "true"
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
        if call.uuid in self._agents or call.hungup.is_set() or self._closing or call.media_ended:
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
            error: str | None = None
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
                        error = f"agent failed: {type(exc[0]).__name__}: {exc[0]}"[:300]
                        call.log.error("agent failed: %r", exc[0], exc_info=exc[0])
        finally:
            if not call.hungup.is_set() and not self._closing:
                # the agent may have concluded the call itself (its record needs the ending): then a no-op
                with contextlib.suppress(FreeSwitchError, CallGone, ValueError):
                    await call.conclude(error or call.media_failure)
            await self._retire(call, call.hangup_cause or "agent finished")

    def _call_event(self, call: Call, event: esl.Event) -> None:
        call.handle_event(event)
        sub = event.subclass
        if sub == "mod_audio_stream::error":
            self.stats.stream_errors += 1
            code, text = _stream_error(event.body)
            call.stream_errors.append((code, text))
            call.log.error("mod_audio_stream error %s: %s", code, text[:200])
            stream = call.stream
            if stream is not None and call.stream_ready.is_set():  # the attached stream is the one that died
                call.detach_stream(stream)
                if not stream.closed.is_set():
                    self._spawn(stream.close(1011, "mod_audio_stream reported an error"))
            if (failed := self._stream_failed.get(call.uuid)) is not None:
                failed.set()
            if code == 6 and "upgrade failed" in text.lower():  # refused (our 401): never retry the same token
                why = self._refusals.get(call.uuid, "refused")
                if why == "draining":
                    self.stats.refused_draining += 1
                elif why == "full":
                    self.stats.refused_full += 1
                giving_up = asyncio.ensure_future(
                    self._give_up(call, f"media stream refused ({why.replace('_', ' ')})", refused=True))
                self._giving_up.add(giving_up)  # a drain waits for it: it writes the call's record
                giving_up.add_done_callback(self._giving_up.discard)
                self._spawn(giving_up)
            else:
                self._recover_soon(call, f"mod_audio_stream error {code}")
        elif sub == "mod_audio_stream::connect" and not self.claim_by_event and not call.stream_ready.is_set():
            self._spawn(self._hand_off_unless_attached(call))
        elif sub == "mod_audio_stream::disconnect":
            # our own close (replaced, stalled, flood, shutdown): _watch_stream decides what follows
            if not call.stream_ready.is_set():
                self._recover_soon(call, "stream disconnected")
        elif event.name == "CHANNEL_HANGUP":
            self._spawn(self._retire_later(call))
        elif event.name == "CHANNEL_HANGUP_COMPLETE":
            self._spawn(self._retire(call, call.hangup_cause or "hangup"))
        elif call.stream is not None:
            self._maybe_start(call)

    # ---- the media: restart, give up, conclude ----------------------------------------------------------

    def _recover_soon(self, call: Call, why: str) -> None:
        """Start restoring the call's media unless that is already under way (or pointless)."""
        if (
            call.uuid in self._recovering or call.hungup.is_set() or self._closing
            or call.media_failure is not None or call.transferred_to is not None
        ):
            return
        task = asyncio.ensure_future(self._recover(call, why))
        self._recovering[call.uuid] = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(lambda _t, uuid=call.uuid: self._recovering.pop(uuid, None))  # type: ignore[misc]

    async def _recover(self, call: Call, why: str) -> None:
        """mod_audio_stream never reconnects by itself: stop the dead media bug and start a new one, a few
        times with a growing pause; then give the media up."""
        cfg = self.settings.audio_stream
        rate = {8000: "8k", 16000: "16k"}.get(cfg.sample_rate, str(cfg.sample_rate))
        failed = self._stream_failed.setdefault(call.uuid, asyncio.Event())
        delay = cfg.restart_backoff_s
        call.log.warning("%s; restarting mod_audio_stream", why)
        for attempt in range(cfg.restart_attempts):
            if self._restarts.get(call.uuid, 0) >= cfg.max_restarts:
                why = f"{why}; {cfg.max_restarts} restarts in this call already"
                break
            if attempt:
                await asyncio.sleep(delay)
                delay *= 2
            if call.hungup.is_set() or self._closing or call.media_failure is not None:
                return
            if call.stream_ready.is_set():
                return  # a stream came back by itself (a replacement)
            self._restarts[call.uuid] = self._restarts.get(call.uuid, 0) + 1
            self.stats.stream_restarts += 1
            failed.clear()
            try:
                # the metadata names the node, so a restarted stream that lands on another worker is placed right
                await self.client(call).api(f"uuid_audio_stream {call.uuid} stop", check=False)
                await self.client(call).api(
                    f"uuid_audio_stream {call.uuid} start {cfg.dial_url}/{call.uuid} {cfg.mix} {rate} "
                    + json.dumps({"node": call.node}, separators=(",", ":"))
                )
            except (FreeSwitchError, CallGone) as exc:
                call.log.warning("stream restart %d failed: %s", attempt + 1, exc)
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(RESTART_WAIT_S):
                    await Call.wait_any(call.stream_ready, call.hungup, failed)
            if call.stream_ready.is_set():
                call.log.info("stream restored (restart %d)", attempt + 1)
                return
            if call.hungup.is_set() or call.media_failure is not None:
                return
        if not call.hungup.is_set() and not self._closing:
            await self._give_up(call, f"media stream lost: {why}")

    async def _give_up(self, call: Call, reason: str, *, refused: bool = False) -> None:
        """The media cannot be restored: the agent stops, the caller hears the apology and goes to the fallback
        (or is hung up); a call no agent ever ran for still gets its record."""
        if call.media_failure is not None or self._closing:
            return
        if call.hungup.is_set():
            # Nothing to play or transfer. A refused stream still leaves its record: a caller who hangs up
            # before the refusal is handled here (at once, or during a drain) was turned away all the same.
            if refused and call.uuid not in self._agents:
                call.end_media(reason, refused=refused)
                await self._record_unserved(call)
            return
        self.stats.media_given_up += 1
        call.log.error("%s; giving the call to the fallback", reason)
        call.end_media(reason, refused=refused)
        served = call.uuid in self._agents
        if served or not call.fallback_by_dialplan:
            with contextlib.suppress(FreeSwitchError, CallGone, ValueError):
                await call.conclude(reason)
        else:  # the Lua helper saw the same ::error and transfers the call itself: do not race it
            call.log.info("the dialplan's Lua helper takes the call to its fallback")
        if not served:
            await self._record_unserved(call)

    async def _record_unserved(self, call: Call) -> None:
        if self.unserved is not None:
            try:
                await self.unserved(call)
            except Exception:
                call.log.exception("recording the unserved call failed")

    async def _conclude(self, call: Call, error: str | None) -> None:
        """Call.concluder: end a call the agent is done with. On ``error``: the apology, then the fallback
        extension (``<extension> [XML [<context>]]``), else a hangup with TEMPORARY_FAILURE."""
        if not error:
            call.log.info("agent finished; hanging up")
            await call.hangup("NORMAL_CLEARING")
            return
        turned_away = (self.draining and error.endswith("(draining)")) or error.endswith("(full)")
        if not turned_away:  # a call turned away was never answered: straight to the fallback, no apology
            await self._apologise(call)
        if call.hungup.is_set():
            return
        try:
            fallback = self.settings.dialplan.fallback()
        except ConfigError as exc:
            call.log.error("%s", exc)
            fallback = None
        if fallback is not None:
            extension, dialplan, context = fallback
            try:
                await call.transfer(extension, dialplan=dialplan, context=context)
            except (FreeSwitchError, ValueError) as exc:
                call.log.error("transfer to the fallback %s failed (%s); hanging up", extension, exc)
            else:
                call.log.warning("transferred to the fallback %s %s %s", extension, dialplan, context)
                call.end_media("transferred", failure=False)
                self._spawn(self._retire(call, "transferred"))
                return
        await call.hangup("TEMPORARY_FAILURE")

    async def _apologise(self, call: Call) -> None:
        """Play the apology, from memory (or FreeSWITCH's own file when the spool cannot be written)."""
        ap = self.apology
        if ap is None:
            return
        try:
            async with asyncio.timeout(APOLOGY_MAX_S):
                utt = None
                if ap.samples is not None and ap.samples.size:
                    try:
                        utt = await call.playback.play(ap.samples, ap.rate, "apology")
                    except (ParleyError, OSError) as exc:
                        if not ap.fs_path:
                            raise
                        call.log.error("cannot play the apology from memory (%s); playing %s", exc, ap.fs_path)
                if utt is None and ap.fs_path:
                    utt = await call.playback.play_file(ap.fs_path, "apology")
                if utt is not None:
                    await utt.wait_played()
        except (ParleyError, OSError, TimeoutError) as exc:
            call.log.error("the apology could not be played: %s", exc)

    async def _watch_stream(self, call: Call, stream: AudioStream) -> None:
        """Until the stream closes: a mono stream silent past stall_timeout_s is closed. Then, if the call
        still lives and nothing replaced the stream, restore the media."""
        stall = self.settings.audio_stream.stall_timeout_s
        if self.settings.audio_stream.mix != "mono" or stream.format.channels != 1:
            stall = 0.0
        frames, since = stream.stats.frames, self._clock()
        while not stream.closed.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(STALL_CHECK_S if stall else None):
                    await stream.closed.wait()
            if stream.closed.is_set() or call.hungup.is_set() or call.stream is not stream:
                continue
            now = self._clock()
            if stream.stats.frames != frames:
                frames, since = stream.stats.frames, now
            elif call.uuid not in self._agents:  # not confirmed yet (a stream for an unknown call): no judging
                since = now
            elif stall and now - since >= stall:
                self.stats.streams_stalled += 1
                call.log.warning("stream #%s sent no audio for %.1f s with its connection open; restarting it",
                                 stream.conn_id, now - since)
                call.detach_stream(stream)
                self._spawn(stream.close(1000, "stalled"))
                break
        self.stats.dropped_frames += stream.stats.dropped
        call.detach_stream(stream)
        if call.hungup.is_set() or self._closing or call.stream is not stream or call.media_failure is not None:
            return
        # FreeSWITCH closes the socket on hangup, sometimes before CHANNEL_HANGUP reaches us.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(min(self._grace, CLOSE_HANGUP_GRACE_S)):
                await call.hungup.wait()
        if call.hungup.is_set() or call.stream is not stream or call.uuid in self._recovering:
            return
        try:
            exists = (await self.client(call).api(f"uuid_exists {call.uuid}", check=False)).strip() == "true"
        except FreeSwitchError:
            exists = True
        if not exists:
            call.mark_hungup("UNKNOWN_AFTER_STREAM_CLOSE")  # CHANNEL_HANGUP_COMPLETE, if it comes, corrects it
            await self._retire(call, "stream closed and call gone")
            return
        self._recover_soon(call, f"stream closed ({stream.close_code} {stream.close_reason or ''})".strip())

    async def _hand_off_unless_attached(self, call: Call) -> None:
        """FreeSWITCH says the call's stream connected: if it does not reach us, another worker holds it (a
        restart landed there): let the call go, without a hangup; its record says STREAM_MOVED."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(MOVED_GRACE_S):
                await Call.wait_any(call.stream_ready, call.hungup)
        if call.stream_ready.is_set() or call.hungup.is_set() or self._closing or self.calls.get(call.uuid) is not call:
            return
        self.stats.streams_moved += 1
        call.log.warning("its stream connected to another worker; that worker owns the call now")
        call.shutdown = True  # the record: ended by the system here, not by the caller or the agent
        call.end_media("the stream moved to another worker", failure=False)
        call.mark_hungup("STREAM_MOVED")

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
        recovering = self._recovering.pop(call.uuid, None)
        if recovering is not None and recovering is not asyncio.current_task():
            recovering.cancel()
        self._stream_failed.pop(call.uuid, None)
        self._restarts.pop(call.uuid, None)
        await call.playback.close()
        if call.stream is not None and not call.stream.closed.is_set():
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1):
                    await call.stream.close(1000, "call ended")
        client = self.client(call)
        client.route_call(call.uuid, lambda ev: None)()  # drop the route
        if client.filter_calls:
            self._spawn(self._release(client, call.uuid))
        del self.calls[call.uuid]
        self._let_go[call.uuid] = None
        while len(self._let_go) > _CACHE_MAX:
            self._let_go.popitem(last=False)
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

    async def _own(self, client: EslClient, uuid: str) -> None:
        try:
            await client.own_call(uuid)
        except FreeSwitchError as exc:
            log.warning("cannot filter in the events of call %s: %s", uuid, exc)

    async def _release(self, client: EslClient, uuid: str) -> None:
        with contextlib.suppress(FreeSwitchError):
            await client.release_call(uuid)

    async def _resync(self, node: str | None = None) -> None:
        for call in list(self.calls.values()):
            if node is not None and call.node != node:
                continue
            try:
                exists = (await self.client(call).api(f"uuid_exists {call.uuid}", check=False)).strip() == "true"
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


def _stream_error(body: str | None) -> tuple[int | None, str]:
    """``(code, error)`` of a ``mod_audio_stream::error`` body ``{"status":"error","message":{...}}``."""
    try:
        message = json.loads(body or "").get("message")
    except (ValueError, AttributeError, RecursionError):
        return None, (body or "").strip()
    if not isinstance(message, dict):
        return None, (body or "").strip()
    code = message.get("code")
    return (code if isinstance(code, int) else None), str(message.get("error") or "")
