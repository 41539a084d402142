"""Behaviour of the fake FreeSWITCH over real sockets: ESL server, calls, playback, mod_audio_stream.

A tiny raw ESL client (built on the sans-I/O parser) and a tiny WebSocket app server stand in for
parley, so these tests do not depend on parley's own ESL client. Timing is only checked as ordering or
with generous bounds (shared, noisy machine).
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import wave
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import numpy as np
import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request

from parley.freeswitch import esl_protocol as esl
from parley.sim.esl_wire import ClientCommandParser, FsEvent, Subscription, url_encode
from parley.sim.fake_freeswitch import FakeFreeSwitch
from parley.sim.fake_playback import split_file_arg

PW = "test-password"
SUBSCRIBE = (
    b"event plain CHANNEL_CREATE CHANNEL_PARK CHANNEL_ANSWER CHANNEL_HANGUP CHANNEL_HANGUP_COMPLETE "
    b"CHANNEL_EXECUTE CHANNEL_EXECUTE_COMPLETE PLAYBACK_START PLAYBACK_STOP DTMF BACKGROUND_JOB CUSTOM "
    b"mod_audio_stream::connect mod_audio_stream::disconnect mod_audio_stream::error mod_audio_stream::json "
    b"mod_audio_stream::play\n\n"
)


# --------------------------------------------------------------------------------------------------
# Helpers: an ESL client, a WebSocket app, WAV files
# --------------------------------------------------------------------------------------------------


class Esl:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.replies: asyncio.Queue[esl.Message] = asyncio.Queue()
        self.events: list[esl.Event] = []
        self.log: list[esl.Message] = []
        self.eof = asyncio.Event()
        self._changed = asyncio.Condition()
        self._task = asyncio.create_task(self._pump())

    @classmethod
    async def connect(cls, port: int, password: str | None = PW, subscribe: bytes | None = SUBSCRIBE) -> Esl:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        client = cls(reader, writer)
        if password is not None:
            assert isinstance(await client.reply(), esl.AuthRequest)
            reply = await client.send(f"auth {password}\n\n".encode())
            assert isinstance(reply, esl.CommandReply) and reply.ok
        if subscribe is not None:
            assert (await client.send(subscribe)).ok  # type: ignore[union-attr]
        return client

    async def _pump(self) -> None:
        parser = esl.EslParser()
        while data := await self.reader.read(65536):
            for msg in parser.feed(data):
                self.log.append(msg)
                if isinstance(msg, esl.Event):
                    async with self._changed:
                        self.events.append(msg)
                        self._changed.notify_all()
                else:
                    self.replies.put_nowait(msg)
        self.eof.set()

    async def reply(self, timeout: float = 5) -> esl.Message:
        return await asyncio.wait_for(self.replies.get(), timeout)

    async def send(self, data: bytes) -> esl.Message:
        self.writer.write(data)
        await self.writer.drain()
        return await self.reply()

    async def api(self, command: str) -> str:
        reply = await self.send(f"api {command}\n\n".encode())
        assert isinstance(reply, esl.ApiResponse)
        return reply.body

    async def sendmsg_playback(self, uuid: str, arg: str, event_uuid: str, extra: str = "") -> esl.Message:
        return await self.send(
            f"sendmsg {uuid}\ncall-command: execute\nexecute-app-name: playback\nexecute-app-arg: {arg}\n"
            f"event-lock: true\n{extra}Event-UUID: {event_uuid}\n\n".encode()
        )

    async def wait_event(self, pred: Callable[[esl.Event], bool], timeout: float = 5) -> esl.Event:
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: any(pred(e) for e in self.events)), timeout)
        return next(e for e in self.events if pred(e))

    def named(self, name: str, **headers: str) -> list[esl.Event]:
        return [
            e
            for e in self.events
            if (e.name == name or e.subclass == name)
            and all(e.get(k.replace("_", "-")) == v for k, v in headers.items())
        ]

    async def close(self) -> None:
        self.writer.close()
        self._task.cancel()


class WsApp:
    """The app's WebSocket server: records what mod_audio_stream sends."""

    def __init__(self) -> None:
        self.conns: list[ServerConnection] = []
        self.messages: dict[int, list[str | bytes]] = {}
        self.closed: dict[int, tuple[int | None, str | None]] = {}
        self.connected = asyncio.Event()
        self.port = 0

    async def handler(self, ws: ServerConnection) -> None:
        idx = len(self.conns)
        self.conns.append(ws)
        self.messages[idx] = []
        self.connected.set()
        try:
            async for message in ws:
                self.messages[idx].append(message)
        except ConnectionClosed:
            pass
        rcvd = ws.protocol.close_rcvd
        self.closed[idx] = (rcvd.code, rcvd.reason) if rcvd else (None, None)

    def request(self, idx: int) -> Request:
        req = self.conns[idx].request
        assert req is not None
        return req

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def frames(self, idx: int = 0) -> list[bytes]:
        return [m for m in self.messages.get(idx, []) if isinstance(m, bytes)]


