"""Drain and readiness: SIGTERM mid-call through ``app.serve`` as ``parley serve`` runs it (the real
:class:`~parley.app.ConversationAgent`, SQLite records, the HTTP side with ``/ready`` and ``/drain``) against
the fake FreeSWITCH over real sockets; offline fakes for the providers (an STT that hears no words, a silent
VAD, a tone for a voice). Only ``app.start`` is wrapped, to hand it those fakes instead of loading models.

What must hold: ``/ready`` is 200 while taking calls and 503 "draining" from the signal on; a new call's
stream is refused (503 + Retry-After on the wire, ``mod_audio_stream::error`` code 6 to FreeSWITCH) and the
call goes to the fallback without the apology, its record saying "draining"; the live call goes on to its
end; every record is written once; ``serve`` returns 0. No timing is asserted.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import uuid as uuidlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from parley import app
from parley.agent.engine import Engine
from parley.audio.pcm import Int16Array
from parley.config import (
    AudioStreamSettings,
    ConversationSettings,
    DialplanSettings,
    EslSettings,
    FreeSwitchSettings,
    ObserveSettings,
    PlaybackSettings,
    RecordsSettings,
    Settings,
)
from parley.freeswitch.stream_token import stream_token
from parley.observe.http import HttpServer
from parley.observe.readiness import Readiness, is_loopback
from parley.observe.records import CallRecord, RecordStore
from parley.providers.base import (
    AudioChunk,
    Lifecycle,
    LLMEvent,
    LLMRequests,
    Message,
    STTEvent,
    ToolSpec,
    TTSEvent,
    TTSRequests,
    UsageSink,
)
from parley.sim.echo_call import free_port
from parley.sim.fake_freeswitch import FakeCall, FakeFreeSwitch
from parley.turns.policy import TurnPolicy
from parley.turns.vad import VadResult

FALLBACK = "operator XML default"


class _Stream:
    def __init__(self) -> None:
        self._closed = asyncio.Event()

    async def send_audio(self, samples: Int16Array) -> None:
        return None

    def pause_hint(self) -> None:
        return None

    def speech_resumed(self) -> None:
        return None

    async def finalize(self) -> None:
        return None

    async def close(self) -> None:
        self._closed.set()

    def __aiter__(self) -> AsyncIterator[STTEvent]:
        return self._events()

    async def _events(self) -> AsyncIterator[STTEvent]:
        await self._closed.wait()
        return
        yield  # pragma: no cover


class _Ears(Lifecycle):
    name = "fake"

    async def open(self, *, sample_rate: int, language: str | None = None) -> _Stream:
        return _Stream()


@dataclass
class _Providers(Lifecycle, LLMRequests, TTSRequests):
    name: str = "fake"
    sample_rate: int = 8000

    async def stream(
        self, messages: Sequence[Message], tools: Sequence[ToolSpec] = (), *, on_cancel: UsageSink | None = None
    ) -> AsyncGenerator[LLMEvent, None]:
        raise AssertionError("no caller words, so no LLM call")
        yield  # pragma: no cover

    async def synthesize(self, text: str, *, on_cancel: UsageSink | None = None) -> AsyncGenerator[TTSEvent, None]:
        t = np.arange(int(0.3 * 8000)) / 8000
        yield AudioChunk((4000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16), 8000, text)


class _SilentVad:
    async def aprocess(self, samples: Int16Array) -> VadResult:
        return VadResult(False, 0.0)


async def until(cond: Callable[[], bool], timeout: float = 15.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.02)


async def records_of(store: RecordStore, uuid: str) -> list[CallRecord]:
    await store.flush(timeout=2)
    out = []
    for summary in await store.list_calls(limit=100):
        detail = await store.get_call(summary.id)
        if detail is not None and detail.call.fs_uuid == uuid:
            out.append(detail.call)
    return out


async def finished_record(store: RecordStore, uuid: str) -> list[CallRecord]:
    async with asyncio.timeout(15):
        while True:
            found = await records_of(store, uuid)
            if found and all(r.status != "in_progress" for r in found):
                return found
            await asyncio.sleep(0.05)


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[tuple[FakeFreeSwitch, RecordStore, app.ConversationAgent, Settings]]:
    password, secret = secrets.token_urlsafe(18), secrets.token_urlsafe(24)
    fs = FakeFreeSwitch(password=password)
    await fs.start()
    async with contextlib.AsyncExitStack() as stack:
        store = await app.open_records(
            Settings(records=RecordsSettings(url=f"sqlite+aiosqlite:///{tmp_path / 'c.db'}")), stack)
        assert store is not None
        providers = _Providers()
        conv = ConversationSettings(greeting="", apology="Sorry, we have a technical problem.")
        engine = Engine(
            stt=_Ears(), llm=providers, tts=providers, policy=TurnPolicy(), conversation=conv,  # type: ignore[arg-type]
            vad_factory=lambda rate: _SilentVad(),  # type: ignore[arg-type,return-value]
            emergency_tts=providers,  # type: ignore[arg-type]
        )
        agent = app.ConversationAgent(engine, store)
        settings = Settings(
            freeswitch=FreeSwitchSettings(
                esl=EslSettings(port=fs.esl_port, password=password, reconnect_initial_s=0.05, reconnect_max_s=0.2),
                audio_stream=AudioStreamSettings(listen_port=free_port(), token_secret=secret,
                                                 unidentified_timeout_s=1.0),
                playback=PlaybackSettings(spool_dir=str(tmp_path / "spool")),
                dialplan=DialplanSettings(fallback_extension=FALLBACK),
            ),
            conversation=conv,
            observe=ObserveSettings(port=0),
        )
        try:
            yield fs, store, agent, settings
        finally:
            await fs.close()


async def place(fs: FakeFreeSwitch, settings: Settings) -> FakeCall:
    uuid = str(uuidlib.uuid4())
    stream = settings.freeswitch.audio_stream
    return await fs.place_call(
        ws_url=f"ws://127.0.0.1:{stream.listen_port}/call/{{uuid}}", uuid=uuid,
        caller_audio=np.zeros(8000 * 60, np.int16),
        extra_headers={"Authorization": f"Bearer {stream_token(stream.token_secret, uuid)}"},
        channel_vars={"parley_agent": "true"},
    )


async def test_sigterm_mid_call_drains_then_exits_0(
    rig: tuple[FakeFreeSwitch, RecordStore, app.ConversationAgent, Settings], monkeypatch: pytest.MonkeyPatch,
) -> None:
    fs, store, agent, settings = rig
    real_start = app.start
    started: list[app.Running] = []

    async def start(s: Settings, **kw: Any) -> app.Running:  # serve() as `parley serve` runs it, with offline fakes
        running = await real_start(s, agent, apology=await app.render_apology(agent.engine), observe=True, **kw)
        started.append(running)
        return running

    monkeypatch.setattr(app, "start", start)
    serving = asyncio.create_task(app.serve(settings, drain_grace_s=120))
    await until(lambda: bool(started))
    running = started[0]
    assert running.http is not None
    base = running.http.url
    async with httpx.AsyncClient() as http:
        assert (await http.get(f"{base}/ready")).status_code == 200
        live = await place(fs, settings)
        await until(lambda: len(getattr(agent.sessions.get(live.uuid), "frame_lag_ms", ())) > 5)

        os.kill(os.getpid(), signal.SIGTERM)  # what Kubernetes sends (after the preStop hook)
        await until(lambda: running.readiness is not None and not running.readiness.ready)
        ready = await http.get(f"{base}/ready")
        assert ready.status_code == 503
        assert ready.json()["reason"] == "draining" and ready.json()["active_calls"] == 1

        # a stream for a call this process does not hold: 503 with Retry-After on the wire
        port = settings.freeswitch.audio_stream.listen_port
        with pytest.raises(InvalidStatus) as refused:
            async with websockets.connect(f"ws://127.0.0.1:{port}/call/{uuidlib.uuid4()}"):
                pass
        assert refused.value.response.status_code == 503
        assert refused.value.response.headers["Retry-After"]

        # a new call through FreeSWITCH: refused (::error code 6), straight to the fallback, no apology
        new = await place(fs, settings)
        await until(lambda: any(c.startswith(f"api uuid_transfer {new.uuid}".encode()) for c in fs.commands))
        assert not new.playbacks
        assert running.server.stats.rejected["draining"] >= 2 and running.bridge.stats.refused_draining == 1

        # the live call goes on: its frames keep coming, nobody hung it up, serve() still runs
        before = len(agent.sessions[live.uuid].frame_lag_ms)
        await until(lambda: len(agent.sessions[live.uuid].frame_lag_ms) > before + 20)
        assert not live.hungup and live.uuid in running.bridge.calls and not serving.done()

        await live.hangup("NORMAL_CLEARING")  # the caller ends it
        assert await asyncio.wait_for(serving, 30) == 0

    [rec] = await finished_record(store, live.uuid)
    assert (rec.status, rec.outcome, rec.hangup_by, rec.hangup_cause) == (
        "completed", "caller_hangup", "caller", "NORMAL_CLEARING")
    [turned_away] = await finished_record(store, new.uuid)
    assert turned_away.error is not None and "draining" in turned_away.error
    assert "token" not in turned_away.error


async def test_drain_grace_over_says_goodbye_and_hangs_up(
    rig: tuple[FakeFreeSwitch, RecordStore, app.ConversationAgent, Settings],
) -> None:
    fs, store, agent, settings = rig
    running = await app.start(settings, agent, apology=await app.render_apology(agent.engine), observe=True)
    try:
        call = await place(fs, settings)
        await until(lambda: len(getattr(agent.sessions.get(call.uuid), "frame_lag_ms", ())) > 5)
        cut = await running.drain(grace_s=0.0)
        assert cut == 1 and call.hungup and running.bridge.stats.drain_hangups == 1
        assert any(p.status == "done" for p in call.playbacks)  # the goodbye was played before the hangup
    finally:
        await running.close()
    [rec] = await finished_record(store, call.uuid)
    assert rec.status == "completed" and rec.hangup_by == "agent"


async def test_at_max_calls_a_new_call_goes_to_the_fallback_and_ready_says_full(
    rig: tuple[FakeFreeSwitch, RecordStore, app.ConversationAgent, Settings],
) -> None:
    """Capacity: one call up of max_calls 1; the next is turned away like in a drain (no apology, straight to
    the fallback, a record that says why), /ready is 503 "full" meanwhile, and ready again once the call ends."""
    fs, store, agent, settings = rig
    fsw = settings.freeswitch
    settings = replace(settings, freeswitch=replace(fsw, audio_stream=replace(fsw.audio_stream, max_calls=1)))
    running = await app.start(settings, agent, apology=await app.render_apology(agent.engine), observe=True)
    try:
        assert running.http is not None
        async with httpx.AsyncClient(base_url=running.http.url) as http:
            assert (await http.get("/ready")).status_code == 200
            first = await place(fs, settings)
            await until(lambda: first.uuid in agent.sessions)
            full = await http.get("/ready")
            assert full.status_code == 503 and full.json()["reason"] == "full"

            second = await place(fs, settings)
            await until(lambda: any(c.startswith(f"api uuid_transfer {second.uuid}".encode()) for c in fs.commands))
            assert not second.playbacks  # never answered: no apology
            assert running.bridge.stats.refused_full == 1 and running.server.stats.rejected["full"] == 1
            assert not first.hungup and first.uuid in running.bridge.calls  # the call up is untouched

            await first.hangup("NORMAL_CLEARING")
            await until(lambda: not running.bridge.full)
            assert (await http.get("/ready")).status_code == 200
            third = await place(fs, settings)
            await until(lambda: third.uuid in agent.sessions)  # room again: taken
            await third.hangup("NORMAL_CLEARING")
            [turned_away] = await finished_record(store, second.uuid)
            assert turned_away.error is not None and "full" in turned_away.error
    finally:
        await running.close()


def non_loopback_address() -> str | None:
    """This box's address on its first non-loopback interface (no packet is sent), if it has one."""
    import socket

    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.1", 9))  # TEST-NET-1: only picks the outgoing interface
        address = str(probe.getsockname()[0])
        return None if is_loopback(address) else address
    return None


