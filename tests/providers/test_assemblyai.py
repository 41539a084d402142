"""AssemblyAI Universal-Streaming v3 client against the loopback fake (real WebSocket on 127.0.0.1): turns,
the formatted pair, finalize/ForceEndpoint, 50 ms audio messages, handshake and close-code errors, drops,
malformed JSON, slow servers, cancellation and usage; plus table tests of the sans-I/O turn assembler."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable

import numpy as np
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from parley.audio.pcm import Int16Array
from parley.providers.assemblyai_stt import (
    AssemblyAISTT,
    AssemblyAISTTStream,
    AudioBatcher,
    Stall,
    TurnAssembler,
    close_error,
)
from parley.providers.base import STTEvent, STTProvider, Transcript, Usage
from parley.providers.errors import (
    ProviderAuthError,
    ProviderConnectionError,
    ProviderError,
    ProviderProtocolError,
    ProviderTimeout,
)
from testkit.fakes.assemblyai import FakeAssemblyAI, ScriptedTurn, SessionFault

KEY = "aai-test-key-0123456789"
RATE = 16000


def tone(ms: int, rate: int = RATE) -> Int16Array:
    n = rate * ms // 1000
    return (8000 * np.sin(2 * np.pi * 220 * np.arange(n) / rate)).astype(np.int16)


def quiet(ms: int, rate: int = RATE) -> Int16Array:
    return np.zeros(rate * ms // 1000, dtype=np.int16)


async def speak(stream: AssemblyAISTTStream, ms: int, *, loud: bool = True, rate: int = RATE) -> None:
    """Send ``ms`` of audio the way parley does: 20 ms frames."""
    for _ in range(ms // 20):
        await stream.send_audio(tone(20, rate) if loud else quiet(20, rate))


class Events:
    """Collects a stream's events in the background (as the session's consumer task does)."""

    def __init__(self, stream: AssemblyAISTTStream) -> None:
        self.items: list[STTEvent] = []
        self.error: ProviderError | None = None
        self._changed = asyncio.Event()
        self.task = asyncio.create_task(self._run(stream))

    async def _run(self, stream: AssemblyAISTTStream) -> None:
        try:
            async for ev in stream:
                self.items.append(ev)
                self._changed.set()
        except ProviderError as exc:
            self.error = exc
        self._changed.set()

    async def until(self, cond: Callable[[list[STTEvent]], bool], timeout: float = 2.0) -> None:
        async with asyncio.timeout(timeout):
            while not cond(self.items):
                self._changed.clear()
                await self._changed.wait()

    async def end(self) -> None:
        await asyncio.wait_for(self.task, 3)

    @property
    def finals(self) -> list[Transcript]:
        return [e for e in self.items if isinstance(e, Transcript) and e.final]

    @property
    def partials(self) -> list[str]:
        return [e.text for e in self.items if isinstance(e, Transcript) and not e.final]

    @property
    def usage(self) -> list[Usage]:
        return [e for e in self.items if isinstance(e, Usage)]


def closed_turn(items: list[STTEvent]) -> bool:
    return any(isinstance(e, Transcript) and e.speech_final for e in items)


def closed_turns(n: int) -> Callable[[list[STTEvent]], bool]:
    return lambda items: sum(isinstance(e, Transcript) and e.speech_final for e in items) == n


def stt(fake: FakeAssemblyAI, **kwargs: object) -> AssemblyAISTT:
    return AssemblyAISTT(KEY, url=fake.url, **kwargs)  # type: ignore[arg-type]


# ---- happy paths ------------------------------------------------------------------------------------------


async def test_turn_partials_then_one_formatted_final_and_usage() -> None:
    async with FakeAssemblyAI(KEY, turns=[ScriptedTurn.of("book a table for two")]) as fake:
        provider = stt(fake, end_of_turn_confidence_threshold=0.6, min_end_of_turn_silence_when_confident=500)
        assert isinstance(provider, STTProvider)
        stream = await provider.open(sample_rate=RATE)
        events = Events(stream)
        await speak(stream, 600)
        await speak(stream, 100, loud=False)
        await events.until(lambda items: len(items) == 5)  # the partials arrive while the caller is silent
        await stream.finalize()
        await events.until(closed_turn)
        await stream.close()
        await events.end()
        record = await fake.wait_closed()
    assert events.partials == ["book", "book a", "book a table", "book a table for", "book a table for two"]
    [final] = events.finals
    assert (final.text, final.speech_final) == ("Book a table for two.", True)
    assert final.confidence == pytest.approx(0.93)
    assert final.t == pytest.approx(0.5)  # the end of the last word
    [usage] = events.usage
    sent_termination = next(m for m in record.sent if m["type"] == "Termination")
    billed = sent_termination["session_duration_seconds"]
    assert isinstance(billed, float)
    assert usage == Usage("assemblyai", "universal-streaming-english", "stt", audio_seconds=billed)
    assert stream.audio_duration_s == pytest.approx(0.7)
    assert events.error is None
    # the request: raw key in Authorization, documented query, 50 ms binary messages, JSON controls
    assert record.headers["authorization"] == KEY
    assert record.query == {
        "speech_model": "universal-streaming-english",
        "sample_rate": "16000",
        "encoding": "pcm_s16le",
        "format_turns": "true",
        "end_of_turn_confidence_threshold": "0.6",
        "min_turn_silence": "500",
    }
    assert record.audio_ms == [50.0] * 14
    assert record.controls == [{"type": "ForceEndpoint"}, {"type": "Terminate"}]
    assert record.close_code == 1000


async def test_20ms_frames_become_50ms_messages_and_the_rest_is_padded_at_finalize() -> None:
    async with FakeAssemblyAI(KEY, turns=[ScriptedTurn.of("yes")]) as fake:
        stream = await stt(fake).open(sample_rate=8000)
        events = Events(stream)
        await speak(stream, 180, rate=8000)  # 9 frames: three 50 ms messages, 30 ms left over
        assert fake.sessions[0].audio_ms == [] or len(fake.sessions[0].audio_ms) <= 3
        assert stream.stats.messages_sent == 3
        await stream.finalize()  # the 30 ms go out padded to 50 ms (the server closes 3007 on less)
        await events.until(closed_turn)
        await stream.close()
        await events.end()
    record = fake.sessions[0]
    assert record.query["sample_rate"] == "8000"
    assert record.audio_ms == [50.0, 50.0, 50.0, 50.0]
    assert [f.text for f in events.finals] == ["Yes."]


def test_audio_batcher_sizes() -> None:
    batcher = AudioBatcher(16000, 100)
    out = [m for _ in range(12) for m in batcher.feed(quiet(20))]
    assert [len(m) for m in out] == [3200, 3200]  # 100 ms at 16 kHz, s16le
    rest = batcher.flush()
    assert rest is not None and len(rest) == 1600  # 40 ms buffered -> padded to 50 ms
    assert batcher.flush() is None
    with pytest.raises(ValueError, match="50-1000"):
        AudioBatcher(16000, 20)


async def test_the_fake_enforces_the_50_to_1000_ms_rule() -> None:
    """Why the client batches: a 20 ms message closes the session with 3007."""
    async with FakeAssemblyAI(KEY) as fake:
        url = fake.url + "?speech_model=universal-streaming-english&sample_rate=16000"
        async with connect(url, additional_headers={"Authorization": KEY}) as ws:
            begin = json.loads(await ws.recv())
            assert begin["type"] == "Begin"
            await ws.send(tone(20).tobytes())
            with pytest.raises(ConnectionClosed) as info:
                await ws.recv()
    assert info.value.rcvd is not None and info.value.rcvd.code == 3007
    assert "50-1000 ms" in info.value.rcvd.reason


@pytest.mark.parametrize("pair", [True, False])
async def test_exactly_one_final_per_turn_across_two_parley_turns(pair: bool) -> None:
    turns = [ScriptedTurn.of("hello there"), ScriptedTurn.of("what time is it", formatted="What time is it?")]
    async with FakeAssemblyAI(KEY, turns=turns, formatted_pair=pair) as fake:
        stream = await stt(fake).open(sample_rate=RATE)
        events = Events(stream)
        for n in (1, 2):
            await speak(stream, 400)
            await stream.finalize()
            await events.until(closed_turns(n))
        await asyncio.sleep(0.05)  # the late half of a pair must not produce a second final
        await stream.close()
        await events.end()
    assert [(f.text, f.speech_final) for f in events.finals] == [("Hello there.", True), ("What time is it?", True)]
    sent_ends = [m for m in fake.sessions[0].sent if m.get("end_of_turn")]
    assert len(sent_ends) == (4 if pair else 2)


async def test_unformatted_turns_when_format_turns_is_off() -> None:
    async with FakeAssemblyAI(KEY, turns=[ScriptedTurn.of("two adults")]) as fake:
        stream = await stt(fake, format_turns=False).open(sample_rate=RATE)
        events = Events(stream)
        await speak(stream, 200)
        await stream.finalize()
        await events.until(closed_turn)
        await stream.close()
        await events.end()
    assert fake.sessions[0].query["format_turns"] == "false"
    assert [(f.text, f.speech_final) for f in events.finals] == [("two adults", True)]


async def test_a_turn_the_server_ended_itself_is_final_but_parley_closes_its_own_turn() -> None:
    turns = [ScriptedTurn.of("my name is sam", end="silence", silence_ms=200)]
    async with FakeAssemblyAI(KEY, turns=turns) as fake:
        stream = await stt(fake).open(sample_rate=RATE)
        events = Events(stream)
        await speak(stream, 400)
        await speak(stream, 300, loud=False)  # the server's turn detection ends the turn
        await events.until(lambda items: bool([e for e in items if isinstance(e, Transcript) and e.final]))
        assert [(f.text, f.speech_final) for f in events.finals] == [("My name is sam.", False)]
        await speak(stream, 100, loud=False)
        await stream.finalize()  # only silence since: parley's turn closes at once, with no more text
        await events.until(closed_turn, timeout=0.05)
        assert [(f.text, f.speech_final) for f in events.finals][-1] == ("", True)
        await stream.close()
        await events.end()
    assert len(events.finals) == 2


def hum(ms: int, dbfs: float = -48.0, rate: int = RATE) -> Int16Array:
    """Line noise: louder than the client's silence (-50 dBFS), too quiet for the server to hear words."""
    n = rate * ms // 1000
    amplitude = 32768 * 10 ** (dbfs / 20) * np.sqrt(2)
    return (amplitude * np.sin(2 * np.pi * 50 * np.arange(n) / rate)).astype(np.int16)


