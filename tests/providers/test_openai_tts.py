"""OpenAI TTS client against the loopback fake (real HTTP/1.1 on 127.0.0.1): streamed PCM across odd chunk
boundaries, the request, keep-alive reuse, HTTP errors, wrong content, stalls, drops, cancellation with
usage, and a fallback chain switching to a local voice."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator

import httpx
import numpy as np
import pytest

from parley.providers.base import AudioChunk, TTSEvent, TTSProvider, Usage, UsageSink
from parley.providers.errors import (
    ProviderAuthError,
    ProviderConnectionError,
    ProviderError,
    ProviderProtocolError,
    ProviderTimeout,
)
from parley.providers.fallback import FallbackTTS
from parley.providers.openai_tts import OpenAITTS, PcmAssembler
from testkit.fakes.openai_tts import FakeOpenAITTS, TTSReply

KEY = "sk-tts-test-0123456789abcdef"
TEXT = "Your table for two is booked for seven."


def tts(fake: FakeOpenAITTS, **kwargs: object) -> OpenAITTS:
    return OpenAITTS(KEY, base_url=fake.base_url, **kwargs)  # type: ignore[arg-type]


async def collect(stream: AsyncIterator[TTSEvent]) -> list[TTSEvent]:
    return [event async for event in stream]


async def collect_until_error(stream: AsyncIterator[TTSEvent]) -> tuple[list[TTSEvent], ProviderError]:
    events: list[TTSEvent] = []
    with pytest.raises(ProviderError) as info:
        async for event in stream:
            events.append(event)
    return events, info.value


def pcm_of(events: list[TTSEvent]) -> bytes:
    return b"".join(e.samples.astype("<i2").tobytes() for e in events if isinstance(e, AudioChunk))


def usage(characters: int, **flags: bool) -> Usage:
    return Usage("openai", "gpt-4o-mini-tts", "tts", characters=characters, **flags)


async def test_streams_pcm_across_odd_chunk_boundaries_and_sends_the_request() -> None:
    async with FakeOpenAITTS(KEY, [TTSReply(chunk_bytes=4801)]) as fake:
        async with tts(fake, voice="coral", instructions="Warm and brief.") as provider:
            assert isinstance(provider, TTSProvider) and provider.sample_rate == 24000
            events = await collect(provider.synthesize(TEXT))
    chunks = [e for e in events if isinstance(e, AudioChunk)]
    assert len(chunks) > 3 and all(c.sample_rate == 24000 and c.samples.dtype == np.int16 for c in chunks)
    assert pcm_of(events) == fake.audio_for(TEXT)  # every sample intact, none split
    assert [c.text for c in chunks][:2] == [TEXT, None]
    tokens = fake.usage_for(TEXT)  # gpt-4o-mini-tts bills tokens, reported only by the SSE form
    assert events[-1] == Usage("openai", "gpt-4o-mini-tts", "tts", characters=len(TEXT),
                               input_tokens=tokens["input_tokens"], output_tokens=tokens["output_tokens"])
    [request] = fake.requests
    assert (request.method, request.path) == ("POST", "/v1/audio/speech")
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert fake.body() == {
        "model": "gpt-4o-mini-tts",
        "input": TEXT,
        "voice": "coral",
        "response_format": "pcm",
        "stream_format": "sse",
        "instructions": "Warm and brief.",
    }


async def test_tts_1_bills_characters_and_streams_raw_audio() -> None:
    async with FakeOpenAITTS(KEY, [TTSReply(chunk_bytes=4801)]) as fake, tts(fake, model="tts-1") as provider:
        events = await collect(provider.synthesize(TEXT))
    assert pcm_of(events) == fake.audio_for(TEXT)
    assert events[-1] == Usage("openai", "tts-1", "tts", characters=len(TEXT))  # no tokens: billed per character
    assert "stream_format" not in fake.body()  # the fake refuses sse for tts-1, as the API does


async def test_the_fake_refuses_sse_for_tts_1() -> None:
    async with FakeOpenAITTS(KEY) as fake, tts(fake, model="tts-1", stream_format="sse") as provider:
        events, error = await collect_until_error(provider.synthesize(TEXT))
    assert error.status == 400 and "stream_format" in str(error)
    assert events == [Usage("openai", "tts-1", "tts", characters=0, failed=True)]


async def test_audio_arrives_before_the_body_ends() -> None:
    loop = asyncio.get_running_loop()
    async with FakeOpenAITTS(KEY, [TTSReply(chunk_bytes=4800, chunk_delay_s=0.05)]) as fake, tts(fake) as provider:
        started = loop.time()
        stream = provider.synthesize(TEXT)  # 37 440 bytes: 8 chunks, 50 ms apart
        first = await anext(stream)
        first_at = loop.time() - started
        rest = await collect(stream)
        total = loop.time() - started
    assert isinstance(first, AudioChunk) and isinstance(rest[-1], Usage)
    assert first_at < 0.2 < 0.35 < total


async def test_one_kept_alive_connection_for_consecutive_sentences() -> None:
    async with FakeOpenAITTS(KEY) as fake, tts(fake) as provider:
        for sentence in ("Hello.", "How can I help?", "Goodbye."):
            await collect(provider.synthesize(sentence))
    assert [r.connection for r in fake.requests] == [1, 1, 1]


def test_pcm_assembler_keeps_the_odd_byte() -> None:
    pcm = PcmAssembler()
    assert pcm.feed(b"\x01") == b"" and pcm.leftover == 1
    assert pcm.feed(b"\x02\x03") == b"\x01\x02" and pcm.leftover == 1
    assert pcm.feed(b"\x04\x05\x06") == b"\x03\x04\x05\x06" and pcm.leftover == 0


@pytest.mark.parametrize(
    ("reply", "error_type", "retryable", "status"),
    [
        (TTSReply(status=403, error_code="unsupported_country"), ProviderAuthError, False, 403),
        (TTSReply(status=429, error_code="rate_limit_exceeded"), ProviderError, True, 429),
        (TTSReply(status=429, error_code="insufficient_quota"), ProviderError, False, 429),
        (TTSReply(status=500, error_code="server_error"), ProviderError, True, 500),
        (TTSReply(status=503), ProviderError, True, 503),
    ],
)
async def test_http_errors_are_mapped(
    reply: TTSReply, error_type: type[ProviderError], retryable: bool, status: int
) -> None:
    async with FakeOpenAITTS(KEY, [reply]) as fake, tts(fake) as provider:
        events, error = await collect_until_error(provider.synthesize(TEXT))
    assert type(error) is error_type
    assert (error.retryable, error.status, error.code) == (retryable, status, reply.error_code)
    assert events == [usage(0, failed=True)]  # refused: nothing billed


async def test_wrong_key_is_an_auth_error_and_the_echoed_key_is_redacted(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with FakeOpenAITTS("sk-the-real-one-0000") as fake, tts(fake) as provider:
        _, error = await collect_until_error(provider.synthesize(TEXT))
        assert KEY not in repr(provider)
    assert type(error) is ProviderAuthError and error.status == 401 and error.code == "invalid_api_key"
    assert "Incorrect API key provided: ***" in str(error) and KEY not in str(error)
    assert all(KEY not in r.getMessage() for r in caplog.records)


async def test_the_fake_checks_the_body_like_the_api() -> None:
    async with FakeOpenAITTS(KEY) as fake, tts(fake, model="tts-1", instructions="Cheerful") as provider:
        _, error = await collect_until_error(provider.synthesize(TEXT))
    assert error.status == 400 and "instructions are not supported" in str(error)
    async with FakeOpenAITTS(KEY) as fake, tts(fake, voice="robot") as provider:
        _, error = await collect_until_error(provider.synthesize(TEXT))
    assert error.status == 400 and "Invalid voice" in str(error) and not error.retryable


async def test_a_200_that_is_not_audio_is_a_protocol_error() -> None:
    async with FakeOpenAITTS(KEY, [TTSReply(content_type="application/json")]) as fake, tts(fake) as provider:
        events, error = await collect_until_error(provider.synthesize(TEXT))
    assert type(error) is ProviderProtocolError and "expected text/event-stream" in str(error)
    assert events == [usage(len(TEXT), failed=True)]
    async with FakeOpenAITTS(KEY, [TTSReply(content_type="text/html")]) as fake, tts(fake, model="tts-1") as raw:
        _, error = await collect_until_error(raw.synthesize(TEXT))
    assert type(error) is ProviderProtocolError and "expected raw audio" in str(error)


async def test_half_a_sample_at_the_end_is_dropped(caplog: pytest.LogCaptureFixture) -> None:
    async with FakeOpenAITTS(KEY, [TTSReply(odd_tail=True)]) as fake, tts(fake) as provider:
        events = await collect(provider.synthesize("Hi."))
    assert pcm_of(events) == fake.audio_for("Hi.")
    assert "half a sample" in caplog.text


async def test_stall_times_out() -> None:
    async with FakeOpenAITTS(KEY, [TTSReply(stop_after_bytes=4800, then="hold")]) as fake:
        async with tts(fake, timeout_s=0.2) as provider:
            events, error = await collect_until_error(provider.synthesize(TEXT))
            await asyncio.wait_for(fake.disconnected.wait(), 2)
    assert type(error) is ProviderTimeout and error.retryable
    assert pcm_of(events) == fake.audio_for(TEXT)[:4800]
    assert events[-1] == usage(len(TEXT), failed=True)


async def test_drop_mid_body_is_a_connection_error() -> None:
    async with FakeOpenAITTS(KEY, [TTSReply(stop_after_bytes=9600, then="drop")]) as fake, tts(fake) as provider:
        events, error = await collect_until_error(provider.synthesize(TEXT))
    assert type(error) is ProviderConnectionError and error.retryable
    assert any(isinstance(e, AudioChunk) for e in events)


async def test_connection_refused() -> None:
    async with FakeOpenAITTS(KEY) as fake:
        url = fake.base_url
    provider = OpenAITTS(KEY, base_url=url)
    _, error = await collect_until_error(provider.synthesize(TEXT))
    await provider.aclose()
    assert type(error) is ProviderConnectionError


async def test_barge_in_closes_the_response_and_reports_cancelled_usage() -> None:
    cancelled: list[Usage] = []
    async with FakeOpenAITTS(KEY, [TTSReply(stop_after_bytes=4800, then="hold")]) as fake:
        async with tts(fake) as provider:
            call = await provider.open(cancelled.append)  # the call's sink: a barge-in's usage goes here
            assert call.sample_rate == 24000
            stream = call.synthesize(TEXT)
            assert isinstance(await anext(stream), AudioChunk)
            await stream.aclose()
            await asyncio.wait_for(fake.disconnected.wait(), 2)
            await call.close()
    assert cancelled == [usage(len(TEXT), cancelled=True)]


async def test_cancelling_the_consumer_task_closes_the_response() -> None:
    cancelled: list[Usage] = []
    got_audio = asyncio.Event()

    async def play(provider: OpenAITTS) -> None:  # one request outside a call: its own on_cancel sink
        async for _ in provider.synthesize(TEXT, on_cancel=cancelled.append):
            got_audio.set()

    async with FakeOpenAITTS(KEY, [TTSReply(stop_after_bytes=4800, then="hold")]) as fake:
        async with tts(fake) as provider:
            task = asyncio.create_task(play(provider))
            await asyncio.wait_for(got_audio.wait(), 2)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await asyncio.wait_for(fake.disconnected.wait(), 2)
    assert cancelled == [usage(len(TEXT), cancelled=True)]


async def test_injected_client_is_used_and_left_open() -> None:
    async with FakeOpenAITTS(KEY) as fake, httpx.AsyncClient() as client:
        provider = OpenAITTS(KEY, base_url=fake.base_url + "/", http_client=client)
        await collect(provider.synthesize("Hi."))
        await provider.aclose()
        assert not client.is_closed


class LocalVoice:
    name = "local"
    sample_rate = 24000

    async def synthesize(self, text: str, *, on_cancel: UsageSink | None = None) -> AsyncGenerator[TTSEvent, None]:
        yield AudioChunk(np.zeros(240, np.int16), 24000, text)
        yield Usage("local", "tone", "tts", characters=len(text))


async def test_fallback_to_a_local_voice_when_openai_is_down() -> None:
    async with FakeOpenAITTS(KEY, [TTSReply(status=500, error_code="server_error")]) as fake, tts(fake) as provider:
        chain = FallbackTTS([provider, LocalVoice()])
        events = await collect(chain.synthesize("Hello."))
    assert [e.text for e in events if isinstance(e, AudioChunk)] == ["Hello."]
    assert chain.stats.switches == 1 and chain.stats.failures == {"openai": 1}
