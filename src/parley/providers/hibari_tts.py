"""Local text-to-speech: hibari-tts with its bundled voice "heart" (24 kHz, Apache-2.0, about 80x realtime).

Owns: loading hibari once per process (:class:`HibariModel`, created by the composition root and shared by
every call), and :class:`HibariTTS`, which synthesizes sentence by sentence on the model's worker thread
and streams each sentence's audio as soon as it exists. Must not know playback, resampling for the phone
line (the caller of ``synthesize`` does that) or other providers. Only the bundled voice is offered: hibari
downloads the other voices on first use, which must never happen here.

Threads. One worker thread per model runs hibari's sync ``stream()`` generator one ``next()`` at a time,
so sentences of concurrent calls interleave in FIFO order and never oversubscribe the CPU. When the
consumer stops early (task cancelled, ``aclose()``, or ``break``), the generator is closed on that same
thread after the sentence in progress, and nothing more is synthesized.

Usage. A complete iteration ends with ``Usage(kind="tts", characters=len(text))``. An async generator
cannot yield to a consumer that cancelled it, so the Usage of a request stopped early
(``cancelled=True``) goes to the request's ``on_cancel`` sink instead (in a call, the sink the call's stream
was opened with: ``open(on_usage)`` from :class:`~parley.providers.base.LocalVoice`); every request's Usage
reaches exactly one of the two. On failure a ``Usage(failed=True)`` is yielded, then the
:class:`~parley.providers.errors.ProviderError` (not retryable). A missing package is a
:class:`~parley.errors.ConfigError` with the install hint.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator
from typing import Any

import numpy as np

from parley.errors import ConfigError
from parley.providers.base import LocalVoice, TTSEvent, Usage, UsageSink
from parley.providers.errors import ProviderError
from parley.providers.local_voice import Pieces, VoiceWorker, stream_pieces

PROVIDER = "hibari-local"
VOICE = "heart"
SAMPLE_RATE = 24_000
INSTALL_HINT = "pip install 'parley[local]'"




class HibariModel:
    """hibari's ONNX session and G2P, loaded once; one worker thread does all synthesis for the process."""

    def __init__(self, engine: Any, *, threads: int) -> None:  # engine: hibari.Hibari (untyped)
        self._engine = engine
        self.threads = threads
        self.voice = VOICE
        self.sample_rate = SAMPLE_RATE
        self.chunks_synthesized = 0  # written by the worker thread only
        self.worker = VoiceWorker(PROVIDER)

    @classmethod
    def load(cls, *, threads: int = 1) -> HibariModel:
        """Load the bundled "heart" voice and warm it up (G2P lexicons load on first use). Blocking, ~0.5 s."""
        try:
            from hibari import Hibari  # type: ignore[import-untyped]
        except ImportError as exc:
            raise ConfigError(f"hibari-tts is not installed: {INSTALL_HINT}") from exc
        try:
            engine = Hibari(voice=VOICE, threads=threads)
            engine("Ready.", seed=0)
        except Exception as exc:  # onnxruntime / G2P failures: the library edge
            raise ProviderError(f"could not load hibari voice {VOICE!r}: {exc}", provider=PROVIDER) from exc
        return cls(engine, threads=threads)

    def pieces(self, text: str, *, speed: float, seed: int | None) -> Pieces:
        """Sync generator: one float32 array per sentence (long sentences come in clause-sized parts).

        Runs hibari's own ``stream()`` per sentence so every chunk knows the sentence it speaks.
        """
        for sentence in self._engine.split_sentences(text):
            label: str | None = str(sentence)
            for audio in self._engine.stream(sentence, speed=speed, seed=seed):
                self.chunks_synthesized += 1
                yield label, np.asarray(audio, dtype=np.float32)
                label = None

    def close(self) -> None:
        self.worker.close()

    def __enter__(self) -> HibariModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class HibariTTS(LocalVoice):
    """TTSProvider over a shared :class:`HibariModel`. ``seed`` fixes hibari's noise (bit-identical output)."""

    name: str = PROVIDER
    sample_rate: int = SAMPLE_RATE

    def __init__(
        self,
        model: HibariModel,
        *,
        speed: float = 1.0,
        seed: int | None = None,
    ) -> None:
        self.model = model
        self.speed = speed
        self.seed = seed

    async def synthesize(self, text: str, *, on_cancel: UsageSink | None = None) -> AsyncGenerator[TTSEvent, None]:
        stream = stream_pieces(
            self.model.worker,
            self.model.pieces(text, speed=self.speed, seed=self.seed),
            text=text,
            sample_rate=SAMPLE_RATE,
            usage=lambda cancelled, failed: self._usage(text, cancelled=cancelled, failed=failed),
            on_cancel=on_cancel,
        )
        async with contextlib.aclosing(stream):
            async for event in stream:
                yield event

    def _usage(self, text: str, *, cancelled: bool = False, failed: bool = False) -> Usage:
        return Usage(
            provider=PROVIDER, model=VOICE, kind="tts", characters=len(text), cancelled=cancelled, failed=failed
        )