def wav_bytes(samples: np.ndarray, rate: int) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.astype("<i2").tobytes())
    return buf.getvalue()


def tone(seconds: float, rate: int = 8000, freq: float = 440.0, amp: int = 8000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (np.sin(2 * np.pi * freq * t) * amp).astype(np.int16)


def file_bytes(path: str) -> bytes | None:
    p = Path(path)
    return p.read_bytes() if p.exists() else None


def write_wav(path: Path, samples: np.ndarray, rate: int = 8000) -> str:
    path.write_bytes(wav_bytes(samples, rate))
    return str(path)


@pytest.fixture
async def fs(tmp_path: Path) -> AsyncIterator[FakeFreeSwitch]:
    async with FakeFreeSwitch(password=PW, temp_dir=tmp_path / "fs-temp") as fake:
        yield fake


@pytest.fixture
async def app() -> AsyncIterator[WsApp]:
    ws_app = WsApp()
    async with serve(ws_app.handler, "127.0.0.1", 0, compression=None) as server:
        ws_app.port = server.sockets[0].getsockname()[1]
        yield ws_app


# --------------------------------------------------------------------------------------------------
# ESL server
# --------------------------------------------------------------------------------------------------


async def test_wrong_password_gets_err_invalid_notice_and_eof(fs: FakeFreeSwitch) -> None:
    client = await Esl.connect(fs.esl_port, password=None, subscribe=None)
    assert isinstance(await client.reply(), esl.AuthRequest)
    reply = await client.send(b"auth nope\n\n")
    assert isinstance(reply, esl.CommandReply) and reply.reply_text == "-ERR invalid"
    notice = await client.reply()
    assert isinstance(notice, esl.DisconnectNotice) and "goodbye" in notice.body
    await asyncio.wait_for(client.eof.wait(), 5)


async def test_acl_rejection_is_rude_and_immediate() -> None:
    async with FakeFreeSwitch(password=PW, acl_reject=True) as fs:
        reader, writer = await asyncio.open_connection("127.0.0.1", fs.esl_port)
        data = await asyncio.wait_for(reader.read(), 5)
        writer.close()
    assert data == b"Content-Type: text/rude-rejection\nContent-Length: 24\n\nAccess Denied, go away.\n"
    (msg,) = esl.parse_stream(data)
    assert isinstance(msg, esl.RudeRejection)


async def test_commands_before_auth_are_refused_but_the_connection_stays(fs: FakeFreeSwitch) -> None:
    client = await Esl.connect(fs.esl_port, password=None, subscribe=None)
    await client.reply()
    reply = await client.send(b"api status\n\n")
    assert isinstance(reply, esl.CommandReply) and reply.reply_text == "-ERR command not found"
    assert (await client.send(f"auth {PW}\n\n".encode())).ok  # type: ignore[union-attr]
    assert (await client.api("version")).startswith("FreeSWITCH Version 1.10.12")
    bye = await client.send(b"exit\n\n")
    assert isinstance(bye, esl.CommandReply) and bye.reply_text == "+OK bye"
    assert isinstance(await client.reply(), esl.DisconnectNotice)
    await asyncio.wait_for(client.eof.wait(), 5)
    assert fs.commands[0] == b"api status\n\n" and fs.commands[-1] == b"exit\n\n"


async def test_api_errors_and_variables(fs: FakeFreeSwitch) -> None:
    client = await Esl.connect(fs.esl_port)
    assert await client.api("no_such_command foo") == "-ERR no_such_command Command not found!\n"
    assert await client.api("uuid_break 00000000-0000-0000-0000-000000000000") == "-ERR No such channel!\n"
    reply = await client.sendmsg_playback("00000000-0000-0000-0000-000000000000", "/x.wav", "e1")
    assert (
        isinstance(reply, esl.CommandReply)
        and reply.reply_text == "-ERR invalid session id [00000000-0000-0000-0000-000000000000]"
    )
    call = await fs.place_call(ws_url=None)
    assert await client.api(f"uuid_setvar {call.uuid} greeting hello world") == "+OK\n"
    assert call.variables["greeting"] == "hello world"
    assert await client.api(f"uuid_getvar {call.uuid} greeting") == "hello world"
    assert await client.api(f"uuid_getvar {call.uuid} nothing") == "_undef_"
    assert await client.api(f"uuid_exists {call.uuid}") == "true"
    status = await client.api("status")
    assert status.startswith("UP 0 years") and "1 session(s) since startup" in status
    shown = json.loads(await client.api("show channels as json"))
    assert shown["row_count"] == 1 and shown["rows"][0]["uuid"] == call.uuid


async def test_bgapi_honours_the_client_job_uuid(fs: FakeFreeSwitch) -> None:
    client = await Esl.connect(fs.esl_port)
    reply = await client.send(b"bgapi status\nJob-UUID: 11111111-2222-3333-4444-555555555555\n\n")
    assert isinstance(reply, esl.CommandReply)
    assert reply.reply_text == "+OK Job-UUID: 11111111-2222-3333-4444-555555555555"
    assert reply.job_uuid == "11111111-2222-3333-4444-555555555555"
    job = await client.wait_event(lambda e: e.name == "BACKGROUND_JOB")
    assert job.job_uuid == "11111111-2222-3333-4444-555555555555"
    assert job.get("Job-Command") == "status" and job.get("Job-Command-Arg") is None
    assert (job.body or "").startswith("UP ")
    reply = await client.send(b"bgapi uuid_kill nobody\n\n")
    generated = reply.job_uuid  # type: ignore[union-attr]
    job = await client.wait_event(lambda e: e.job_uuid == generated)
    assert job.get("Job-Command-Arg") == "nobody" and job.body == "-ERR No such channel!\n"


async def test_filters_deliver_only_matching_events(fs: FakeFreeSwitch) -> None:
    mine = await fs.place_call(ws_url=None)
    client = await Esl.connect(fs.esl_port, subscribe=b"event json ALL\n\n")
    reply = await client.send(f"filter Unique-ID {mine.uuid}\n\n".encode())
    assert isinstance(reply, esl.CommandReply) and reply.reply_text == f"+OK filter added. [Unique-ID]=[{mine.uuid}]"
    other = await fs.place_call(ws_url=None)
    await client.send(b"bgapi status\n\n")
    await mine.hangup()
    await client.wait_event(lambda e: e.name == "CHANNEL_HANGUP_COMPLETE")
    assert {e.unique_id for e in client.events} == {mine.uuid}  # not the other call, not BACKGROUND_JOB
    assert all(e.format == "json" for e in client.events)
    await client.send(b"filter Event-Name /^BACKGROUND_/\n\n")
    await client.send(b"bgapi version\n\n")
    await client.wait_event(lambda e: e.name == "BACKGROUND_JOB")
    await client.send(b"filter delete all\n\n")
    await other.hangup()
    await client.wait_event(lambda e: e.unique_id == other.uuid and e.name == "CHANNEL_HANGUP_COMPLETE")


async def test_custom_needs_subclasses_and_noevents_stops_everything(fs: FakeFreeSwitch, app: WsApp) -> None:
    client = await Esl.connect(fs.esl_port, subscribe=b"event plain CHANNEL_PARK CUSTOM\n\n")
    await fs.place_call(ws_url=app.url)
    await client.wait_event(lambda e: e.name == "CHANNEL_PARK")
    await asyncio.sleep(0.1)
    assert not client.named("mod_audio_stream::connect")  # CUSTOM alone delivers no subclassed event
    assert (await client.send(b"noevents\n\n")).reply_text == "+OK no longer listening for events"  # type: ignore[union-attr]
    await fs.place_call(ws_url=None)
    await asyncio.sleep(0.1)
    assert len(client.named("CHANNEL_PARK")) == 1


async def test_outage_drop_and_refuse_on_the_same_port(fs: FakeFreeSwitch) -> None:
    client = await Esl.connect(fs.esl_port)
    port = fs.esl_port
    await fs.drop_esl_connections()
    await asyncio.wait_for(client.eof.wait(), 5)
    fs.refuse_esl(True)
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)
    fs.refuse_esl(False)
    again = await Esl.connect(port)
    assert fs.esl_port == port
    assert (await again.api("version")).startswith("FreeSWITCH")