async def test_force_endpoint_after_the_server_ended_the_turn_closes_parleys_turn_without_the_long_wait() -> None:
    """Live: a ForceEndpoint with no open turn gets no Turn back; noise after the turn must not cost the wait."""
    turns = [ScriptedTurn.of("my name is sam", end="silence", silence_ms=200)]
    async with FakeAssemblyAI(KEY, turns=turns) as fake:
        stream = await stt(fake, finalize_wait_s=30.0).open(sample_rate=RATE)
        events = Events(stream)
        await speak(stream, 400)
        await speak(stream, 300, loud=False)  # the server's turn detection ends the turn
        await events.until(lambda items: bool([e for e in items if isinstance(e, Transcript) and e.final]))
        for _ in range(10):
            await stream.send_audio(hum(20))  # noise on the line: "speech" to the client, nothing to the server
        await stream.finalize()
        await events.until(closed_turn, timeout=5.0)  # not the 30 s finalize wait
        await stream.close()
        await events.end()
    assert [(f.text, f.speech_final) for f in events.finals] == [("My name is sam.", False), ("", True)]
    assert fake.sessions[0].controls[0] == {"type": "ForceEndpoint"}


async def test_temporary_token_goes_in_the_query_not_a_header() -> None:
    async with FakeAssemblyAI(KEY, tokens={"tmp-token-abcdef"}, turns=[ScriptedTurn.of("hi")]) as fake:
        stream = await AssemblyAISTT(None, url=fake.url, token="tmp-token-abcdef").open(sample_rate=RATE)
        await stream.close()
    record = fake.sessions[0]
    assert record.query["token"] == "tmp-token-abcdef"
    assert "authorization" not in record.headers