async def test_drain_endpoint_is_loopback_only_and_ready_reports() -> None:
    drained: list[bool] = []
    ready = Readiness(lambda: 3, on_drain=lambda: drained.append(True))
    server = HttpServer("127.0.0.1", 0)
    ready.install(server)
    async with server, httpx.AsyncClient(base_url=server.url) as http:
        ok = await http.get("/ready")
        assert ok.status_code == 200 and ok.json()["ready"] is True
        assert (await http.get("/drain")).status_code == 405
        assert (await http.post("/metrics")).status_code == 404
        assert (await http.post("/drain", headers={"X-Forwarded-For": "127.0.0.1"})).status_code == 202 and drained
        ready.begin_drain()
        gone = await http.get("/ready")
        assert gone.status_code == 503 and gone.json()["reason"] == "draining" and gone.json()["active_calls"] == 3
    assert is_loopback("::ffff:127.0.0.1") and is_loopback("::1")
    assert not is_loopback("") and not is_loopback("192.168.1.1")


async def test_drain_from_another_address_is_refused() -> None:
    """The peer's own address decides, over a real socket from this box's non-loopback interface."""
    address = non_loopback_address()
    if address is None:
        pytest.skip("no non-loopback interface to connect from")
    drained: list[bool] = []
    ready = Readiness(on_drain=lambda: drained.append(True))
    server = HttpServer(address, 0)
    ready.install(server)
    async with server, httpx.AsyncClient(base_url=server.url) as http:
        refused = await http.post("/drain", headers={"X-Forwarded-For": "127.0.0.1"})
        assert refused.status_code == 403 and refused.text == "403 Forbidden: drain only from this host\n"
        assert not drained and ready.ready
        assert (await http.get("/ready")).status_code == 200  # probes and scrapes may come from anywhere