# --------------------------------------------------------------------------------------------------
# Calls and playback
# --------------------------------------------------------------------------------------------------


async def test_dialplan_started_call_emits_the_recorded_sequence(fs: FakeFreeSwitch, app: WsApp) -> None:
    client = await Esl.connect(fs.esl_port)
    call = await fs.place_call(
        ws_url=app.url + "/call/{uuid}", metadata='{"id":1}', extra_headers={"Authorization": "Bearer t"}
    )
    await client.wait_event(lambda e: e.subclass == "mod_audio_stream::connect")
    names = [(e.name, e.get("Application") or "") for e in client.events if e.name != "CUSTOM"]
    assert names[:4] == [
        ("CHANNEL_CREATE", ""),
        ("CHANNEL_EXECUTE", "answer"),
        ("CHANNEL_ANSWER", ""),
        ("CHANNEL_EXECUTE_COMPLETE", "answer"),
    ]
    assert names[-2:] == [("CHANNEL_EXECUTE", "park"), ("CHANNEL_PARK", "")]
    connect = client.named("mod_audio_stream::connect")[0]
    assert connect.body == '{"status":"connected"}' and connect.unique_id == call.uuid
    assert connect.variable("STREAM_EXTRA_HEADERS") == '{"Authorization":"Bearer t"}'
    assert app.request(0).path == f"/call/{call.uuid}"
    assert app.request(0).headers["Authorization"] == "Bearer t"
    assert app.request(0).headers["Origin"] == f"http://127.0.0.1:{app.port}"
    assert "User-Agent" not in app.request(0).headers
    await asyncio.sleep(0.5)
    first, *rest = app.messages[0]
    assert first == '{"id":1}' and rest and all(isinstance(m, bytes) and len(m) == 640 for m in rest)


