"""Voices for the simulated caller: any local TTS, and a pitch-lowered variant of one.

Owns: picking the caller's voice for ``parley simulate``. The caller must not sound like the agent.
Measured here through the 8 kHz G.711 path into whisper tiny.en: espeak-ng is recognised badly
("Tuesday, please" -> "To make clean"), while hibari lowered by three semitones (x0.84: a deeper, slower
speaker) was recognised word for word on all the scenario lines. piper (GPL-3.0, optional extra) is the
other natural-sounding choice when installed.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator

from parley.providers.base import AudioChunk, TTSEvent, TTSProvider

CALLER_VOICES = ("hibari-low", "espeak", "piper", "hibari")
LOWER_3_SEMITONES = 2 ** (-3 / 12)


class PitchShifted:
    """Plays another voice's samples at a lower rate: pitch and tempo drop together (a different speaker)."""

    def __init__(self, inner: TTSProvider, factor: float = LOWER_3_SEMITONES) -> None:
        self.inner = inner
        self.factor = factor
        self.name = f"{inner.name}-x{factor:.2f}"
        self.sample_rate = round(inner.sample_rate * factor)

    async def synthesize(self, text: str) -> AsyncGenerator[TTSEvent, None]:
        async for ev in self.inner.synthesize(text):
            if isinstance(ev, AudioChunk):
                yield AudioChunk(ev.samples, round(ev.sample_rate * self.factor), ev.text)
            else:
                yield ev


def caller_voice(kind: str, agent_tts: TTSProvider | None = None) -> TTSProvider:
    from parley.app import build_tts

    if kind == "hibari-low":
        inner = agent_tts if agent_tts is not None and agent_tts.name.startswith("hibari") else build_tts("hibari")
        return PitchShifted(inner)
    return build_tts(kind)
