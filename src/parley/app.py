"""The composition root: the only place that picks concrete parts and wires them together.

Owns: building the ESL clients (one per FreeSWITCH node: :class:`EslNodes`), the mod_audio_stream server, the
bridge and the agent from settings, the stream token secret's resolution (configured, else the shared secret
file; `parley serve` refuses to run without one unless streams may be unauthenticated), the apology rendered
once at start with the local voice, and running them until asked to stop. Nothing else in parley constructs these.

Stopping is a drain (SIGTERM, SIGINT, ``parley drain`` = ``POST /drain`` from this host): ``/ready`` turns 503
at once, new mod_audio_stream upgrades get 503 + Retry-After (FreeSWITCH reports mod_audio_stream::error
code 6; the Lua helper transfers the call to the fallback extension; its record says "media stream refused
(draining)"), the calls up go on for at most ``drain_grace_s``, then hear a goodbye and are hung up; then the
process exits 0. A second signal skips what is left of the grace.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from dataclasses import dataclass, fields, replace
from typing import Literal

import numpy as np

from parley.agent.engine import Engine
from parley.agent.realtime import RealtimeSession, new_session
from parley.agent.realtime_engine import RealtimeEngine
from parley.agent.session import CallSession, TurnRecord
from parley.compose import Providers
from parley.config import Settings
from parley.errors import ConfigError, ParleyError
from parley.freeswitch.audio_stream import AudioStreamServer
from parley.freeswitch.bridge import Agent, Apology, Bridge
from parley.freeswitch.call import Call
from parley.freeswitch.esl_client import EslClient
from parley.freeswitch.esl_nodes import EslNodes
from parley.freeswitch.stream_token import read_secret_file
from parley.observe.http import HttpServer
from parley.observe.metrics import Metrics
from parley.observe.readiness import Readiness
from parley.observe.records import CallEnd, CallRecorder, CallStart, RecordStore, TurnRow
from parley.observe.tracing import CallOutcome, CallTrace, CallTracer
from parley.providers.base import AudioChunk, TTSProvider
from parley.providers.fallback import FallbackLLM, FallbackSTT, FallbackTTS

log = logging.getLogger("parley.app")

DRAIN_GRACE_S = 600.0  # how long a drain lets calls finish; the Kubernetes grace period must exceed it
GOODBYE = "I'm sorry, this line has to close now. Please call again. Goodbye."


def build_engine(settings: Settings, *, providers: Providers | None = None) -> Engine:
    """Load the configured providers and models (once per process)."""
    from parley.turns.policy import TurnPolicy
    from parley.turns.smart_turn import SmartTurnModel
    from parley.turns.vad import FrameVad, SileroModel

    conv = settings.conversation
    try:
        policy = TurnPolicy(**dict(conv.turn))  # type: ignore[arg-type]
    except TypeError as exc:
        raise ConfigError(f"conversation.turn: {exc}") from None
    silero = SileroModel.load()
    smart_turn = SmartTurnModel.load() if policy.smart_turn else None
    made = providers or Providers(settings)
    llm = made.llm()
    if not conv.greeting and conv.llm[0] == "rules":
        rules = made.one_llm("rules")  # the dialogue file's greeting is where its state machine starts
        conv = replace(conv, greeting=rules.config.render(rules.config.greeting))  # type: ignore[attr-defined]
    engine = Engine(
        stt=made.stt(),
        llm=llm,
        tts=made.tts(),
        policy=policy,
        conversation=conv,
        vad_factory=lambda rate: FrameVad.create(silero, rate),
        smart_turn=smart_turn,
        emergency_tts=made.local_voice(),
    )
    realtime = made.realtime()  # conversation.engine: realtime; the pipeline above stays its fallback
    if realtime is None:
        return engine
    return RealtimeEngine(**{f.name: getattr(engine, f.name) for f in fields(Engine)}, realtime=realtime,
                          turn_detection=made.realtime_turns())


def build_tts(kind: str) -> TTSProvider:
    """One local voice by name (the simulated caller's, or a last-resort voice)."""
    return Providers(Settings()).one_tts(kind)


def provider_chains(engine: Engine) -> dict[str, list[str]]:
    """The provider names per capability, a fallback chain's in order (``{"stt": ["deepgram", "whisper"]}``)."""
    out: dict[str, list[str]] = {}
    for capability, provider in (("stt", engine.stt), ("llm", engine.llm), ("tts", engine.tts)):
        if isinstance(provider, FallbackSTT | FallbackLLM | FallbackTTS):
            out[capability] = list(provider.health.names)
        else:
            out[capability] = [provider.name]
    if isinstance(engine, RealtimeEngine) and engine.realtime is not None:
        out["realtime"] = [engine.realtime.name]
    return out


class ConversationAgent:
    """The agent ``parley serve`` runs: one :class:`CallSession` per call, written to the call records as
    it goes (each turn when it completes; the outcome on every path, also when the caller hangs up), and
    traced when a :class:`CallTracer` is given (a span per call, per turn and per turn stage)."""

    def __init__(
        self,
        engine: Engine,
        store: RecordStore | None = None,
        *,
        metrics: Metrics | None = None,
        tracer: CallTracer | None = None,
        keep_sessions: int = 200,
    ) -> None:
        self.engine = engine
        self.store = store
        self.metrics = metrics
        self.tracer = tracer
        self.sessions: dict[str, CallSession | RealtimeSession] = {}
        self._keep = keep_sessions

    async def record_unserved(self, call: Call) -> None:
        """The record of a call no session ran for (its stream was refused or never came): the bridge has
        concluded it (apology, fallback) by the time this runs."""
        if self.store is None:
            return
        rec = await self.store.start_call(CallStart.from_call(
            call, providers=provider_chains(self.engine), mono_now=time.monotonic()))
        cause = await call.wait_hangup_cause(1.0)
        if call.media_refused:
            await rec.add_event("stream_refused", {"reason": call.media_failure or "refused"})
        end = _call_end(call, cause, call.media_failure or "no media stream")
        if call.fallback_by_dialplan and not call.hungup.is_set():  # the Lua helper took it: parley cannot tell
            end = replace(end, outcome=None, hangup_by="system")    # whether it transferred or hung up
        await rec.finish(end)
        if self.metrics is not None:
            self.metrics.call_ended(cause or "UNKNOWN", rec.cost_usd)

    async def __call__(self, call: Call) -> None:
        rec = None
        chains = provider_chains(self.engine)  # the whole fallback chain, in order
        if self.store is not None:
            rec = await self.store.start_call(CallStart.from_call(call, providers=chains, mono_now=time.monotonic()))
        trace: CallTrace | None = None
        if self.tracer is not None:
            trace = self.tracer.start_call(call, providers=chains, call_id=rec.id if rec is not None else None)
        written = 0

        async def on_turn(turn: TurnRecord) -> None:
            nonlocal written
            if self.metrics is not None:
                self.metrics.observe_turn(turn.timings)
                if turn.barge_in:
                    self.metrics.barge_in()
            if trace is not None:
                trace.turn(turn)
            if rec is not None:
                await rec.add_turn(TurnRow.from_record(turn))
                await rec.add_usage(session.usage[written:])
                written = len(session.usage)

        session = new_session(call, self.engine, on_turn=on_turn)  # pipeline, or a realtime model
        self.sessions[call.uuid] = session
        while len(self.sessions) > self._keep:
            self.sessions.pop(next(iter(self.sessions)))
        if self.metrics is not None:
            self.metrics.call_started()
        error: str | None = None
        try:
            await session.run()
        except Exception as exc:
            error = f"agent failed: {type(exc).__name__}: {exc}"[:300]
            raise
        finally:
            error = error or call.media_failure
            try:
                if not call.hungup.is_set():  # the ending (apology, fallback) happens before the record says it
                    with contextlib.suppress(ParleyError, ValueError, TimeoutError):
                        async with asyncio.timeout(30):
                            await call.conclude(error)
                with contextlib.suppress(Exception):
                    await call.wait_hangup_cause(1.0)
                await self._finish(call, session, rec, written, error)
            finally:
                if trace is not None:
                    trace.end(CallOutcome(
                        hangup_cause=call.hangup_cause,
                        hangup_by=_hangup_by(call, session),
                        failed=session.failed or error is not None,
                        turns=len(session.turns),
                        barge_ins=sum(t.barge_in for t in session.turns),
                        events=list(session.events),
                        cost_usd=rec.cost_usd if rec is not None else None,
                    ))
                if self.metrics is not None:
                    for _t, kind, detail in session.events:
                        if kind == "fallback":
                            self.metrics.fallback(detail["capability"], detail["from"], detail["to"])
                    self.metrics.call_ended(call.hangup_cause or "UNKNOWN", rec.cost_usd if rec is not None else None)

    async def _finish(
        self, call: Call, session: CallSession | RealtimeSession, rec: CallRecorder | None, written: int,
        error: str | None,
    ) -> None:
        if rec is not None:
            await rec.add_usage(session.usage[written:])
            for _t, kind, detail in session.events:
                if kind == "fallback":
                    await rec.add_fallback(detail["capability"], detail["from"], detail["to"], detail["error"])
                else:
                    await rec.add_event(kind, detail)
            if error is None and session.failed:
                error = next((f"{d.get('capability', '')} failed: {d.get('error', '')}".strip()
                              for _t, kind, d in reversed(session.events) if kind == "fallback"),
                             "the providers failed; the caller heard the apology")
            await rec.finish(_call_end(call, call.hangup_cause, error, failed=session.failed))


def _call_end(call: Call, cause: str | None, error: str | None, *, failed: bool = False) -> CallEnd:
    """What the record says about how the call ended, from what the call really did (the ESL commands
    FreeSWITCH accepted for it, its media failure, CHANNEL_HANGUP_COMPLETE's cause)."""
    outcome = call.outcome
    failed = failed or error is not None
    return CallEnd(
        hangup_cause=None if outcome == "transferred" and not call.hangup_complete.is_set() else cause,
        hangup_by=_HANGUP_BY[outcome],
        status="failed" if failed else "completed",
        failed=failed,
        error=error,
        outcome=outcome,
        dtmf="".join(call.dtmf_digits),
    )


_HANGUP_BY: dict[str, Literal["agent", "caller", "system"]] = {
    "caller_hangup": "caller", "agent_hangup": "agent", "transferred": "agent", "shutdown": "system",
}


def _hangup_by(call: Call, session: CallSession | RealtimeSession) -> Literal["agent", "caller", "system"]:
    if call.outcome == "caller_hangup" and session.hung_up_by_agent:
        return "agent"
    return _HANGUP_BY[call.outcome]


async def render_apology(engine: Engine, *, timeout_s: float = 30.0, text: str | None = None) -> Apology:
    """The apology in the local emergency voice, rendered once at start and kept in memory, so a caller can
    hear it when the TTS, the spool or the stream has failed. A FreeSWITCH-side tone is the last resort.
    ``text``: another line in the same voice (the drain's goodbye)."""
    tone = "tone_stream://%(250,250,480,620);loops=2"
    tts = engine.emergency_tts or engine.tts
    chunks: list[np.ndarray] = []
    rate = 8000
    try:
        async with asyncio.timeout(timeout_s):
            gen = tts.synthesize(text or engine.conversation.apology)
            async with contextlib.aclosing(gen):
                async for ev in gen:
                    if isinstance(ev, AudioChunk) and ev.samples.size:
                        if chunks and ev.sample_rate != rate:
                            break
                        rate = ev.sample_rate
                        chunks.append(ev.samples)
    except (ParleyError, TimeoutError, OSError) as exc:
        log.error("cannot render the apology with %s (%s): callers will hear only a tone", tts.name, exc)
    if not chunks:
        return Apology(fs_path=tone)
    return Apology(np.concatenate(chunks).astype(np.int16), rate, fs_path=tone)


def stream_secret(settings: Settings) -> Settings:
    """Settings with the stream token secret resolved for `parley serve`: configured (the YAML or
    PARLEY_STREAM_TOKEN_SECRET), else read from ``token_secret_file`` (written by `parley freeswitch
    config`). Without one: ConfigError, unless ``allow_unauthenticated_streams`` (then a loud log line)."""
    stream = settings.freeswitch.audio_stream
    if not stream.token_secret:
        stored = read_secret_file(stream.secret_file)
        if stored is not None:
            stream = replace(stream, token_secret=stored)
            settings = replace(settings, freeswitch=replace(settings.freeswitch, audio_stream=stream))
    if stream.token_secret:
        return settings
    if stream.allow_unauthenticated_streams:
        log.error("STREAM TOKENS ARE OFF (allow_unauthenticated_streams: true): any process that can reach "
                  "ws://%s:%d and knows a call's UUID can take over or end that call's audio",
                  stream.listen_host, stream.listen_port)
        return settings
    raise ConfigError(
        f"no stream token secret: run `parley freeswitch config` (it stores one in {stream.secret_file} "
        "and puts the same one in FreeSWITCH's vars.parley.xml), or set PARLEY_STREAM_TOKEN_SECRET to the "
        "value of parley_stream_secret in FreeSWITCH. To run without tokens (a lab), set "
        "freeswitch.audio_stream.allow_unauthenticated_streams: true"
    )


async def open_records(settings: Settings, stack: contextlib.AsyncExitStack) -> RecordStore | None:
    """The call records store (migrated, interrupted calls recovered), priced with the shipped table."""
    if not settings.records.enabled:
        return None
    from parley.observe.cost import PriceTable, pricer
    from parley.observe.records_spill import spill_folder

    store = await stack.enter_async_context(RecordStore.open(
        settings.records.resolved_url, pricer=pricer(PriceTable.load()), host=settings.records.host or None,
        spill_dir=spill_folder(settings.records.resolved_url, settings.records.spill_dir),
    ))
    interrupted = await store.recover()
    if interrupted:
        log.warning("%d call record(s) left in progress by a previous run marked interrupted", len(interrupted))
    return store


@dataclass(slots=True)
class Running:
    """A started parley: its parts, for tests and the status endpoint. ``nodes``: one ESL client per
    FreeSWITCH node (``esl``: the first, with one node the only one)."""

    nodes: EslNodes
    server: AudioStreamServer
    bridge: Bridge
    store: RecordStore | None = None
    resources: contextlib.AsyncExitStack | None = None
    http: HttpServer | None = None
    metrics: Metrics | None = None
    readiness: Readiness | None = None
    engine: Engine | None = None
    shares_port: bool = False  # one of several workers on one WebSocket port (SO_REUSEPORT)

    @property
    def esl(self) -> EslClient:
        return self.nodes.first

    def begin_drain(self) -> None:
        """Not ready, and no new stream accepted, from now on (idempotent; the calls up go on)."""
        if self.readiness is not None:
            self.readiness.begin_drain()
        self.bridge.begin_drain()
        self.server.drain(self.bridge.owns)
        if self.shares_port:  # another worker takes the new streams: do not let the kernel hand them here
            self.server.stop_listening()

    async def drain(self, grace_s: float = DRAIN_GRACE_S) -> int:
        """:meth:`begin_drain`, then wait for the calls up to end, at most ``grace_s``; the rest hear a
        goodbye (in the local voice when there is an engine) and are hung up. Returns how many were cut."""
        self.begin_drain()
        log.info("draining: %d call(s) up, up to %.0f s to finish", len(self.bridge.calls), grace_s)
        goodbye: Apology | None = None
        if self.engine is not None and self.bridge.calls:
            goodbye = await render_apology(self.engine, text=GOODBYE)
        cut = await self.bridge.drain(grace_s, goodbye=goodbye)
        log.info("drained (%d call(s) cut at the end of the grace)", cut)
        return cut

    async def close(self) -> None:
        if self.http is not None:
            await self.http.close()
        await self.bridge.close()
        await self.server.close()
        await self.nodes.close()
        if self.resources is not None:
            await self.resources.aclose()  # the records writer flushes what is queued


async def _final_scrape(running: Running, wait_s: float, hurry: asyncio.Event) -> None:
    """With ``observe.final_scrape_s`` set, hold /metrics up after the last call until one scrape has read the
    final counters (or the wait is over, or a second stop signal came): a scrape before the drain misses the
    calls that ended in it, and a worker that is gone is never scraped again."""
    if wait_s <= 0 or running.metrics is None or running.http is None or hurry.is_set():
        return
    log.info("waiting up to %.0f s for a last /metrics scrape", wait_s)
    scraped = asyncio.ensure_future(running.metrics.final_scrape(wait_s))
    hurried = asyncio.ensure_future(hurry.wait())
    try:
        await asyncio.wait({scraped, hurried}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        hurried.cancel()
        scraped.cancel()
    if scraped.done() and not scraped.cancelled() and scraped.result():
        log.info("last counters scraped")
    else:
        log.warning("no /metrics scrape within %.0f s of the last call: the last counters are not read", wait_s)


def _check_hosting(settings: Settings) -> None:
    box = settings.records.hosting
    if box:
        from parley.observe.cost import PriceTable

        known = PriceTable.load().hosting
        if box not in known:
            names = ", ".join(sorted(known))
            raise ConfigError(f"records.hosting: no entry {box!r} in the price table (known: {names})")


async def start(
    settings: Settings, agent: Agent | None = None, *, apology: Apology | None = None, observe: bool | None = None,
    call_ownership: Literal["event", "stream"] = "event", reuse_port: bool = False,
) -> Running:
    """Start the WebSocket server and an ESL client per FreeSWITCH node; raise at once on a wrong ESL password
    or ACL.

    If FreeSWITCH is simply not up yet, keep retrying in the background (a refused connection is not fatal).
    With ``agent`` given (tests, tools), ``apology`` is what the bridge plays when it gives a call up.
    ``observe``: serve HTTP (``/ready`` and ``/drain``; ``/metrics``, ``/health`` and the dashboard with the
    real agent) when ``settings.observe.enabled``; by default only without ``agent``. ``call_ownership``:
    ``stream`` when several workers share one FreeSWITCH (a worker owns only the calls whose stream it holds,
    and its ESL connections filter in only those calls' events).
    """
    if not settings.freeswitch.audio_stream.token_secret:  # serve() resolved the secret file already
        log.warning("no stream token secret: mod_audio_stream connections are not authenticated")
    fs = settings.freeswitch
    _check_hosting(settings)
    nodes = EslNodes.from_settings(fs.esl_nodes(), filter_calls=call_ownership == "stream")
    store: RecordStore | None = None
    resources = contextlib.AsyncExitStack()
    metrics: Metrics | None = None
    engine: Engine | None = None
    if agent is None:
        engine = await asyncio.to_thread(build_engine, settings)
        resources.push_async_callback(engine.aclose)  # runs last: vendor sockets and pools, after every call
        store = await open_records(settings, resources)
        metrics = Metrics()
        tracer = CallTracer.open(settings.observe)
        resources.push_async_callback(tracer.aclose)  # after the calls: Running.close() closes the bridge first
        agent = ConversationAgent(engine, store, metrics=metrics, tracer=tracer)
        apology = await render_apology(engine)
    unserved = agent.record_unserved if isinstance(agent, ConversationAgent) else None
    bridge = Bridge(fs, nodes, agent, apology=apology, unserved=unserved, claim_by_event=call_ownership == "event")
    server = AudioStreamServer(fs.audio_stream, bridge.on_stream, on_refused=bridge.on_refused, reuse_port=reuse_port,
                               has_room=bridge.has_room if fs.audio_stream.max_calls > 0 else None)
    await server.start()
    try:
        await nodes.start()
    except BaseException:
        await server.close()
        await resources.aclose()
        raise
    http: HttpServer | None = None
    readiness = Readiness(lambda: len(bridge.calls), full=lambda: bridge.full)
    serve_http = (engine is not None) if observe is None else observe
    if serve_http and settings.observe.enabled:
        http = HttpServer(settings.observe.host, settings.observe.port)
        readiness.install(http)
    if http is not None and metrics is not None and engine is not None:
        metrics.watch(bridge=bridge, esl=nodes, records=store, streams=server,
                      providers={"stt": engine.stt, "llm": engine.llm, "tts": engine.tts})
        metrics.install(http)
        if store is not None:
            from parley.observe.cost import PriceTable
            from parley.observe.dashboard import Dashboard

            Dashboard(store, redact=settings.records.redact_callers, prices=PriceTable.load(),
                      hosting=settings.records.hosting or None).install(http)
    if http is not None:
        await http.start()
        log.info("ready, metrics, health and dashboard on %s/", http.url)
    log.info(
        "parley ready: mod_audio_stream on ws://%s:%d%s/<uuid>, ESL %s",
        fs.audio_stream.listen_host, server.port, fs.audio_stream.path,
        ", ".join(f"{n} {c.host}:{c.port}" for n, c in nodes.items()),
    )
    voice = engine or (agent.engine if isinstance(agent, ConversationAgent) else None)  # says the goodbye
    return Running(nodes, server, bridge, store, resources, http, metrics, readiness, voice, shares_port=reuse_port)


async def serve(
    settings: Settings, *, stop: asyncio.Event | None = None, drain_grace_s: float = DRAIN_GRACE_S,
    call_ownership: Literal["event", "stream"] = "event", worker_index: int | None = None,
) -> int:
    """Run until SIGTERM/SIGINT, ``POST /drain`` (or ``stop``), then drain (see the module docstring) and
    return a process exit code: 0 after a drain, 2 when ESL gives up for good."""
    settings = stream_secret(settings)
    if worker_index is not None:  # one of `parley serve --workers N` (parley.workers): its own port and records host
        import socket

        settings = replace(
            settings,
            observe=replace(settings.observe, port=settings.observe.port + worker_index),
            records=replace(settings.records, host=f"{settings.records.host or socket.gethostname()}-w{worker_index}"),
        )
    stop = stop or asyncio.Event()
    now = asyncio.Event()  # a second signal: end the grace at once
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if stop.is_set():
            log.warning("second stop signal: ending the drain now")
            now.set()
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, on_signal)
    running = await start(settings, call_ownership=call_ownership, reuse_port=worker_index is not None)
    if running.readiness is not None:
        from parley.workers import signal_supervisor

        running.readiness.on_drain = stop.set if worker_index is None else signal_supervisor
    fatal = asyncio.ensure_future(running.nodes.wait_fatal())
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({fatal, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if stopped.done() and not fatal.done():
            running.begin_drain()  # /ready is 503 and new streams are refused before anything else happens
            drain = asyncio.ensure_future(running.drain(drain_grace_s))
            hurry = asyncio.ensure_future(now.wait())
            try:
                await asyncio.wait({drain, hurry, fatal}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                hurry.cancel()
                if not drain.done():
                    drain.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await drain
            if drain.done() and not drain.cancelled() and drain.exception() is None:  # every call has ended
                await _final_scrape(running, settings.observe.final_scrape_s, now)
    finally:
        fatal.cancel()
        stopped.cancel()
        log.info("shutting down: %d active call(s)", len(running.bridge.calls))
        await running.close()
    if fatal.done() and not fatal.cancelled() and fatal.exception() is None:
        log.error("giving up: %s", fatal.result())
        return 2
    return 0