async def test_queue_then_break_all_flushes_without_events(fs: FakeFreeSwitch, tmp_path: Path) -> None:
    long = write_wav(tmp_path / "long.wav", tone(3.0))
    client = await Esl.connect(fs.esl_port)
    call = await fs.place_call(ws_url=None)
    assert (await client.sendmsg_playback(call.uuid, long, "ev-1")).reply_text == "+OK"  # type: ignore[union-attr]
    await client.sendmsg_playback(call.uuid, long, "ev-2")
    await client.wait_event(lambda e: e.name == "PLAYBACK_START")
    assert await client.api(f"uuid_break {call.uuid} all") == "+OK\n"
    stop = await client.wait_event(lambda e: e.name == "PLAYBACK_STOP")
    done = await client.wait_event(
        lambda e: e.name == "CHANNEL_EXECUTE_COMPLETE" and e.get("Application") == "playback"
    )
    assert stop.get("Playback-Status") == "break" and done.get("Application-UUID") == "ev-1"
    assert done.get("Application-Response") == "FILE PLAYED"
    api_reply_at = client.log.index(next(m for m in client.log if isinstance(m, esl.ApiResponse)))
    assert api_reply_at < client.log.index(stop)  # +OK comes first, the STOP ~21 ms later
    await asyncio.sleep(0.3)
    assert not [e for e in client.events if e.get("Application-UUID") == "ev-2"]
    first, second = call.playbacks
    assert (first.status, first.flushed, second.status, second.flushed) == ("break", False, None, True)


async def test_break_without_all_starts_the_next_queued(fs: FakeFreeSwitch, tmp_path: Path) -> None:
    long = write_wav(tmp_path / "long.wav", tone(3.0))
    short = write_wav(tmp_path / "short.wav", tone(0.2))
    client = await Esl.connect(fs.esl_port)
    call = await fs.place_call(ws_url=None)
    await client.sendmsg_playback(call.uuid, long, "one")
    await client.sendmsg_playback(call.uuid, short, "two")
    await client.wait_event(lambda e: e.name == "PLAYBACK_START")
    await client.api(f"uuid_break {call.uuid}")
    await client.wait_event(lambda e: e.name == "CHANNEL_EXECUTE_COMPLETE" and e.get("Application-UUID") == "two")
    stops = [e.get("Playback-Status") for e in client.named("PLAYBACK_STOP")]
    assert stops == ["break", "done"]
    assert [p.status for p in call.playbacks] == ["break", "done"]


async def test_back_to_back_playbacks_join_without_gap_and_heard_audio_places_them(
    fs: FakeFreeSwitch, tmp_path: Path
) -> None:
    a, b = tone(0.3, freq=300), tone(0.2, freq=500)
    client = await Esl.connect(fs.esl_port)
    call = await fs.place_call(ws_url=None)
    await client.sendmsg_playback(call.uuid, write_wav(tmp_path / "a.wav", a), "a")
    await client.sendmsg_playback(call.uuid, "{utt_id=7,part=2}" + write_wav(tmp_path / "b.wav", b), "b")
    await client.wait_event(lambda e: e.name == "CHANNEL_EXECUTE_COMPLETE" and e.get("Application-UUID") == "b")
    first, second = call.playbacks
    assert second.started_at == first.stopped_at  # no gap between queued files
    start = client.named("PLAYBACK_START")[1]
    assert start.get("utt_id") == "7" and start.get("part") == "2"
    assert start.get("Playback-File-Path") == second.path and second.path.startswith("{utt_id=7")
    assert client.named("PLAYBACK_STOP")[1].get("utt_id") == "7"
    heard = call.heard_audio()
    assert call.answered_at is not None and first.started_at is not None
    at = round((first.started_at - call.answered_at) * 8000)
    np.testing.assert_array_equal(heard[at : at + len(a)], a)
    np.testing.assert_array_equal(heard[at + len(a) : at + len(a) + len(b)], b)
    assert not heard[:at].any()


