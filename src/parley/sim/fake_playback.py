"""What the fake FreeSWITCH plays to a caller: playback records and reading the files it is asked to play.

Owns: :class:`PlaybackRecord` (one ``playback`` execution as the caller experienced it), splitting a
playback argument into its ``{k=v,...}`` file parameters and path, and loading a file the way
``mod_sndfile`` would (WAV of any PCM width/channels, ``.r8``/``.r16`` raw 16-bit, plus
``silence_stream://<ms>`` and ``tone_stream://`` segments), resampled to the channel's codec rate.
No asyncio, no sockets.
"""

from __future__ import annotations

import math
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
import soxr

PlaybackStatus = Literal["done", "break"]
Int16Array = npt.NDArray[np.int16]

_RAW_RATES = {".r8": 8000, ".r16": 16000}


@dataclass(slots=True)
class PlaybackRecord:
    """One playback the app asked for. Times are on the fake's clock.

    ``started_at``/``stopped_at`` are the *scheduled* media times (what the caller heard), so queued
    playbacks join without gaps. ``flushed`` means ``uuid_break ... all`` dropped it before it started
    (FreeSWITCH sends no event at all for it). ``found`` is False when FreeSWITCH could not open the file.
    """

    path: str
    app_uuid: str
    queued_at: float
    started_at: float | None = None
    stopped_at: float | None = None
    status: PlaybackStatus | None = None
    flushed: bool = False
    via: Literal["sendmsg", "broadcast"] = "sendmsg"
    found: bool | None = None
    duration_s: float | None = None
    samples: Int16Array | None = field(default=None, repr=False)

    def active_between(self, t0: float, t1: float) -> bool:
        if self.started_at is None or self.started_at >= t1:
            return False
        return self.stopped_at is None or self.stopped_at > t0


def split_file_arg(arg: str) -> tuple[dict[str, str], str]:
    """``{a=1,b=two}/path.wav`` -> ({'a': '1', 'b': 'two'}, '/path.wav') (switch_event_create_brackets)."""
    params: dict[str, str] = {}
    if arg.startswith("{") and "}" in arg:
        inner, _, path = arg[1:].partition("}")
        for item in inner.split(","):
            key, sep, value = item.partition("=")
            if sep and key.strip():
                params[key.strip()] = value.strip().strip("'")
        return params, path
    return params, arg


@dataclass(frozen=True, slots=True)
class LoadedAudio:
    samples: Int16Array  # mono at the requested rate; may be shorter than duration_s (silence follows)
    duration_s: float
    file_rate: int