async def test_parley_drain_command_posts_and_waits_for_zero_calls() -> None:
    from parley.cli import main

    calls = [2]
    ready = Readiness(lambda: calls[0])
    server = HttpServer()
    ready.install(server)
    async with server:
        url = server.url
        assert await asyncio.to_thread(main, ["drain", "--url", server.url]) == 0
        assert not ready.ready and ready.reason == "draining"
        waiting = asyncio.create_task(asyncio.to_thread(main, ["drain", "--url", server.url, "--wait"]))
        await asyncio.sleep(0.3)
        assert not waiting.done()  # two calls are still up
        calls[0] = 0
        assert await asyncio.wait_for(waiting, 30) == 0
    assert await asyncio.to_thread(main, ["drain", "--url", url]) == 1  # nobody listens any more


def test_parley_records_migrate_brings_the_schema_to_head(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sqlite3

    from parley.cli import main

    db = tmp_path / "calls.db"
    monkeypatch.setenv("PARLEY_RECORDS_URL", f"sqlite+aiosqlite:///{db}")
    assert main(["records", "migrate"]) == 0
    assert main(["records", "migrate"]) == 0  # again: a no-op
    with sqlite3.connect(db) as conn:
        tables = {r[0] for r in conn.execute("select name from sqlite_master where type = 'table'")}
    assert "alembic_version" in tables and len(tables) > 1


async def test_two_workers_on_one_freeswitch_a_restarted_stream_moves_the_call(
    rig: tuple[FakeFreeSwitch, RecordStore, app.ConversationAgent, Settings],
) -> None:
    """``--call-ownership stream``: worker B ignores worker A's call until a restart of its stream connects to B
    (A's public URL points at B here, as a load balancer might); then B runs it and A lets it go, no hangup."""
    from dataclasses import replace

    fs, store, agent_a, settings = rig
    agent_b = app.ConversationAgent(agent_a.engine, store)
    stream = settings.freeswitch.audio_stream
    port_b = free_port()

    def with_stream(**kw: object) -> Settings:
        return replace(settings, freeswitch=replace(settings.freeswitch, audio_stream=replace(stream, **kw)))

    apology = await app.render_apology(agent_a.engine)
    a = await app.start(with_stream(public_url=f"ws://127.0.0.1:{port_b}", restart_backoff_s=0.05), agent_a,
                        apology=apology, call_ownership="stream")
    b = await app.start(with_stream(listen_port=port_b), agent_b, apology=apology, call_ownership="stream")
    try:
        call = await place(fs, settings)  # streams to A
        await until(lambda: len(getattr(agent_a.sessions.get(call.uuid), "frame_lag_ms", ())) > 5)
        assert call.uuid in a.bridge.calls and call.uuid not in b.bridge.calls  # B saw its events, ignored them

        call.media.reset_stream()  # A restarts the stream; the new one connects to B
        await until(lambda: len(getattr(agent_b.sessions.get(call.uuid), "frame_lag_ms", ())) > 5)
        await until(lambda: call.uuid not in a.bridge.calls)
        assert a.bridge.stats.streams_moved == 1 and b.bridge.stats.streams_moved == 0
        assert not call.hungup and call.uuid in b.bridge.calls
        assert not [c for c in fs.commands if call.uuid.encode() in c and (b"uuid_kill" in c or b"uuid_transfer" in c)]
        before = len(agent_b.sessions[call.uuid].frame_lag_ms)
        await until(lambda: len(agent_b.sessions[call.uuid].frame_lag_ms) > before + 10)  # B hears the caller

        await call.hangup("NORMAL_CLEARING")
        await until(lambda: call.uuid not in b.bridge.calls)
    finally:
        await a.close()
        await b.close()
    found = await finished_record(store, call.uuid)
    assert sorted((r.hangup_by, r.hangup_cause) for r in found) == [
        ("caller", "NORMAL_CLEARING"), ("system", "STREAM_MOVED")]  # A's part, then B's


async def test_stream_ownership_keeps_a_call_whose_restarted_stream_comes_back(
    rig: tuple[FakeFreeSwitch, RecordStore, app.ConversationAgent, Settings],
) -> None:
    fs, store, agent, settings = rig
    running = await app.start(settings, agent, apology=await app.render_apology(agent.engine), call_ownership="stream")
    try:
        call = await place(fs, settings)
        await until(lambda: len(getattr(agent.sessions.get(call.uuid), "frame_lag_ms", ())) > 5)
        first = call.audio_stream
        call.media.reset_stream()
        await until(lambda: call.audio_stream is not first and running.bridge.stats.stream_restarts == 1)
        before = len(agent.sessions[call.uuid].frame_lag_ms)
        await until(lambda: len(agent.sessions[call.uuid].frame_lag_ms) > before + 100)  # > 2 s of media after
        assert running.bridge.stats.streams_moved == 0 and call.uuid in running.bridge.calls and not call.hungup
        await call.hangup("NORMAL_CLEARING")
    finally:
        await running.close()
    [rec] = await finished_record(store, call.uuid)
    assert (rec.hangup_by, rec.hangup_cause) == ("caller", "NORMAL_CLEARING")
