"""Owned-call ESL filters (`--call-ownership stream`): a worker's ESL connection receives only the events of
the calls it holds. Against the fake FreeSWITCH on real sockets: the filter commands and FreeSWITCH's replies,
no events at all while a worker owns no call (FreeSWITCH sends everything to a listener with no filter), the
filters set again after a reconnect, bgapi results still delivered, and two workers on one FreeSWITCH never
receiving each other's call events. The event-claiming mode (one process) sends no filter."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from parley import app
from parley.config import AudioStreamSettings, EslSettings, FreeSwitchSettings, PlaybackSettings, Settings
from parley.freeswitch import esl_protocol as esl
from parley.freeswitch.call import Call
from parley.freeswitch.esl_client import NO_CALL, EslClient
from parley.sim.echo_call import free_port
from parley.sim.fake_esl import EslConnection
from parley.sim.fake_freeswitch import FakeFreeSwitch


async def until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.01)


def saw(events: list[esl.Event], name: str, uuid: str) -> bool:
    return any(e.name == name and e.unique_id == uuid for e in events)


@pytest.fixture
async def fs() -> AsyncIterator[FakeFreeSwitch]:
    async with FakeFreeSwitch(password=secrets.token_urlsafe(18)) as fake:
        yield fake


def esl_settings(fs: FakeFreeSwitch) -> EslSettings:
    return EslSettings(port=fs.esl_port, password=fs.password, reconnect_initial_s=0.05, reconnect_max_s=0.2)


async def test_freeswitch_answers_filter_and_filter_delete(fs: FakeFreeSwitch) -> None:
    async with EslClient(esl_settings(fs)) as client:
        added = (await client.send(esl.filter_command("Unique-ID", "abc"))).reply
        deleted = (await client.send(esl.filter_delete_command("Unique-ID", "abc"))).reply
    assert isinstance(added, esl.CommandReply) and added.reply_text == "+OK filter added. [Unique-ID]=[abc]"
    assert isinstance(deleted, esl.CommandReply) and deleted.reply_text == "+OK filter deleted. [Unique-ID][abc]"


async def test_a_filtering_connection_gets_only_the_calls_it_owns(fs: FakeFreeSwitch) -> None:
    watcher, owner = EslClient(esl_settings(fs)), EslClient(esl_settings(fs), filter_calls=True)
    seen: list[esl.Event] = []
    mine: list[esl.Event] = []
    watcher.on_event(seen.append)
    owner.on_event(mine.append)
    async with watcher, owner:
        assert f"filter Unique-ID {NO_CALL}\n\n".encode() in fs.commands
        one = await fs.place_call(ws_url=None)
        two = await fs.place_call(ws_url=None)
        await until(lambda: saw(seen, "CHANNEL_PARK", two.uuid))
        await owner.api("status")  # one round trip: what FreeSWITCH sent before its reply has arrived
        assert [e.name for e in mine] == []  # owning nothing, it hears nothing (no filter would mean everything)

        await owner.own_call(one.uuid)
        assert owner.owned_calls == {one.uuid}
        assert await owner.bgapi("uuid_exists " + one.uuid) == "true"  # BACKGROUND_JOB has no Unique-ID
        await one.hangup()
        await two.hangup()
        await until(lambda: saw(seen, "CHANNEL_HANGUP_COMPLETE", one.uuid)
                    and saw(seen, "CHANNEL_HANGUP_COMPLETE", two.uuid))
        await owner.api("status")
        assert {e.unique_id for e in mine} == {one.uuid}
        assert saw(mine, "CHANNEL_HANGUP", one.uuid) and saw(mine, "CHANNEL_HANGUP_COMPLETE", one.uuid)

        await owner.release_call(one.uuid)
        assert owner.owned_calls == frozenset()
        assert f"filter delete Unique-ID {one.uuid}\n\n".encode() in fs.commands


async def test_the_filters_are_set_again_on_a_new_connection(fs: FakeFreeSwitch) -> None:
    owner = EslClient(esl_settings(fs), filter_calls=True)
    mine: list[esl.Event] = []
    owner.on_event(mine.append)
    async with owner:
        call = await fs.place_call(ws_url=None)
        await owner.own_call(call.uuid)
        await fs.drop_esl_connections()
        await until(lambda: owner.stats.reconnects == 1 and owner.connected)
        assert fs.commands.count(f"filter Unique-ID {call.uuid}\n\n".encode()) == 2
        assert fs.commands.count(f"filter Unique-ID {NO_CALL}\n\n".encode()) == 2
        subscribed = [i for i, c in enumerate(fs.commands) if c.startswith(b"event ")]
        filtered = [i for i, c in enumerate(fs.commands) if c == f"filter Unique-ID {call.uuid}\n\n".encode()]
        assert filtered[1] < subscribed[1]  # on the new connection: filters first, then the subscription
        await call.hangup()
        await until(lambda: saw(mine, "CHANNEL_HANGUP_COMPLETE", call.uuid))


async def test_a_client_without_filter_calls_sends_no_filter_and_hears_every_call(fs: FakeFreeSwitch) -> None:
    client = EslClient(esl_settings(fs))
    seen: list[esl.Event] = []
    client.on_event(seen.append)
    async with client:
        await client.own_call("ignored")  # nothing to do without filters
        call = await fs.place_call(ws_url=None)
        await until(lambda: saw(seen, "CHANNEL_PARK", call.uuid))
    assert not any(c.startswith(b"filter") for c in fs.commands)


# ---- two workers on one FreeSWITCH ---------------------------------------------------------------------


@dataclass
class Worker:
    running: app.Running
    ws_port: int
    played: dict[str, asyncio.Event]

    def url(self) -> str:
        return f"ws://127.0.0.1:{self.ws_port}/call/{{uuid}}"


def agent_for(played: dict[str, asyncio.Event]) -> Callable[[Call], object]:
    async def agent(call: Call) -> None:
        t = np.arange(1600) / 8000
        utt = await call.playback.play((6000 * np.sin(2 * np.pi * 300 * t)).astype(np.int16), 8000, "tone")
        await utt.wait_played()
        played.setdefault(call.uuid, asyncio.Event()).set()
        await call.hungup.wait()

    return agent


async def start_worker(fs: FakeFreeSwitch, spool: Path, ownership: str = "stream") -> Worker:
    port = free_port()
    settings = Settings(freeswitch=FreeSwitchSettings(
        esl=esl_settings(fs),
        audio_stream=AudioStreamSettings(listen_port=port, unidentified_timeout_s=1.0),
        playback=PlaybackSettings(spool_dir=str(spool)),
    ))
    played: dict[str, asyncio.Event] = {}
    running = await app.start(settings, agent_for(played), call_ownership=ownership)  # type: ignore[arg-type]
    return Worker(running, port, played)


def connection_owning(fs: FakeFreeSwitch, uuid: str) -> EslConnection:
    (conn,) = [c for c in fs.esl_connections if ("Unique-ID", uuid) in c.sub.filters]
    return conn


async def test_two_workers_never_receive_each_others_call_events(fs: FakeFreeSwitch, tmp_path: Path) -> None:
    a = await start_worker(fs, tmp_path / "a")
    b = await start_worker(fs, tmp_path / "b")
    try:
        on_a = await fs.place_call(ws_url=a.url(), caller_audio=np.zeros(16000, np.int16),
                                   channel_vars={"parley_agent": "true"}, caller_number="+15550002222",
                                   metadata='{"caller":"+15550002222","callee":"parley"}')  # as the Lua helper
        on_b = await fs.place_call(ws_url=b.url(), caller_audio=np.zeros(16000, np.int16),
                                   channel_vars={"parley_agent": "true"})
        await until(lambda: on_a.uuid in a.played and on_b.uuid in b.played)
        await until(lambda: a.played[on_a.uuid].is_set() and b.played[on_b.uuid].is_set())
        conn_a, conn_b = connection_owning(fs, on_a.uuid), connection_owning(fs, on_b.uuid)
        assert conn_a is not conn_b
        assert on_a.uuid in a.running.bridge.calls and on_b.uuid not in a.running.bridge.calls
        # its early events were filtered out: who called comes from the metadata until an event says it
        assert a.running.bridge.calls[on_a.uuid].info.caller_number == "+15550002222"
        assert b.running.bridge.calls[on_b.uuid].info.caller_number == "+15550001111"  # from its first event
        await on_a.hangup()
        await on_b.hangup()
        await until(lambda: not a.running.bridge.calls and not b.running.bridge.calls)
        await until(lambda: f"filter delete Unique-ID {on_a.uuid}\n\n".encode() in fs.commands
                    and f"filter delete Unique-ID {on_b.uuid}\n\n".encode() in fs.commands)
        assert on_a.uuid in conn_a.delivered and on_b.uuid not in conn_a.delivered
        assert on_b.uuid in conn_b.delivered and on_a.uuid not in conn_b.delivered
        assert [p.status for p in fs.calls[on_a.uuid].playbacks] == ["done"]
        assert [p.status for p in fs.calls[on_b.uuid].playbacks] == ["done"]
        assert a.running.nodes.health()["default"]["owned_calls"] == 0
    finally:
        await a.running.close()
        await b.running.close()


async def test_event_claiming_mode_sends_no_filter_and_claims_by_event(fs: FakeFreeSwitch, tmp_path: Path) -> None:
    w = await start_worker(fs, tmp_path / "w", ownership="event")
    try:
        call = await fs.place_call(ws_url=w.url(), caller_audio=np.zeros(16000, np.int16), ws_first=False,
                                   channel_vars={"parley_agent": "true"})
        await until(lambda: call.uuid in w.played and w.played[call.uuid].is_set())
        await call.hangup()
        await until(lambda: not w.running.bridge.calls)
    finally:
        await w.running.close()
    assert not any(c.startswith(b"filter") for c in fs.commands)


async def test_a_refused_upgrade_lets_the_calls_error_in_before_refusing(fs: FakeFreeSwitch, tmp_path: Path) -> None:
    port = free_port()
    settings = Settings(freeswitch=FreeSwitchSettings(
        esl=esl_settings(fs),
        audio_stream=AudioStreamSettings(listen_port=port, token_secret="s" * 32),
        playback=PlaybackSettings(spool_dir=str(tmp_path / "spool")),
    ))
    played: dict[str, asyncio.Event] = {}
    running = await app.start(settings, agent_for(played), call_ownership="stream")
    try:  # no Authorization header: our server answers 401, mod_audio_stream fires ::error code 6
        call = await fs.place_call(ws_url=f"ws://127.0.0.1:{port}/call/{{uuid}}", channel_vars={"parley_agent": "true"})
        await call.wait_hungup()
        assert call.hangup_cause == "TEMPORARY_FAILURE"  # no fallback configured: parley gave the call up
        assert running.bridge.stats.media_given_up == 1 and call.uuid not in played
        sent = fs.commands
        assert sent.index(f"filter Unique-ID {call.uuid}\n\n".encode()) < sent.index(
            f"api uuid_kill {call.uuid} TEMPORARY_FAILURE\n\n".encode())
    finally:
        await running.close()
