"""A pure energy-based utterance detector (the echo agent's ears until the real VAD lands).

Owns: deciding, frame by frame, when speech starts and ends from signal level alone. Takes explicit
timestamps; never sleeps, never touches asyncio. A frame is "loud" above ``threshold_dbfs``; speech
starts after ``min_speech_ms`` of loud audio and ends after ``silence_ms`` of quiet.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from parley.audio.pcm import Int16Array, rms_dbfs


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    t: float  # time of the first loud frame


@dataclass(frozen=True, slots=True)
class SpeechEnded:
    t: float  # time the last loud frame ended
    audio: Int16Array = field(repr=False)  # the utterance, from onset to last loud frame
    duration_ms: float = 0.0


EnergyEvent = SpeechStarted | SpeechEnded


class EnergyUtteranceDetector:
    def __init__(
        self,
        rate: int,
        *,
        threshold_dbfs: float = -40.0,
        min_speech_ms: float = 60.0,
        silence_ms: float = 600.0,
        max_utterance_ms: float = 15000.0,
        preroll_ms: float = 100.0,
    ) -> None:
        self.rate = rate
        self.threshold = threshold_dbfs
        self.min_speech_ms = min_speech_ms
        self.silence_ms = silence_ms
        self.max_samples = int(max_utterance_ms * rate / 1000)
        self._preroll_max = int(preroll_ms * rate / 1000)
        self._preroll: list[Int16Array] = []
        self._frames: list[Int16Array] = []
        self._n = 0
        self._loud_ms = 0.0
        self._quiet_ms = 0.0
        self._speaking = False
        self._onset_t = 0.0
        self._last_loud_end = 0.0
        self._n_at_last_loud = 0

    @property
    def speaking(self) -> bool:
        return self._speaking

    def feed(self, samples: Int16Array, t: float) -> list[EnergyEvent]:
        """``samples`` received at time ``t`` (their start). Returns the events they complete."""
        dur_ms = 1000.0 * samples.size / self.rate
        loud = rms_dbfs(samples) > self.threshold
        out: list[EnergyEvent] = []
        if not self._speaking:
            if loud:
                if self._loud_ms == 0.0:
                    self._onset_t = t
                    self._frames = list(self._preroll)
                    self._n = sum(f.size for f in self._frames)
                self._loud_ms += dur_ms
                self._append(samples)
                self._last_loud_end = t + dur_ms / 1000.0
                self._n_at_last_loud = self._n
                if self._loud_ms >= self.min_speech_ms:
                    self._speaking = True
                    self._quiet_ms = 0.0
                    out.append(SpeechStarted(self._onset_t))
            else:
                self._loud_ms = 0.0
                self._frames, self._n = [], 0
                self._preroll.append(samples)
                while sum(f.size for f in self._preroll) > self._preroll_max and len(self._preroll) > 1:
                    self._preroll.pop(0)
            return out
        self._append(samples)
        if loud:
            self._quiet_ms = 0.0
            self._last_loud_end = t + dur_ms / 1000.0
            self._n_at_last_loud = self._n
        else:
            self._quiet_ms += dur_ms
        if self._quiet_ms >= self.silence_ms or self._n >= self.max_samples:
            audio = np.concatenate(self._frames)[: self._n_at_last_loud]
            out.append(SpeechEnded(self._last_loud_end, audio, 1000.0 * audio.size / self.rate))
            self._speaking = False
            self._loud_ms = self._quiet_ms = 0.0
            self._frames, self._n, self._preroll = [], 0, []
        return out

    def _append(self, samples: Int16Array) -> None:
        self._frames.append(samples)
        self._n += samples.size