async def test_heard_audio_stops_at_a_break(fs: FakeFreeSwitch, tmp_path: Path) -> None:
    speech = tone(3.0)
    client = await Esl.connect(fs.esl_port)
    call = await fs.place_call(ws_url=None)
    await client.sendmsg_playback(call.uuid, write_wav(tmp_path / "s.wav", speech), "s")
    await client.wait_event(lambda e: e.name == "PLAYBACK_START")
    await asyncio.sleep(0.2)
    await client.api(f"uuid_break {call.uuid} all")
    await client.wait_event(lambda e: e.name == "PLAYBACK_STOP")
    (rec,) = call.playbacks
    assert rec.started_at is not None and rec.stopped_at is not None and call.answered_at is not None
    played = rec.stopped_at - rec.started_at
    assert 0.15 < played < 1.5
    heard = call.heard_audio()
    at = round((rec.started_at - call.answered_at) * 8000)
    end = round((rec.stopped_at - call.answered_at) * 8000)
    np.testing.assert_array_equal(heard[at:end], speech[: end - at])
    assert not heard[end:].any()
    assert stop_var(client, "playback_ms") == str(int(played * 1000))


def stop_var(client: Esl, name: str) -> str | None:
    return client.named("PLAYBACK_STOP")[-1].variable(name)


async def test_missing_file_completes_with_file_not_found_and_no_playback_events(fs: FakeFreeSwitch) -> None:
    client = await Esl.connect(fs.esl_port)
    call = await fs.place_call(ws_url=None)
    await client.sendmsg_playback(call.uuid, "/nonexistent/x.wav", "gone")
    done = await client.wait_event(
        lambda e: e.name == "CHANNEL_EXECUTE_COMPLETE" and e.get("Application") == "playback"
    )
    assert done.get("Application-Response") == "FILE NOT FOUND"
    assert client.named("CHANNEL_EXECUTE", Application="playback")
    assert not client.named("PLAYBACK_START") and call.playbacks[0].found is False


async def test_broadcast_queues_behind_sendmsg_with_its_lead(fs: FakeFreeSwitch, tmp_path: Path) -> None:
    short = write_wav(tmp_path / "short.wav", tone(0.2))
    client = await Esl.connect(fs.esl_port)
    call = await fs.place_call(ws_url=None)
    await client.sendmsg_playback(call.uuid, short, "first")
    assert await client.api(f"uuid_broadcast {call.uuid} {short} aleg") == "+OK Message sent\n"
    await client.wait_event(lambda e: len([s for s in client.named("PLAYBACK_STOP")]) == 2)
    execs = client.named("CHANNEL_EXECUTE", Application="playback")
    assert execs[0].get("Application-UUID") == "first" and execs[1].get("Application-UUID") not in (None, "first")
    sendmsg_rec, broadcast_rec = call.playbacks
    assert broadcast_rec.via == "broadcast" and broadcast_rec.started_at is not None
    assert broadcast_rec.started_at - broadcast_rec.queued_at >= fs.broadcast_lead_s - 1e-6
    assert sendmsg_rec.stopped_at is not None and broadcast_rec.started_at >= sendmsg_rec.stopped_at


async def test_dtmf_star_breaks_unless_terminators_are_none(fs: FakeFreeSwitch, tmp_path: Path) -> None:
    long = write_wav(tmp_path / "long.wav", tone(3.0))
    client = await Esl.connect(fs.esl_port)
    call = await fs.place_call(ws_url=None)
    await call.send_dtmf("1", 160)
    dtmf = await client.wait_event(lambda e: e.name == "DTMF")
    assert (dtmf.get("DTMF-Digit"), dtmf.get("DTMF-Duration"), dtmf.get("DTMF-Source")) == ("1", "1280", "RTP")
    await client.sendmsg_playback(call.uuid, long, "p1")
    await client.wait_event(lambda e: e.name == "PLAYBACK_START")
    await call.send_dtmf("7", 50)
    await asyncio.sleep(0.05)
    assert not client.named("PLAYBACK_STOP")
    await call.send_dtmf("*", 50)
    stop = await client.wait_event(lambda e: e.name == "PLAYBACK_STOP")
    assert stop.get("Playback-Status") == "break" and stop.variable("playback_terminator_used") == "*"
    assert client.events.index(client.named("DTMF", DTMF_Digit="*")[0]) < client.events.index(stop)
    await client.api(f"uuid_setvar {call.uuid} playback_terminators none")
    await client.sendmsg_playback(call.uuid, long, "p2")
    await client.wait_event(lambda e: len(client.named("PLAYBACK_START")) == 2)
    await call.send_dtmf("*", 50)
    await asyncio.sleep(0.2)
    assert len(client.named("PLAYBACK_STOP")) == 1


