"""Deepgram live STT and speak TTS against the loopback fake (real sockets on 127.0.0.1, millisecond timers):
streaming and turn closing, KeepAlive, handshake and in-stream failures, Speak/Flush/Clear, socket reuse,
and a mid-turn switch of the STT fallback chain. The turn assembly is also tested without sockets."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np
import pytest

from parley.providers.base import (
    AudioChunk,
    SpeechStarted,
    STTEvent,
    STTProvider,
    Transcript,
    TTSEvent,
    TTSProvider,
    Usage,
    UtteranceEnd,
)
from parley.providers.deepgram_stt import DeepgramSTT, DeepgramSTTStream, ListenAssembler, reason_code
from parley.providers.deepgram_tts import DeepgramTTS
from parley.providers.errors import (
    ProviderAuthError,
    ProviderConnectionError,
    ProviderError,
    ProviderProtocolError,
    ProviderTimeout,
)
from parley.providers.fallback import FallbackSTT
from testkit.fakes.deepgram import FakeDeepgram, Faults

KEY = "dg-test-key-0123456789"
RATE = 8000
FRAME = RATE // 50  # 20 ms


def tone(n: int = FRAME) -> np.ndarray[Any, np.dtype[np.int16]]:
    t = np.arange(n) / RATE
    return (8000 * np.sin(2 * np.pi * 300 * t)).astype(np.int16)


def quiet(n: int = FRAME) -> np.ndarray[Any, np.dtype[np.int16]]:
    return np.zeros(n, np.int16)


async def eventually(cond: Callable[[], bool], timeout: float = 2.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.005)


@contextlib.asynccontextmanager
async def fake(**kwargs: Any) -> AsyncIterator[FakeDeepgram]:
    async with FakeDeepgram(KEY, **kwargs) as dg:
        yield dg


def billed(event: object, *, at_least: float, failed: bool = False) -> bool:
    """A Deepgram STT Usage billing at least ``at_least`` seconds (the connection's open time; loop-timed)."""
    return (isinstance(event, Usage) and (event.provider, event.model, event.kind, event.failed)
            == ("deepgram", "nova-3", "stt", failed) and event.audio_seconds >= at_least)


def stt(dg: FakeDeepgram, **kwargs: Any) -> DeepgramSTT:
    return DeepgramSTT(KEY, url=dg.listen_url, **kwargs)


class Collector:
    """Iterates a stream in the background, keeping events and the error that ended it."""

    def __init__(self, stream: DeepgramSTTStream) -> None:
        self.events: list[STTEvent] = []
        self.error: BaseException | None = None
        self.task = asyncio.create_task(self._run(stream))

    async def _run(self, stream: DeepgramSTTStream) -> None:
        try:
            async for ev in stream:
                self.events.append(ev)
        except ProviderError as exc:
            self.error = exc

    def closing(self) -> list[Transcript]:
        return [e for e in self.events if isinstance(e, Transcript) and e.speech_final]

    def of(self, kind: type) -> list[STTEvent]:
        return [e for e in self.events if isinstance(e, kind)]


# ---- the turn assembly, without sockets --------------------------------------------------------------


def results(text: str, *, is_final: bool = True, speech_final: bool = False, from_finalize: bool = False,
            end: float = 1.0) -> dict[str, object]:
    return {"type": "Results", "start": end - 0.5, "duration": 0.5, "is_final": is_final,
            "speech_final": speech_final, "from_finalize": from_finalize, "new_field": 1,
            "channel": {"alternatives": [{"transcript": text, "confidence": 0.9}]}}


def test_assembler_joins_finals_and_closes_once_per_turn() -> None:
    a = ListenAssembler()
    assert a.feed(results("I'd", is_final=False)) == [Transcript("I'd", final=False, t=1.0, confidence=0.9)]
    assert a.feed(results("I'd like")) == [Transcript("I'd like", final=False, t=1.0, confidence=0.9)]
    assert a.feed(results("a table", is_final=False, end=1.5))[0].text == "I'd like a table"  # type: ignore[union-attr]
    [closing] = a.feed(results("a table", speech_final=True, end=1.6))
    assert closing == Transcript("I'd like a table", final=True, t=1.6, speech_final=True, confidence=0.9)
    a.finalize_sent()
    assert a.feed(results("", from_finalize=True, end=1.7)) == []  # already closed by speech_final
    assert not a.awaiting_finalize
    a.finalize_sent()  # next turn: nothing heard, Deepgram answers nothing
    assert a.finalize_expired() == [Transcript("", final=True, t=1.7, speech_final=True)]
    assert a.finalize_expired() == []


def test_assembler_finalize_answer_brings_the_rest_and_ignores_noise() -> None:
    a = ListenAssembler()
    assert a.feed({"type": "SpeechStarted", "channel": [0, 1], "timestamp": 0.25}) == [SpeechStarted(0.25)]
    assert a.feed(results("", speech_final=True)) == []  # an empty speech_final is no turn end
    assert a.feed(results("book a")) != []
    a.finalize_sent()
    [closing] = a.feed(results("table", from_finalize=True, end=2.0))
    assert (closing.text, closing.t) == ("book a table", 2.0)  # type: ignore[union-attr]
    assert a.feed({"type": "UtteranceEnd", "channel": [0, 1], "last_word_end": 1.9}) == [UtteranceEnd(1.9)]
    assert a.feed({"type": "SomethingNew", "x": 1}) == []
    with pytest.raises(ProviderError, match="bad thing"):
        a.feed({"type": "Error", "code": "X-1", "description": "bad thing"})


def test_close_reason_codes() -> None:
    assert reason_code("Deepgram did not receive audio data ... See https://dpgr.am/net0001") == "NET-0001"
    assert reason_code("DATA-0000: payload not decodable") == "DATA-0000"
    assert reason_code("bye") is None


# ---- STT over the socket -----------------------------------------------------------------------------


async def test_listen_handshake_sends_token_and_documented_query() -> None:
    async with fake() as dg:
        provider: STTProvider = stt(dg)
        stream = await provider.open(sample_rate=RATE)
        await stream.close()
    [shake] = dg.handshakes
    assert shake.path == "/v1/listen" and shake.status == 101
    assert shake.headers["authorization"] == f"Token {KEY}"
    assert shake.query == {
        "encoding": "linear16", "sample_rate": "8000", "channels": "1", "model": "nova-3", "language": "en-US",
        "interim_results": "true", "endpointing": "300", "utterance_end_ms": "1000", "vad_events": "true",
        "smart_format": "true",
    }
    assert dg.listen_sessions[0].count("CloseStream") == 1 and dg.listen_sessions[0].closed == (1000, "")


async def test_streaming_interim_final_and_speech_final_then_finalize_adds_nothing() -> None:
    async with fake(transcripts=["I'd like | to book a table."], segment_s=0.2, interim_every_s=0.06) as dg:
        stream = await stt(dg).open(sample_rate=RATE)
        got = Collector(stream)
        for _ in range(20):  # 400 ms of speech
            await stream.send_audio(tone())
        for _ in range(55):  # 1.1 s of silence: speech_final at 300 ms, UtteranceEnd at 1000 ms
            await stream.send_audio(quiet())
        await eventually(lambda: bool(got.of(UtteranceEnd)))
        await stream.finalize()  # the turn machine ends the turn: Deepgram answers an empty from_finalize
        await eventually(lambda: dg.listen_sessions[0].count("Finalize") == 1)
        await asyncio.sleep(0.05)
        await stream.close()
        await got.task
    assert isinstance(got.events[0], SpeechStarted) and got.events[0].t == 0.0
    interims = [e for e in got.events if isinstance(e, Transcript) and not e.final]
    assert [e.text for e in interims][:3] == ["I'd", "I'd like", "I'd like"]  # last one: the is_final segment
    assert "I'd like to" in [e.text for e in interims]
    assert got.closing() == [Transcript("I'd like to book a table.", final=True, t=0.7, speech_final=True,
                                        confidence=0.98)]
    assert got.of(UtteranceEnd) == [UtteranceEnd(0.4)]
    sent = dg.listen_sessions[0].sent
    assert [m["from_finalize"] for m in sent if m["type"] == "Results" and m["is_final"]] == [False, False, True]
    assert billed(got.events[-1], at_least=1.5) and got.error is None


@pytest.mark.parametrize("endpointing_ms", [None, 300])
async def test_finalize_answer_closes_each_turn_exactly_once(endpointing_ms: int | None) -> None:
    async with fake(transcripts=["what time do you open", "thanks"]) as dg:
        stream = await stt(dg, endpointing_ms=endpointing_ms).open(sample_rate=RATE)
        got = Collector(stream)
        for words in (1, 2):
            for _ in range(10):
                await stream.send_audio(tone())
            await stream.send_audio(quiet())
            await stream.finalize()
            await eventually(lambda n=words: len(got.closing()) == n)  # type: ignore[misc]
        await asyncio.sleep(0.05)
        await stream.close()
        await got.task
    assert [t.text for t in got.closing()] == ["what time do you open", "thanks"]
    assert dg.listen_sessions[0].query["endpointing"] == ("false" if endpointing_ms is None else "300")


@pytest.mark.parametrize("answer", [True, False])
async def test_finalize_of_silence_gives_one_empty_closing_even_without_an_answer(answer: bool) -> None:
    async with fake(answer_empty_finalize=answer) as dg:
        stream = await stt(dg, finalize_timeout_s=0.1).open(sample_rate=RATE)
        got = Collector(stream)
        await stream.send_audio(quiet())
        await stream.finalize()
        await eventually(lambda: bool(got.closing()))
        await asyncio.sleep(0.15)  # past the timer: nothing more
        await stream.close()
        await got.task
    assert got.closing() == [Transcript("", final=True, t=0.02 if answer else 0.0, speech_final=True)]


async def test_keepalive_is_a_text_frame_and_keeps_the_socket_open() -> None:
    async with fake(idle_timeout_s=0.25) as dg:
        stream = await stt(dg, keepalive_s=0.05).open(sample_rate=RATE)
        got = Collector(stream)
        await stream.send_audio(tone())
        await asyncio.sleep(0.6)  # more than twice the idle timeout without audio
        session = dg.listen_sessions[0]
        assert session.closed is None and got.error is None
        assert session.count("KeepAlive") >= 5 and session.json_in_binary == 0 and session.binary_frames == 1
        await stream.close()
        await got.task
    assert stream.keepalives == session.count("KeepAlive")


async def test_a_fresh_socket_is_primed_with_silence_before_keepalives() -> None:
    async with fake(idle_timeout_s=0.25) as dg:
        stream = await stt(dg, keepalive_s=0.05).open(sample_rate=RATE)
        got = Collector(stream)
        await asyncio.sleep(0.5)  # the caller never speaks
        session = dg.listen_sessions[0]
        assert session.closed is None and session.binary_frames == 1 and session.audio_bytes == 2 * RATE // 50
        assert session.count("KeepAlive") >= 4
        await stream.close()
        await got.task
    # Deepgram bills the connection's open time, not the 20 ms of audio: the 0.5 s the socket stayed open
    assert billed(got.events[-1], at_least=0.5)


async def test_idle_timeout_close_is_a_retryable_error_with_deepgrams_code() -> None:
    async with fake(idle_timeout_s=0.1) as dg:
        stream = await stt(dg, keepalive_s=30).open(sample_rate=RATE)
        got = Collector(stream)
        await stream.send_audio(tone())
        await asyncio.wait_for(got.task, 2)
        await stream.close()
    assert isinstance(got.error, ProviderError) and got.error.retryable and got.error.code == "NET-0001"
    assert "1011" in str(got.error) and "dpgr.am/net0001" in str(got.error)
    assert billed(got.events[-1], at_least=0.1, failed=True)  # open until the 0.1 s idle timeout closed it


async def test_wrong_key_is_an_auth_error_and_never_echoes_the_key(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with fake() as dg:
        with pytest.raises(ProviderAuthError) as err:
            await DeepgramSTT("wrong-key-abcdef", url=dg.listen_url).open(sample_rate=RATE)
        stream = await stt(dg).open(sample_rate=RATE)
        await stream.close()
        await collect(tts(dg).synthesize("Hi."))
    assert "websockets" in caplog.text or "deepgram" in caplog.text
    assert KEY not in caplog.text and "wrong-key" not in caplog.text
    assert not err.value.retryable and err.value.status == 401 and err.value.code == "UNAUTHORIZED"
    assert "Invalid credentials." in str(err.value) and "wrong-key" not in str(err.value)
    assert "(request " in str(err.value)


@pytest.mark.parametrize("status", [429, 500, 503])
async def test_throttling_and_server_errors_at_handshake_are_retryable(status: int) -> None:
    async with fake(listen=Faults(reject_status=status, reject_count=1)) as dg:
        with pytest.raises(ProviderError) as err:
            await stt(dg).open(sample_rate=RATE)
        stream = await stt(dg).open(sample_rate=RATE)  # the next attempt gets through
        await stream.close()
    assert err.value.retryable and err.value.status == status and not isinstance(err.value, ProviderAuthError)
    assert "Scripted refusal" in str(err.value)  # from err_msg (4xx) or message (5xx) of the JSON body


async def test_connection_refused_is_a_retryable_connection_error() -> None:
    async with fake() as dg:
        url = dg.listen_url
    with pytest.raises(ProviderConnectionError) as err:
        await DeepgramSTT(KEY, url=url).open(sample_rate=RATE)
    assert err.value.retryable


async def test_a_drop_mid_stream_raises_from_the_iterator() -> None:
    async with fake(listen=Faults(drop_after_frames=3)) as dg:
        stream = await stt(dg).open(sample_rate=RATE)
        got = Collector(stream)
        for _ in range(6):
            await stream.send_audio(tone())  # sends after the drop are dropped quietly
        await stream.finalize()
        await asyncio.wait_for(got.task, 2)
        await stream.close()
    assert isinstance(got.error, ProviderConnectionError) and got.error.retryable
    assert isinstance(got.events[-1], Usage) and got.events[-1].failed


async def test_malformed_json_is_a_protocol_error() -> None:
    async with fake(listen=Faults(malformed_after_frames=2)) as dg:
        stream = await stt(dg).open(sample_rate=RATE)
        got = Collector(stream)
        for _ in range(3):
            await stream.send_audio(tone())
        await asyncio.wait_for(got.task, 2)
        await stream.close()
    assert isinstance(got.error, ProviderProtocolError) and not got.error.retryable
    assert "not JSON" in str(got.error)


@pytest.mark.parametrize(("code", "reason", "retryable"), [
    (1008, "DATA-0000: the payload cannot be decoded as audio", False),
    (1011, "NET-0000: the service did not produce a result in time", True),
])
async def test_close_codes_carry_the_reason(code: int, reason: str, retryable: bool) -> None:
    faults = Faults(close_after_frames=1, close_code=code, close_reason=reason)
    async with fake(listen=faults) as dg:
        stream = await stt(dg).open(sample_rate=RATE)
        got = Collector(stream)
        await stream.send_audio(tone())
        await asyncio.wait_for(got.task, 2)
        await stream.close()
    assert isinstance(got.error, ProviderError) and got.error.retryable is retryable
    assert got.error.code == reason.split(":")[0] and reason in str(got.error)


# ---- a recognizer that hangs with its socket open (issue 10) ------------------------------------------------


async def test_a_hang_after_words_were_shown_fails_the_finalize_instead_of_losing_them() -> None:
    # Deepgram showed interim words, then stopped answering (no result, no close): an unanswered Finalize
    # cannot mean "nothing buffered", so the stream fails (a chain replays the turn) rather than closing the
    # turn with no words.
    async with fake(transcripts=["I would like to book a cleaning"], interim_every_s=0.04,
                    listen=Faults(stall_after_frames=5)) as dg:
        stream = await stt(dg, finalize_timeout_s=0.1).open(sample_rate=RATE)
        got = Collector(stream)
        for _ in range(10):
            await stream.send_audio(tone())
        await stream.finalize()
        await asyncio.wait_for(got.task, 2)
        await stream.close()
    assert dg.listen_sessions[0].stalled
    assert [e.text for e in got.of(Transcript)] == ["I", "I would"] and not got.closing()
    assert isinstance(got.error, ProviderTimeout) and got.error.retryable
    assert "while holding words it showed" in str(got.error)
    assert isinstance(got.events[-1], Usage) and got.events[-1].failed


async def test_a_hang_before_any_answer_fails_once_a_second_of_audio_went_unanswered() -> None:
    async with fake(transcripts=["hello"], listen=Faults(stall_after_frames=0)) as dg:
        stream = await stt(dg, finalize_timeout_s=0.1).open(sample_rate=RATE)
        got = Collector(stream)
        for _ in range(60):  # 1.2 s of speech, not one message back
            await stream.send_audio(tone())
        await stream.finalize()
        await asyncio.wait_for(got.task, 2)
        await stream.close()
    assert isinstance(got.error, ProviderTimeout) and "1.2 s of audio unanswered" in str(got.error)
    assert got.events == [got.events[-1]] and billed(got.events[-1], at_least=0.0, failed=True)


@pytest.mark.parametrize("endpointing_ms", [300, None])
async def test_a_hang_long_before_the_finalize_fails_at_once_where_endpointing_answers_pauses(
        endpointing_ms: int | None) -> None:
    # Deepgram showed words, then said nothing for 1.4-1.5 s of audio, the pause that ended the turn included:
    # with endpointing it would have answered that pause (speech_final), so the Finalize answer is not waited
    # for; without endpointing nothing answers a pause and the Finalize timer decides.
    async with fake(transcripts=["I would like to book a cleaning"], interim_every_s=0.04,
                    listen=Faults(stall_after_frames=5)) as dg:
        stream = await stt(dg, finalize_timeout_s=0.5, endpointing_ms=endpointing_ms).open(sample_rate=RATE)
        got = Collector(stream)
        for _ in range(10):
            await stream.send_audio(tone())
        await eventually(lambda: len(got.of(Transcript)) == 2)  # the interims of frames 2 and 4 are in
        for _ in range(70):
            await stream.send_audio(quiet())
        await stream.finalize()
        await asyncio.sleep(0.1)
        early = got.task.done()
        await asyncio.wait_for(got.task, 2)
        await stream.close()
    assert early is (endpointing_ms is not None)
    assert isinstance(got.error, ProviderTimeout)
    assert ("showed and silent for 1." if endpointing_ms else "no answer to Finalize within 0.5 s") in str(got.error)
    assert dg.listen_sessions[0].count("Finalize") == (0 if endpointing_ms else 1)


async def test_an_unanswered_finalize_after_the_turn_closed_itself_is_no_hang() -> None:
    # Deepgram "may" answer a Finalize with nothing when nothing is buffered: speech_final closed the turn,
    # the pause went on for parley's endpoint; that is not a hang.
    async with fake(transcripts=["thanks"], answer_empty_finalize=False) as dg:
        stream = await stt(dg, finalize_timeout_s=0.1).open(sample_rate=RATE)
        got = Collector(stream)
        for _ in range(10):
            await stream.send_audio(tone())
        for _ in range(35):  # 700 ms of silence: speech_final at 300 ms
            await stream.send_audio(quiet())
        await eventually(lambda: bool(got.closing()))
        await stream.finalize()
        await asyncio.sleep(0.2)  # past the Finalize timer
        await stream.close()
        await got.task
    assert [t.text for t in got.closing()] == ["thanks"] and got.error is None


# ---- fallback: Deepgram drops mid-turn, a local recognizer takes over -------------------------------------


class LocalStream:
    def __init__(self) -> None:
        self.samples = 0
        self.queue: asyncio.Queue[STTEvent | None] = asyncio.Queue()

    async def send_audio(self, samples: np.ndarray[Any, np.dtype[np.int16]]) -> None:
        self.samples += samples.size

    def pause_hint(self) -> None: ...

    def speech_resumed(self) -> None: ...

    async def finalize(self) -> None:
        await self.queue.put(Transcript(f"local heard {self.samples}", final=True, t=0.0, speech_final=True))

    async def close(self) -> None:
        await self.queue.put(None)

    def __aiter__(self) -> AsyncIterator[STTEvent]:
        return self._it()

    async def _it(self) -> AsyncIterator[STTEvent]:
        while (ev := await self.queue.get()) is not None:
            yield ev


class LocalSTT:
    name = "local"

    async def open(self, *, sample_rate: int, language: str | None = None) -> LocalStream:
        return LocalStream()


async def test_fallback_switches_mid_turn_when_deepgram_drops() -> None:
    switches: list[tuple[str, str, str]] = []
    async with fake(listen=Faults(drop_after_frames=3)) as dg:
        chain = FallbackSTT([stt(dg), LocalSTT()], on_switch=lambda c, a, b, e: switches.append((c, a, b)))
        stream = await chain.open(sample_rate=RATE)
        for _ in range(5):
            await stream.send_audio(tone())
        await stream.finalize()
        events: list[STTEvent] = []
        async with asyncio.timeout(2):
            async for ev in stream:
                events.append(ev)
                if isinstance(ev, Transcript):
                    break
        await stream.close()
    assert events[-1] == Transcript(f"local heard {5 * FRAME}", final=True, t=0.0, speech_final=True)
    assert any(isinstance(e, Usage) and e.provider == "deepgram" and e.failed for e in events)
    assert chain.stats.switches == 1 and switches == [("stt", "deepgram", "local")]
    assert chain.stats.failures == {"deepgram": 1}


# ---- TTS ---------------------------------------------------------------------------------------------


def tts(dg: FakeDeepgram, **kwargs: Any) -> DeepgramTTS:
    return DeepgramTTS(KEY, url=dg.speak_url, **kwargs)


async def collect(gen: AsyncIterator[TTSEvent]) -> list[TTSEvent]:
    return [ev async for ev in gen]


async def test_speak_streams_linear16_chunks_until_flushed() -> None:
    async with fake() as dg:
        provider: TTSProvider = tts(dg)
        events = await collect(provider.synthesize("Hello there."))
        await tts_close(provider)
    chunks = [e for e in events if isinstance(e, AudioChunk)]
    assert len(chunks) == 6 and all(c.sample_rate == 16000 for c in chunks)  # 12 chars x 10 ms in 20 ms frames
    assert sum(c.samples.size for c in chunks) == 1920 and chunks[0].text == "Hello there." and chunks[1].text is None
    assert int(np.abs(chunks[0].samples).max()) > 8000  # the fake's tone, decoded as little-endian int16
    assert events[-1] == Usage("deepgram", "aura-2-thalia-en", "tts", characters=12)
    [shake] = [h for h in dg.handshakes if h.path == "/v1/speak"]
    assert shake.headers["authorization"] == f"Token {KEY}"
    assert shake.query == {"model": "aura-2-thalia-en", "encoding": "linear16", "sample_rate": "16000"}
    session = dg.speak_sessions[0]
    assert session.received == [{"type": "Speak", "text": "Hello there."}, {"type": "Flush"}, {"type": "Close"}]
    assert [m["type"] for m in session.sent] == ["Metadata", "Flushed"]


async def tts_close(provider: TTSProvider) -> None:
    assert isinstance(provider, DeepgramTTS)
    await provider.aclose()


async def test_two_requests_share_one_socket_and_prewarm_opens_it_early() -> None:
    async with fake() as dg:
        provider = tts(dg, sample_rate=8000)
        await provider.prewarm()
        assert len(dg.handshakes) == 1
        first = await collect(provider.synthesize("One."))
        second = await collect(provider.synthesize("Two more."))
        await provider.aclose()
    assert len(dg.handshakes) == 1 and provider.connections == 1 and len(dg.speak_sessions) == 1
    assert sum(e.samples.size for e in first if isinstance(e, AudioChunk)) == 4 * 80
    assert sum(e.samples.size for e in second if isinstance(e, AudioChunk)) == 9 * 80
    assert dg.speak_sessions[0].count("Close") == 1


async def test_barge_in_sends_clear_reports_cancelled_usage_to_the_call_and_the_socket_stays_clean() -> None:
    cancelled: list[Usage] = []
    async with fake(speak_frame_delay_s=0.005) as dg:
        provider = tts(dg, sample_rate=8000)
        call = await provider.open(cancelled.append)  # the call's sink: a barge-in's usage goes here
        assert call.sample_rate == 8000
        gen = call.synthesize("A long answer that the caller interrupts.")
        first = await anext(gen)
        assert isinstance(first, AudioChunk)
        await gen.aclose()  # barge-in
        assert cancelled == [Usage("deepgram", "aura-2-thalia-en", "tts", characters=41, cancelled=True)]
        await eventually(lambda: dg.speak_sessions[0].count("Clear") == 1)
        after = await collect(call.synthesize("Yes?"))  # no stale audio of the interrupted answer
        await call.close()
        await provider.aclose()
    assert len(cancelled) == 1  # the finished request's usage was yielded, not sent to the sink
    assert sum(e.samples.size for e in after if isinstance(e, AudioChunk)) == 4 * 80
    assert len(dg.handshakes) == 1
    session = dg.speak_sessions[0]
    assert [m["type"] for m in session.received] == ["Speak", "Flush", "Clear", "Speak", "Flush", "Close"]
    assert [m["type"] for m in session.sent] == ["Metadata", "Cleared", "Flushed"]


async def test_cancelling_the_consumer_task_also_clears() -> None:
    cancelled: list[Usage] = []
    async with fake(speak_frame_delay_s=0.01) as dg:
        provider = tts(dg)

        async def play() -> None:  # one request outside a call: its own on_cancel sink
            async for _ in provider.synthesize("Some words to speak.", on_cancel=cancelled.append):
                pass

        task = asyncio.create_task(play())
        await eventually(lambda: bool(dg.speak_sessions) and dg.speak_sessions[0].binary_frames >= 2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await eventually(lambda: dg.speak_sessions[0].count("Clear") == 1)
        await provider.aclose()
    assert len(cancelled) == 1 and cancelled[0].cancelled


async def test_a_call_keeps_its_socket_and_gives_it_back_to_the_pool_at_close() -> None:
    async with fake() as dg:
        provider = tts(dg, sample_rate=8000)
        a, b = await provider.open([].append), await provider.open([].append)
        await collect(a.synthesize("One."))
        await collect(b.synthesize("Two."))  # a holds its socket between requests: b opens another
        await collect(a.synthesize("Three."))
        await collect(b.synthesize("Four."))
        assert provider.connections == 2
        await a.close()
        c = await provider.open([].append)
        events = await collect(c.synthesize("Five."))  # a's socket, from the pool: no handshake
        assert provider.connections == 2
        await c.close()
        await b.close()
        await provider.aclose()
    assert sum(e.samples.size for e in events if isinstance(e, AudioChunk)) == 5 * 80
    texts = [[m["text"] for m in s.received if m["type"] == "Speak"] for s in dg.speak_sessions]
    assert texts == [["One.", "Three.", "Five."], ["Two.", "Four."]]  # one call's Flushes on one connection
    assert all(s.count("Close") == 1 for s in dg.speak_sessions)  # both came back in a known state


async def test_a_call_closed_during_its_clear_returns_the_socket_once_cleared() -> None:
    cancelled: list[Usage] = []
    async with fake(speak_frame_delay_s=0.005) as dg:
        provider = tts(dg, sample_rate=8000)
        call = await provider.open(cancelled.append)
        gen = call.synthesize("A long answer that the caller interrupts.")
        assert isinstance(await anext(gen), AudioChunk)
        await gen.aclose()  # barge-in, then the caller hangs up before Cleared arrives
        await call.close()
        after = await collect(provider.synthesize("Yes?"))  # waits for the drain, then reuses the socket
        await provider.aclose()
    assert len(cancelled) == 1 and cancelled[0].cancelled
    assert sum(e.samples.size for e in after if isinstance(e, AudioChunk)) == 4 * 80
    assert provider.connections == 1
    assert [m["type"] for m in dg.speak_sessions[0].received] == ["Speak", "Flush", "Clear", "Speak", "Flush", "Close"]


async def test_a_socket_closed_while_idle_is_replaced() -> None:
    async with fake(speak_idle_timeout_s=0.1) as dg:
        provider = tts(dg, sample_rate=8000)
        await collect(provider.synthesize("First."))
        await eventually(lambda: dg.speak_sessions[0].closed is not None)
        await asyncio.sleep(0.02)
        events = await collect(provider.synthesize("Second."))
        await provider.aclose()
    assert sum(e.samples.size for e in events if isinstance(e, AudioChunk)) == 7 * 80
    assert len(dg.speak_sessions) == 2 and provider.connections == 2


async def test_speak_handshake_errors_map_like_listen() -> None:
    async with fake(speak=Faults(reject_status=429)) as dg:
        events: list[TTSEvent] = []
        with pytest.raises(ProviderError) as err:
            async for ev in tts(dg).synthesize("Hi."):
                events.append(ev)
        with pytest.raises(ProviderAuthError):
            await collect(DeepgramTTS("bad-key-123", url=dg.speak_url).synthesize("Hi."))
    assert err.value.retryable and err.value.status == 429
    assert events == [Usage("deepgram", "aura-2-thalia-en", "tts", failed=True)]  # nothing reached Deepgram


async def test_speak_drop_mid_audio_is_a_connection_error_after_failed_usage() -> None:
    async with fake(speak=Faults(drop_after_frames=2)) as dg:
        events: list[TTSEvent] = []
        with pytest.raises(ProviderConnectionError):
            async for ev in tts(dg).synthesize("A sentence long enough for several frames."):
                events.append(ev)
    assert sum(isinstance(e, AudioChunk) for e in events) == 2
    assert events[-1] == Usage("deepgram", "aura-2-thalia-en", "tts", characters=42, failed=True)


async def test_speak_malformed_json_is_a_protocol_error() -> None:
    async with fake(speak=Faults(malformed_after_frames=1)) as dg:
        with pytest.raises(ProviderProtocolError):
            await collect(tts(dg).synthesize("Hello there."))


# ---- the Flush cap (docs tts-ws-flush: 20 per 60 s; per connection or per key is not documented) -----------


async def test_flush_cap_per_connection_is_absorbed_by_a_fresh_socket() -> None:
    async with FakeDeepgram(KEY, ms_per_char=0.5, flush_limit=20, flush_limit_scope="connection") as dg:
        async with tts(dg) as provider:
            for i in range(25):
                events = await collect(provider.synthesize(f"Sentence {i}."))
                assert any(isinstance(e, AudioChunk) for e in events)
    assert dg.flush_warnings == 0 and len(dg.speak_sessions) == 2


async def test_flush_cap_per_connection_moves_a_call_to_a_fresh_socket() -> None:
    async with FakeDeepgram(KEY, ms_per_char=0.5, flush_limit=20, flush_limit_scope="connection") as dg:
        async with tts(dg) as provider:
            call = await provider.open([].append)
            for i in range(25):
                events = await collect(call.synthesize(f"Sentence {i}."))
                assert any(isinstance(e, AudioChunk) for e in events)
            await call.close()
    assert dg.flush_warnings == 0 and [s.count("Flush") for s in dg.speak_sessions] == [20, 5]


async def test_flush_cap_per_key_fails_fast_and_retryable_instead_of_stalling() -> None:
    async with FakeDeepgram(KEY, ms_per_char=0.5, flush_limit=20, flush_limit_scope="key") as dg:
        async with tts(dg, read_timeout_s=1.0) as provider:
            for i in range(20):
                await collect(provider.synthesize(f"Sentence {i}."))
            with pytest.raises(ProviderError) as first:
                await collect(provider.synthesize("Sentence twenty."))
            assert first.value.code == "flush_limit" and first.value.retryable
            with pytest.raises(ProviderError) as second:  # inside the window: not even sent
                await collect(provider.synthesize("Sentence twenty-one."))
            assert second.value.code == "flush_limit"
    assert dg.flush_warnings == 1
