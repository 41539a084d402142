"""The ESL client cannot die: handshake, socket and parse faults become parley errors, the supervisor
reconnects through all of them, and a command that must not run twice is never sent twice.

Servers are real sockets on 127.0.0.1: the fake FreeSWITCH (behind the fault proxy) or tiny scripted ones.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from parley.config import EslSettings
from parley.errors import EslConnectError, EslConnectionLost, EslOutcomeUnknown, EslProtocolError, EslTimeout
from parley.freeswitch import esl_protocol as esl
from parley.freeswitch.esl_client import EslClient, Sent, command_is_repeatable
from parley.observe.metrics import Metrics
from parley.sim.esl_wire import SHUTDOWN_NOTICE
from parley.sim.fake_freeswitch import FakeFreeSwitch
from testkit.fault_proxy import FaultProxy

FIXTURES = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "freeswitch"
PASSWORD = "a-long-test-password-xyz"
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def settings(port: int, **kw: float) -> EslSettings:
    base: dict[str, float] = {"connect_timeout_s": 1.0, "reconnect_initial_s": 0.01, "reconnect_max_s": 0.05}
    return EslSettings(host="127.0.0.1", port=port, password=PASSWORD, **(base | kw))  # type: ignore[arg-type]


@asynccontextmanager
async def server(handler: Handler) -> AsyncIterator[int]:
    srv = await asyncio.start_server(handler, "127.0.0.1", 0)
    try:
        yield srv.sockets[0].getsockname()[1]
    finally:
        srv.close()


@asynccontextmanager
async def fs_behind_proxy() -> AsyncIterator[tuple[FakeFreeSwitch, FaultProxy]]:
    async with FakeFreeSwitch(password=PASSWORD) as fs, FaultProxy("127.0.0.1", fs.esl_port) as proxy:
        yield fs, proxy


async def until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.01)


def rst(writer: asyncio.StreamWriter) -> None:
    writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def test_the_fake_sends_the_recorded_shutdown_notice() -> None:
    assert (FIXTURES / "fs-shutdown.esl-in.bin").read_bytes().endswith(SHUTDOWN_NOTICE)
    assert (FIXTURES / "esl-reload.esl-in.bin").read_bytes().endswith(SHUTDOWN_NOTICE)


# ---- each handshake fault is a clear EslConnectError, and the supervisor gets through it -------------------


async def test_reset_during_the_auth_handshake_is_a_connect_error_and_is_survived() -> None:
    async with fs_behind_proxy() as (_fs, proxy):
        proxy.reset_handshakes(1, after_up_bytes=1)  # the client's `auth` is answered with a TCP RST
        client = EslClient(settings(proxy.port))
        with pytest.raises(EslConnectError, match=r"handshake .* failed") as info:
            await client.start()
        assert isinstance(info.value.__cause__, ConnectionError)
        proxy.reset_handshakes(3, after_up_bytes=1)
        await client.start(wait=False)
        try:
            await client.wait_connected(5)
            assert proxy.stats.handshake_resets == 4 and client.stats.connect_failures == 4
            assert client.supervising and client.stats.attempts == 0
            assert "UP" in await client.api("status")
        finally:
            await client.close()


async def test_refused_connection_is_retried_until_freeswitch_listens() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = EslClient(settings(port))
    await client.start(wait=False)
    try:
        await until(lambda: client.stats.attempts >= 3)
        assert client.stats.state == "connecting" and "refused" in (client.stats.last_error or "").lower()
        health = Metrics()
        health.watch(esl=client)
        report = health.health()
        (link,) = report.providers["esl"]
        assert report.status == "degraded" and link["status"] == "failing" and link["state"] == "connecting"
        assert "Connection refused" in str(link["last_error"]) and link["failed_attempts"] == client.stats.attempts
        async with FakeFreeSwitch(password=PASSWORD, esl_port=port):
            await client.wait_connected(5)
            assert client.supervising and client.stats.attempts == 0
            assert health.health().providers["esl"][0]["state"] == "connected"
    finally:
        await client.close()


async def test_a_server_that_never_sends_auth_request_times_out_as_a_connect_error() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    async with server(silent) as port:
        with pytest.raises(EslConnectError, match=r"timed out .*no auth/request"):
            await EslClient(settings(port, connect_timeout_s=0.3)).start()


async def test_a_slow_link_still_connects_and_works() -> None:
    async with fs_behind_proxy() as (_fs, proxy):
        proxy.delay_s = 0.15  # every chunk, each way
        async with EslClient(settings(proxy.port)) as client:
            assert "UP" in await client.api("status")


@pytest.mark.parametrize(
    ("garbage", "why"),
    [
        (b"HTTP/1.1 400 Bad Request\r\n\r\n", "not a 'Name: value' header"),
        (b"Content-Type: auth/request\nContent-Length: 12abc\n\n", "not a non-negative integer"),
        (b"\xff\xfe\x00garbage\n\n", "not valid UTF-8"),
        (b"Content-Type: api/response\nContent-Length: 3\n\nhi\n", "expected auth/request"),
    ],
)
async def test_garbage_in_the_handshake_is_a_connect_error_caused_by_a_protocol_error(garbage: bytes, why: str) -> None:
    async def junk(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(garbage)
        await reader.read()

    async with server(junk) as port:
        with pytest.raises(EslConnectError, match="handshake") as info:
            await EslClient(settings(port)).start()
        assert isinstance(info.value.__cause__, EslProtocolError) and why in str(info.value.__cause__)


async def test_eof_in_the_middle_of_a_header_is_a_connect_error() -> None:
    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"Content-Type: auth/req")
        await writer.drain()
        writer.close()

    async with server(cut) as port:
        with pytest.raises(EslConnectError, match="ended inside a header block"):
            await EslClient(settings(port)).start()


async def test_disconnect_notice_drops_the_link_and_the_client_reconnects(caplog: pytest.LogCaptureFixture) -> None:
    async with FakeFreeSwitch(password=PASSWORD) as fs, EslClient(settings(fs.esl_port)) as client:
        await fs.reload_esl(down_s=0.3)  # the recorded notice, EOF, refused reconnects
        await client.wait_connected(5)
        assert client.stats.reconnects == 1 and client.stats.connect_failures >= 1
        assert "FreeSWITCH closed the ESL connection: The system is being shut down." in caplog.messages
        assert "UP" in await client.api("status")


async def test_garbage_mid_connection_reconnects() -> None:
    async with fs_behind_proxy() as (_fs, proxy), EslClient(settings(proxy.port)) as client:
        proxy.inject(b"\x00\x01 this is not ESL\n\n")
        await until(lambda: client.stats.reconnects == 1)
        assert "protocol error" in (client.stats.last_error or "")
        assert "UP" in await client.api("status")


async def test_a_stalled_link_is_dropped_when_a_reply_is_overdue_and_replaced() -> None:
    async with fs_behind_proxy() as (_fs, proxy), EslClient(settings(proxy.port, api_timeout_s=0.4)) as client:
        proxy.set_stall(True)
        with pytest.raises(EslTimeout):
            await client.api("status")
        await until(lambda: client.stats.stalls == 1)
        proxy.set_stall(False)
        await client.wait_connected(5)
        assert "UP" in await client.api("status")


async def test_the_supervisor_survives_50_failures_in_a_row_then_connects() -> None:
    """Every kind of broken server, 50 connections in a row, then a good one."""

    async def reset_at_once(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        rst(w)

    async def reset_after_auth(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(esl_auth_request)
        await r.readuntil(b"\n\n")
        rst(w)

    async def garbage(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"\x16\x03\x01 TLS? \n\n")
        await r.read()

    async def eof_mid_header(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"Content-Type: auth/re")
        w.close()

    async def notice(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(SHUTDOWN_NOTICE)
        w.close()

    async def refuse_subscription(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(esl_auth_request)
        await r.readuntil(b"\n\n")
        w.write(b"Content-Type: command/reply\nReply-Text: +OK accepted\n\n")
        await r.readuntil(b"\n\n")
        w.write(b"Content-Type: command/reply\nReply-Text: -ERR no keywords supplied\n\n")
        await r.read()

    async def silent(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.read()

    async def good(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(esl_auth_request)
        await r.readuntil(b"\n\n")
        w.write(b"Content-Type: command/reply\nReply-Text: +OK accepted\n\n")
        await r.readuntil(b"\n\n")
        w.write(b"Content-Type: command/reply\nReply-Text: +OK event listener enabled json\n\n")
        while (await r.readuntil(b"\n\n")).startswith(b"api status"):
            w.write(b"Content-Type: api/response\nContent-Length: 6\n\nUP 0s\n")

    esl_auth_request = b"Content-Type: auth/request\n\n"
    faults = itertools.cycle([reset_at_once, reset_after_auth, garbage, eof_mid_header, notice,
                              refuse_subscription, silent])
    served = 0

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        nonlocal served
        served += 1
        try:
            await (next(faults) if served <= 50 else good)(r, w)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            w.close()

    async with server(handler) as port:
        client = EslClient(settings(port, connect_timeout_s=0.2, reconnect_initial_s=0.001, reconnect_max_s=0.01))
        await client.start(wait=False)
        try:
            await client.wait_connected(30)
            assert client.supervising and client.connected
            assert client.stats.connect_failures == 50 and client.stats.connects == 1
            assert (await client.api("status")).startswith("UP")
        finally:
            await client.close()


# ---- no command that must run once is sent twice -----------------------------------------------------------


def test_the_resend_rule_of_each_command() -> None:
    uuid = "7f4de4bc-0a5a-4c4a-9a53-3e1c1f7d2a10"
    once = [
        esl.execute_command(uuid, "playback", "/tmp/a.wav", event_uuid="e1"),
        esl.hangup_command(uuid),
        esl.api_command(f"uuid_transfer {uuid} 1000 XML default"),
        esl.api_command(f"uuid_kill {uuid}"),
        esl.api_command("originate sofia/gateway/x/123 &park"),
        esl.bgapi_command("originate sofia/gateway/x/123 &park", "j1"),
        esl.api_command(f"uuid_broadcast {uuid} /tmp/a.wav aleg"),
        esl.api_command(f"uuid_audio_stream {uuid} start ws://h/x mono 16k"),
        esl.api_command("reloadxml"),
    ]
    again = [
        esl.api_command(f"uuid_exists {uuid}"),
        esl.api_command("status"),
        esl.bgapi_command("status", "j2"),
        esl.api_command(f"uuid_getvar {uuid} x"),
        esl.api_command(f"uuid_break {uuid} all"),
        esl.api_command(f"uuid_audio_stream {uuid} stop"),
        esl.event_command(["CHANNEL_HANGUP"]),
    ]
    assert [command_is_repeatable(c) for c in once] == [False] * len(once)
    assert [command_is_repeatable(c) for c in again] == [True] * len(again)


async def _reply_lost(fs: FakeFreeSwitch, proxy: FaultProxy, client: EslClient, data: bytes) -> asyncio.Task[object]:
    """Send ``data`` with the replies held back, then reset the link once FreeSWITCH has it."""
    proxy.set_stall(True, "down")
    before = len(fs.commands)
    task: asyncio.Task[object] = asyncio.ensure_future(client.send(data))
    await until(lambda: data in fs.commands[before:])
    proxy.reset_all()
    proxy.set_stall(False, "down")
    return task


async def test_a_playback_whose_reply_is_lost_is_not_played_twice() -> None:
    async with fs_behind_proxy() as (fs, proxy), EslClient(settings(proxy.port)) as client:
        call = await fs.place_call(ws_url=None)
        data = esl.execute_command(call.uuid, "playback", "silence_stream://400", event_uuid="ev-1")
        task = await _reply_lost(fs, proxy, client, data)
        with pytest.raises(EslOutcomeUnknown, match="not sent again") as info:
            await task
        assert info.value.event_uuid == "ev-1" and not info.value.retryable
        await client.wait_connected(5)
        await asyncio.sleep(0.6)
        assert fs.commands.count(data) == 1 and len(call.playbacks) == 1
        assert client.stats.outcome_unknown == 1 and client.stats.resent == 0


async def test_a_transfer_or_kill_whose_reply_is_lost_runs_once() -> None:
    async with fs_behind_proxy() as (fs, proxy), EslClient(settings(proxy.port)) as client:
        call = await fs.place_call(ws_url=None)
        data = esl.api_command(f"uuid_kill {call.uuid} NORMAL_CLEARING")
        task = await _reply_lost(fs, proxy, client, data)
        with pytest.raises(EslOutcomeUnknown):
            await task
        await client.wait_connected(5)
        assert fs.commands.count(data) == 1 and call.hangup_cause == "NORMAL_CLEARING"


async def test_a_read_whose_reply_is_lost_is_asked_again_on_the_new_link() -> None:
    async with fs_behind_proxy() as (fs, proxy), EslClient(settings(proxy.port)) as client:
        call = await fs.place_call(ws_url=None)
        data = esl.api_command(f"uuid_exists {call.uuid}")
        task = await _reply_lost(fs, proxy, client, data)
        sent = await task
        assert isinstance(sent, Sent) and isinstance(sent.reply, esl.ApiResponse) and sent.reply.body == "true"
        assert client.stats.resent == 1
        assert fs.commands.count(data) == 2 and client.stats.reconnects == 1


async def test_a_bgapi_whose_reply_is_lost_is_not_sent_again() -> None:
    async with fs_behind_proxy() as (fs, proxy), EslClient(settings(proxy.port)) as client:
        call = await fs.place_call(ws_url=None)
        proxy.set_stall(True, "down")
        task = asyncio.ensure_future(client.bgapi(f"uuid_kill {call.uuid}", timeout=0.8))
        await until(lambda: any(c.startswith(b"bgapi uuid_kill") for c in fs.commands))
        proxy.reset_all()
        proxy.set_stall(False, "down")
        with pytest.raises(EslOutcomeUnknown) as info:
            await task  # its BACKGROUND_JOB went down with the old link: we cannot know, so we say so
        assert info.value.job_uuid is not None
        assert sum(c.startswith(b"bgapi uuid_kill") for c in fs.commands) == 1


async def test_commands_issued_while_down_are_sent_once_when_the_link_returns() -> None:
    async with fs_behind_proxy() as (fs, proxy), EslClient(settings(proxy.port)) as client:
        call = await fs.place_call(ws_url=None)
        proxy.refuse(True)
        proxy.reset_all()
        await until(lambda: not client.connected)
        data = esl.execute_command(call.uuid, "playback", "silence_stream://200", event_uuid="ev-2")
        task = asyncio.ensure_future(client.sendmsg(data))
        await asyncio.sleep(0.2)
        assert not task.done()
        proxy.refuse(False)
        assert (await task).reply.ok
        assert fs.commands.count(data) == 1


async def test_a_command_sent_after_close_is_a_clear_error() -> None:
    async with FakeFreeSwitch(password=PASSWORD) as fs:
        client = EslClient(settings(fs.esl_port))
        await client.start()
        await client.close()
        assert not client.supervising
        with pytest.raises(EslConnectionLost, match="closed"):
            await client.api("status")