async def test_caller_hangup_mid_playback(fs: FakeFreeSwitch, app: WsApp, tmp_path: Path) -> None:
    long = write_wav(tmp_path / "long.wav", tone(3.0))
    client = await Esl.connect(fs.esl_port)
    call = await fs.place_call(ws_url=app.url)
    await client.sendmsg_playback(call.uuid, long, "p")
    await client.sendmsg_playback(call.uuid, long, "queued")
    await client.wait_event(lambda e: e.name == "PLAYBACK_START")
    await call.hangup()
    await call.wait_hungup()
    tail = [(e.name, e.get("Application") or e.get("Playback-Status") or "") for e in client.events[-5:]]
    assert tail == [
        ("CHANNEL_HANGUP", ""),
        ("PLAYBACK_STOP", "done"),  # recorded: "done" even when the caller hangs up mid-file
        ("CHANNEL_EXECUTE_COMPLETE", "playback"),
        ("CHANNEL_EXECUTE_COMPLETE", "park"),
        ("CHANNEL_HANGUP_COMPLETE", ""),
    ]
    complete = client.events[-1]
    assert complete.get("Hangup-Cause") == "NORMAL_CLEARING" and complete.variable("last_app") == "playback"
    assert client.named("CHANNEL_EXECUTE_COMPLETE", Application="park")[0].get("Application-Response") == "FILE PLAYED"
    await asyncio.sleep(0.2)
    assert app.closed[0] == (1000, "Normal closure")
    assert not client.named("mod_audio_stream::disconnect")
    assert call.hungup and call.hangup_cause == "NORMAL_CLEARING" and call.ws_close is None
    assert await client.api(f"uuid_break {call.uuid}") == "-ERR No such channel!\n"
    assert not [e for e in client.events if e.get("Application-UUID") == "queued"]


async def test_uuid_kill_and_sendmsg_hangup(fs: FakeFreeSwitch) -> None:
    client = await Esl.connect(fs.esl_port)
    a = await fs.place_call(ws_url=None)
    b = await fs.place_call(ws_url=None)
    assert await client.api(f"uuid_kill {a.uuid} USER_BUSY") == "+OK\n"
    reply = await client.send(f"sendmsg {b.uuid}\ncall-command: hangup\nhangup-cause: CALL_REJECTED\n\n".encode())
    assert reply.reply_text == "+OK"  # type: ignore[union-attr]
    await a.wait_hungup()
    await b.wait_hungup()
    await client.wait_event(lambda e: len(client.named("CHANNEL_HANGUP_COMPLETE")) == 2)
    causes = {e.unique_id: e.get("Hangup-Cause") for e in client.named("CHANNEL_HANGUP_COMPLETE")}
    assert causes == {a.uuid: "USER_BUSY", b.uuid: "CALL_REJECTED"}
    assert client.named("CHANNEL_HANGUP_COMPLETE")[0].variable("hangup_cause_q850") == "17"


# --------------------------------------------------------------------------------------------------
# mod_audio_stream
# --------------------------------------------------------------------------------------------------


async def test_stream_audio_writes_a_file_and_fires_play(fs: FakeFreeSwitch, app: WsApp) -> None:
    client = await Esl.connect(fs.esl_port)
    call = await fs.place_call(ws_url=app.url)
    await asyncio.wait_for(app.connected.wait(), 5)
    audio = wav_bytes(tone(0.2, 16000), 16000)
    msg = {
        "type": "streamAudio",
        "data": {"audioDataType": "wav", "seq": 3, "audioData": base64.b64encode(audio).decode()},
    }
    await app.conns[0].send(json.dumps(msg))
    play = await client.wait_event(lambda e: e.subclass == "mod_audio_stream::play")
    body = json.loads(play.body or "")
    assert list(body) == ["audioDataType", "seq", "file"] and body["seq"] == 3
    assert fs.temp_dir is not None and body["file"] == str(fs.temp_dir / f"{call.uuid}_0.tmp.wav")
    assert file_bytes(body["file"]) == audio
    raw = {
        "type": "streamAudio",
        "data": {"audioDataType": "raw", "sampleRate": 16000, "audioData": base64.b64encode(b"\0\0" * 8).decode()},
    }
    await app.conns[0].send(json.dumps(raw))
    await client.wait_event(lambda e: len(client.named("mod_audio_stream::play")) == 2)
    assert json.loads(client.named("mod_audio_stream::play")[1].body or "")["file"].endswith("_1.tmp.r16")
    for bad in (
        "not json",
        '{"type":"other"}',
        '{"type":"streamAudio","data":{"audioDataType":"raw","sampleRate":11025,"audioData":""}}',
    ):
        await app.conns[0].send(bad)
    await client.wait_event(lambda e: len(client.named("mod_audio_stream::json")) == 3)
    assert [e.body for e in client.named("mod_audio_stream::json")] == [
        "not json",
        '{"type":"other"}',
        '{"type":"streamAudio","data":{"audioDataType":"raw","sampleRate":11025,"audioData":""}}',
    ]
    assert call.stream_texts[-1].startswith('{"type":"streamAudio"')
    await call.hangup()
    assert file_bytes(body["file"]) is None  # mod_audio_stream deletes its temp files with the call