async def test_slow_server_answering_after_the_finalize_wait_is_a_stall_not_the_last_partial() -> None:
    # a ForceEndpoint with a turn open must end it; no answer within finalize_wait_s is given up on as a hang
    # (the old behaviour closed parley's turn with the last partial, "one", and lost "two")
    fault = SessionFault(response_delay_s=0.2)
    async with FakeAssemblyAI(KEY, turns=[ScriptedTurn.of("one two")], faults=[fault]) as fake:
        stream = await stt(fake, finalize_wait_s=0.1).open(sample_rate=RATE)
        events = Events(stream)
        await speak(stream, 100)  # one word heard so far
        await events.until(lambda items: len(items) == 1)
        await stream.finalize()
        await events.end()
        await stream.close()
    assert events.finals == [] and isinstance(events.error, ProviderTimeout)
    assert "no answer to ForceEndpoint within 0.1 s" in str(events.error)
    assert [u.failed for u in events.usage] == [True]


# ---- a server that stops answering with its socket open (issue 10) -------------------------------------------


async def test_a_hang_with_a_turn_open_fails_instead_of_closing_with_the_partial() -> None:
    # the server showed "i would", then hung: the ForceEndpoint goes unanswered; the turn's words must not be
    # closed as "i would" (or ""), the stream fails so the STT chain replays the turn into the next recognizer
    fault = SessionFault(stall_after_audio=4)
    async with FakeAssemblyAI(KEY, turns=[ScriptedTurn.of("i would like to book a cleaning")],
                              faults=[fault]) as fake:
        stream = await stt(fake, finalize_wait_s=0.3).open(sample_rate=RATE)
        events = Events(stream)
        await speak(stream, 600)
        await speak(stream, 200, loud=False)
        await events.until(lambda items: len(items) == 2)
        assert events.partials == ["i", "i would"]
        await stream.finalize()
        await events.end()
        with pytest.raises(ProviderTimeout):
            await stream.send_audio(quiet(20))
        await stream.close()
        record = await fake.wait_closed()
    assert record.stalled and record.controls[0] == {"type": "ForceEndpoint"}
    assert events.finals == [] and isinstance(events.error, ProviderTimeout) and events.error.retryable
    assert "no answer to ForceEndpoint within 0.3 s while a turn it showed is open" in str(events.error)
    assert [u.failed for u in events.usage] == [True] and events.items[-1] is events.usage[0]


