"""Cartesia Sonic TTS against the loopback fake on real sockets: streaming, socket reuse, barge-in with
cancel, every error plane (handshake, in-band, close, drop, malformed), idle sockets, and fallback."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable

import numpy as np
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from parley.errors import ConfigError
from parley.providers.base import AudioChunk, TTSEvent, TTSProvider, Usage, UsageSink
from parley.providers.cartesia_tts import (
    API_VERSION,
    CartesiaTTS,
    ServerChunk,
    ServerDone,
    ServerError,
    ServerTimestamps,
    error_for_message,
    parse_message,
)
from parley.providers.errors import (
    ProviderAuthError,
    ProviderConnectionError,
    ProviderError,
    ProviderProtocolError,
    ProviderTimeout,
)
from parley.providers.fallback import FallbackTTS
from testkit.fakes.cartesia import FakeCartesia, Fault

KEY = "sk_car_test_0123456789"
VOICE = "a0e99841-438c-4a64-b679-ae501e7d6091"
SENTENCE = "Thanks for calling, how can I help?"


@pytest.fixture
async def fake() -> AsyncIterator[FakeCartesia]:
    async with FakeCartesia(api_key=KEY) as server:
        yield server


def tts_for(fake: FakeCartesia, **kwargs: object) -> CartesiaTTS:
    return CartesiaTTS(KEY, VOICE, url=fake.url, **kwargs)  # type: ignore[arg-type]


async def collect(gen: AsyncGenerator[TTSEvent, None]) -> list[TTSEvent]:
    async with contextlib.aclosing(gen):
        return [ev async for ev in gen]


def pcm(events: list[TTSEvent]) -> bytes:
    return b"".join(e.samples.astype("<i2").tobytes() for e in events if isinstance(e, AudioChunk))


async def fail(gen: AsyncGenerator[TTSEvent, None]) -> tuple[list[TTSEvent], ProviderError]:
    events: list[TTSEvent] = []
    try:
        async with contextlib.aclosing(gen):
            async for ev in gen:
                events.append(ev)
    except ProviderError as exc:
        return events, exc
    raise AssertionError("no error raised")


async def eventually(check: Callable[[], bool], timeout_s: float = 2.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not check():
            await asyncio.sleep(0.005)


def usage(characters: int = 0, **flags: bool) -> Usage:
    return Usage("cartesia", "sonic-3.5", "tts", characters=characters, **flags)


# ---- happy paths ------------------------------------------------------------------------------------------


async def test_streams_a_sentence_as_one_generation_request(fake: FakeCartesia) -> None:
    async with tts_for(fake) as tts:
        assert isinstance(tts, TTSProvider)
        events = await collect(tts.synthesize(SENTENCE))
    chunks = [e for e in events if isinstance(e, AudioChunk)]
    assert len(chunks) > 3 and all(c.sample_rate == 16000 for c in chunks)
    assert chunks[0].text == SENTENCE and chunks[1].text is None
    assert pcm(events) == fake.expected_pcm(SENTENCE)
    assert events[-1] == usage(len(SENTENCE))
    conn = fake.connections[0]
    assert conn.auth == "bearer" and conn.version == API_VERSION == "2026-03-01"
    assert "api_key" not in conn.query  # the key never travels in the URL
    (ctx_id,) = conn.contexts
    assert conn.received == [
        {
            "context_id": ctx_id,
            "model_id": "sonic-3.5",
            "transcript": SENTENCE,
            "voice": {"mode": "id", "id": VOICE},
            "output_format": {"container": "raw", "encoding": "pcm_s16le", "sample_rate": 16000},
            "continue": False,
            "max_buffer_delay_ms": 0,
            "language": "en",
        }
    ]
    assert conn.contexts[ctx_id].done_sent and not conn.errors_sent


async def test_a_whole_sentence_is_not_held_in_the_servers_text_buffer(fake: FakeCartesia) -> None:
    """Without max_buffer_delay_ms the server buffers a short text up to 3000 ms before its first audio."""
    async with tts_for(fake) as tts:
        await collect(tts.synthesize("Yes."))
    (ctx,) = fake.connections[0].contexts.values()
    assert ctx.buffer_wait_ms == 0.0


async def test_odd_chunks_8k_and_word_timestamps(fake: FakeCartesia) -> None:
    fake.odd_chunks = True
    async with tts_for(fake, sample_rate=8000, add_timestamps=True) as tts:
        events = await collect(tts.synthesize(SENTENCE))
    assert pcm(events) == fake.expected_pcm(SENTENCE, 8000)
    assert tts.last_word_timestamps is not None and tts.last_word_timestamps["words"] == SENTENCE.split()


async def test_two_sentences_share_one_prewarmed_socket_with_fresh_contexts(fake: FakeCartesia) -> None:
    async with tts_for(fake) as tts:
        await tts.prewarm()
        first = await collect(tts.synthesize("First sentence."))
        second = await collect(tts.synthesize("Then a second."))
    assert pcm(first) == fake.expected_pcm("First sentence.")
    assert pcm(second) == fake.expected_pcm("Then a second.")
    assert fake.handshakes == 1 and tts.connections_opened == 1
    assert len(fake.connections[0].contexts) == 2


async def test_concurrent_requests_use_separate_sockets(fake: FakeCartesia) -> None:
    fake.chunk_delay_s = 0.005
    async with tts_for(fake) as tts:
        a, b = await asyncio.gather(collect(tts.synthesize("Call one.")), collect(tts.synthesize("Call two!")))
    assert pcm(a) == fake.expected_pcm("Call one.") and pcm(b) == fake.expected_pcm("Call two!")
    assert fake.handshakes == 2


# ---- barge-in ---------------------------------------------------------------------------------------------


async def test_barge_in_sends_cancel_reports_cancelled_usage_and_drops_late_chunks(fake: FakeCartesia) -> None:
    fake.chunk_delay_s = 0.01
    cancelled: list[Usage] = []
    async with tts_for(fake) as tts:
        call = await tts.open(cancelled.append)  # the call's sink: a barge-in's usage goes here
        assert call.sample_rate == tts.sample_rate
        gen = call.synthesize(SENTENCE)
        async with contextlib.aclosing(gen):
            async for ev in gen:
                assert isinstance(ev, AudioChunk)
                break  # the caller started talking
        assert cancelled == [usage(len(SENTENCE), cancelled=True)]
        conn = fake.connections[0]
        (first,) = conn.contexts
        await eventually(lambda: conn.received[-1] == {"context_id": first, "cancel": True})
        events = await collect(call.synthesize("Sorry, go ahead."))
        await call.close()
    assert cancelled == [usage(len(SENTENCE), cancelled=True)]  # the finished request's usage was yielded
    assert pcm(events) == fake.expected_pcm("Sorry, go ahead.")  # none of the first context's late chunks
    assert conn.contexts[first].cancelled and not conn.contexts[first].done_sent
    assert conn.contexts[first].chunks_sent > 1 and fake.handshakes == 1


async def test_barge_in_by_task_cancellation(fake: FakeCartesia) -> None:
    fake.chunk_delay_s = 0.05
    cancelled: list[Usage] = []
    tts = tts_for(fake)
    got_audio = asyncio.Event()

    async def speak() -> None:  # one request outside a call: its own on_cancel sink
        async with contextlib.aclosing(tts.synthesize(SENTENCE, on_cancel=cancelled.append)) as gen:
            async for _ in gen:
                got_audio.set()

    task = asyncio.create_task(speak())
    await got_audio.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(cancelled) == 1 and cancelled[0].cancelled
    conn = fake.connections[0]
    await eventually(lambda: {"context_id": next(iter(conn.contexts)), "cancel": True} in conn.received)
    await tts.aclose()


# ---- errors -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "cls", "retryable"),
    [(401, ProviderAuthError, False), (429, ProviderError, True), (500, ProviderError, True)],
)
async def test_handshake_refusals(fake: FakeCartesia, status: int, cls: type[ProviderError], retryable: bool) -> None:
    fake.handshake_status = status
    events, exc = await fail(tts_for(fake).synthesize(SENTENCE))
    assert type(exc) is cls and exc.status == status and exc.retryable is retryable
    assert events == [usage(failed=True)]


async def test_wrong_key_is_an_auth_error_and_the_key_never_leaks(
    fake: FakeCartesia, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    _, exc = await fail(CartesiaTTS("sk_car_wrong_999", VOICE, url=fake.url).synthesize("Hi."))
    assert isinstance(exc, ProviderAuthError) and exc.code == "unauthorized" and not exc.retryable
    fake.faults.append(Fault("error", status=500, message=f"key {KEY} exploded"))
    _, exc = await fail(tts_for(fake).synthesize("Hi."))
    assert KEY not in str(exc)
    assert all(KEY not in r.getMessage() and "sk_car_wrong_999" not in r.getMessage() for r in caplog.records)


async def test_drop_mid_stream_is_a_retryable_connection_error(fake: FakeCartesia) -> None:
    fake.faults.append(Fault("drop", after_chunks=2))
    events, exc = await fail(tts_for(fake).synthesize(SENTENCE))
    assert isinstance(exc, ProviderConnectionError) and exc.retryable
    assert len([e for e in events if isinstance(e, AudioChunk)]) == 2
    assert events[-1] == usage(len(SENTENCE), failed=True)


@pytest.mark.parametrize("kind", ["malformed_json", "bad_audio"])
async def test_malformed_messages_are_protocol_errors(fake: FakeCartesia, kind: str) -> None:
    fake.faults.append(Fault(kind, after_chunks=1))  # type: ignore[arg-type]
    _, exc = await fail(tts_for(fake).synthesize(SENTENCE))
    assert isinstance(exc, ProviderProtocolError) and not exc.retryable


@pytest.mark.parametrize(
    ("status", "code", "cls", "retryable"),
    [
        (400, "invalid_request", ProviderError, False),
        (402, "insufficient_credits", ProviderError, False),
        (429, "concurrency_limited", ProviderError, True),
        (500, "internal_error", ProviderError, True),
        (401, "unauthorized", ProviderAuthError, False),
    ],
)
async def test_in_band_errors(
    fake: FakeCartesia, status: int, code: str, cls: type[ProviderError], retryable: bool
) -> None:
    fake.faults.append(Fault("error", status=status, error_code=code, message="nope"))
    _, exc = await fail(tts_for(fake).synthesize(SENTENCE))
    assert type(exc) is cls and exc.status == status and exc.code == code and exc.retryable is retryable


async def test_the_fake_speaks_the_documented_protocol_to_a_raw_client(fake: FakeCartesia) -> None:
    """Continuations, manual flush, field mismatch, bad JSON and legacy auth, straight over websockets."""
    fake.handshake_status = None
    base = {
        "model_id": "sonic-3.5",
        "voice": {"mode": "id", "id": VOICE},
        "output_format": {"container": "raw", "encoding": "pcm_s16le", "sample_rate": 8000},
    }
    headers = {"X-API-Key": KEY}
    async with connect(fake.url + "?cartesia_version=2024-11-13", additional_headers=headers) as ws:
        await ws.send(json.dumps({**base, "context_id": "t1", "transcript": "Thanks for coming, ", "continue": True}))
        await ws.send(json.dumps({**base, "context_id": "t1", "transcript": "", "continue": True, "flush": True}))
        await ws.send(json.dumps({**base, "context_id": "t1", "transcript": "it was great.", "continue": False}))
        await ws.send(json.dumps({**base, "model_id": "sonic-3", "context_id": "t1", "transcript": "x"}))
        await ws.send("{not json")
        seen: list[dict[str, object]] = []
        while len([m for m in seen if m["type"] in ("done", "error")]) < 3:
            seen.append(json.loads(await ws.recv()))
    kinds = [m["type"] for m in seen]
    assert kinds.count("flush_done") == 1 and kinds.count("done") == 1 and kinds.count("error") == 2
    assert kinds.index("flush_done") < kinds.index("done")
    flush_ids = {m["flush_id"] for m in seen if m["type"] == "chunk"}
    assert flush_ids == {1, 2}  # chunks before and after the manual flush
    conn = fake.connections[0]
    assert conn.auth == "x-api-key" and conn.version == "2024-11-13"
    assert conn.contexts["t1"].generated == ["Thanks for coming, ", "it was great."]
    with pytest.raises(InvalidStatus) as refused:
        async with connect(fake.url, additional_headers={"Authorization": f"Bearer {KEY}"}):
            pass
    assert refused.value.response.status_code == 400  # Cartesia-Version is required


async def test_retired_models_and_formats_are_refused_up_front() -> None:
    with pytest.raises(ConfigError):
        CartesiaTTS(KEY, VOICE, model="sonic-english")
    with pytest.raises(ConfigError):
        CartesiaTTS(KEY, VOICE, sample_rate=32000)
    assert KEY not in repr(CartesiaTTS(KEY, VOICE))


async def test_bare_close_and_stalls(fake: FakeCartesia) -> None:
    fake.faults.append(Fault("close", after_chunks=1, close_code=1011, close_reason="internal error"))
    _, exc = await fail(tts_for(fake).synthesize(SENTENCE))
    assert isinstance(exc, ProviderConnectionError) and "1011" in str(exc)
    fake.faults.append(Fault("stall", after_chunks=1))
    events, exc = await fail(tts_for(fake, read_timeout_s=0.1).synthesize(SENTENCE))
    assert isinstance(exc, ProviderTimeout) and exc.retryable and len(events) == 2


async def test_slow_first_audio(fake: FakeCartesia) -> None:
    fake.first_audio_delay_s = 0.3
    _, exc = await fail(tts_for(fake, read_timeout_s=0.05).synthesize(SENTENCE))
    assert isinstance(exc, ProviderTimeout)
    assert pcm(await collect(tts_for(fake, read_timeout_s=2.0).synthesize(SENTENCE))) == fake.expected_pcm(SENTENCE)


# ---- idle sockets -----------------------------------------------------------------------------------------


async def test_idle_timeout_closes_the_socket_and_the_next_request_reconnects() -> None:
    async with FakeCartesia(api_key=KEY, idle_timeout_s=0.05) as fake:
        async with tts_for(fake) as tts:
            await tts.prewarm()
            await fake.connections[0].closed.wait()
            assert fake.connections[0].close_code == 1000
            events = await collect(tts.synthesize(SENTENCE))
        assert pcm(events) == fake.expected_pcm(SENTENCE) and fake.handshakes == 2


async def test_a_pooled_socket_dying_before_audio_is_replaced_once(fake: FakeCartesia) -> None:
    async with tts_for(fake) as tts:
        await collect(tts.synthesize("Warm up."))
        fake.faults.append(Fault("drop"))
        assert pcm(await collect(tts.synthesize(SENTENCE))) == fake.expected_pcm(SENTENCE)
        assert fake.handshakes == 2
        fake.faults.extend([Fault("drop"), Fault("drop")])
        _, exc = await fail(tts.synthesize(SENTENCE))
    assert isinstance(exc, ProviderConnectionError) and fake.handshakes == 3


# ---- fallback ---------------------------------------------------------------------------------------------


class LocalTTS:
    name = "local"
    sample_rate = 16000

    async def synthesize(self, text: str, *, on_cancel: UsageSink | None = None) -> AsyncGenerator[TTSEvent, None]:
        yield AudioChunk(np.full(160, 3, np.int16), 16000, text)
        yield Usage("local", "v", "tts", characters=len(text))


async def test_fallback_switches_to_the_local_voice_when_cartesia_is_busy(fake: FakeCartesia) -> None:
    fake.handshake_status = 429
    chain = FallbackTTS([tts_for(fake), LocalTTS()])
    events = await collect(chain.synthesize(SENTENCE))
    assert [int(e.samples[0]) for e in events if isinstance(e, AudioChunk)] == [3]
    assert chain.stats.switches == 1 and chain.stats.failures == {"cartesia": 1}


# ---- sans-I/O pieces ----------------------------------------------------------------------------------------


def test_parse_message_variants() -> None:
    assert parse_message('{"type": "chunk", "context_id": "c", "data": "AQI=", "done": false}') == ServerChunk(
        "c", b"\x01\x02"
    )
    assert parse_message('{"type": "done", "context_id": "c", "done": true}') == ServerDone("c")
    words = {"words": ["Hi"], "start": [0.0], "end": [0.2]}
    assert parse_message(
        f'{{"type": "timestamps", "context_id": "c", "word_timestamps": {words}}}'.replace("'", '"')
    ) == (ServerTimestamps("c", words))
    assert parse_message('{"type": "flush_done", "context_id": "c", "flush_id": 1}') is None
    assert parse_message('{"type": "something_new"}') is None
    assert parse_message('{"type": "error", "status_code": 400, "error_code": "x", "title": "T", "message": "M"}') == (
        ServerError(None, 400, "x", "T: M")
    )
    assert parse_message('{"type": "error", "context_id": "c", "error": "Invalid model: nope", "done": true}') == (
        ServerError("c", None, None, "Invalid model: nope")
    )
    for bad in ("[1]", "nope", b"\x00", '{"type": "chunk"}', '{"type": "chunk", "data": "***"}'):
        with pytest.raises(ProviderProtocolError):
            parse_message(bad)
    assert not error_for_message(None, None, "legacy").retryable