def load_audio(path: str, rate: int) -> LoadedAudio | None:
    """Read a playback file as FreeSWITCH would; ``None`` when it cannot be opened (FILE NOT FOUND)."""
    if path.startswith("silence_stream://"):
        spec = path.removeprefix("silence_stream://").split(",", 1)[0]
        try:
            ms = int(spec)
        except ValueError:
            return None
        duration = math.inf if ms < 0 else ms / 1000
        return LoadedAudio(np.zeros(0, dtype=np.int16), duration, rate)
    if path.startswith("tone_stream://"):
        return tone_stream(path.removeprefix("tone_stream://"), rate)
    p = Path(path)
    suffix = p.suffix.lower()
    try:
        if suffix in _RAW_RATES:
            file_rate = _RAW_RATES[suffix]
            raw = p.read_bytes()
            mono = np.frombuffer(raw[: len(raw) // 2 * 2], dtype="<i2").astype(np.int16)
        elif suffix == ".wav":
            with wave.open(str(p), "rb") as w:
                file_rate = w.getframerate()
                mono = _to_mono16(w.readframes(w.getnframes()), w.getsampwidth(), w.getnchannels())
        else:
            return None
    except (OSError, EOFError, wave.Error, ValueError):
        return None
    if file_rate <= 0:
        return None
    duration = len(mono) / file_rate
    return LoadedAudio(resample(mono, file_rate, rate), duration, file_rate)


def tone_stream(spec: str, rate: int) -> LoadedAudio | None:
    """``tone_stream://`` in mod_tone_stream's teletone syntax, the part parley uses: ``%(on,off,f1[,f2..])``
    segments (ms on, ms off, Hz) separated by ``;``, and ``loops=N`` (or ``L=N``) to repeat them. Played at
    about -10 dBFS per tone. Anything else is not understood: None (FreeSWITCH would fail the playback)."""
    segments: list[Int16Array] = []
    loops = 1
    for item in (x.strip() for x in spec.split(";") if x.strip()):
        if item.startswith(("loops=", "L=")):
            try:
                loops = int(item.split("=", 1)[1])
            except ValueError:
                return None
            continue
        if not (item.startswith("%(") and item.endswith(")")):
            return None
        try:
            on, off, *freqs = (float(v) for v in item[2:-1].split(","))
        except ValueError:
            return None
        t = np.arange(int(rate * on / 1000)) / rate
        tone = sum((np.sin(2 * np.pi * f * t) for f in freqs), np.zeros_like(t)) * (10000.0 / max(1, len(freqs)))
        segments += [tone.astype(np.int16), np.zeros(int(rate * off / 1000), np.int16)]
    if not segments or loops < 1 or loops > 100:
        return None
    samples: Int16Array = np.concatenate(segments * loops)
    return LoadedAudio(samples, samples.size / rate, rate)


def _to_mono16(frames: bytes, width: int, channels: int) -> Int16Array:
    if width == 1:
        data = (np.frombuffer(frames, dtype=np.uint8).astype(np.int32) - 128) << 8
    elif width == 2:
        data = np.frombuffer(frames, dtype="<i2").astype(np.int32)
    elif width == 3:
        raw = np.frombuffer(frames, dtype=np.uint8).reshape(-1, 3)
        data = (raw[:, 1].astype(np.int32) | (raw[:, 2].astype(np.int8).astype(np.int32) << 8)).astype(np.int32)
    elif width == 4:
        data = np.frombuffer(frames, dtype="<i4").astype(np.int64) >> 16
    else:
        raise ValueError(f"unsupported sample width {width}")
    if channels > 1:
        usable = len(data) - len(data) % channels
        data = data[:usable].reshape(-1, channels).mean(axis=1)
    mono: Int16Array = np.clip(data, -32768, 32767).astype(np.int16)
    return mono


def resample(samples: Int16Array, src_rate: int, dst_rate: int) -> Int16Array:
    if src_rate == dst_rate or len(samples) == 0:
        return samples.astype(np.int16, copy=False)
    out = np.asarray(soxr.resample(samples.astype(np.float32), src_rate, dst_rate), dtype=np.float32)
    converted: Int16Array = np.clip(np.rint(out), -32768, 32767).astype(np.int16)
    return converted


def place(dst: Int16Array, start: int, samples: Int16Array) -> None:
    """Copy ``samples`` into ``dst`` at index ``start``, clipped to ``dst``'s bounds."""
    if start >= len(dst) or len(samples) == 0:
        return
    src = samples
    if start < 0:
        src = src[-start:]
        start = 0
    n = min(len(src), len(dst) - start)
    if n > 0:
        dst[start : start + n] = src[:n]


def heard_audio(playbacks: list[PlaybackRecord], origin: float, end: float, rate: int, *, now: float) -> Int16Array:
    """Every played file placed on the call timeline (sample 0 = ``origin``) up to ``end``, silence elsewhere."""
    out = np.zeros(max(0, round((end - origin) * rate)), dtype=np.int16)
    for rec in playbacks:
        if rec.started_at is None or rec.samples is None:
            continue
        stop = rec.stopped_at if rec.stopped_at is not None else now
        first, last = round((rec.started_at - origin) * rate), round((stop - origin) * rate)
        place(out, first, rec.samples[: max(0, last - first)])
    return out


def heard_between(playbacks: list[PlaybackRecord], t0: float, t1: float, rate: int) -> Int16Array | None:
    """Audio written to the caller in [t0, t1) at ``rate``; None when nothing was playing."""
    for rec in reversed(playbacks):
        if rec.samples is not None and rec.started_at is not None and rec.active_between(t0, t1):
            seg = np.zeros(round((t1 - t0) * rate), dtype=np.int16)
            stop = rec.stopped_at if rec.stopped_at is not None else t1
            first, last = round((rec.started_at - t0) * rate), round((stop - t0) * rate)
            place(seg, first, rec.samples[: max(0, last - first)])
            return seg
    return None
