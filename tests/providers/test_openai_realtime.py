"""The OpenAI Realtime client against the loopback fake: session config, audio both ways (G.711 and PCM16),
server-VAD turns and interruptions, manual turns, truncation clamped to the item's audio, tool calls,
usage lines, and every failure plane (401, 429, malformed event, fatal error, dropped socket)."""

from __future__ import annotations

import asyncio
import math

import numpy as np
import pytest

from parley.providers.base import ToolCall, ToolSpec, Usage
from parley.providers.errors import ProviderAuthError, ProviderConnectionError, ProviderError, ProviderProtocolError
from parley.providers.openai_realtime import OpenAIRealtime, RealtimeWire, audio_format
from parley.providers.realtime_base import (
    CallerSpeech,
    CallerText,
    ModelAudio,
    ModelText,
    ModelToolCall,
    RealtimeConfig,
    RealtimeEvent,
    ResponseDone,
)
from testkit.fakes.openai_realtime import FakeOpenAIRealtime, RealtimeFaults, Reply

KEY = "sk-test-realtime-0123"
HANGUP = ToolSpec("hangup", "End the call.", {"type": "object", "properties": {}})


def speech(ms: int, rate: int = 8000) -> np.ndarray:
    t = np.arange(rate * ms // 1000) / rate
    return (8000 * np.sin(2 * math.pi * 220 * t)).astype(np.int16)


async def collect(stream: object, until: type, limit: float = 5.0) -> list[RealtimeEvent]:
    out: list[RealtimeEvent] = []
    async with asyncio.timeout(limit):
        async for ev in stream:  # type: ignore[attr-defined]
            out.append(ev)
            if isinstance(ev, until):
                return out
    return out


async def feed_turn(stream: object, rate: int = 8000) -> None:
    for chunk in np.split(speech(600, rate), 30):
        await stream.send_audio(chunk)  # type: ignore[attr-defined]
    silence = np.zeros(rate // 50, np.int16)
    for _ in range(40):
        await stream.send_audio(silence)  # type: ignore[attr-defined]


def test_wire_session_update_uses_ga_names_and_g711_for_a_pcmu_call() -> None:
    wire = RealtimeWire("gpt-realtime", "marin", audio_format("PCMU"))
    update = wire.session_update(RealtimeConfig("be brief", (HANGUP,), 16000, "PCMU", server_vad=True))
    session = update["session"]
    assert update["type"] == "session.update" and session["type"] == "realtime"  # type: ignore[index]
    audio = session["audio"]  # type: ignore[index]
    assert audio["input"]["format"] == {"type": "audio/pcmu"} and audio["output"]["voice"] == "marin"
    assert audio["input"]["turn_detection"]["type"] == "server_vad"
    assert session["tools"][0] == {"type": "function", "name": "hangup", "description": "End the call.",  # type: ignore[index]
                                   "parameters": {"type": "object", "properties": {}}}
    assert audio_format("G722").config() == {"type": "audio/pcm", "rate": 24000}
    assert wire.session_update(RealtimeConfig("x", server_vad=False))["session"]["audio"]["input"][  # type: ignore[index]
        "turn_detection"] is None


def test_usage_becomes_one_line_per_priced_modality() -> None:
    wire = RealtimeWire("gpt-realtime", "marin", audio_format(None))
    lines = wire.usage({"input_token_details": {"text_tokens": 120, "audio_tokens": 50, "cached_tokens": 100,
                                                "cached_tokens_details": {"text_tokens": 80, "audio_tokens": 20}},
                        "output_token_details": {"text_tokens": 9, "audio_tokens": 60}})
    got = {u.model: (u.input_tokens, u.output_tokens) for u in lines}
    assert got == {"gpt-realtime/audio": (30, 60), "gpt-realtime/text": (40, 9),
                   "gpt-realtime/audio-cached": (20, 0), "gpt-realtime/text-cached": (80, 0)}


def test_truncate_is_clamped_to_the_audio_received() -> None:
    wire = RealtimeWire("gpt-realtime", "marin", audio_format("PCMU"))
    wire.feed({"type": "response.created"})
    wire.feed({"type": "response.output_audio.delta", "item_id": "it1", "delta": "/" * 1064})  # 798 bytes = 99.75 ms
    events = wire.interrupt("it1", 5000.0)
    assert [e["type"] for e in events] == ["response.cancel", "conversation.item.truncate"]
    assert events[1]["audio_end_ms"] == 99


@pytest.mark.parametrize("codec", ["PCMU", None])
def test_server_vad_turn_reply_tool_call_and_usage(codec: str | None) -> None:
    async def main() -> tuple[list[RealtimeEvent], FakeOpenAIRealtime]:
        fake = FakeOpenAIRealtime(KEY, transcripts=["book me in"], replies=[Reply("Done. Goodbye!", "hangup")])
        async with fake:
            provider = OpenAIRealtime(KEY, url=fake.url)
            stream = await provider.open(RealtimeConfig("be brief", (HANGUP,), 8000, codec))
            await feed_turn(stream)
            events = await collect(stream, ResponseDone)
            await stream.close()
        return events, fake

    events, fake = asyncio.run(main())
    kinds = [type(e) for e in events]
    assert CallerSpeech in kinds and CallerText in kinds and ModelAudio in kinds
    assert next(e for e in events if isinstance(e, CallerText)).text == "book me in"
    audio = [e for e in events if isinstance(e, ModelAudio)]
    assert audio[0].sample_rate == (8000 if codec else 24000)
    text = "".join(e.text for e in events if isinstance(e, ModelText) and not e.final)
    assert text.strip() == "Done. Goodbye!"
    call = next(e for e in events if isinstance(e, ModelToolCall)).call
    assert (call.name, call.id) == ("hangup", "call_1")
    usage = [e for e in events if isinstance(e, Usage)]
    assert usage[0].model == "gpt-realtime/audio" and usage[0].output_tokens > 0
    expected = {"type": "audio/pcmu"} if codec else {"type": "audio/pcm", "rate": 24000}
    assert fake.connections[0].session["audio"]["input"]["format"] == expected  # type: ignore[index]


def test_manual_turn_interrupt_truncates_and_tool_result_goes_back() -> None:
    async def main() -> FakeOpenAIRealtime:
        fake = FakeOpenAIRealtime(KEY, transcripts=["hello"], replies=["A rather long answer " * 5, "ok"],
                                  chunk_interval_s=0.05)
        async with fake:
            stream = await OpenAIRealtime(KEY, url=fake.url).open(RealtimeConfig("x", (), 8000, "PCMA",
                                                                                  server_vad=False))
            await feed_turn(stream)
            await stream.end_turn()
            events = await collect(stream, ModelAudio)
            item = next(e for e in events if isinstance(e, ModelAudio)).item_id
            await asyncio.sleep(0.12)
            await stream.interrupt(item, 80.0, "A rather")
            done = await collect(stream, ResponseDone)
            assert any(isinstance(e, ResponseDone) and e.cancelled for e in done)
            await stream.tool_result(ToolCall("call_9", "hangup", {}), "ok", respond=False)
            await asyncio.sleep(0.1)
            await stream.interrupt(None, 0.0, "")  # nothing to cancel: the benign error is not raised
            await asyncio.sleep(0.1)
            await stream.close()
        return fake

    fake = asyncio.run(main())
    assert [t["audio_end_ms"] for t in fake.truncations] == [80]
    assert fake.tool_outputs == [{"type": "function_call_output", "call_id": "call_9", "output": "ok"}]
    assert fake.received("input_audio_buffer.commit")


def test_greeting_is_spoken_on_request() -> None:
    async def main() -> list[RealtimeEvent]:
        async with FakeOpenAIRealtime(KEY) as fake:
            stream = await OpenAIRealtime(KEY, url=fake.url).open(RealtimeConfig("x", (), 8000, None))
            await stream.say("Thanks for calling.")
            events = await collect(stream, ResponseDone)
            await stream.close()
        return events

    events = asyncio.run(main())
    assert any(isinstance(e, ModelText) and e.final and e.text == "Thanks for calling." for e in events)


@pytest.mark.parametrize(("faults", "key", "error"), [
    (RealtimeFaults(), "sk-wrong-key-99", ProviderAuthError),
    (RealtimeFaults(reject_status=429), KEY, ProviderError),
])
def test_refused_handshakes_map_to_provider_errors(faults: RealtimeFaults, key: str, error: type) -> None:
    async def main() -> BaseException:
        async with FakeOpenAIRealtime(KEY, faults=faults) as fake:
            with pytest.raises(error) as caught:
                await OpenAIRealtime(key, url=fake.url).open(RealtimeConfig("x"))
        return caught.value

    exc = asyncio.run(main())
    assert "sk-wrong-key-99" not in str(exc)  # the echoed key is redacted
    if isinstance(exc, ProviderError) and not isinstance(exc, ProviderAuthError):
        assert exc.status == 429 and exc.retryable


@pytest.mark.parametrize(("faults", "error"), [
    (RealtimeFaults(drop_in_response=1), ProviderConnectionError),
    (RealtimeFaults(malformed_in_response=1), ProviderProtocolError),
    (RealtimeFaults(error_in_response=1), ProviderError),
])
def test_mid_response_failures_surface_once_from_the_iterator(faults: RealtimeFaults, error: type) -> None:
    async def main() -> tuple[list[RealtimeEvent], BaseException | None]:
        async with FakeOpenAIRealtime(KEY, faults=faults) as fake:
            stream = await OpenAIRealtime(KEY, url=fake.url).open(RealtimeConfig("x"))
            await stream.say("Hello there, caller.")
            events: list[RealtimeEvent] = []
            raised: BaseException | None = None
            try:
                events = await collect(stream, ResponseDone)
            except ProviderError as exc:
                raised = exc
            await stream.close()
        return events, raised

    _events, raised = asyncio.run(main())
    assert isinstance(raised, error)
