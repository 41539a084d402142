"""A telephone channel model: what a caller's voice sounds like after a G.711 phone line.

Owns: the pieces that turn clean speech into phone audio, each pure numpy and deterministic:
resampling to 8 kHz (soxr), the 300-3400 Hz telephone band-pass (a linear-phase windowed-sinc FIR, so a
segment's timing is not shifted), G.711 mu-law and A-law encode/decode by lookup tables, stationary noise
at a given SNR (seeded), and :func:`phone_channel`, which chains them. Used to build the turn-taking
corpus (:mod:`parley.bench.turn_corpus`) and by tests. Must not know about calls, VAD or turns; no
asyncio, no clock, no I/O.

G.711 is bit-exact with the Sun/CCITT reference that CPython's ``audioop`` implements (``lin2ulaw``,
``ulaw2lin``, ``lin2alaw``, ``alaw2lin`` on 16-bit samples): mu-law encodes the 14-bit value ``x >> 2``
with bias 0x21, clipped at 8159, segment ends ``0x3F .. 0x1FFF``; A-law encodes the 13-bit value
``x >> 3`` with even-bit inversion (0x55), segment ends ``0x1F .. 0xFFF``. The tables are built once per
:class:`G711` instance (about 1 ms); there is no module-level state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
import soxr

from parley.audio.pcm import Int16Array

PHONE_RATE = 8000
Codec = Literal["ulaw", "alaw"]
Float64Array = npt.NDArray[np.float64]
UInt8Array = npt.NDArray[np.uint8]

_ULAW_SEG_END = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF], dtype=np.int32)
_ALAW_SEG_END = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF], dtype=np.int32)


def _segment(magnitude: npt.NDArray[np.int32], ends: npt.NDArray[np.int32]) -> npt.NDArray[np.int32]:
    """The reference ``search()``: index of the first segment end >= magnitude (8 when beyond all)."""
    return np.searchsorted(ends, magnitude, side="left").astype(np.int32)


def _ulaw_encode_table() -> UInt8Array:
    x = np.arange(-32768, 32768, dtype=np.int32) >> 2  # 14-bit, arithmetic shift as the reference
    mask = np.where(x < 0, 0x7F, 0xFF)
    mag = np.minimum(np.abs(x), 8159) + 0x21
    seg = _segment(mag, _ULAW_SEG_END)
    code = (np.minimum(seg, 7) << 4) | ((mag >> (np.minimum(seg, 7) + 1)) & 0xF)
    code = np.where(seg >= 8, 0x7F, code)
    return ((code ^ mask) & 0xFF).astype(np.uint8)


def _ulaw_decode_table() -> Int16Array:
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    t = (((u & 0x0F) << 3) + 0x84) << ((u & 0x70) >> 4)
    return np.where(u & 0x80, 0x84 - t, t - 0x84).astype(np.int16)


def _alaw_encode_table() -> UInt8Array:
    x = np.arange(-32768, 32768, dtype=np.int32) >> 3  # 13-bit
    mask = np.where(x >= 0, 0xD5, 0x55)
    mag = np.where(x >= 0, x, -x - 1)
    seg = _segment(mag, _ALAW_SEG_END)
    s = np.minimum(seg, 7)
    quant = np.where(s < 2, (mag >> 1) & 0xF, (mag >> np.maximum(s, 1)) & 0xF)
    code = np.where(seg >= 8, 0x7F, (s << 4) | quant)
    return ((code ^ mask) & 0xFF).astype(np.uint8)


def _alaw_decode_table() -> Int16Array:
    a = np.arange(256, dtype=np.int32) ^ 0x55
    seg = (a & 0x70) >> 4
    t = (a & 0x0F) << 4
    t = np.where(seg == 0, t + 8, (t + 0x108) << np.maximum(seg - 1, 0))
    return np.where(a & 0x80, t, -t).astype(np.int16)


class G711:
    """G.711 mu-law and A-law by lookup tables (64 Ki-entry encoders, 256-entry decoders)."""

    def __init__(self) -> None:
        self._enc = {"ulaw": _ulaw_encode_table(), "alaw": _alaw_encode_table()}
        self._dec = {"ulaw": _ulaw_decode_table(), "alaw": _alaw_decode_table()}

    def encode(self, samples: Int16Array, codec: Codec) -> UInt8Array:
        table = self._enc[codec]
        return table[samples.astype(np.int32) + 32768]

    def decode(self, codes: UInt8Array, codec: Codec) -> Int16Array:
        return self._dec[codec][codes.astype(np.intp)]

    def roundtrip(self, samples: Int16Array, codec: Codec) -> Int16Array:
        """What the far end hears: encode then decode."""
        return self.decode(self.encode(samples, codec), codec)


def to_phone_rate(samples: Int16Array | npt.NDArray[np.float32], rate: int) -> Float64Array:
    """Mono audio (int16, or float in [-1, 1]) at ``rate`` -> float64 in int16 units at 8 kHz (soxr HQ)."""
    if samples.ndim != 1:
        raise ValueError(f"expected mono 1-D audio, got shape {samples.shape}")
    if rate <= 0:
        raise ValueError(f"bad sample rate {rate}")
    x = samples.astype(np.float64)
    if not np.issubdtype(samples.dtype, np.integer):
        x = x * 32768.0
    if rate == PHONE_RATE or x.size == 0:
        return x
    return np.asarray(soxr.resample(x, rate, PHONE_RATE, quality="HQ"), dtype=np.float64)


def bandpass_taps(low_hz: float = 300.0, high_hz: float = 3400.0, rate: int = PHONE_RATE, n: int = 129) -> Float64Array:
    """Linear-phase band-pass FIR (odd length ``n``): difference of two Blackman-windowed sinc low-passes.

    Unity gain at the band centre; 129 taps at 8 kHz give ~60 Hz transition bands (the 300 Hz edge needs
    the length) and a group delay of 64 samples, which :func:`bandpass` compensates.
    """
    if n % 2 == 0 or n < 3:
        raise ValueError("the band-pass needs an odd number of taps >= 3")
    if not 0 < low_hz < high_hz < rate / 2:
        raise ValueError(f"need 0 < low < high < Nyquist, got {low_hz}, {high_hz} at {rate} Hz")
    k = np.arange(n) - (n - 1) / 2
    window = np.blackman(n)

    def lowpass(fc: float) -> Float64Array:
        h = 2 * fc / rate * np.sinc(2 * fc / rate * k) * window
        return np.asarray(h / h.sum(), dtype=np.float64)

    taps = lowpass(high_hz) - lowpass(low_hz)
    centre = (low_hz * high_hz) ** 0.5
    gain = abs(np.sum(taps * np.exp(-2j * np.pi * centre / rate * k)))
    return np.asarray(taps / gain, dtype=np.float64)


def bandpass(x: Float64Array, taps: Float64Array | None = None) -> Float64Array:
    """Filter with zero net delay (the FIR is symmetric; ``same`` mode removes its group delay)."""
    h = bandpass_taps() if taps is None else taps
    if x.size == 0:
        return x.astype(np.float64)
    return np.asarray(np.convolve(x, h, mode="same")[: x.size], dtype=np.float64)


def active_level(x: Float64Array, rate: int = PHONE_RATE, *, floor_db: float = 40.0) -> float:
    """RMS (int16 units) over the 20 ms frames within ``floor_db`` of the loudest: the speech level that an
    SNR refers to, independent of how much silence surrounds it. 0.0 for silence."""
    n = rate // 50
    if x.size < n:
        return float(np.sqrt(np.mean(x**2))) if x.size else 0.0
    frames = x[: x.size // n * n].reshape(-1, n)
    power = np.mean(frames**2, axis=1)
    peak = float(power.max())
    if peak <= 0:
        return 0.0
    active = power[power >= peak * 10 ** (-floor_db / 10)]
    return float(np.sqrt(active.mean()))


def noise(n: int, rng: np.random.Generator, *, color: Literal["white", "pink"] = "pink") -> Float64Array:
    """Unit-RMS stationary Gaussian noise; pink (1/f power) sounds like a room or a car more than white."""
    white = rng.standard_normal(n)
    if color == "white" or n < 2:
        return np.asarray(white / max(float(np.sqrt(np.mean(white**2))), 1e-12), dtype=np.float64)
    spectrum = np.fft.rfft(white)
    f = np.arange(spectrum.size, dtype=np.float64)
    f[0] = 1.0
    shaped = np.fft.irfft(spectrum / np.sqrt(f), n)
    return np.asarray(shaped / max(float(np.sqrt(np.mean(shaped**2))), 1e-12), dtype=np.float64)


@dataclass(frozen=True, slots=True)
class PhoneLine:
    """One caller's line: codec, signal-to-noise ratio (dB, against the active speech level), noise seed."""

    codec: Codec = "ulaw"
    snr_db: float | None = 20.0  # None: no added noise
    seed: int = 0
    noise_color: Literal["white", "pink"] = "pink"
    low_hz: float = 300.0
    high_hz: float = 3400.0


def phone_channel(
    samples: Int16Array | npt.NDArray[np.float32], rate: int, line: PhoneLine, g711: G711 | None = None
) -> Int16Array:
    """Clean speech at ``rate`` -> what the far end of a G.711 call receives, 8 kHz int16.

    Order: resample to 8 kHz, add the line's noise (its level set from the clean speech's active level),
    band-pass 300-3400 Hz, clip to int16, G.711 encode/decode. Same input and line -> identical output.
    """
    x = to_phone_rate(samples, rate)
    if line.snr_db is not None and x.size:
        level = active_level(x)
        if level > 0:
            rng = np.random.default_rng(line.seed)
            x = x + noise(x.size, rng, color=line.noise_color) * level * 10 ** (-line.snr_db / 20)
    y = bandpass(x, bandpass_taps(line.low_hz, line.high_hz))
    pcm = np.clip(np.round(y), -32768, 32767).astype(np.int16)
    return (g711 or G711()).roundtrip(pcm, line.codec)