async def test_app_close_fires_disconnect_and_stops_frames(fs: FakeFreeSwitch, app: WsApp) -> None:
    client = await Esl.connect(fs.esl_port)
    call = await fs.place_call(ws_url=app.url)
    await asyncio.sleep(0.2)
    await app.conns[0].close(1000, "app closing")
    disc = await client.wait_event(lambda e: e.subclass == "mod_audio_stream::disconnect")
    assert disc.body == '{"status":"disconnected","message":{"code":1000,"reason":"app closing"}}'
    assert call.ws_close == (1000, "app closing")
    sent = call.streams[0].frames_sent
    await asyncio.sleep(0.2)
    assert call.streams[0].frames_sent == sent and len(app.conns) == 1  # no more frames, no reconnect
    assert await client.api(f"uuid_audio_stream {call.uuid} start {app.url} mono 8k") == "-ERR Operation Failed\n"
    assert await client.api(f"uuid_audio_stream {call.uuid} stop") == "+OK Success\n"
    assert await client.api(f"uuid_audio_stream {call.uuid} start {app.url} mono 8k") == "+OK Success\n"
    await client.wait_event(lambda e: len(client.named("mod_audio_stream::connect")) == 2)


async def test_refused_stream_fires_error_and_the_call_goes_on(fs: FakeFreeSwitch) -> None:
    client = await Esl.connect(fs.esl_port)
    call = await fs.place_call(ws_url="ws://127.0.0.1:9/stream")
    err = await client.wait_event(lambda e: e.subclass == "mod_audio_stream::error")
    assert err.body == '{"status":"error","message":{"code":6,"error":"Connection refused (system error 111)"}}'
    assert client.events.index(client.named("CHANNEL_PARK")[0]) < client.events.index(err)
    assert await client.api(f"uuid_exists {call.uuid}") == "true"


async def test_api_started_stream_with_metadata_then_stop(fs: FakeFreeSwitch, app: WsApp) -> None:
    client = await Esl.connect(fs.esl_port)
    call = await fs.place_call(ws_url=None, destination="park")
    meta = '{"callId":"x-1","from":"fixture"}'
    assert await client.api(f"uuid_audio_stream {call.uuid} start {app.url}/s mono 8k {meta}") == "+OK Success\n"
    await client.wait_event(lambda e: e.subclass == "mod_audio_stream::connect")
    await asyncio.sleep(0.3)
    assert app.messages[0][0] == meta and all(len(m) == 320 for m in app.frames())
    assert await client.api(f"uuid_audio_stream {call.uuid} send_text 'hello there'") == "+OK Success\n"
    assert await client.api(f"uuid_audio_stream {call.uuid} stop") == "+OK Success\n"
    await asyncio.sleep(0.2)
    assert "hello there" in app.messages[0] and app.closed[0] == (1000, "Normal closure")
    assert not client.named("mod_audio_stream::disconnect")
    assert await client.api(f"uuid_audio_stream {call.uuid} stop") == "-ERR Operation Failed\n"


async def test_channel_vars_are_set_by_the_dialplan_and_configure_the_stream(fs: FakeFreeSwitch, app: WsApp) -> None:
    client = await Esl.connect(fs.esl_port)
    call = await fs.place_call(ws_url=app.url, channel_vars={"parley_agent": "true", "STREAM_BUFFER_SIZE": "40"})
    await client.wait_event(lambda e: e.subclass == "mod_audio_stream::connect")
    apps = [(e.name, e.get("Application-Data") or e.get("Application") or "") for e in client.events[:6]]
    assert apps[1:5] == [
        ("CHANNEL_EXECUTE", "parley_agent=true"),
        ("CHANNEL_EXECUTE_COMPLETE", "parley_agent=true"),
        ("CHANNEL_EXECUTE", "STREAM_BUFFER_SIZE=40"),
        ("CHANNEL_EXECUTE_COMPLETE", "STREAM_BUFFER_SIZE=40"),
    ]
    assert client.named("CHANNEL_PARK")[0].variable("parley_agent") == "true"
    assert call.variables["STREAM_BUFFER_SIZE"] == "40"
    await asyncio.sleep(0.3)
    assert {len(f) for f in app.frames()} == {1280}  # 40 ms of 16 kHz per message


async def test_api_started_stream_reads_the_channel_variables(fs: FakeFreeSwitch, app: WsApp) -> None:
    client = await Esl.connect(fs.esl_port)
    call = await fs.place_call(ws_url=None)
    await client.api(f'uuid_setvar {call.uuid} STREAM_EXTRA_HEADERS {{"Authorization":"Bearer abc"}}')
    assert await client.api(f"uuid_audio_stream {call.uuid} start {app.url}/x mono 16k") == "+OK Success\n"
    await client.wait_event(lambda e: e.subclass == "mod_audio_stream::connect")
    assert app.request(0).headers["Authorization"] == "Bearer abc"


