"""The scripted caller of ``parley simulate``: speaks turns into a fake call and watches the agent play.

Owns: rendering one caller turn (text pieces in a local voice, joined at their audible edges with the
designed pauses, at 8 kHz), saying it into the fake call, and keeping what was said and when: the media
time of its first sample, on the session's clock (the start of the next frame the fake sends), so the ear
measurement knows the caller's true speech end. Also waiting for the agent (quiet, or starting to play).
Must not know the session, parley's timings or the scenario file format.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import numpy as np

from parley.audio.pcm import Int16Array
from parley.audio.resample import resample
from parley.audio.trim import first_audible_index, last_audible_index
from parley.providers.base import AudioChunk, TTSProvider
from parley.sim.ear import CallerTurnAudio
from parley.sim.fake_freeswitch import FakeCall

PHONE_RATE = 8000
PIECE_PAD_MS = 15.0  # kept around each piece's audible part where a say list joins pieces


@dataclass(frozen=True, slots=True)
class Pause:
    """A designed pause inside one caller turn, between the audible edges of the pieces around it."""

    ms: float


SayPiece = str | Pause


class ScriptedCaller:
    """Speaks into the fake call and watches what FreeSWITCH plays to know when the agent talks."""

    def __init__(self, call: FakeCall, voice: TTSProvider) -> None:
        self.call = call
        self.voice = voice
        self.track: list[tuple[float, Int16Array]] = []  # (media time of the first sample, 8 kHz audio)
        self.turns: list[CallerTurnAudio] = []

    def agent_active(self) -> bool:
        playing = any(p.started_at is not None and p.stopped_at is None for p in self.call.playbacks)
        queued = any(p.started_at is None and not p.flushed and p.status is None for p in self.call.playbacks)
        return playing or queued

    async def wait_agent_quiet(self, quiet_ms: float, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        quiet_since: float | None = None
        while time.monotonic() < deadline:
            if self.agent_active():
                quiet_since = None
            else:
                quiet_since = quiet_since or time.monotonic()
                if time.monotonic() - quiet_since >= quiet_ms / 1000:
                    return
            await asyncio.sleep(0.02)

    async def wait_agent_starts(self, after: float, timeout: float = 30.0) -> float | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            starts = [p.started_at for p in self.call.playbacks if p.started_at is not None and p.started_at > after]
            if starts:
                return min(starts)
            await asyncio.sleep(0.01)
        return None

    async def render(self, pieces: tuple[SayPiece, ...]) -> Int16Array:
        """One caller turn at 8 kHz: text pieces joined at their audible edges with the designed pauses."""
        parts: list[Int16Array] = []
        pad = round(PIECE_PAD_MS * PHONE_RATE / 1000)
        texts = [i for i, p in enumerate(pieces) if isinstance(p, str)]
        for i, piece in enumerate(pieces):
            if isinstance(piece, Pause):
                parts.append(np.zeros(max(0, round(piece.ms * PHONE_RATE / 1000) - 2 * pad), np.int16))
                continue
            audio = await self._synthesize(piece)
            first, last = first_audible_index(audio, PHONE_RATE), last_audible_index(audio, PHONE_RATE)
            if first is not None and last is not None:  # cut only where another piece or a pause joins
                lo = 0 if i == texts[0] else max(0, first - pad)
                hi = audio.size if i == texts[-1] else min(audio.size, last + 1 + pad)
                audio = audio[lo:hi]
            parts.append(audio)
        return np.concatenate(parts) if parts else np.zeros(0, np.int16)

    async def _synthesize(self, text: str) -> Int16Array:
        pieces: list[Int16Array] = []
        rate = self.voice.sample_rate
        async for ev in self.voice.synthesize(text):
            if isinstance(ev, AudioChunk):
                pieces.append(ev.samples)
                rate = ev.sample_rate
        return resample(np.concatenate(pieces) if pieces else np.zeros(0, np.int16), rate, PHONE_RATE)

    async def say(
        self, text: str | tuple[SayPiece, ...], cut_ms: float | None = None, *, barge_in: bool = False
    ) -> None:
        """Speak one turn (a say list: its pieces and pauses); returns when the audio has been spoken."""
        audio = await self.render((text,) if isinstance(text, str) else text)
        if cut_ms is not None:
            audio = audio[: int(cut_ms * PHONE_RATE / 1000)]
        start = self.media_time()
        self.call.say(audio, PHONE_RATE)
        self.track.append((start, audio))
        self.turns.append(CallerTurnAudio(start, audio, PHONE_RATE, barge_in))
        await asyncio.sleep(max(0.0, start + audio.size / PHONE_RATE - time.monotonic()))

    def media_time(self) -> float:
        """When audio given to the call now is spoken: now. The fake stream places injected audio at the
        current position inside the frame being filled, and sends each frame when its audio has been read
        (at its end, as FreeSWITCH's media bug does), so the session stamps it about one frame later."""
        return time.monotonic()

    def timeline(self, origin: float, n: int) -> Int16Array:
        out = np.zeros(n, dtype=np.int32)
        for t, audio in self.track:
            i = max(0, round((t - origin) * PHONE_RATE))
            j = min(n, i + audio.size)
            if j > i:
                out[i:j] += audio[: j - i]
        return np.clip(out, -32768, 32767).astype(np.int16)
