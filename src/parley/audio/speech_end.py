"""Where the caller's speech really ended, from the audio around the VAD's estimate.

Owns: :func:`refine_speech_end`. Silero notices the end of speech a median ~110 ms late on phone audio
(``parley bench turns``: offset lag p50 110 / p90 165 ms) and the turn machine corrects that by a fixed
amount; this looks at the audio itself and finds the end of the last run of windows above the noise, so a
turn's voice-to-voice figure starts where the caller's ear would say they stopped. It is a *measurement*:
the turn decision is the machine's and is not changed by it. Pure: samples and times in, a time out.
"""

from __future__ import annotations

import numpy as np

from parley.audio.pcm import Int16Array
from parley.audio.trim import audible_windows, window_samples
from parley.observe.timings import AUDIBLE_DBFS

WINDOW_MS = 5.0
MIN_RUN = 2  # windows in a row above the threshold: a click or a single noisy window is not speech
# The run then extends over dips of up to 30 ms: the decay of a last "-ller" or "-bye" flickers around the
# threshold (measured on the booking call: a lone -37 dBFS window 25 ms after the run). A click 100 ms on
# is not part of the speech.
MAX_DIP = 6
NOISE_MARGIN_DB = 10.0  # on a noisy line, speech is what stands this far above the noise floor


def refine_speech_end(
    audio: Int16Array,
    rate: int,
    audio_end_t: float,
    vad_end_t: float,
    *,
    back_ms: float = 300.0,
    ahead_ms: float = 400.0,
) -> float:
    """The end of the last run of audible windows within ``[vad_end_t - back_ms, vad_end_t + ahead_ms]``.

    ``audio`` is the caller's recent audio, its last sample ending at ``audio_end_t`` (contiguous frames).
    The threshold is -40 dBFS or 10 dB over the noise floor (the 10th percentile of window levels over all
    of ``audio``), whichever is higher. Returns ``vad_end_t`` when nothing in the range qualifies.
    """
    win = window_samples(rate, WINDOW_MS)
    n = audio.size // win
    if n < MIN_RUN:
        return vad_end_t
    x = audio[: n * win].astype(np.float64).reshape(n, win)
    level = 10.0 * np.log10(np.maximum((x * x).mean(axis=1), 1e-9) / (32768.0 * 32768.0))
    floor = float(np.percentile(level, 10))
    threshold = max(AUDIBLE_DBFS, floor + NOISE_MARGIN_DB)
    loud = audible_windows(audio[: n * win], rate, threshold, WINDOW_MS)
    start_t = audio_end_t - audio.size / rate
    first = max(0, int((vad_end_t - back_ms / 1000.0 - start_t) * 1000.0 / WINDOW_MS))
    last = min(n, int((vad_end_t + ahead_ms / 1000.0 - start_t) * 1000.0 / WINDOW_MS))
    run = 0
    for i in range(last - 1, first - 1, -1):
        run = run + 1 if loud[i] else 0
        if run >= MIN_RUN:
            end = i + run  # one past the run's last window (scanning backwards, the run ends at i+run-1)
            # a decaying last sound flickers around the threshold: carry on over dips of up to MAX_DIP
            j = end
            while j < last and j - end <= MAX_DIP:
                if loud[j]:
                    end = j + 1
                j += 1
            return start_t + end * win / rate
    return vad_end_t