async def test_a_hang_before_any_partial_fails_at_once_when_a_second_of_speech_went_unanswered() -> None:
    # hung before it heard a word: no turn is open, as after a turn the server ended itself (where its silence
    # is normal), but 1.2 s of speech-level audio got no answer at all: not "nothing was said"
    fault = SessionFault(stall_after_audio=1)
    async with FakeAssemblyAI(KEY, turns=[ScriptedTurn.of("tuesday please")], faults=[fault]) as fake:
        stream = await stt(fake, finalize_wait_s=30.0).open(sample_rate=RATE)
        events = Events(stream)
        await speak(stream, 1200)
        await speak(stream, 100, loud=False)
        await stream.finalize()
        await asyncio.wait_for(events.task, 0.2)  # at once: neither the 30 s nor the brief no-turn wait
        await stream.close()
    assert events.finals == [] and isinstance(events.error, ProviderTimeout)
    assert "silent for 1.2 s of speech" in str(events.error)
    assert fake.sessions[0].stalled and fake.sessions[0].controls == []  # no ForceEndpoint waited for
    assert [u.failed for u in events.usage] == [True]


async def test_a_hang_mid_turn_fails_at_the_finalize_without_the_wait() -> None:
    fault = SessionFault(stall_after_audio=4)
    async with FakeAssemblyAI(KEY, turns=[ScriptedTurn.of("i would like to book a cleaning please")],
                              faults=[fault]) as fake:
        stream = await stt(fake, finalize_wait_s=30.0).open(sample_rate=RATE)
        events = Events(stream)
        await speak(stream, 200)
        await events.until(lambda items: len(items) == 2)  # "i", "i would"; then it hangs
        await speak(stream, 1200)  # 1.2 s of speech after the last partial
        await speak(stream, 200, loud=False)
        await stream.finalize()
        await asyncio.wait_for(events.task, 0.2)
        await stream.close()
    assert events.partials == ["i", "i would"] and events.finals == []
    assert isinstance(events.error, ProviderTimeout) and "silent for 1.2 s of speech" in str(events.error)


