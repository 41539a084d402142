"""Voices for the simulated caller: any local TTS, and a pitch-lowered variant of one.

Owns: picking the caller's voice for ``parley simulate``. The caller must not sound like the agent.
Measured here through the 8 kHz G.711 path into whisper tiny.en: espeak-ng is recognised badly
("Tuesday, please" -> "To make clean"), while hibari lowered by three semitones (x0.84: a deeper, slower
speaker) was recognised word for word on all the scenario lines. piper (GPL-3.0, optional extra) is the
other natural-sounding choice when installed.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator

from parley.providers.base import AudioChunk, LocalVoice, TTSEvent, TTSProvider, UsageSink

CALLER_VOICES = ("hibari-low", "espeak", "piper", "hibari")
LOWER_3_SEMITONES = 2 ** (-3 / 12)


class PitchShifted(LocalVoice):
    """Plays another voice's samples at a lower rate: pitch and tempo drop together (a different speaker)."""

    def __init__(self, inner: TTSProvider, factor: float = LOWER_3_SEMITONES) -> None:
        self.inner = inner
        self.factor = factor
        self.name = f"{inner.name}-x{factor:.2f}"
        self.sample_rate = round(inner.sample_rate * factor)

    async def synthesize(self, text: str, *, on_cancel: UsageSink | None = None) -> AsyncGenerator[TTSEvent, None]:
        # closed with this generator, so a request stopped early reports its usage to on_cancel at once
        async with contextlib.aclosing(self.inner.synthesize(text, on_cancel=on_cancel)) as events:
            async for ev in events:
                if isinstance(ev, AudioChunk):
                    yield AudioChunk(ev.samples, round(ev.sample_rate * self.factor), ev.text)
                else:
                    yield ev


CALLER_SEED = 0  # hibari samples noise: an unseeded caller says each line a little differently every run


def caller_voice(kind: str, agent_tts: TTSProvider | None = None) -> TTSProvider:
    """The simulated caller's voice. hibari is seeded, so a scenario's caller audio is the same every run
    (whisper heard "two stay" for "Tuesday" in some unseeded runs: a flaky test, not a flaky agent)."""
    from parley.app import build_tts
    from parley.providers.fallback import FallbackTTS
    from parley.providers.hibari_tts import HibariTTS

    if kind in ("hibari-low", "hibari"):
        inner = agent_tts.providers if isinstance(agent_tts, FallbackTTS) else [agent_tts]
        loaded = next((p for p in inner if isinstance(p, HibariTTS)), None)  # share the agent's model
        base = loaded if loaded is not None else build_tts("hibari")
        if isinstance(base, HibariTTS):
            base = HibariTTS(base.model, speed=base.speed, seed=CALLER_SEED)
        return PitchShifted(base) if kind == "hibari-low" else base
    return build_tts(kind)
