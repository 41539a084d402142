"""The telephone channel model: G.711 bit-exact with the reference, the band-pass, noise at an SNR."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from parley.audio.phone import (
    G711,
    PHONE_RATE,
    PhoneLine,
    active_level,
    bandpass,
    bandpass_taps,
    noise,
    phone_channel,
    to_phone_rate,
)

ALL_INT16 = np.arange(-32768, 32768, dtype=np.int16)
ALL_CODES = np.arange(256, dtype=np.uint8)


@pytest.fixture(scope="module")
def g711() -> G711:
    return G711()


def _audioop():  # type: ignore[no-untyped-def]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            import audioop
        except ImportError:  # Python >= 3.13 removed it
            pytest.skip("stdlib audioop (the reference) is not available")
    return audioop


@pytest.mark.parametrize("codec", ["ulaw", "alaw"])
def test_g711_matches_the_reference_for_every_input_and_code(g711: G711, codec: str) -> None:
    audioop = _audioop()
    enc, dec = (audioop.lin2ulaw, audioop.ulaw2lin) if codec == "ulaw" else (audioop.lin2alaw, audioop.alaw2lin)
    ref_codes = np.frombuffer(enc(ALL_INT16.astype("<i2").tobytes(), 2), dtype=np.uint8)
    assert np.array_equal(g711.encode(ALL_INT16, codec), ref_codes)  # type: ignore[arg-type]
    ref_pcm = np.frombuffer(dec(ALL_CODES.tobytes(), 2), dtype="<i2")
    assert np.array_equal(g711.decode(ALL_CODES, codec), ref_pcm)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("codec", "sample", "code"),
    [
        # Known code points of the standard: silence, full scale, and the sign convention.
        ("ulaw", 0, 0xFF),
        ("ulaw", -1, 0x7E),
        ("ulaw", 32767, 0x80),
        ("ulaw", -32768, 0x00),
        ("alaw", 0, 0xD5),
        ("alaw", -1, 0x55),
        ("alaw", 32767, 0xAA),
        ("alaw", -32768, 0x2A),
    ],
)
def test_g711_code_points(g711: G711, codec: str, sample: int, code: int) -> None:
    got = g711.encode(np.array([sample], dtype=np.int16), codec)  # type: ignore[arg-type]
    assert int(got[0]) == code


@pytest.mark.parametrize("codec", ["ulaw", "alaw"])
def test_g711_roundtrip_is_idempotent_and_close(g711: G711, codec: str) -> None:
    once = g711.roundtrip(ALL_INT16, codec)  # type: ignore[arg-type]
    assert np.array_equal(g711.roundtrip(once, codec), once)  # type: ignore[arg-type]
    # logarithmic quantisation: the error stays within ~1/16 of the magnitude (plus a small floor)
    err = np.abs(once.astype(np.int32) - ALL_INT16.astype(np.int32))
    assert (err <= np.abs(ALL_INT16.astype(np.int32)) / 16 + 16).all()


def _tone_gain(freq: float) -> float:
    t = np.arange(PHONE_RATE) / PHONE_RATE
    x = np.sin(2 * np.pi * freq * t) * 10000.0
    y = bandpass(x)
    mid = slice(1000, 7000)  # away from the edges
    return float(np.sqrt(np.mean(y[mid] ** 2)) / np.sqrt(np.mean(x[mid] ** 2)))


@pytest.mark.parametrize(("freq", "lo", "hi"), [(1000, 0.95, 1.05), (2000, 0.95, 1.05), (500, 0.9, 1.05),
                                                 (100, 0.0, 0.1), (50, 0.0, 0.05), (3900, 0.0, 0.05)])
def test_bandpass_passes_the_phone_band_and_stops_outside(freq: float, lo: float, hi: float) -> None:
    assert lo <= _tone_gain(freq) <= hi


def test_bandpass_has_no_delay_and_rejects_bad_designs() -> None:
    impulse = np.zeros(801)
    impulse[400] = 1.0
    assert int(np.argmax(np.abs(bandpass(impulse)))) == 400  # linear phase, centred
    assert bandpass(np.zeros(0)).size == 0
    with pytest.raises(ValueError):
        bandpass_taps(n=128)
    with pytest.raises(ValueError):
        bandpass_taps(3400, 300)


def test_to_phone_rate_scales_and_resamples() -> None:
    x = np.full(24000, 0.5, dtype=np.float32)
    y = to_phone_rate(x, 24000)
    assert y.size == 8000 and float(np.median(y)) == pytest.approx(16384, rel=1e-3)
    assert np.array_equal(to_phone_rate(np.array([1, -2], dtype=np.int16), 8000), [1.0, -2.0])
    with pytest.raises(ValueError):
        to_phone_rate(np.zeros((2, 2), dtype=np.int16), 8000)


def test_noise_is_seeded_unit_rms() -> None:
    a = noise(8000, np.random.default_rng(3))
    b = noise(8000, np.random.default_rng(3))
    assert np.array_equal(a, b)
    assert float(np.sqrt(np.mean(a**2))) == pytest.approx(1.0)
    assert not np.array_equal(a, noise(8000, np.random.default_rng(4)))
    assert float(np.sqrt(np.mean(noise(100, np.random.default_rng(0), color="white") ** 2))) == pytest.approx(1.0)


def _speech_like(seconds: float = 2.0) -> np.ndarray:  # type: ignore[type-arg]
    """A 1 kHz tone for the first half, silence for the second (a stand-in for a phrase and a pause)."""
    n = int(seconds * PHONE_RATE)
    x = np.zeros(n)
    t = np.arange(n // 2) / PHONE_RATE
    x[: n // 2] = np.sin(2 * np.pi * 1000 * t) * 8000
    return np.round(x).astype(np.int16)


@pytest.mark.parametrize("snr", [15.0, 30.0])
def test_phone_channel_noise_sits_at_the_requested_snr(snr: float) -> None:
    clean = _speech_like()
    out = phone_channel(clean, PHONE_RATE, PhoneLine(codec="ulaw", snr_db=snr, seed=7, noise_color="white"))
    assert out.dtype == np.int16 and out.size == clean.size
    speech = active_level(clean.astype(np.float64))
    quiet = out[clean.size // 2 + 800 :].astype(np.float64)  # the silent half: only (band-passed) noise
    measured = 20 * np.log10(speech / np.sqrt(np.mean(quiet**2)))
    # white noise loses ~1 dB outside 300-3400 Hz, and G.711 adds a little quantisation noise
    assert snr - 0.5 <= measured <= snr + 2.0


def test_phone_channel_is_deterministic_and_codec_dependent() -> None:
    clean = _speech_like(1.0)
    line = PhoneLine(codec="alaw", snr_db=20.0, seed=1)
    a = phone_channel(clean, PHONE_RATE, line)
    assert np.array_equal(a, phone_channel(clean, PHONE_RATE, line))
    assert not np.array_equal(a, phone_channel(clean, PHONE_RATE, PhoneLine(codec="ulaw", snr_db=20.0, seed=1)))
    silent = phone_channel(np.zeros(800, dtype=np.int16), PHONE_RATE, line)
    assert np.abs(silent).max() <= 8  # no speech level to scale noise to: the line stays (codec-)silent
    assert phone_channel(np.zeros(0, dtype=np.int16), 16000, line).size == 0
