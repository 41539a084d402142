"""Streaming sample-rate conversion with soxr.

Owns: one continuous resampler per audio path. Chunked playback measured on a real FreeSWITCH showed
why this matters: restarting a resampler per file leaves an error burst ("tick") at every chunk
boundary (11 dB local SNR), while chunks resampled by one continuous stream join sample-exactly.
"""

from __future__ import annotations

import numpy as np
import soxr

from parley.audio.pcm import Int16Array


class StreamResampler:
    """int16 mono in at ``in_rate``, int16 mono out at ``out_rate``; state carries across calls."""

    def __init__(self, in_rate: int, out_rate: int, *, quality: str = "HQ") -> None:
        self.in_rate = in_rate
        self.out_rate = out_rate
        self._quality = quality
        self._stream: soxr.ResampleStream | None = None
        if in_rate != out_rate:
            self._stream = soxr.ResampleStream(in_rate, out_rate, 1, dtype="int16", quality=quality)

    def process(self, samples: Int16Array) -> Int16Array:
        if self._stream is None:
            return samples.astype(np.int16, copy=False)
        out = self._stream.resample_chunk(samples.astype(np.int16, copy=False), last=False)
        return np.asarray(out, dtype=np.int16)

    def flush(self) -> Int16Array:
        """Drain the filter delay at the end of a stream; the resampler can be reused afterwards."""
        if self._stream is None:
            return np.zeros(0, dtype=np.int16)
        out = np.asarray(self._stream.resample_chunk(np.zeros(0, dtype=np.int16), last=True), dtype=np.int16)
        self.reset()
        return out

    def reset(self) -> None:
        """Forget buffered input (after a barge-in, the rest of the audio is discarded anyway)."""
        if self._stream is not None:
            self._stream = soxr.ResampleStream(self.in_rate, self.out_rate, 1, dtype="int16", quality=self._quality)


def resample(samples: Int16Array, in_rate: int, out_rate: int) -> Int16Array:
    """Whole-buffer conversion (for files and tests)."""
    if in_rate == out_rate:
        return samples.astype(np.int16, copy=False)
    return np.asarray(soxr.resample(samples.astype(np.int16, copy=False), in_rate, out_rate), dtype=np.int16)