async def test_caller_audio_is_paced_and_resampled(fs: FakeFreeSwitch, app: WsApp) -> None:
    speech = tone(0.5, 8000, freq=200, amp=10000)
    call = await fs.place_call(ws_url=app.url, caller_audio=speech, caller_rate=8000, stream_rate=16000)
    await asyncio.sleep(1.0)
    frames = app.frames()
    assert 25 <= len(frames) <= 75 and {len(f) for f in frames} == {640}
    pcm = np.frombuffer(b"".join(frames), dtype="<i2")
    assert np.abs(pcm[:8000]).max() > 5000 and not pcm[9000:].any()  # speech, then live silence
    await call.hangup()


async def test_stereo_sends_only_while_something_plays(fs: FakeFreeSwitch, app: WsApp, tmp_path: Path) -> None:
    client = await Esl.connect(fs.esl_port)
    call = await fs.place_call(ws_url=app.url, mix="stereo", stream_rate=8000)
    await asyncio.sleep(0.3)
    assert not app.frames()  # a parked idle channel writes nothing: the READ+WRITE bug yields no frame
    await client.sendmsg_playback(call.uuid, write_wav(tmp_path / "t.wav", tone(0.4)), "t")
    await client.wait_event(lambda e: e.name == "PLAYBACK_STOP")
    await asyncio.sleep(0.1)
    frames = app.frames()
    assert frames and {len(f) for f in frames} == {640}
    stereo = np.frombuffer(b"".join(frames), dtype="<i2").reshape(-1, 2)
    assert np.abs(stereo[:, 1]).max() > 4000 and not stereo[:, 0].any()


async def test_many_concurrent_calls(fs: FakeFreeSwitch, app: WsApp) -> None:
    calls = await asyncio.gather(*(fs.place_call(ws_url=app.url) for _ in range(40)))
    await asyncio.sleep(0.6)
    assert len(app.conns) == 40 and all(len(app.frames(i)) >= 10 for i in range(40))
    await asyncio.gather(*(c.hangup() for c in calls))
    assert all(c.hungup for c in calls)


# --------------------------------------------------------------------------------------------------
# Sans-I/O pieces
# --------------------------------------------------------------------------------------------------


def test_url_encode_matches_switch_url_encode() -> None:
    assert url_encode("+OK Success\n") == "%2BOK%20Success%0A"
    assert url_encode("ws://127.0.0.1:8765/stream") == "ws%3A//127.0.0.1%3A8765/stream"
    assert url_encode("50%25 a,b~é") == "50%25%20a,b~%C3%A9"  # %XX kept, non-ASCII encoded
    assert url_encode("%zz") == "%25zz"


def test_client_command_parser_handles_bodies_and_splits() -> None:
    data = b"api status\n\nsendmsg u1\ncall-command: execute\ncontent-length: 5\n\nhello\r\n\r\nexit\n\n"
    parser = ClientCommandParser()
    out = [cmd for i in range(len(data)) for cmd in parser.feed(data[i : i + 1])]
    assert [c.line for c in out] == ["api status", "sendmsg u1", "exit"]
    assert out[1].header("Call-Command") == "execute" and out[1].body == b"hello"


def test_subscription_rules() -> None:
    sub = Subscription()
    sub.subscribe(["CHANNEL_PARK", "CUSTOM", "mod_audio_stream::play"])
    park = FsEvent("CHANNEL_PARK", [("Event-Name", "CHANNEL_PARK"), ("Unique-ID", "a")])
    play = FsEvent("CUSTOM", [("Event-Subclass", "mod_audio_stream::play"), ("Unique-ID", "a")])
    other = FsEvent("CUSTOM", [("Event-Subclass", "mod_audio_stream::json"), ("Unique-ID", "b")])
    assert sub.wants(park) and sub.wants(play) and not sub.wants(other)
    sub.add_filter("unique-id", "A")  # header names and plain values compare case-insensitively
    assert sub.wants(park)
    sub.add_filter("Unique-ID", "-a")
    assert not sub.wants(park)


def test_split_file_arg() -> None:
    assert split_file_arg("{a=1,b=two}/x.wav") == ({"a": "1", "b": "two"}, "/x.wav")
    assert split_file_arg("/x.wav") == ({}, "/x.wav")


async def test_a_hung_up_call_can_be_forgotten_a_live_one_cannot(fs: FakeFreeSwitch) -> None:
    call = await fs.place_call(ws_url=None)
    with pytest.raises(ValueError, match="still up"):
        fs.forget(call.uuid)
    assert call.uuid in fs.calls
    await call.hangup()
    fs.forget(call.uuid)
    assert call.uuid not in fs.calls
    fs.forget(call.uuid)  # already gone: nothing to do
