"""The mod_audio_stream WebSocket server, over real sockets on 127.0.0.1 with the real websockets client.

The client mimics mod_audio_stream (libwsc): no compression, an ``Origin`` header, optionally
``Authorization: Bearer <token>`` from STREAM_EXTRA_HEADERS, an optional first TEXT frame of metadata,
then binary s16le frames. No test asserts on timing: waits only bound hangs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid as uuidlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from parley.config import AudioStreamSettings
from parley.errors import AudioStreamProtocolError, CallGone
from parley.freeswitch import audio_stream
from parley.freeswitch.audio_stream import (
    AudioFrame,
    AudioStream,
    AudioStreamServer,
    FrameQueue,
    StreamFormat,
    parse_rate,
)
from parley.freeswitch.stream_token import stream_token

UUID = "3f2b8a1e-6c1d-4e0f-9a57-1b2c3d4e5f60"
OTHER_UUID = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
SECRET = "test-secret-not-real"
FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "freeswitch"
WAIT = 10.0  # generous bound on every wait, only to avoid hangs


@pytest.fixture(autouse=True)
def patient_announce(monkeypatch: pytest.MonkeyPatch) -> None:
    """on_stream waits for the first message (not 0.5 s), so a stalled test machine cannot reorder them.
    Tests about the 0.5 s announcement of a silent connection set it back with `prompt_announce`."""
    monkeypatch.setattr(audio_stream, "ANNOUNCE_AFTER_S", 60.0)


def prompt_announce(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(audio_stream, "ANNOUNCE_AFTER_S", 0.5)


def recorded_frames(n: int) -> list[bytes]:
    """The first n 640-byte frames FreeSWITCH really sent (mono 16 kHz s16le, 44-byte WAV header)."""
    wav = FIXTURES / "call-playback-plain.ws-rx.wav"
    if not wav.exists():
        pytest.skip(f"recorded fixture missing: {wav}")
    data = wav.read_bytes()[44:]
    frames = [data[i * 640 : (i + 1) * 640] for i in range(n)]
    assert all(len(f) == 640 for f in frames)
    return frames


def numbered_frame(i: int, size: int = 640) -> bytes:
    return np.full(size // 2, i, dtype="<i2").tobytes()


async def until(cond: Callable[[], bool]) -> None:
    """Poll a counter that has no event to wait on (stats, the server's stream table)."""
    async with asyncio.timeout(WAIT):
        while not cond():
            await asyncio.sleep(0.01)


class Harness:
    def __init__(self, server: AudioStreamServer, settings: AudioStreamSettings) -> None:
        self.server, self.settings = server, settings
        self.announced: asyncio.Queue[AudioStream] = asyncio.Queue()
        self.hook: Callable[[AudioStream], None] | None = None

    def on_stream(self, stream: AudioStream) -> None:
        self.announced.put_nowait(stream)
        if self.hook is not None:
            self.hook(stream)

    async def next_stream(self) -> AudioStream:
        return await asyncio.wait_for(self.announced.get(), WAIT)

    def url(self, suffix: str = "") -> str:
        return f"ws://127.0.0.1:{self.server.port}{self.settings.path}{suffix}"

    def connect(self, suffix: str = "", *, token: str | None = None, **kwargs: Any) -> connect:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else None
        kwargs.setdefault("compression", None)
        return connect(
            self.url(suffix),
            origin=f"http://127.0.0.1:{self.server.port}",  # type: ignore[arg-type]
            additional_headers=headers,
            open_timeout=WAIT,
            ping_interval=None,
            **kwargs,
        )


@asynccontextmanager
async def running(clock: Callable[[], float] | None = None, **overrides: Any) -> AsyncIterator[Harness]:
    settings = AudioStreamSettings(listen_host="127.0.0.1", listen_port=0, **overrides)
    harness: Harness
    server = AudioStreamServer(settings, lambda s: harness.on_stream(s), clock=clock or time.monotonic)
    harness = Harness(server, settings)
    async with server:
        yield harness


async def get_frames(stream: AudioStream, n: int) -> list[AudioFrame]:
    out = []
    for _ in range(n):
        frame = await asyncio.wait_for(stream.frames.get(), WAIT)
        assert frame is not None
        out.append(frame)
    return out


async def closed_code(client: ClientConnection) -> tuple[int | None, str | None]:
    await asyncio.wait_for(client.wait_closed(), WAIT)
    return client.close_code, client.close_reason


# --------------------------------------------------------------------------------------------------
# pure parts


def test_stream_format_frame_bytes() -> None:
    assert StreamFormat(16000, 1).frame_bytes == 640
    assert StreamFormat(8000, 1).frame_bytes == 320
    assert StreamFormat(8000, 2).frame_bytes == 640
    assert StreamFormat(48000, 2).frame_bytes == 3840


@pytest.mark.parametrize(("value", "rate"), [(8000, 8000), ("16000", 16000), ("8k", 8000), ("16K", 16000)])
def test_parse_rate_accepts(value: object, rate: int) -> None:
    assert parse_rate(value) == rate


@pytest.mark.parametrize("value", [11025, "44100", "0", "", "8 k", "-8000", True, 8000.0, None, "9k"])
def test_parse_rate_refuses(value: object) -> None:
    with pytest.raises(ValueError):
        parse_rate(value)


async def test_frame_queue_drops_oldest_and_drains_after_close() -> None:
    q = FrameQueue(3)
    for i in range(5):
        q.put(AudioFrame(b"\0\0", float(i), i))
    assert len(q) == 3 and q.dropped == 2
    assert [f.seq for f in (q.get_nowait(), await q.get())] == [2, 3]  # type: ignore[union-attr]
    q.close()
    q.put(AudioFrame(b"\0\0", 9.0, 9))  # ignored once closed
    assert q.closed and [f.seq async for f in q] == [4]
    assert await q.get() is None and q.get_nowait() is None


async def test_frame_queue_wakes_a_waiting_reader() -> None:
    q = FrameQueue(2)
    reader = asyncio.create_task(q.get())
    await asyncio.sleep(0)
    q.put(AudioFrame(b"\1\0", 0.0, 0))
    assert (await asyncio.wait_for(reader, WAIT)) == AudioFrame(b"\1\0", 0.0, 0)
    waiter = asyncio.create_task(q.get())
    await asyncio.sleep(0)
    q.close()
    assert await asyncio.wait_for(waiter, WAIT) is None
    with pytest.raises(ValueError):
        FrameQueue(0)


# --------------------------------------------------------------------------------------------------
# handshake


async def test_uuid_in_path_frames_arrive_in_order_byte_identical() -> None:
    frames = recorded_frames(100)
    async with running(queue_frames=200) as h, h.connect(f"/{UUID}?rate=16k&mix=mono") as client:
        for f in frames:
            await client.send(f)
        stream = await h.next_stream()
        assert stream.call_uuid == UUID and stream.metadata is None
        assert stream.path == f"/call/{UUID}" and stream.query == {"rate": "16k", "mix": "mono"}
        assert stream.format == StreamFormat(16000, 1) and stream.remote.startswith("127.0.0.1:")
        assert stream.headers["origin"] == f"http://127.0.0.1:{h.server.port}"
        assert h.server.streams == {stream.conn_id: stream}
        got = await get_frames(stream, 100)
        assert [f.seq for f in got] == list(range(100))
        assert [f.pcm for f in got] == frames
        assert all(f.agent_pcm is None for f in got)
        assert [f.t for f in got] == sorted(f.t for f in got)
        assert (stream.stats.frames, stream.stats.bytes, stream.stats.dropped) == (100, 64000, 0)
        # compression was offered by no one here; a deflate offer is declined too (see below)
        assert client.response is not None and "Sec-WebSocket-Extensions" not in client.response.headers


async def test_permessage_deflate_offer_is_declined() -> None:
    async with running() as h, h.connect(f"/{UUID}", compression="deflate") as client:
        assert client.response is not None
        assert "Sec-WebSocket-Extensions" not in client.response.headers
        await client.send(b"\0\0" * 320)
        stream = await h.next_stream()
        assert (await get_frames(stream, 1))[0].pcm == b"\0\0" * 320


async def test_recorded_upgrade_request_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    """Replay the exact upgrade request FreeSWITCH sent (streamaudio scenario), then reset the TCP."""
    prompt_announce(monkeypatch)
    record = FIXTURES / "streamaudio.jsonl"
    if not record.exists():
        pytest.skip(f"recorded fixture missing: {record}")
    with record.open() as fh:
        opened = next(r for r in map(json.loads, fh) if r.get("kind") == "open")
    request: str = opened["data"]
    assert request.startswith("GET /stream HTTP/1.1\r\n")
    async with running(path="/stream") as h:
        request = request.replace("127.0.0.1:8765", f"127.0.0.1:{h.server.port}")
        reader, writer = await asyncio.open_connection("127.0.0.1", h.server.port)
        writer.write(request.encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
        assert head.startswith(b"HTTP/1.1 101 ")
        assert b"sec-websocket-extensions" not in head.lower()
        stream = await h.next_stream()  # nothing sent: announced after 0.5 s, unidentified
        assert stream.call_uuid is None and stream.path == "/stream"
        writer.transport.abort()  # abrupt TCP reset
        await asyncio.wait_for(stream.closed.wait(), WAIT)
        assert stream.close_code == 1006 and stream.frames.closed
        await until(lambda: not h.server.streams)
        async with h.connect(f"/{UUID}") as client:  # the server survived
            await client.send(b"\0\0")
            assert (await h.next_stream()).call_uuid == UUID


@pytest.mark.parametrize(
    ("suffix", "status", "reason"),
    [
        ("x/" + UUID, 404, "not_found"),  # /callx/<uuid>
        (f"/{UUID}/extra", 404, "not_found"),
        ("/not-a-uuid", 400, "bad_uuid"),
        (f"/{UUID}x", 400, "bad_uuid"),
        (f"/{UUID}?rate=11025", 400, "bad_format"),
        (f"/{UUID}?mix=quad", 400, "bad_format"),
    ],
)
async def test_bad_upgrade_paths_are_refused(suffix: str, status: int, reason: str) -> None:
    async with running() as h:
        with pytest.raises(InvalidStatus) as info:
            async with h.connect(suffix):
                pass
        assert info.value.response.status_code == status
        assert h.server.stats.rejected == {reason: 1} and h.server.stats.connections == 0
        assert h.announced.empty()


async def test_wrong_prefix_is_404() -> None:
    async with running() as h:
        with pytest.raises(InvalidStatus) as info:
            async with connect(f"ws://127.0.0.1:{h.server.port}/nope/{UUID}", open_timeout=WAIT):
                pass
        assert info.value.response.status_code == 404


async def test_token_checked_at_handshake(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    good = stream_token(SECRET, UUID)
    async with running(token_secret=SECRET) as h:
        async with h.connect(f"/{UUID}", token=good) as client:
            await client.send(b"\0\0" * 320)
            stream = await h.next_stream()
            assert stream.call_uuid == UUID
            assert stream.headers["authorization"] == "<redacted>"
        for token in (stream_token(SECRET, OTHER_UUID), "nonsense", None):
            with pytest.raises(InvalidStatus) as info:
                async with h.connect(f"/{UUID}", token=token):
                    pass
            assert info.value.response.status_code == 401
        assert h.server.stats.rejected == {"bad_token": 3}
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("parley")]
    assert ours and not [m for m in ours if good in m or stream_token(SECRET, OTHER_UUID) in m or "nonsense" in m]


# --------------------------------------------------------------------------------------------------
# first message, identification


async def test_metadata_identifies_call_and_sets_rate() -> None:
    async with running() as h:
        seen: list[tuple[str | None, StreamFormat]] = []
        h.hook = lambda s: seen.append((s.call_uuid, s.format))
        async with h.connect() as client:
            await client.send(json.dumps({"uuid": UUID.upper(), "rate": "8k", "from": "fixture"}))
            frames = [numbered_frame(i, 320) for i in range(3)]
            for f in frames:
                await client.send(f)
            stream = await h.next_stream()
            assert seen == [(UUID, StreamFormat(8000, 1))]  # identified before on_stream ran
            assert stream.metadata == {"uuid": UUID.upper(), "rate": "8k", "from": "fixture"}
            assert [f.pcm for f in await get_frames(stream, 3)] == frames
            assert stream.stats.text_frames == 1 and stream.stats.garbage_text == 0


async def test_recorded_metadata_without_uuid_then_bind() -> None:
    """The streamaudio scenario's metadata has a non-UUID callId: the stream stays anonymous."""
    metadata = '{"callId":"fixture-streamaudio-001","from":"fixture","scenario":"streamaudio"}'
    async with running(path="/stream", unidentified_timeout_s=0.5) as h:
        h.hook = lambda s: s.bind(UUID)  # the bridge correlates it at once
        async with h.connect() as client:
            await client.send(metadata)
            stream = await h.next_stream()
            assert stream.metadata == json.loads(metadata) and stream.call_uuid == UUID
            await asyncio.sleep(1.0)  # past the unidentified timeout: a bound stream is left alone
            await client.send(b"\1\0" * 320)
            assert (await get_frames(stream, 1))[0].seq == 0
            assert not stream.closed.is_set() and h.server.stats.unidentified_closed == 0


async def test_anonymous_stream_bind() -> None:
    async with running() as h, h.connect() as client:
        await client.send(b"\0\0" * 320)
        stream = await h.next_stream()
        assert stream.call_uuid is None and stream.metadata is None
        with pytest.raises(ValueError):
            stream.bind("not-a-uuid")
        stream.bind(UUID.upper())
        assert stream.call_uuid == UUID
        stream.bind(UUID)  # same call again: no-op
        with pytest.raises(ValueError):
            stream.bind(OTHER_UUID)
        await client.send(b"\1\0" * 320)
        assert [f.seq for f in await get_frames(stream, 2)] == [0, 1]


async def test_unbound_stream_is_closed_after_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    prompt_announce(monkeypatch)
    async with running(unidentified_timeout_s=0.8) as h, h.connect() as client:
        stream = await h.next_stream()  # nothing sent: announced after 0.5 s anyway
        assert stream.call_uuid is None
        assert await closed_code(client) == (1008, "unidentified stream")
        await asyncio.wait_for(stream.closed.wait(), WAIT)
        assert (stream.close_code, stream.close_reason) == (1008, "unidentified stream")
        assert h.server.stats.unidentified_closed == 1
        with pytest.raises(CallGone):
            stream.bind(UUID)
        await until(lambda: not h.server.streams)


async def test_bad_token_in_metadata_closes_1008() -> None:
    async with running(token_secret=SECRET) as h:
        async with h.connect(token=stream_token(SECRET, OTHER_UUID)) as client:
            await client.send(json.dumps({"call_uuid": UUID}))
            assert await closed_code(client) == (1008, "bad token")
        assert h.server.stats.bad_token_closed == 1 and h.announced.empty()
        async with h.connect(token=stream_token(SECRET, UUID)) as client:
            await client.send(json.dumps({"call_uuid": UUID}))
            assert (await h.next_stream()).call_uuid == UUID


async def test_bind_with_bad_token_raises_and_closes() -> None:
    async with running(token_secret=SECRET) as h, h.connect(token="wrong") as client:
        await client.send(b"\0\0" * 320)
        stream = await h.next_stream()
        with pytest.raises(AudioStreamProtocolError):
            stream.bind(UUID)
        assert stream.call_uuid is None
        assert await closed_code(client) == (1008, "bad token")
        await asyncio.wait_for(stream.closed.wait(), WAIT)
        assert h.server.stats.bad_token_closed == 1 and h.server.stats.unidentified_closed == 0


async def test_metadata_uuid_conflicting_with_path_closes_1008() -> None:
    async with running() as h, h.connect(f"/{UUID}") as client:
        await client.send(json.dumps({"uuid": OTHER_UUID}))
        assert await closed_code(client) == (1008, "call uuid mismatch")


async def test_metadata_with_bad_format_closes_1008() -> None:
    async with running() as h, h.connect(f"/{UUID}") as client:
        await client.send(json.dumps({"rate": 44100}))
        assert await closed_code(client) == (1008, "bad metadata")
        assert h.server.stats.bad_metadata_closed == 1


# --------------------------------------------------------------------------------------------------
# frames


async def test_stereo_left_is_caller_right_is_agent() -> None:
    left = [np.arange(160, dtype="<i2") + 1000 * i for i in range(4)]
    right = [-(np.arange(160, dtype="<i2") + 1000 * i) - 1 for i in range(4)]
    async with running() as h, h.connect(f"/{UUID}?mix=stereo&rate=8000") as client:
        for lf, rf in zip(left, right, strict=True):
            await client.send(np.stack([lf, rf], axis=1).astype("<i2").tobytes())
        await client.send(b"\0" * 6)  # whole 16-bit samples but not whole stereo pairs
        stream = await h.next_stream()
        assert stream.format == StreamFormat(8000, 2) and stream.format.frame_bytes == 640
        got = await get_frames(stream, 4)
        assert [f.pcm for f in got] == [lf.tobytes() for lf in left]
        assert [f.agent_pcm for f in got] == [rf.tobytes() for rf in right]
        await until(lambda: stream.stats.garbage_binary == 1)


async def test_metadata_can_switch_to_stereo() -> None:
    async with running() as h, h.connect(f"/{UUID}") as client:
        await client.send(json.dumps({"mix": "stereo", "sample_rate": 16000}))
        await client.send(np.array([1, 2, 3, 4], dtype="<i2").tobytes())
        stream = await h.next_stream()
        assert stream.format == StreamFormat(16000, 2)
        (frame,) = await get_frames(stream, 1)
        assert frame.pcm == np.array([1, 3], dtype="<i2").tobytes()
        assert frame.agent_pcm == np.array([2, 4], dtype="<i2").tobytes()


async def test_garbage_is_counted_and_the_connection_stays_open() -> None:
    texts: list[object] = []
    async with running() as h:
        h.hook = lambda s: s.on_text(texts.append)
        async with h.connect(f"/{UUID}") as client:
            await client.send("hello, not json")  # first frame: not metadata, garbage
            stream = await h.next_stream()
            for junk in (b"\1\2\3", b"", "[1, 2]", "{broken"):
                await client.send(junk)
            await client.send('{"type": "note"}')
            await client.send(b"\5\0" * 320)
            (frame,) = await get_frames(stream, 1)
            assert frame.seq == 0 and frame.pcm == b"\5\0" * 320
            st = stream.stats
            assert (st.garbage_binary, st.garbage_text, st.text_frames, st.frames) == (2, 3, 4, 1)
            assert stream.metadata is None and texts == [{"type": "note"}]
            assert h.server.stats.garbage_binary == 2 and h.server.stats.garbage_text == 3
            assert not stream.closed.is_set()


async def test_garbage_flood_closes_only_that_connection() -> None:
    frozen = 100.0  # a stopped clock: the whole flood falls in one window, however slow the machine
    async with running(clock=lambda: frozen) as h:
        async with h.connect(f"/{UUID}") as good:
            await good.send(b"\0\0" * 320)
            good_stream = await h.next_stream()
            async with h.connect(f"/{OTHER_UUID}") as bad:
                try:
                    for _ in range(150):
                        await bad.send(b"\1\2\3")
                except ConnectionClosed:
                    pass
                assert await closed_code(bad) == (1008, "garbage flood")
            bad_stream = await h.next_stream()
            assert bad_stream.call_uuid == OTHER_UUID and bad_stream.stats.garbage_binary == 101
            assert h.server.stats.flood_closed == 1
            for i in range(1, 4):
                await good.send(numbered_frame(i))
            got = await get_frames(good_stream, 4)
            assert [f.seq for f in got] == [0, 1, 2, 3] and not good_stream.closed.is_set()


async def test_queue_overflow_drops_the_oldest() -> None:
    async with running(queue_frames=10) as h, h.connect(f"/{UUID}") as client:
        for i in range(25):
            await client.send(numbered_frame(i))
        stream = await h.next_stream()
        await until(lambda: stream.stats.frames == 25)
        assert len(stream.frames) == 10
        assert stream.frames.dropped == stream.stats.dropped == h.server.stats.dropped == 15
        got = [stream.frames.get_nowait() for _ in range(10)]
        assert [f.seq for f in got if f] == list(range(15, 25))
        assert [f.pcm for f in got if f] == [numbered_frame(i) for i in range(15, 25)]
        assert stream.frames.get_nowait() is None


async def test_oversized_message_is_refused() -> None:
    async with running() as h, h.connect(f"/{UUID}") as client:
        await client.send(b"\0\0" * 320)
        stream = await h.next_stream()
        await client.send(b"\0" * (512 * 1024))
        code, _ = await closed_code(client)
        assert code == 1009
        await asyncio.wait_for(stream.closed.wait(), WAIT)


# --------------------------------------------------------------------------------------------------
# control frames, closing


async def test_client_ping_gets_pong() -> None:
    async with running() as h, h.connect(f"/{UUID}") as client:
        pong = await client.ping(b"ping")  # what libwsc sends every STREAM_HEART_BEAT seconds
        await asyncio.wait_for(pong, WAIT)


async def test_send_text_and_server_close() -> None:
    async with running() as h, h.connect(f"/{UUID}") as client:
        await client.send(b"\0\0" * 320)
        stream = await h.next_stream()
        message = json.dumps({"type": "streamAudio", "data": {"audioDataType": "raw", "sampleRate": 8000}})
        await stream.send_text(message)
        assert await asyncio.wait_for(client.recv(), WAIT) == message
        await asyncio.wait_for(stream.close(1000, "app closing"), WAIT)
        assert stream.closed.is_set() and (stream.close_code, stream.close_reason) == (1000, "app closing")
        assert await closed_code(client) == (1000, "app closing")
        assert [f.seq async for f in stream.frames] == [0]
        assert not h.server.streams
        with pytest.raises(CallGone):
            await stream.send_text("{}")
        await stream.close()  # idempotent


async def test_client_close_ends_the_stream() -> None:
    async with running() as h:
        async with h.connect(f"/{UUID}") as client:
            for i in range(3):
                await client.send(numbered_frame(i))
            stream = await h.next_stream()
            await client.close(1000, "Normal closure")  # what FreeSWITCH sends on hangup
        await asyncio.wait_for(stream.closed.wait(), WAIT)
        assert (stream.close_code, stream.close_reason) == (1000, "Normal closure")
        assert [f.pcm async for f in stream.frames] == [numbered_frame(i) for i in range(3)]
        await until(lambda: not h.server.streams)


async def test_on_stream_failure_closes_1011_and_server_survives() -> None:
    def explode(stream: AudioStream) -> None:
        raise RuntimeError("bridge bug")

    async with running() as h:
        h.hook = explode
        async with h.connect(f"/{UUID}") as client:
            await client.send(b"\0\0" * 320)
            assert await closed_code(client) == (1011, "internal error")
        assert h.server.stats.callback_errors == 1
        h.hook = None
        async with h.connect(f"/{UUID}") as client:
            await client.send(b"\0\0" * 320)
            assert (await h.next_stream()).call_uuid == UUID


async def test_server_close_closes_open_streams() -> None:
    async with running() as h:
        client = await h.connect(f"/{UUID}")
        await client.send(b"\0\0" * 320)
        stream = await h.next_stream()
        await asyncio.wait_for(h.server.close(), WAIT)
        assert stream.closed.is_set() and stream.close_code == 1001
        assert await closed_code(client) == (1001, "")


async def test_a_drained_worker_stops_listening_and_the_other_worker_takes_new_streams() -> None:
    """Two workers on one port (SO_REUSEPORT): the drained one closes its listener, so every new stream goes
    to the other (none refused), while its own open stream goes on."""
    from parley.sim.echo_call import free_port

    port = free_port()
    settings = AudioStreamSettings(listen_host="127.0.0.1", listen_port=port)
    got: dict[str, list[AudioStream]] = {"a": [], "b": []}
    a = AudioStreamServer(settings, got["a"].append, reuse_port=True)
    b = AudioStreamServer(settings, got["b"].append, reuse_port=True)
    hb = Harness(b, settings)  # connects to the shared port: the kernel picks the worker
    async with a, b:
        open_on_a = None
        for i in range(40):  # until the kernel has handed one to a
            client = await hb.connect(f"/{uuidlib.UUID(int=i)}").__aenter__()
            await client.send(numbered_frame(0))  # announced on its first message
            await until(lambda n=i + 1: len(got["a"]) + len(got["b"]) == n)
            if got["a"] and open_on_a is None:
                open_on_a = client
                break
            await client.close()
        assert open_on_a is not None, "the kernel never picked worker a"
        a.drain(lambda _uuid: False)
        a.stop_listening()
        before_b = len(got["b"])
        for i in range(20):
            async with hb.connect(f"/{uuidlib.UUID(int=100 + i)}") as client:
                await client.send(numbered_frame(0))
                await until(lambda n=before_b + i + 1: len(got["b"]) == n)
        assert len(got["a"]) == 1 and a.stats.rejected.get("draining", 0) == 0  # none refused: b took them all
        await open_on_a.send(numbered_frame(1))  # the drained worker's open stream goes on
        assert [f.seq for f in await get_frames(got["a"][0], 2)] == [0, 1]
        assert a.port == port
        await open_on_a.close()
