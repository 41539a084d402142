"""ElevenLabs multi-context TTS against the loopback fake on real sockets: streaming, socket reuse, barge-in,
every error plane (handshake, in-band, close, drop, malformed), inactivity timeouts, and fallback."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncGenerator, AsyncIterator, Iterator

import numpy as np
import pytest

from parley.errors import ConfigError
from parley.providers.base import AudioChunk, TTSEvent, TTSProvider, Usage, UsageSink
from parley.providers.elevenlabs_tts import (
    ElevenLabsTTS,
    ServerAudio,
    ServerError,
    ServerFinal,
    error_for_close,
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
from testkit.fakes.elevenlabs import FakeElevenLabs, Fault

KEY = "xi-test-key-0123456789"
SENTENCE = "Hello there, how can I help?"


@pytest.fixture
async def fake() -> AsyncIterator[FakeElevenLabs]:
    async with FakeElevenLabs(api_key=KEY) as server:
        yield server


def tts_for(fake: FakeElevenLabs, **kwargs: object) -> ElevenLabsTTS:
    return ElevenLabsTTS(KEY, "voice-1", url_base=fake.url_base, **kwargs)  # type: ignore[arg-type]


async def collect(gen: AsyncGenerator[TTSEvent, None]) -> list[TTSEvent]:
    async with contextlib.aclosing(gen):
        return [ev async for ev in gen]


def pcm(events: list[TTSEvent]) -> bytes:
    return b"".join(e.samples.astype("<i2").tobytes() for e in events if isinstance(e, AudioChunk))


async def fail(gen: AsyncGenerator[TTSEvent, None]) -> tuple[list[TTSEvent], BaseException]:
    events: list[TTSEvent] = []
    try:
        async with contextlib.aclosing(gen):
            async for ev in gen:
                events.append(ev)
    except ProviderError as exc:
        return events, exc
    raise AssertionError("no error raised")


# ---- happy paths ------------------------------------------------------------------------------------------


async def test_streams_a_sentence_as_the_documented_messages(fake: FakeElevenLabs) -> None:
    async with tts_for(fake, voice_settings={"stability": 0.5, "similarity_boost": 0.8, "speed": 1.0}) as tts:
        assert isinstance(tts, TTSProvider)
        events = await collect(tts.synthesize(SENTENCE))
    chunks = [e for e in events if isinstance(e, AudioChunk)]
    assert len(chunks) > 3 and all(c.sample_rate == 16000 for c in chunks)
    assert pcm(events) == fake.expected_pcm(SENTENCE)
    assert chunks[0].text == SENTENCE and chunks[1].text is None
    assert events[-1] == Usage("elevenlabs", "eleven_flash_v2_5", "tts", characters=len(SENTENCE))
    conn = fake.connections[0]
    assert conn.headers["xi-api-key"] == KEY and conn.voice_id == "voice-1"
    assert conn.query == {"model_id": "eleven_flash_v2_5", "output_format": "pcm_16000", "inactivity_timeout": "180"}
    (ctx_id,) = conn.contexts
    assert conn.received == [
        {
            "text": " ",
            "context_id": ctx_id,
            "voice_settings": {"stability": 0.5, "similarity_boost": 0.8, "speed": 1.0},
        },
        {"text": SENTENCE + " ", "context_id": ctx_id, "flush": True},
        {"context_id": ctx_id, "close_context": True},
    ]
    assert conn.contexts[ctx_id].final_sent and fake.violations == []
    assert tts.last_alignment is not None and tts.last_alignment["chars"] == list(SENTENCE)


async def test_samples_straddling_messages_are_reassembled(fake: FakeElevenLabs) -> None:
    fake.odd_chunks = True
    async with tts_for(fake, sample_rate=24000, model="eleven_turbo_v2_5", inactivity_timeout_s=60) as tts:
        events = await collect(tts.synthesize(SENTENCE))
    assert pcm(events) == fake.expected_pcm(SENTENCE, 24000)
    assert fake.connections[0].query == {
        "model_id": "eleven_turbo_v2_5",
        "output_format": "pcm_24000",
        "inactivity_timeout": "60",
    }
    assert events[-1] == Usage("elevenlabs", "eleven_turbo_v2_5", "tts", characters=len(SENTENCE))


async def test_two_sentences_share_one_prewarmed_socket(fake: FakeElevenLabs) -> None:
    async with tts_for(fake) as tts:
        await tts.prewarm()
        assert fake.handshakes == 1
        first = await collect(tts.synthesize("First sentence."))
        second = await collect(tts.synthesize("And a second one."))
    assert pcm(first) == fake.expected_pcm("First sentence.")
    assert pcm(second) == fake.expected_pcm("And a second one.")
    assert fake.handshakes == 1 and tts.connections_opened == 1
    assert len(fake.connections[0].contexts) == 2
    assert all(c.final_sent for c in fake.connections[0].contexts.values())


async def test_concurrent_requests_use_separate_sockets(fake: FakeElevenLabs) -> None:
    fake.chunk_delay_s = 0.005
    async with tts_for(fake) as tts:
        a, b = await asyncio.gather(collect(tts.synthesize("Call one speaks.")), collect(tts.synthesize("Call two.")))
    assert pcm(a) == fake.expected_pcm("Call one speaks.") and pcm(b) == fake.expected_pcm("Call two.")
    assert fake.handshakes == 2


async def test_blank_text_costs_nothing(fake: FakeElevenLabs) -> None:
    events = await collect(tts_for(fake).synthesize("   "))
    assert events == [Usage("elevenlabs", "eleven_flash_v2_5", "tts", characters=0)] and fake.handshakes == 0


# ---- barge-in ---------------------------------------------------------------------------------------------


async def test_barge_in_stops_audio_reports_cancelled_usage_and_drops_late_frames(fake: FakeElevenLabs) -> None:
    fake.chunk_delay_s = 0.01
    cancelled: list[Usage] = []
    async with tts_for(fake) as tts:
        call = await tts.open(cancelled.append)  # the call's sink: a barge-in's usage goes here
        gen = call.synthesize(SENTENCE)
        async with contextlib.aclosing(gen):
            async for ev in gen:
                assert isinstance(ev, AudioChunk)
                break  # the caller started talking
        assert cancelled == [Usage("elevenlabs", "eleven_flash_v2_5", "tts", characters=len(SENTENCE), cancelled=True)]
        conn = fake.connections[0]
        (first_ctx,) = conn.contexts
        # the next sentence reuses the socket and gets only its own audio, not the rest of the first
        events = await collect(call.synthesize("Sorry, go ahead."))
        await call.close()
    assert {"context_id": first_ctx, "close_context": True} in conn.received  # closed after its first audio
    assert pcm(events) == fake.expected_pcm("Sorry, go ahead.")
    assert fake.handshakes == 1 and len(cancelled) == 1
    assert conn.contexts[first_ctx].audio_messages > 1  # late frames of the first context were sent, and dropped


async def test_barge_in_by_task_cancellation(fake: FakeElevenLabs) -> None:
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
    await tts.aclose()


async def test_repeated_barge_ins_retire_a_socket_before_the_context_limit(fake: FakeElevenLabs) -> None:
    fake.chunk_delay_s = 0.05  # contexts are still streaming when the next one starts
    async with tts_for(fake) as tts:
        for n in range(6):
            gen = tts.synthesize(f"Reply number {n} is long enough to stream.")
            async with contextlib.aclosing(gen):
                async for _ in gen:
                    break
    assert all(not c.errors_sent for c in fake.connections)  # never hit max_active_conversations
    assert fake.handshakes >= 2


# ---- errors -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "cls", "retryable"),
    [
        (401, ProviderAuthError, False),
        (403, ProviderAuthError, False),
        (429, ProviderError, True),
        (500, ProviderError, True),
    ],
)
async def test_handshake_refusals(fake: FakeElevenLabs, status: int, cls: type[ProviderError], retryable: bool) -> None:
    fake.handshake_status = status
    events, exc = await fail(tts_for(fake).synthesize(SENTENCE))
    assert type(exc) is cls and exc.status == status and exc.retryable is retryable
    assert events == [Usage("elevenlabs", "eleven_flash_v2_5", "tts", failed=True)]


async def test_wrong_key_is_an_auth_error_and_the_key_never_leaks(
    fake: FakeElevenLabs, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    _, exc = await fail(ElevenLabsTTS("xi-wrong-key-999", "voice-1", url_base=fake.url_base).synthesize("Hi."))
    assert isinstance(exc, ProviderAuthError) and exc.code == "invalid_api_key" and not exc.retryable
    assert fake.refused == [401]
    fake.faults.append(Fault("error", error="invalid_api_key", message=f"Invalid API key {KEY}"))
    _, exc = await fail(tts_for(fake).synthesize("Hi."))
    assert isinstance(exc, ProviderAuthError) and KEY not in str(exc)
    assert all(KEY not in r.getMessage() and "xi-wrong-key-999" not in r.getMessage() for r in caplog.records)


async def test_connect_refused_and_connect_timeout() -> None:
    with socket_closed_port() as port:
        _, exc = await fail(ElevenLabsTTS(KEY, "v", url_base=f"ws://127.0.0.1:{port}").synthesize("Hi."))
    assert isinstance(exc, ProviderConnectionError) and exc.retryable
    server = await asyncio.start_server(lambda r, w: asyncio.sleep(1), "127.0.0.1", 0)  # accepts, never answers
    async with server:
        port = server.sockets[0].getsockname()[1]
        tts = ElevenLabsTTS(KEY, "v", url_base=f"ws://127.0.0.1:{port}", connect_timeout_s=0.1)
        _, exc = await fail(tts.synthesize("Hi."))
    assert isinstance(exc, ProviderTimeout) and exc.retryable


@contextlib.contextmanager
def socket_closed_port() -> Iterator[int]:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port: int = s.getsockname()[1]
    s.close()
    yield port


async def test_drop_mid_stream_is_a_retryable_connection_error(fake: FakeElevenLabs) -> None:
    fake.faults.append(Fault("drop", after_chunks=2))
    events, exc = await fail(tts_for(fake).synthesize(SENTENCE))
    assert isinstance(exc, ProviderConnectionError) and exc.retryable
    assert len([e for e in events if isinstance(e, AudioChunk)]) == 2
    assert events[-1] == Usage("elevenlabs", "eleven_flash_v2_5", "tts", characters=len(SENTENCE), failed=True)


@pytest.mark.parametrize("kind", ["malformed_json", "bad_audio"])
async def test_malformed_messages_are_protocol_errors(fake: FakeElevenLabs, kind: str) -> None:
    fake.faults.append(Fault(kind, after_chunks=1))  # type: ignore[arg-type]
    _, exc = await fail(tts_for(fake).synthesize(SENTENCE))
    assert isinstance(exc, ProviderProtocolError) and not exc.retryable


@pytest.mark.parametrize(
    ("error", "cls", "retryable"),
    [
        ("quota_exceeded", ProviderError, False),
        ("too_many_concurrent_requests", ProviderError, True),
        ("detected_unusual_activity", ProviderError, False),
        ("invalid_api_key", ProviderAuthError, False),
    ],
)
async def test_in_band_errors(fake: FakeElevenLabs, error: str, cls: type[ProviderError], retryable: bool) -> None:
    fake.faults.append(Fault("error", error=error, message="nope"))
    _, exc = await fail(tts_for(fake).synthesize(SENTENCE))
    assert type(exc) is cls and exc.code == error and exc.retryable is retryable
    await fake.connections[0].closed.wait()
    assert fake.connections[0].close_code == 1008


async def test_bare_close_frames(fake: FakeElevenLabs) -> None:
    fake.faults.append(Fault("close", after_chunks=1, close_code=1011, close_reason="internal error"))
    _, exc = await fail(tts_for(fake).synthesize(SENTENCE))
    assert isinstance(exc, ProviderConnectionError) and "1011" in str(exc)


async def test_slow_first_audio_and_stalls_time_out(fake: FakeElevenLabs) -> None:
    fake.first_audio_delay_s = 0.3
    _, exc = await fail(tts_for(fake, read_timeout_s=0.05).synthesize(SENTENCE))
    assert isinstance(exc, ProviderTimeout) and exc.retryable
    events = await collect(tts_for(fake, read_timeout_s=2.0).synthesize(SENTENCE))  # slow but in time
    assert pcm(events) == fake.expected_pcm(SENTENCE)
    fake.first_audio_delay_s = 0.0
    fake.faults.append(Fault("stall", after_chunks=1))
    events, exc = await fail(tts_for(fake, read_timeout_s=0.1).synthesize(SENTENCE))
    assert isinstance(exc, ProviderTimeout) and len(events) == 2  # one chunk, then failed usage


# ---- idle sockets -----------------------------------------------------------------------------------------


async def test_inactivity_timeout_closes_the_idle_socket_and_the_next_request_reconnects() -> None:
    async with FakeElevenLabs(api_key=KEY, time_scale=0.0005) as fake:  # 180 s -> 90 ms
        async with tts_for(fake) as tts:
            await tts.prewarm()
            await fake.connections[0].closed.wait()
            assert fake.connections[0].close_code == 1008
            assert fake.connections[0].errors_sent[0]["error"] == "input_timeout_exceeded"
            events = await collect(tts.synthesize(SENTENCE))
        assert pcm(events) == fake.expected_pcm(SENTENCE) and fake.handshakes == 2


async def test_a_pooled_socket_survives_a_30_s_pause() -> None:
    """The server ends a socket idle for 20 s by default; the client asks for the 180 s maximum."""
    async with FakeElevenLabs(api_key=KEY, time_scale=0.005) as fake:  # 20 s -> 100 ms, 180 s -> 900 ms
        async with tts_for(fake) as tts:
            await collect(tts.synthesize("Warm up."))
            await asyncio.sleep(30 * fake.time_scale)  # the caller talks for 30 s
            events = await collect(tts.synthesize(SENTENCE))
        assert pcm(events) == fake.expected_pcm(SENTENCE)
        assert fake.handshakes == 1 and fake.connections[0].errors_sent == []


async def test_a_pooled_socket_dying_before_audio_is_replaced_once(fake: FakeElevenLabs) -> None:
    async with tts_for(fake) as tts:
        await collect(tts.synthesize("Warm up."))
        fake.faults.append(Fault("drop", after_chunks=0))  # the server drops the reused socket
        events = await collect(tts.synthesize(SENTENCE))
        assert pcm(events) == fake.expected_pcm(SENTENCE) and fake.handshakes == 2
        fake.faults.extend([Fault("drop"), Fault("drop")])  # the fresh socket fails too: give up
        _, exc = await fail(tts.synthesize(SENTENCE))
    assert isinstance(exc, ProviderConnectionError) and fake.handshakes == 3


async def test_in_band_idle_timeout_on_a_pooled_socket_is_retried(fake: FakeElevenLabs) -> None:
    async with tts_for(fake) as tts:
        await collect(tts.synthesize("Warm up."))
        fake.faults.append(Fault("error", error="input_timeout_exceeded", message="Have not received..."))
        events = await collect(tts.synthesize(SENTENCE))
    assert pcm(events) == fake.expected_pcm(SENTENCE) and fake.handshakes == 2


# ---- fallback ---------------------------------------------------------------------------------------------


class LocalTTS:
    name = "local"
    sample_rate = 16000

    def __init__(self) -> None:
        self.calls = 0

    async def synthesize(self, text: str, *, on_cancel: UsageSink | None = None) -> AsyncGenerator[TTSEvent, None]:
        self.calls += 1
        yield AudioChunk(np.full(160, 7, np.int16), 16000, text)
        yield Usage("local", "v", "tts", characters=len(text))


async def test_fallback_switches_to_the_local_voice_on_a_401(fake: FakeElevenLabs) -> None:
    fake.handshake_status = 401
    local = LocalTTS()
    switches: list[tuple[str, str, str]] = []
    chain = FallbackTTS([tts_for(fake), local], on_switch=lambda c, a, b, e: switches.append((c, a, b)))
    events = await collect(chain.synthesize(SENTENCE))
    chunks = [e for e in events if isinstance(e, AudioChunk)]
    assert len(chunks) == 1 and int(chunks[0].samples[0]) == 7 and local.calls == 1
    assert chain.stats.switches == 1 and chain.stats.failures == {"elevenlabs": 1}
    assert switches == [("tts", "elevenlabs", "local")]
    assert Usage("elevenlabs", "eleven_flash_v2_5", "tts", failed=True) in events


# ---- sans-I/O pieces ----------------------------------------------------------------------------------------


def test_parse_message_variants() -> None:
    assert parse_message('{"audio": "AQI=", "contextId": "c", "x": 1}') == ServerAudio("c", b"\x01\x02")
    assert parse_message('{"audio": "AQI=", "context_id": "c", "isFinal": true}') == ServerAudio(
        "c", b"\x01\x02", final=True
    )
    assert parse_message('{"isFinal": true, "context_id": "c"}') == ServerFinal("c")
    assert parse_message('{"audio": null, "isFinal": null}') is None
    assert parse_message('{"message": "m", "error": "quota_exceeded", "code": 1008}') == ServerError(
        None, "quota_exceeded", "m"
    )
    for bad in ("[1]", "nope", b"\x00", '{"audio": 5}', '{"audio": "***"}'):
        with pytest.raises(ProviderProtocolError):
            parse_message(bad)


def test_close_codes() -> None:
    assert isinstance(error_for_close(None, ""), ProviderConnectionError)
    assert isinstance(error_for_close(1008, "Invalid API key"), ProviderAuthError)
    assert not error_for_close(1008, "policy").retryable
    assert error_for_close(1008, "input timeout").code == "input_timeout_exceeded"


def test_constructor_refuses_unsupported_formats() -> None:
    for rate in (11025, 32000, 48000):  # ElevenLabs has no pcm_32000 / pcm_48000 output
        with pytest.raises(ConfigError):
            ElevenLabsTTS(KEY, "v", sample_rate=rate)
    with pytest.raises(ConfigError):
        ElevenLabsTTS(KEY, "v", model="eleven_v3")
    assert KEY not in repr(ElevenLabsTTS(KEY, "v"))


# ---- the close race (pipecat#4681) ------------------------------------------------------------------------


async def test_the_fake_refuses_pcm_formats_elevenlabs_does_not_offer(fake: FakeElevenLabs) -> None:
    tts = tts_for(fake)
    tts.sample_rate = 48000  # past the constructor's check: what the server says
    _, exc = await fail(tts.synthesize(SENTENCE))
    assert fake.refused == [400] and isinstance(exc, ProviderError) and not exc.retryable


async def test_close_race_never_yields_a_silent_sentence() -> None:
    """A close_context sent with the flush races the server's generation; the client closes only after audio."""
    sentences = [f"Sentence number {i} of the reply. " for i in range(40)]
    async with FakeElevenLabs(api_key=KEY, close_race_rate=0.25, first_audio_delay_s=0.002) as fake:
        async with tts_for(fake, read_timeout_s=2.0) as tts:
            for text in sentences:
                events = await collect(tts.synthesize(text))
                assert pcm(events) == fake.expected_pcm(text), f"silent or partial: {text!r}"
    assert fake.races == []  # the client never closes a context before its first audio


async def test_is_final_without_audio_is_a_retryable_failure(fake: FakeElevenLabs) -> None:
    """An isFinal with no audio (the race's silent outcome) is a retryable failure, not a silent success."""
    fake.close_race_rate, fake.close_race_outcomes = 1.0, ("skip",)
    tts = tts_for(fake, read_timeout_s=2.0)
    tts.close_grace_s = 0.0  # close at once, as before the fix, to make the server lose the race
    fake.first_audio_delay_s = 0.05
    _, exc = await fail(tts.synthesize(SENTENCE))
    assert isinstance(exc, ProviderError) and exc.retryable and exc.code == "empty_audio"
    await tts.aclose()