async def test_a_stall_after_the_server_ended_the_turn_with_only_brief_noise_still_closes_with_nothing() -> None:
    # the documented no-Turn answer to a ForceEndpoint after the server's own end is not taken for a hang,
    # even when the server really is hung by then: 0.2 s of noise is no evidence either way
    turns = [ScriptedTurn.of("my name is sam", end="silence", silence_ms=200)]
    async with FakeAssemblyAI(KEY, turns=turns, faults=[SessionFault(stall_after_audio=14)]) as fake:
        stream = await stt(fake, finalize_wait_s=30.0, no_turn_wait_s=0.2).open(sample_rate=RATE)
        events = Events(stream)
        await speak(stream, 400)
        await speak(stream, 300, loud=False)  # the server ends the turn (message 14), then hangs
        await events.until(lambda items: bool(events.finals))
        for _ in range(10):
            await stream.send_audio(hum(20))
        await stream.finalize()
        await events.until(closed_turn, timeout=1.0)
        await stream.close()
        await events.end()
    assert fake.sessions[0].stalled
    assert [(f.text, f.speech_final) for f in events.finals] == [("My name is sam.", False), ("", True)]
    assert events.error is None


# ---- failures -----------------------------------------------------------------------------------------------


async def test_bad_key_is_closed_1008_and_open_raises_auth_error(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with FakeAssemblyAI("the-real-key-0000") as fake:
        with pytest.raises(ProviderAuthError) as info:
            await stt(fake).open(sample_rate=RATE)
        record = await fake.wait_closed()
    assert record.close_code == 1008
    assert "Unauthorized Connection: Invalid API key" in str(info.value)
    assert info.value.code == "1008" and not info.value.retryable
    assert all(KEY not in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("fake_kwargs", "error_type", "retryable", "status"),
    [
        ({"api_key": "other-key-0000", "auth_rejection": "http"}, ProviderAuthError, False, 401),
        ({"api_key": KEY, "faults": [SessionFault(reject_status=429)]}, ProviderError, True, 429),
        ({"api_key": KEY, "faults": [SessionFault(reject_status=500)]}, ProviderError, True, 500),
        ({"api_key": KEY, "faults": [SessionFault(reject_status=400)]}, ProviderError, False, 400),
    ],
)
async def test_handshake_refusals(
    fake_kwargs: dict[str, object], error_type: type[ProviderError], retryable: bool, status: int
) -> None:
    async with FakeAssemblyAI(**fake_kwargs) as fake:  # type: ignore[arg-type]
        with pytest.raises(ProviderError) as info:
            await stt(fake).open(sample_rate=RATE)
    assert type(info.value) is error_type
    assert (info.value.retryable, info.value.status) == (retryable, status)
    assert KEY not in str(info.value)


async def test_missing_speech_model_is_refused_by_the_fake() -> None:
    async with FakeAssemblyAI(KEY) as fake:
        with pytest.raises(ProviderError, match="speech_model is required"):
            await stt(fake, speech_model="").open(sample_rate=RATE)


@pytest.mark.parametrize(
    ("code", "reason", "error_type", "retryable"),
    [
        (3005, "Internal server error", ProviderError, True),
        (3006, "Invalid Message", ProviderProtocolError, False),
        (3007, "Audio Transmission Rate Exceeded", ProviderError, False),
        (3008, "Session Expired", ProviderError, True),
        (3009, "Too many concurrent sessions", ProviderError, True),
        (1013, "Try again later", ProviderError, True),
        (1008, "Unauthorized Connection: insufficient balance", ProviderAuthError, False),
    ],
)
async def test_error_close_codes_mid_stream(
    code: int, reason: str, error_type: type[ProviderError], retryable: bool
) -> None:
    fault = SessionFault(close_code=code, close_reason=reason, after_audio=2)
    async with FakeAssemblyAI(KEY, turns=[ScriptedTurn.of("hello")], faults=[fault]) as fake:
        stream = await stt(fake).open(sample_rate=RATE)
        events = Events(stream)
        await speak(stream, 100)
        await events.end()
        with pytest.raises(ProviderError) as on_send:
            await speak(stream, 100)
        await stream.close()
    assert type(events.error) is error_type and events.error.retryable is retryable
    assert reason in str(events.error) and str(code) in str(events.error)
    assert on_send.value is events.error
    [usage] = events.usage
    assert usage.failed and usage.audio_seconds > 0


async def test_drop_mid_stream_is_a_connection_error() -> None:
    async with FakeAssemblyAI(KEY, turns=[ScriptedTurn.of("hello")], faults=[SessionFault(drop_after_audio=2)]) as fake:
        stream = await stt(fake).open(sample_rate=RATE)
        events = Events(stream)
        await speak(stream, 100)
        await events.end()
        await stream.close()
    assert type(events.error) is ProviderConnectionError and events.error.retryable


async def test_malformed_json_is_a_protocol_error() -> None:
    async with FakeAssemblyAI(KEY, faults=[SessionFault(malformed_after_audio=1)]) as fake:
        stream = await stt(fake).open(sample_rate=RATE)
        events = Events(stream)
        await speak(stream, 60)
        await events.end()
        await stream.close()
        record = await fake.wait_closed()
    assert type(events.error) is ProviderProtocolError and not events.error.retryable
    assert "not JSON" in str(events.error)
    assert record.closed.is_set()


async def test_session_cap_closes_3008() -> None:
    async with FakeAssemblyAI(KEY, max_session_s=0.1) as fake:
        stream = await stt(fake).open(sample_rate=RATE)
        events = Events(stream)
        await events.end()
        await stream.close()
    assert type(events.error) is ProviderError and events.error.retryable and events.error.code == "3008"


async def test_no_begin_in_time_is_a_timeout() -> None:
    async with FakeAssemblyAI(KEY, faults=[SessionFault(begin_delay_s=1.0)]) as fake:
        with pytest.raises(ProviderTimeout):
            await stt(fake, connect_timeout_s=0.2).open(sample_rate=RATE)


async def test_connection_refused() -> None:
    async with FakeAssemblyAI(KEY) as fake:
        url = fake.url
    with pytest.raises(ProviderConnectionError) as info:
        await AssemblyAISTT(KEY, url=url).open(sample_rate=RATE)
    assert info.value.retryable


async def test_over_real_time_is_3007_when_the_fake_checks_the_rate() -> None:
    async with FakeAssemblyAI(KEY, realtime_factor=1.0, burst_s=0.2) as fake:
        stream = await stt(fake).open(sample_rate=RATE)
        events = Events(stream)
        await speak(stream, 2000, loud=False)  # as fast as the socket takes it
        await events.end()
        with pytest.raises(ProviderError, match="Audio Transmission Rate Exceeded"):
            await speak(stream, 100)
        await stream.close()
    assert events.error is not None and events.error.code == "3007" and not events.error.retryable


# ---- cancellation and lifecycle ---------------------------------------------------------------------------


async def test_cancelling_close_cuts_the_socket_and_reports_cancelled_usage() -> None:
    usages: list[Usage] = []
    async with FakeAssemblyAI(KEY, faults=[SessionFault(termination_delay_s=5.0)]) as fake:
        stream = await stt(fake, on_usage=usages.append).open(sample_rate=RATE)
        await speak(stream, 100)
        closing = asyncio.create_task(stream.close())
        await asyncio.sleep(0.1)  # Terminate sent; the server is slow to answer
        closing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await closing
        record = await fake.wait_closed()
    assert record.closed.is_set() and record.close_code is None  # the server saw the TCP connection go
    assert [u.cancelled for u in usages] == [True] and usages[0].audio_seconds > 0


async def test_close_without_termination_in_time_still_reports_usage() -> None:
    usages: list[Usage] = []
    async with FakeAssemblyAI(KEY, faults=[SessionFault(termination_delay_s=5.0)]) as fake:
        stream = await stt(fake, on_usage=usages.append, close_timeout_s=0.2).open(sample_rate=RATE)
        events = Events(stream)
        await stream.close()
        await events.end()
        await stream.close()  # idempotent
    assert events.usage == usages and len(usages) == 1 and not usages[0].failed


def test_repr_and_errors_hide_the_key() -> None:
    provider = AssemblyAISTT(KEY)
    assert KEY not in repr(provider)
    with pytest.raises(ValueError, match="API key or"):
        AssemblyAISTT(None)


def test_close_error_table() -> None:
    assert type(close_error(None, "")) is ProviderConnectionError
    assert type(close_error(4001, "Not Authorized")) is ProviderAuthError
    assert type(close_error(1000, "")) is ProviderConnectionError
    assert close_error(4999, "?").retryable is False


# ---- the turn assembler, table-driven (no sockets, explicit now) -------------------------------------------


def turn(order: int, text: str, *, end: bool = False, formatted: bool = False) -> dict[str, object]:
    words = [{"text": w, "start": 0, "end": 100 * (i + 1), "confidence": 0.8} for i, w in enumerate(text.split())]
    return {
        "type": "Turn",
        "turn_order": order,
        "end_of_turn": end,
        "turn_is_formatted": formatted,
        "transcript": text,
        "words": words,
    }


def test_assembler_formatted_variant_never_comes_the_unformatted_one_is_used_after_the_wait() -> None:
    a = TurnAssembler(format_turns=True, format_wait_s=0.5)
    a.turn(turn(0, "hello"), now=0.0, t=0.0)
    assert a.finalize(0.0, 0.0) == []
    events, _ = a.turn(turn(0, "hello", end=True), now=0.1, t=0.1)
    assert events == [] and a.next_deadline() == pytest.approx(0.6)
    assert a.tick(0.5, 0.5) == []
    [final] = a.tick(0.6, 0.6)
    assert (final.text, final.final, final.speech_final) == ("hello", True, True)
    assert a.turn(turn(0, "Hello.", end=True, formatted=True), now=0.7, t=0.7) == ([], False)  # late: ignored


def test_assembler_next_turn_releases_a_held_end() -> None:
    a = TurnAssembler(format_turns=True)
    a.turn(turn(0, "hi", end=True), now=0.0, t=0.0)
    events, _ = a.turn(turn(1, "and"), now=0.1, t=0.1)
    assert [(e.text, e.final) for e in events] == [("hi", True), ("and", False)]


def test_assembler_finalize_before_any_partial_resends_force_endpoint_when_a_turn_opens() -> None:
    a = TurnAssembler(format_turns=False, finalize_wait_s=1.0)
    a.audio(speech=True)
    assert a.finalize(0.0, 0.3) == []  # speech was sent: wait for the server
    events, resend = a.turn(turn(0, "yes"), now=0.2, t=0.3)
    assert resend and [e.text for e in events] == ["yes"]
    assert a.next_deadline() == pytest.approx(1.2)
    events, resend = a.turn(turn(0, "yes", end=True), now=0.3, t=0.3)
    assert not resend and [(e.text, e.speech_final) for e in events] == [("yes", True)]


def test_assembler_finalize_with_nothing_heard_closes_after_the_wait() -> None:
    a = TurnAssembler(format_turns=False, finalize_wait_s=1.0)
    a.audio(speech=True)
    a.finalize(0.0, 0.5)
    [closing] = a.tick(1.0, 0.5)
    assert (closing.text, closing.speech_final) == ("", True)
    assert a.next_deadline() is None


def test_assembler_finalize_with_no_open_turn_waits_only_briefly_for_one() -> None:
    """Noise after the server ended its turn: no Turn will come back for the ForceEndpoint."""
    a = TurnAssembler(format_turns=False, finalize_wait_s=2.0, no_turn_wait_s=0.3)
    a.turn(turn(0, "hi", end=True), now=0.0, t=0.1)
    a.audio(speech=True)
    assert a.finalize(1.0, 1.2) == []
    assert a.next_deadline() == pytest.approx(1.3)
    [closing] = a.tick(1.3, 1.2)
    assert (closing.text, closing.speech_final) == ("", True)


def test_assembler_a_turn_opening_in_the_brief_wait_gets_the_full_wait() -> None:
    a = TurnAssembler(format_turns=False, finalize_wait_s=2.0, no_turn_wait_s=0.3)
    a.audio(speech=True)
    a.finalize(0.0, 0.1)
    events, resend = a.turn(turn(0, "wait"), now=0.2, t=0.3)
    assert resend and [e.text for e in events] == ["wait"] and a.next_deadline() == pytest.approx(2.2)


def test_assembler_unanswered_forceendpoint_with_a_turn_open_is_a_stall() -> None:
    a = TurnAssembler(format_turns=False, finalize_wait_s=1.0)
    a.turn(turn(0, "hello"), now=0.0, t=0.2)
    assert a.finalize(0.5, 0.5) == []
    assert a.tick(1.4, 0.5) == []
    [stall] = a.tick(1.5, 0.5)
    assert isinstance(stall, Stall) and "while a turn it showed is open" in stall.reason
    assert a.flush(0.6) == [] and a.next_deadline() is None  # the stalled turn's partial is no final


def test_assembler_speech_unanswered_for_a_second_is_a_stall_at_finalize() -> None:
    a = TurnAssembler(format_turns=False, finalize_wait_s=1.0, stall_audio_s=1.0)
    a.turn(turn(0, "hi", end=True), now=0.0, t=0.1)
    a.audio(speech=True, seconds=0.6)
    a.audio(speech=False, seconds=2.0)  # silence the server owes no answer to
    a.audio(speech=True, seconds=0.6)
    [stall] = a.finalize(3.0, 3.3)
    assert isinstance(stall, Stall) and "silent for 1.2 s of speech" in stall.reason


def test_assembler_any_server_message_answers_the_speech_sent() -> None:
    a = TurnAssembler(format_turns=False, finalize_wait_s=1.0, no_turn_wait_s=0.3)
    a.audio(speech=True, seconds=0.9)
    a.heard()
    a.audio(speech=True, seconds=0.9)
    assert a.finalize(1.0, 1.8) == []
    [closing] = a.tick(1.3, 1.8)
    assert (closing.text, closing.speech_final) == ("", True)
