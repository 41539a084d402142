"""Fallback chains: switching before output, never after it, cooldown, mid-call STT switch with replay.

The providers here are small scripted implementations of the provider Protocols (the chain only sees
those Protocols and ParleyErrors); vendor fakes on real sockets test the vendor modules themselves."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Sequence

import numpy as np
import pytest

from parley.providers.base import (
    AudioChunk,
    Lifecycle,
    LLMEvent,
    LLMRequests,
    LLMStream,
    Message,
    STTEvent,
    Switched,
    TextDelta,
    ToolSpec,
    Transcript,
    TTSEvent,
    TTSRequests,
    TTSStream,
    Usage,
    UsageSink,
)
from parley.providers.errors import ProviderError, ProviderTimeout
from parley.providers.fallback import AllProvidersFailed, FallbackLLM, FallbackSTT, FallbackTTS


class ScriptedLLM(LLMRequests):
    def __init__(self, name: str, words: list[str], fail_after: int | None = None) -> None:
        self.name, self.words, self.fail_after, self.calls = name, words, fail_after, 0

    async def stream(
        self, messages: Sequence[Message], tools: Sequence[ToolSpec] = (), *, on_cancel: UsageSink | None = None
    ) -> AsyncGenerator[LLMEvent, None]:
        self.calls += 1
        for i, w in enumerate(self.words):
            if self.fail_after is not None and i >= self.fail_after:
                raise ProviderTimeout(f"{self.name} timed out", provider=self.name)
            yield TextDelta(w)
        if self.fail_after is not None and self.fail_after >= len(self.words):
            raise ProviderError(f"{self.name} 500", provider=self.name, status=500, retryable=True)
        yield Usage(self.name, "m", "llm", output_tokens=len(self.words))


class ScriptedTTS(TTSRequests):
    sample_rate = 8000

    def __init__(self, name: str, fail: bool = False) -> None:
        self.name, self.fail, self.calls = name, fail, 0

    async def synthesize(self, text: str, *, on_cancel: UsageSink | None = None) -> AsyncGenerator[TTSEvent, None]:
        self.calls += 1
        if self.fail:
            raise ProviderError(f"{self.name} 401", provider=self.name, status=401, retryable=False)
        yield AudioChunk(np.ones(160, np.int16), 8000, text)
        yield Usage(self.name, "v", "tts", characters=len(text))


async def collect(gen: AsyncIterator[LLMEvent] | AsyncIterator[TTSEvent]) -> list[object]:
    return [ev async for ev in gen]


class Clock:
    t = 0.0

    def __call__(self) -> float:
        return self.t


async def test_llm_switches_before_any_output_and_remembers_the_failure() -> None:
    bad, good = ScriptedLLM("cloud", ["a"], fail_after=0), ScriptedLLM("local", ["hello", " there"])
    switches: list[tuple[str, str, str]] = []
    clock = Clock()
    chain = FallbackLLM([bad, good], cooldown_s=30, clock=clock, on_switch=lambda c, a, b, e: switches.append((c, a, b)))
    events = await collect(chain.stream([Message("user", "hi")]))
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["hello", " there"]
    assert switches == [("llm", "cloud", "local")] and chain.stats.switches == 1
    assert chain.stats.failures == {"cloud": 1}
    await collect(chain.stream([Message("user", "again")]))  # in cooldown: straight to the local one
    assert bad.calls == 1 and good.calls == 2
    clock.t = 31.0
    await collect(chain.stream([Message("user", "later")]))  # cooldown over: the first is tried again
    assert bad.calls == 2


async def test_llm_does_not_retry_once_text_was_produced() -> None:
    half, other = ScriptedLLM("cloud", ["one", "two"], fail_after=1), ScriptedLLM("local", ["x"])
    chain = FallbackLLM([half, other])
    got: list[object] = []
    with pytest.raises(ProviderTimeout):
        async for ev in chain.stream([]):
            got.append(ev)
    assert got == [TextDelta("one")] and other.calls == 0 and chain.stats.switches == 0


async def test_all_llms_failing_is_one_clear_error() -> None:
    chain = FallbackLLM([ScriptedLLM("a", ["x"], fail_after=0), ScriptedLLM("b", ["y"], fail_after=0)])
    with pytest.raises(AllProvidersFailed, match="all llm providers failed: ProviderTimeout: a timed out; "
                                                 "ProviderTimeout: b timed out"):
        await collect(chain.stream([]))


async def test_tts_falls_back_to_the_local_voice() -> None:
    chain = FallbackTTS([ScriptedTTS("elevenlabs", fail=True), ScriptedTTS("hibari")])
    events = await collect(chain.synthesize("Hello."))
    assert any(isinstance(e, AudioChunk) for e in events)
    assert chain.stats.failures == {"elevenlabs": 1}


class ScriptedSTTStream:
    def __init__(self, name: str, fail_on_send: int | None) -> None:
        self.name, self.fail_on_send = name, fail_on_send
        self.samples = 0
        self.sends = 0
        self.queue: asyncio.Queue[STTEvent | None] = asyncio.Queue()
        self.closed = False

    async def send_audio(self, samples: np.ndarray) -> None:  # type: ignore[type-arg]
        self.sends += 1
        if self.fail_on_send is not None and self.sends > self.fail_on_send:
            raise ProviderError(f"{self.name} connection dropped", provider=self.name, retryable=True)
        self.samples += samples.size

    def pause_hint(self) -> None: ...

    def speech_resumed(self) -> None: ...

    async def finalize(self) -> None:
        await self.queue.put(Transcript(f"{self.name} heard {self.samples}", final=True, t=0.0, speech_final=True))

    async def close(self) -> None:
        self.closed = True
        await self.queue.put(None)

    def __aiter__(self) -> AsyncIterator[STTEvent]:
        return self._it()

    async def _it(self) -> AsyncIterator[STTEvent]:
        while (ev := await self.queue.get()) is not None:
            yield ev


class ScriptedSTT:
    def __init__(self, name: str, fail_on_send: int | None = None) -> None:
        self.name, self.fail_on_send = name, fail_on_send
        self.streams: list[ScriptedSTTStream] = []

    async def open(self, *, sample_rate: int, language: str | None = None) -> ScriptedSTTStream:
        s = ScriptedSTTStream(self.name, self.fail_on_send)
        self.streams.append(s)
        return s


async def test_stt_switches_mid_turn_and_replays_the_turn_audio() -> None:
    cloud, local = ScriptedSTT("deepgram", fail_on_send=3), ScriptedSTT("whisper")
    chain = FallbackSTT([cloud, local])
    stream = await chain.open(sample_rate=16000)
    for _ in range(5):  # the 4th send fails: the whisper stream gets all 5 frames of the turn
        await stream.send_audio(np.zeros(320, np.int16))
    await stream.finalize()
    it = aiter(stream)
    assert isinstance(await anext(it), Switched)  # the call is told first
    ev = await anext(it)
    assert isinstance(ev, Transcript) and ev.text == "whisper heard 1600"
    assert chain.stats.switches == 1
    await stream.close()
    assert cloud.streams[0].closed  # closed off the switch's path, awaited by the chain's close


async def test_a_switch_in_the_next_turn_replays_only_that_turn_and_does_not_finalize_it() -> None:
    # Deepgram may close a turn by itself (speech_final) and answer the Finalize with nothing: the next turn's
    # audio must not be finalized halfway when the provider then drops (whisper heard "two." + "stay").
    cloud, local = ScriptedSTT("deepgram", fail_on_send=6), ScriptedSTT("whisper")
    chain = FallbackSTT([cloud, local])
    stream = await chain.open(sample_rate=16000)
    for _ in range(4):  # turn 1
        await stream.send_audio(np.zeros(320, np.int16))
    await cloud.streams[0].queue.put(Transcript("turn one", final=True, t=0.0, speech_final=True))  # closed early
    it = aiter(stream)
    assert (await anext(it)).text == "turn one"  # type: ignore[union-attr]
    cloud.streams[0].finalize = _answer_nothing  # type: ignore[method-assign]
    await stream.finalize()
    for _ in range(4):  # turn 2: the 3rd frame of it fails on Deepgram
        await stream.send_audio(np.zeros(320, np.int16))
    whisper = local.streams[0]
    assert whisper.samples == 4 * 320  # only turn 2's audio, in order, once
    assert whisper.queue.empty()  # and not finalized: the turn is not over
    await stream.finalize()
    assert isinstance(await anext(it), Switched)
    assert (await anext(it)).text == "whisper heard 1280"  # type: ignore[union-attr]
    await stream.close()


async def _answer_nothing() -> None:
    return None


async def test_stt_with_every_provider_down() -> None:
    class Down:
        name = "down"

        async def open(self, *, sample_rate: int, language: str | None = None) -> ScriptedSTTStream:
            raise ProviderError("refused", provider="down", retryable=True)

    with pytest.raises(AllProvidersFailed, match="all stt providers failed"):
        await FallbackSTT([Down()]).open(sample_rate=8000)  # type: ignore[list-item]


class PingOnly(LLMRequests):
    """An LLM stream that is open but says nothing (a queued or overloaded vendor sending only pings)."""

    name = "stalled"

    def __init__(self) -> None:
        self.closed = False

    async def stream(
        self, messages: Sequence[Message], tools: Sequence[ToolSpec] = (), *, on_cancel: UsageSink | None = None
    ) -> AsyncGenerator[LLMEvent, None]:
        try:
            await asyncio.sleep(3600)
            yield TextDelta("never")
        finally:
            self.closed = True


async def test_a_stream_that_produces_nothing_fails_over_within_the_deadline() -> None:
    stalled = PingOnly()
    chain = FallbackLLM([stalled, ScriptedLLM("rules", ["Sure."])], first_output_s=0.05)  # type: ignore[list-item]
    events = await collect(chain.stream([Message("user", "hi")]))
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["Sure."]
    assert stalled.closed  # the stalled request was closed, not left running
    assert chain.stats.switches == 1 and chain.stats.failures == {"stalled": 1}


async def test_a_lone_stalled_provider_is_an_error_not_silence() -> None:
    chain = FallbackLLM([PingOnly()], first_output_s=0.05)  # type: ignore[list-item]
    assert chain.name == "stalled"  # a chain of one keeps the provider's name
    with pytest.raises(AllProvidersFailed, match=r"nothing produced within 0\.1 s"):
        await collect(chain.stream([Message("user", "hi")]))


class SlowLocal(LLMRequests):
    """A local model on a loaded box: its first output comes late, but it comes."""

    name = "rules"

    async def stream(
        self, messages: Sequence[Message], tools: Sequence[ToolSpec] = (), *, on_cancel: UsageSink | None = None
    ) -> AsyncGenerator[LLMEvent, None]:
        await asyncio.sleep(0.2)
        yield TextDelta("Late, but here.")


async def test_the_deadline_spares_a_patient_local_provider() -> None:
    """A stalled cloud brain is failed over at its deadline; the local brain after it has no deadline (its
    late answer beats the apology, which needs the same loaded CPU)."""
    chain = FallbackLLM([PingOnly(), SlowLocal()], first_output_s=0.05, patient=[1])  # type: ignore[list-item]
    events = await collect(chain.stream([Message("user", "hi")]))
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["Late, but here."]
    assert chain.stats.failures == {"stalled": 1}


async def test_compose_exempts_the_local_voices_and_brains_from_the_deadline() -> None:
    from parley.compose import Providers
    from parley.config import ConversationSettings, Settings

    conv = ConversationSettings(llm=("openai", "rules"), tts=("elevenlabs", "espeak"))
    keys = {"OPENAI_API_KEY": "sk-test", "ELEVENLABS_API_KEY": "el-test"}
    providers = Providers(Settings(conversation=conv, providers={"elevenlabs": {"voice_id": "v1"}}), env=keys)
    llm, tts = providers.llm(), providers.tts()
    assert isinstance(llm, FallbackLLM) and llm.patient == {1} and llm.first_output_s == conv.llm_first_token_timeout_s
    assert tts.patient == {1} and tts.first_output_s == conv.tts_first_audio_timeout_s  # type: ignore[attr-defined]


# ---- the STT result deadline (issue 10): a recognizer that stops answering with its connection open ---------


class HungSTTStream(ScriptedSTTStream):
    """Takes audio and the finalize, answers nothing, and holds its close until ``release`` is set (a peer that
    hung would hold the close handshake); reports its usage when it finally closes."""

    def __init__(self, name: str) -> None:
        super().__init__(name, None)
        self.release = asyncio.Event()

    async def finalize(self) -> None:
        return None

    async def close(self) -> None:
        await self.release.wait()
        self.closed = True
        await self.queue.put(Usage(self.name, "m", "stt", audio_seconds=1.0))
        await self.queue.put(None)


class HungSTT(ScriptedSTT):
    async def open(self, *, sample_rate: int, language: str | None = None) -> ScriptedSTTStream:
        s = HungSTTStream(self.name)
        self.streams.append(s)
        return s


async def test_a_recognizer_that_stops_answering_is_replaced_within_the_result_deadline() -> None:
    cloud, local = HungSTT("deepgram"), ScriptedSTT("whisper")
    switches: list[tuple[str, str, str]] = []
    chain = FallbackSTT([cloud, local], final_timeout_s=0.05, on_switch=lambda c, a, b, e: switches.append((c, a, b)))
    stream = await chain.open(sample_rate=16000)
    for _ in range(5):
        await stream.send_audio(np.zeros(320, np.int16))
    await stream.finalize()
    it = aiter(stream)
    async with asyncio.timeout(1.0):  # the deadline is 50 ms; the hung close must not hold the switch up
        switched = await anext(it)
        ev = await anext(it)
    assert isinstance(switched, Switched) and (switched.capability, switched.old, switched.new) == (
        "stt", "deepgram", "whisper")  # the call hears of the switch in the stream, before the replayed turn
    assert ev == Transcript("whisper heard 1600", final=True, t=0.0, speech_final=True)  # the turn, replayed
    assert switches == [("stt", "deepgram", "whisper")] and chain.stats.failures == {"deepgram": 1}
    assert not cloud.streams[0].closed  # still closing, off the switch's path
    cloud.streams[0].release.set()
    assert await anext(it) == Usage("deepgram", "m", "stt", audio_seconds=1.0, failed=True)  # billed, as failed
    await stream.close()


async def test_a_lone_recognizer_that_stops_answering_is_an_error_not_silence() -> None:
    chain = FallbackSTT([HungSTT("deepgram")], final_timeout_s=0.05)
    stream = await chain.open(sample_rate=16000)
    await stream.send_audio(np.zeros(320, np.int16))
    await stream.finalize()
    with pytest.raises(AllProvidersFailed, match=r"deepgram: no final transcript within 0\.1 s of the end of the turn"):
        async with asyncio.timeout(1.0):
            async for _ in stream:
                pass


async def test_a_turn_the_recognizer_closed_itself_owes_no_answer_to_the_finalize() -> None:
    # Deepgram's speech_final can close the turn in the caller's pause; its Finalize answer may then be nothing
    # at all (deepgram_stt): that is no stall, and no switch.
    cloud, local = HungSTT("deepgram"), ScriptedSTT("whisper")
    chain = FallbackSTT([cloud, local], final_timeout_s=0.05)
    stream = await chain.open(sample_rate=16000)
    await stream.send_audio(np.zeros(320, np.int16))
    await cloud.streams[0].queue.put(Transcript("turn one", final=True, t=0.0, speech_final=True))
    it = aiter(stream)
    assert (await anext(it)).text == "turn one"  # type: ignore[union-attr]
    await stream.send_audio(np.zeros(320, np.int16))  # the rest of the pause
    await stream.finalize()
    await asyncio.sleep(0.2)  # four deadlines
    assert chain.stats.switches == 0 and not local.streams
    stream.speech_resumed()  # the caller went on: this time the finalize owes the words
    await stream.send_audio(np.zeros(320, np.int16))
    await stream.finalize()
    async with asyncio.timeout(1.0):
        assert isinstance(await anext(it), Switched)
        assert (await anext(it)).text == "whisper heard 320"  # type: ignore[union-attr]
    cloud.streams[0].release.set()
    await stream.close()


# ---- the lifecycle: prewarm, aclose, check through a chain -------------------------------------------------


class WarmTTS(Lifecycle, TTSRequests):
    sample_rate = 8000

    def __init__(self, name: str) -> None:
        self.name, self.warmed, self.closed = name, 0, 0

    async def prewarm(self) -> None:
        self.warmed += 1

    async def aclose(self) -> None:
        self.closed += 1

    async def synthesize(self, text: str, *, on_cancel: UsageSink | None = None) -> AsyncGenerator[TTSEvent, None]:
        yield AudioChunk(np.ones(160, np.int16), 8000, text)


async def test_a_tts_chain_warms_its_preferred_voice_and_closes_them_all() -> None:
    first, second = WarmTTS("elevenlabs"), WarmTTS("hibari")
    chain = FallbackTTS([first, second])
    await chain.prewarm()
    assert (first.warmed, second.warmed) == (1, 0)  # only the one the next request goes to
    assert await chain.check() is None  # the chain has nothing of its own to judge (compose checks each)
    await chain.aclose()
    assert (first.closed, second.closed) == (1, 1)


# ---- per call: each call opens its own stream on the chain -----------------------------------------------


class CallScopedLLM(LLMRequests):
    """Counts the per-call streams opened and closed on it; a request closed early reports usage to on_cancel."""

    def __init__(self, name: str, fail: bool = False) -> None:
        self.name, self.fail, self.opened, self.closed = name, fail, 0, 0

    async def open(self, on_usage: UsageSink) -> LLMStream:
        self.opened += 1
        outer = self

        class _Stream:
            def stream(
                self, messages: Sequence[Message], tools: Sequence[ToolSpec] = ()
            ) -> AsyncGenerator[LLMEvent, None]:
                return outer.stream(messages, tools, on_cancel=on_usage)

            async def close(self) -> None:
                outer.closed += 1

        return _Stream()

    async def prewarm(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    async def check(self) -> None:
        return None

    async def stream(
        self, messages: Sequence[Message], tools: Sequence[ToolSpec] = (), *, on_cancel: UsageSink | None = None
    ) -> AsyncGenerator[LLMEvent, None]:
        if self.fail:
            raise ProviderError(f"{self.name} 503", provider=self.name, status=503, retryable=True)
        ended = False
        try:
            yield TextDelta("one ")
            yield TextDelta("two")
            ended = True
            yield Usage(self.name, "m", "llm", output_tokens=2)
        finally:
            if not ended and on_cancel is not None:
                on_cancel(Usage(self.name, "m", "llm", output_tokens=1, cancelled=True))


async def test_a_call_stream_reports_a_switch_as_an_event_and_opens_each_provider_once() -> None:
    cloud, local = CallScopedLLM("cloud", fail=True), CallScopedLLM("local")
    chain = FallbackLLM([cloud, local], cooldown_s=0)
    sink: list[Usage] = []
    call = await chain.open(sink.append)
    first = await collect(call.stream([Message("user", "hi")]))
    switched = [e for e in first if isinstance(e, Switched)]
    assert [(e.capability, e.old, e.new) for e in switched] == [("llm", "cloud", "local")]
    assert "503" in switched[0].error
    assert [e.text for e in first if isinstance(e, TextDelta)] == ["one ", "two"]
    await collect(call.stream([Message("user", "again")]))  # each provider's call stream is reused
    assert (cloud.opened, local.opened) == (1, 1)
    await call.close()
    assert (cloud.closed, local.closed) == (1, 1) and sink == []


async def test_usage_of_a_request_stopped_early_reaches_the_call_it_belongs_to() -> None:
    """Two calls on one shared chain: each barge-in's usage lands on its own call, with no ambient state."""
    chain = FallbackLLM([CallScopedLLM("cloud")])
    first_sink: list[Usage] = []
    second_sink: list[Usage] = []
    first, second = await chain.open(first_sink.append), await chain.open(second_sink.append)
    for call in (first, second):
        gen = call.stream([Message("user", "hi")])
        assert await anext(gen) == TextDelta("one ")
        await gen.aclose()  # the caller barged in
    assert first_sink == [Usage("cloud", "m", "llm", output_tokens=1, cancelled=True)]
    assert second_sink == [Usage("cloud", "m", "llm", output_tokens=1, cancelled=True)]


async def test_a_tts_call_stream_switches_voice_with_an_event_and_keeps_the_sample_rate() -> None:
    chain = FallbackTTS([ScriptedTTS("elevenlabs", fail=True), ScriptedTTS("hibari")])
    call: TTSStream = await chain.open([].append)
    assert call.sample_rate == 8000
    events = await collect(call.synthesize("Hello."))
    assert [type(e).__name__ for e in events] == ["Switched", "AudioChunk", "Usage"]
    await call.close()
