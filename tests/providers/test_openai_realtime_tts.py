"""Realtime text-to-speech against the loopback Realtime fake: the speech-only session, one out-of-band
response per text, audio as 24 kHz chunks, token usage priced by the shipped table, session reuse,
cancellation (response.cancel, the cancelled usage reported later), failures, and a dead pooled session."""

from __future__ import annotations

import asyncio
from contextlib import aclosing

import pytest

from parley.observe.cost import PriceTable
from parley.providers.base import AudioChunk, TTSEvent, Usage
from parley.providers.errors import ProviderAuthError, ProviderError
from parley.providers.openai_realtime_tts import DEFAULT_MODEL, OpenAIRealtimeTTS
from testkit.fakes.openai_realtime import FakeOpenAIRealtime, RealtimeFaults

KEY = "sk-test-realtime-tts-0123"


async def speak(tts: OpenAIRealtimeTTS, text: str) -> list[TTSEvent]:
    async with asyncio.timeout(5), aclosing(tts.synthesize(text)) as gen:
        return [ev async for ev in gen]


async def test_reads_the_text_out_of_band_and_streams_audio_with_token_usage() -> None:
    async with FakeOpenAIRealtime(KEY, ms_per_char=10.0, chunk_interval_s=0.0) as fake:
        async with OpenAIRealtimeTTS(KEY, url=fake.url) as tts:
            events = await speak(tts, "Your table is booked for eight.")
    chunks = [e for e in events if isinstance(e, AudioChunk)]
    usage = [e for e in events if isinstance(e, Usage)]
    assert chunks and all(c.sample_rate == 24000 for c in chunks)
    assert chunks[0].text == "Your table is booked for eight." and all(c.text is None for c in chunks[1:])
    assert sum(c.samples.size for c in chunks) == 24000 * 31 * 10 // 1000
    kinds = [type(e).__name__ for e in events]
    assert kinds == ["AudioChunk"] * len(chunks) + ["Usage"] * len(usage)  # usage after the audio
    assert {u.model for u in usage} >= {f"{DEFAULT_MODEL}/audio", f"{DEFAULT_MODEL}/text"}
    assert all(u.provider == "openai-realtime" and not u.cancelled for u in usage)
    (update,) = fake.received("session.update")
    session = update["session"]
    assert isinstance(session, dict) and session["output_modalities"] == ["audio"]
    assert session["audio"] == {"input": {"turn_detection": None},
                                "output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "marin"}}
    (create,) = fake.received("response.create")
    response = create["response"]
    assert isinstance(response, dict) and response["conversation"] == "none"
    assert response["input"] == [{"type": "message", "role": "user",
                                  "content": [{"type": "input_text", "text": "Your table is booked for eight."}]}]
    assert fake.handshakes[0][1]["model"] == DEFAULT_MODEL


async def test_the_shipped_price_table_prices_the_usage_in_tokens() -> None:
    table = PriceTable.load()
    audio = table.lookup("openai-realtime", "llm", f"{DEFAULT_MODEL}/audio")
    text = table.lookup("openai-realtime", "llm", f"{DEFAULT_MODEL}/text")
    assert audio is not None and text is not None
    assert audio.key.endswith("gpt-realtime*mini*/audio") and text.key.endswith("gpt-realtime*mini*/text")


async def test_one_session_serves_consecutive_sentences() -> None:
    async with FakeOpenAIRealtime(KEY, ms_per_char=5.0, chunk_interval_s=0.0) as fake:
        async with OpenAIRealtimeTTS(KEY, url=fake.url) as tts:
            await tts.prewarm()
            for text in ("Hello.", "How can I help?", "Goodbye."):
                assert any(isinstance(e, AudioChunk) for e in await speak(tts, text))
        assert len(fake.connections) == 1
        assert len(fake.received("response.create")) == 3


async def test_closing_mid_audio_cancels_the_response_and_reports_its_cost_later_to_its_call() -> None:
    cancelled: list[Usage] = []  # the sink of the call that barged in
    other: list[Usage] = []  # the sink of the call whose next sentence drains the parked session
    async with FakeOpenAIRealtime(KEY, ms_per_char=100.0, chunk_interval_s=0.05) as fake:
        async with OpenAIRealtimeTTS(KEY, url=fake.url) as tts:
            call = await tts.open(cancelled.append)
            other_call = await tts.open(other.append)
            assert call.sample_rate == 24000
            async with asyncio.timeout(5), aclosing(call.synthesize("A long sentence that the caller cuts off.")) as gen:
                async for event in gen:
                    assert isinstance(event, AudioChunk)
                    break
            assert not cancelled  # read before the session is used again
            async with asyncio.timeout(5), aclosing(other_call.synthesize("Next.")) as gen:
                events = [ev async for ev in gen]
            assert any(isinstance(e, AudioChunk) for e in events)
            assert fake.received("response.cancel")
            await call.close()
            await other_call.close()
        assert cancelled and all(u.cancelled for u in cancelled)
        assert other == []  # the drained cost went to the call that cancelled, not the one that drained it
        assert not any(isinstance(e, Usage) and e.cancelled for e in events)
        assert len(fake.connections) == 1  # the cancelled session was drained and reused


async def test_a_call_ending_after_a_barge_in_has_the_cost_on_it_before_its_record() -> None:
    """The call's last act was a barge-in and no request follows: closing its stream (which the session does
    before writing the record) reads the cancelled response's cost onto that call, and the session is reused."""
    cancelled: list[Usage] = []
    async with FakeOpenAIRealtime(KEY, ms_per_char=100.0, chunk_interval_s=0.05) as fake:
        async with OpenAIRealtimeTTS(KEY, url=fake.url) as tts:
            call = await tts.open(cancelled.append)
            async with asyncio.timeout(5), aclosing(call.synthesize("Cut off at the end of the call.")) as gen:
                async for _ in gen:
                    break
            assert not cancelled
            async with asyncio.timeout(5):
                await call.close()
            assert cancelled and all(u.cancelled for u in cancelled)  # on the call, with the provider still up
            await speak(tts, "Another call's sentence.")
            assert len(fake.connections) == 1  # drained cleanly: back in the pool


async def test_cancelled_usage_is_reported_at_aclose_when_no_sentence_follows() -> None:
    cancelled: list[Usage] = []
    async with FakeOpenAIRealtime(KEY, ms_per_char=100.0, chunk_interval_s=0.05) as fake:
        tts = OpenAIRealtimeTTS(KEY, url=fake.url)  # one request outside a call: its own on_cancel sink
        async with asyncio.timeout(5), aclosing(tts.synthesize("Cut off right away, please.",
                                                               on_cancel=cancelled.append)) as gen:
            async for _ in gen:
                break
        await tts.aclose()
    assert cancelled and all(u.cancelled for u in cancelled)


async def test_wrong_key_is_an_auth_error() -> None:
    async with FakeOpenAIRealtime(KEY) as fake:
        tts = OpenAIRealtimeTTS("sk-wrong", url=fake.url)
        with pytest.raises(ProviderAuthError) as info:
            await speak(tts, "Hi.")
        assert "sk-wrong" not in str(info.value)


async def test_a_dropped_socket_yields_failed_usage_then_raises() -> None:
    events: list[TTSEvent] = []
    async with FakeOpenAIRealtime(KEY, faults=RealtimeFaults(drop_in_response=1), chunk_interval_s=0.0) as fake:
        tts = OpenAIRealtimeTTS(KEY, url=fake.url)
        with pytest.raises(ProviderError):
            async with asyncio.timeout(5), aclosing(tts.synthesize("Dropped.")) as gen:
                async for ev in gen:
                    events.append(ev)
        await tts.aclose()
    assert any(isinstance(e, Usage) and e.failed for e in events)


async def test_a_pooled_session_that_died_is_replaced_once() -> None:
    async with FakeOpenAIRealtime(KEY, ms_per_char=5.0, chunk_interval_s=0.0) as fake:
        async with OpenAIRealtimeTTS(KEY, url=fake.url) as tts:
            await speak(tts, "First.")
            fake.connections[0].ws.transport.abort()
            events = await speak(tts, "Second.")
        assert any(isinstance(e, AudioChunk) for e in events)
        assert len(fake.connections) == 2
