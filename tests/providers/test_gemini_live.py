"""The Gemini Live client against the loopback fake: setup, 16 kHz input, 24 kHz output, automatic and
manual activity detection, interruption with the heard-text note, tool calls, usage, and failures."""

from __future__ import annotations

import asyncio
import math

import numpy as np
import pytest

from parley.providers.base import ToolCall, ToolSpec, Usage
from parley.providers.errors import ProviderAuthError, ProviderConnectionError, ProviderError, ProviderProtocolError
from parley.providers.gemini_live import GeminiLive, LiveWire
from parley.providers.realtime_base import (
    CallerSpeech,
    CallerText,
    ModelAudio,
    ModelInterrupted,
    ModelText,
    ModelToolCall,
    RealtimeConfig,
    RealtimeEvent,
    ResponseDone,
)
from testkit.fakes.gemini_live import FakeGeminiLive, LiveFaults, LiveReply

KEY = "gm-test-key-0123456789"
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


async def feed_turn(stream: object) -> None:
    for chunk in np.split(speech(600), 30):
        await stream.send_audio(chunk)  # type: ignore[attr-defined]
    for _ in range(40):
        await stream.send_audio(np.zeros(160, np.int16))  # type: ignore[attr-defined]


def test_setup_names_the_documented_fields() -> None:
    setup = LiveWire("gemini-2.5-flash-native-audio-preview-12-2025", "Kore").setup(
        RealtimeConfig("be brief", (HANGUP,), 8000, server_vad=False))["setup"]
    assert setup["model"] == "models/gemini-2.5-flash-native-audio-preview-12-2025"  # type: ignore[index]
    assert setup["generationConfig"]["responseModalities"] == ["AUDIO"]  # type: ignore[index]
    assert setup["realtimeInputConfig"] == {"automaticActivityDetection": {"disabled": True}}  # type: ignore[index]
    assert setup["tools"][0]["functionDeclarations"][0]["name"] == "hangup"  # type: ignore[index]
    assert "inputAudioTranscription" in setup and "outputAudioTranscription" in setup  # type: ignore[operator]


def test_automatic_turn_audio_transcripts_tool_and_usage() -> None:
    async def main() -> tuple[list[RealtimeEvent], FakeGeminiLive]:
        fake = FakeGeminiLive(KEY, transcripts=["book me in"], replies=[LiveReply("Done, goodbye!", "hangup")])
        async with fake:
            stream = await GeminiLive(KEY, url=fake.url).open(RealtimeConfig("be brief", (HANGUP,), 8000))
            await feed_turn(stream)
            events = await collect(stream, ResponseDone)
            await stream.tool_result(ToolCall("fc-1", "hangup", {}), "ok", respond=False)
            await asyncio.sleep(0.1)
            await stream.close()
        return events, fake

    events, fake = asyncio.run(main())
    assert [e for e in events if isinstance(e, CallerSpeech)] == [CallerSpeech(True), CallerSpeech(False)]
    assert next(e for e in events if isinstance(e, CallerText)).text == "book me in"
    audio = [e for e in events if isinstance(e, ModelAudio)]
    assert audio and audio[0].sample_rate == 24000 and audio[0].item_id == "turn-0"
    assert "".join(e.text for e in events if isinstance(e, ModelText)).split() == ["Done,", "goodbye!"]
    assert next(e for e in events if isinstance(e, ModelToolCall)).call.name == "hangup"
    usage = [e for e in events if isinstance(e, Usage)]
    assert {u.model.rsplit("/", 1)[1] for u in usage} == {"audio", "text"}
    assert fake.tool_responses == [{"id": "fc-1", "name": "hangup", "response": {"output": "ok"}}]


def test_manual_activity_interruption_and_the_heard_note() -> None:
    async def main() -> tuple[list[RealtimeEvent], FakeGeminiLive]:
        fake = FakeGeminiLive(KEY, replies=["A long answer " * 10], chunk_interval_s=0.05)
        async with fake:
            stream = await GeminiLive(KEY, url=fake.url).open(RealtimeConfig("x", (), 8000, server_vad=False))
            await stream.start_turn()
            await feed_turn(stream)
            await stream.end_turn()
            await collect(stream, ModelAudio)
            await stream.start_turn()  # the caller talks over it
            events = await collect(stream, ResponseDone)
            await stream.interrupt("turn-0", 300.0, "A long")
            await asyncio.sleep(0.1)
            await stream.close()
        return events, fake

    events, fake = asyncio.run(main())
    assert any(isinstance(e, ModelInterrupted) for e in events) and fake.interruptions == 1
    assert fake.notes and '"A long"' in fake.notes[0]


def test_greeting_and_failures() -> None:
    async def greet() -> list[RealtimeEvent]:
        async with FakeGeminiLive(KEY) as fake:
            stream = await GeminiLive(KEY, url=fake.url).open(RealtimeConfig("x"))
            await stream.say("Thanks for calling.")
            events = await collect(stream, ResponseDone)
            await stream.close()
        return events

    events = asyncio.run(greet())
    assert "".join(e.text for e in events if isinstance(e, ModelText)).strip() == "Thanks for calling."

    async def refused(key: str, faults: LiveFaults) -> BaseException:
        async with FakeGeminiLive(KEY, faults=faults) as fake:
            with pytest.raises(ProviderError) as caught:
                await GeminiLive(key, url=fake.url).open(RealtimeConfig("x"))
        return caught.value

    bad_key = asyncio.run(refused("gm-wrong-key-42", LiveFaults()))
    assert isinstance(bad_key, ProviderAuthError) and "gm-wrong-key-42" not in str(bad_key)
    limited = asyncio.run(refused(KEY, LiveFaults(reject_status=429)))
    assert isinstance(limited, ProviderError) and limited.status == 429 and limited.retryable


@pytest.mark.parametrize(("faults", "error"), [
    (LiveFaults(drop_in_turn=1), ProviderConnectionError),
    (LiveFaults(malformed_in_turn=1), ProviderProtocolError),
])
def test_mid_turn_failures_surface_from_the_iterator(faults: LiveFaults, error: type) -> None:
    async def main() -> BaseException | None:
        async with FakeGeminiLive(KEY, faults=faults) as fake:
            stream = await GeminiLive(KEY, url=fake.url).open(RealtimeConfig("x"))
            await stream.say("Hello there.")
            try:
                await collect(stream, ResponseDone)
            except ProviderError as exc:
                return exc
            finally:
                await stream.close()
        return None

    assert isinstance(asyncio.run(main()), error)
