"""WAV files: atomic writes for FreeSWITCH to play, and reads.

Owns: the WAV container (16-bit PCM). A chunk is written to a temporary name in the same directory and
renamed into place, so FreeSWITCH can never open a half-written file (mod_sndfile trusts the header
length it sees at open time).
"""

from __future__ import annotations

import io
import os
import wave
from pathlib import Path
from typing import IO

import numpy as np

from parley.audio.pcm import Int16Array


def wav_bytes(samples: Int16Array, rate: int, channels: int = 1) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.astype("<i2", copy=False).tobytes())
    return buf.getvalue()


def write_wav_atomic(path: Path, samples: Int16Array, rate: int, *, mode: int = 0o640) -> None:
    tmp = path.with_name(f".{path.name}.part")
    data = wav_bytes(samples, rate)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def read_wav(path: Path | str | IO[bytes]) -> tuple[Int16Array, int]:
    """16-bit PCM WAV (a path or an open binary file) -> (mono int16 samples, rate); stereo is averaged."""
    with wave.open(path if not isinstance(path, str | Path) else str(path), "rb") as w:
        if w.getsampwidth() != 2:
            raise ValueError(f"{path}: only 16-bit PCM WAV is supported (sample width {w.getsampwidth()})")
        rate, channels = w.getframerate(), w.getnchannels()
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.int16)
    if channels > 1:
        data = data.reshape(-1, channels).mean(axis=1).round().astype(np.int16)
    return data, rate


def write_stereo_wav(path: Path, left: Int16Array, right: Int16Array, rate: int) -> None:
    n = max(left.size, right.size)
    out = np.zeros((n, 2), dtype=np.int16)
    out[: left.size, 0] = left
    out[: right.size, 1] = right
    path.write_bytes(wav_bytes(out.reshape(-1), rate, channels=2))
