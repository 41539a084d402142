"""Silence at the edges of synthesized speech: where the audible part starts and ends, and trimming it.

Owns: the audibility test (non-overlapping windows of ``window_ms`` whose RMS level is above
``threshold_dbfs``, by default :data:`~parley.observe.timings.AUDIBLE_DBFS`, the same -40 dBFS the
ear measurement uses), :func:`first_audible_index` / :func:`last_audible_index` over a whole array,
and :class:`SpeechTrimmer`, which trims one utterance's audio as a TTS streams it in chunks: the
leading silence is dropped (but for a short pad so onsets are not clipped) and every silence longer
than ``max_gap_ms`` between audible parts is cut down to ``max_gap_ms``; shorter pauses pass untouched.
Pure: samples in, samples out; no asyncio, no clock, no playback. Must not know which TTS produced
the audio or where the trimmed audio goes.

Windows are aligned to the utterance's first sample, so the result does not depend on how the audio
was chunked (``feed(a); feed(b)`` gives the same samples as ``feed(a + b)``).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from parley.audio.pcm import Int16Array
from parley.observe.timings import AUDIBLE_DBFS

BoolArray = npt.NDArray[np.bool_]
_FULL_SCALE_SQUARED = 32768.0 * 32768.0  # the reference of rms_dbfs: a full-scale sine is -3 dBFS

# Defaults chosen by measurement (benchmarks/bench_tts_silence.py, 8 kHz): hibari starts every sentence
# with 305-395 ms of silence and ends it with 470-590 ms (785-915 ms between two sentences of a reply);
# espeak-ng 0-100 ms and 330-435 ms. A 15 ms pad before the first audible window keeps soft onsets that
# sit just under -40 dBFS (whisper's WER on hibari is unchanged for pads of 0-30 ms); 250 ms is a natural
# pause between sentences and above most comma pauses (hibari's median is 198 ms).
# Trim at the rate the caller hears (after resampling to the codec rate): at 24 kHz a leading /s/ or /th/
# is above -40 dBFS but mostly above 4 kHz, so after the phone band-limit up to ~100 ms of near-silence
# remains ahead of the first audible sample (measured: "So that's..." 110 ms at 8 kHz).
LEAD_PAD_MS = 15.0
MAX_GAP_MS = 250.0
WINDOW_MS = 5.0


def window_samples(rate: int, window_ms: float = WINDOW_MS) -> int:
    return max(1, round(rate * window_ms / 1000.0))


def audible_windows(
    samples: Int16Array, rate: int, threshold_dbfs: float = AUDIBLE_DBFS, window_ms: float = WINDOW_MS
) -> BoolArray:
    """One flag per window of ``window_ms`` (the last one may be partial): is its RMS above the threshold?"""
    win = window_samples(rate, window_ms)
    n = samples.size
    if n == 0:
        return np.zeros(0, dtype=np.bool_)
    full = n // win
    x = samples.astype(np.float64)
    limit = _FULL_SCALE_SQUARED * 10.0 ** (threshold_dbfs / 10.0)
    flags = np.empty(full + (1 if n % win else 0), dtype=np.bool_)
    if full:
        blocks = x[: full * win].reshape(full, win)
        flags[:full] = np.einsum("ij,ij->i", blocks, blocks) / win > limit
    if n % win:
        tail = x[full * win :]
        flags[full] = float(tail.dot(tail)) / tail.size > limit
    return flags


def first_audible_index(
    samples: Int16Array, rate: int, threshold_dbfs: float = AUDIBLE_DBFS, window_ms: float = WINDOW_MS
) -> int | None:
    """The first sample of the first window above ``threshold_dbfs``; None when nothing is audible."""
    flags = audible_windows(samples, rate, threshold_dbfs, window_ms)
    hits = np.flatnonzero(flags)
    return None if hits.size == 0 else int(hits[0]) * window_samples(rate, window_ms)


def last_audible_index(
    samples: Int16Array, rate: int, threshold_dbfs: float = AUDIBLE_DBFS, window_ms: float = WINDOW_MS
) -> int | None:
    """The last sample of the last window above ``threshold_dbfs``; None when nothing is audible."""
    flags = audible_windows(samples, rate, threshold_dbfs, window_ms)
    hits = np.flatnonzero(flags)
    if hits.size == 0:
        return None
    win = window_samples(rate, window_ms)
    return min(samples.size, (int(hits[-1]) + 1) * win) - 1


@dataclass(frozen=True, slots=True)
class TrimCounts:
    """What a :class:`SpeechTrimmer` removed, in samples at its rate."""

    leading: int = 0  # silence before the first audible window (beyond the kept pad)
    gaps: int = 0  # silence cut out of pauses longer than max_gap_ms between audible parts
    trailing: int = 0  # silence after the last audible window that was still held at finish()
    gaps_capped: int = 0  # how many pauses were shortened

    @property
    def total(self) -> int:
        return self.leading + self.gaps + self.trailing


class SpeechTrimmer:
    """Trims one utterance as it streams in: ``feed(chunk)`` returns what may be played now, ``finish()``
    the rest. Leading silence is kept only for ``lead_pad_ms`` before the first audible window; a pause
    longer than ``max_gap_ms`` keeps its first ``max_gap_ms - lead_pad_ms`` (the decay of the last word)
    and its last ``lead_pad_ms`` (before the next onset), so it lasts exactly ``max_gap_ms``.

    Silence is released as soon as it is known to be kept, so the trimmer holds back at most one window
    plus the pad. An utterance with nothing audible yields no samples at all.
    """

    def __init__(
        self,
        rate: int,
        *,
        threshold_dbfs: float = AUDIBLE_DBFS,
        window_ms: float = WINDOW_MS,
        lead_pad_ms: float = LEAD_PAD_MS,
        max_gap_ms: float = MAX_GAP_MS,
    ) -> None:
        self.rate = rate
        self.threshold_dbfs = threshold_dbfs
        self.window_ms = window_ms
        self._win = window_samples(rate, window_ms)
        self._pad = max(0, round(rate * lead_pad_ms / 1000.0))
        self._max_gap = max(self._pad, round(rate * max_gap_ms / 1000.0))
        self._rest = np.zeros(0, dtype=np.int16)  # the start of an incomplete window
        self._held = np.zeros(0, dtype=np.int16)  # the last (at most pad) samples of the current silence
        self._gap_kept = 0  # samples of the current silence already released
        self._gap_dropped = 0  # samples of the current silence dropped so far
        self._started = False
        self._finished = False
        self._leading = self._gaps = self._trailing = self._capped = 0
        self.samples_in = 0
        self.samples_out = 0
        self.first_audible_out: int | None = None  # index in the output of the first audible sample

    @property
    def counts(self) -> TrimCounts:
        return TrimCounts(self._leading, self._gaps, self._trailing, self._capped)

    @property
    def started(self) -> bool:
        """True once anything audible has been seen."""
        return self._started

    def ms(self, samples: int) -> float:
        return 1000.0 * samples / self.rate

    def feed(self, samples: Int16Array) -> Int16Array:
        """Audio the TTS produced next -> audio to play now (possibly empty)."""
        if self._finished:
            raise RuntimeError("SpeechTrimmer.feed() after finish()")
        self.samples_in += samples.size
        data = np.concatenate((self._rest, samples)) if self._rest.size else samples
        whole = data.size - data.size % self._win
        self._rest = data[whole:].copy()
        return self._process(data[:whole])

    def finish(self) -> Int16Array:
        """End of the utterance: the last partial window; the silence still held is dropped (trailing)."""
        if self._finished:
            return np.zeros(0, dtype=np.int16)
        out = self._process(self._rest)
        self._rest = np.zeros(0, dtype=np.int16)
        self._finished = True
        if self._started:
            self._trailing += self._gap_dropped + self._held.size
        else:
            self._leading += self._held.size
        self._held = np.zeros(0, dtype=np.int16)
        self._gap_dropped = 0
        return out

    def _process(self, data: Int16Array) -> Int16Array:
        if data.size == 0:
            return np.zeros(0, dtype=np.int16)
        flags = audible_windows(data, self.rate, self.threshold_dbfs, self.window_ms)
        # runs of equal flags -> (start window, end window, audible)
        edges = np.flatnonzero(np.diff(flags.astype(np.int8))) + 1
        bounds = np.concatenate(([0], edges, [flags.size]))
        out: list[Int16Array] = []
        for a, b in itertools.pairwise(bounds):
            seg = data[int(a) * self._win : min(data.size, int(b) * self._win)]
            if flags[a]:
                self._audible(seg, out)
            else:
                self._silent(seg, out)
        result = np.concatenate(out) if out else np.zeros(0, dtype=np.int16)
        self.samples_out += result.size
        return result

    def _audible(self, seg: Int16Array, out: list[Int16Array]) -> None:
        if not self._started:
            self._started = True
            self.first_audible_out = self.samples_out + sum(x.size for x in out) + self._held.size
        elif self._gap_dropped:
            self._gaps += self._gap_dropped
            self._capped += 1
        if self._held.size:
            out.append(self._held)
        out.append(seg)
        self._held = np.zeros(0, dtype=np.int16)
        self._gap_kept = self._gap_dropped = 0

    def _silent(self, seg: Int16Array, out: list[Int16Array]) -> None:
        # release the head of a pause (up to max_gap - pad) at once; hold its last `pad` samples
        budget = self._max_gap - self._pad - self._gap_kept if self._started else 0
        take = min(max(0, budget), seg.size)
        if take:
            out.append(seg[:take])
            self._gap_kept += take
        rest = seg[take:]
        if rest.size == 0:
            return
        held = np.concatenate((self._held, rest)) if self._held.size else rest
        drop = max(0, held.size - self._pad)
        self._held = held[drop:].copy()
        if self._started:
            self._gap_dropped += drop
        else:
            self._leading += drop


def trim_speech(
    samples: Int16Array,
    rate: int,
    *,
    threshold_dbfs: float = AUDIBLE_DBFS,
    window_ms: float = WINDOW_MS,
    lead_pad_ms: float = LEAD_PAD_MS,
    max_gap_ms: float = MAX_GAP_MS,
) -> tuple[Int16Array, TrimCounts]:
    """:class:`SpeechTrimmer` over a whole utterance at once."""
    t = SpeechTrimmer(
        rate, threshold_dbfs=threshold_dbfs, window_ms=window_ms, lead_pad_ms=lead_pad_ms, max_gap_ms=max_gap_ms
    )
    head = t.feed(samples)
    return np.concatenate((head, t.finish())), t.counts
