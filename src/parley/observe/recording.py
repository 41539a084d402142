"""Optional stereo call recordings: the caller on the left channel, the agent *as heard* on the right.

Owns: where recordings live (``<directory>/<YYYY-MM-DD>/<call id>.wav``, mode 0640), putting both sides on
one timeline, and retention (recordings older than N days are deleted at start-up and daily). Must not
know how a call is run; the session / bridge feeds it. Off unless a directory is configured: recordings
are personal data.

Timeline: the caller's frames define it. Their monotonic receive times (``AudioFrame.t``) map any other
monotonic time onto a sample position, so agent audio lands where FreeSWITCH started playing it. Two ways
to feed the right channel:

* mod_audio_stream in ``stereo`` mix sends what FreeSWITCH played to the caller with every frame:
  ``frame(caller, agent)``. Exact, nothing to place.
* ``mono`` mix: ``agent(samples, rate, start_t)`` once PLAYBACK_START says when the audio began, and
  ``cut_agent(t)`` at a barge-in (what was scheduled after ``t`` was never heard).

Nothing is held in memory: both sides stream to raw ``.part`` files next to the target (a 20 ms frame
is one buffered write, so the audio path never waits on the disk) and ``close()`` merges them into the
WAV in one-second blocks. ``close()`` does real file I/O: run it with ``asyncio.to_thread``. A process
killed mid-call leaves ``.part`` files; the retention sweep removes them after a day.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import wave
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

import numpy as np

from parley.audio.pcm import Int16Array
from parley.audio.resample import resample

log = logging.getLogger("parley.recording")

# Caller audio missing for longer than this (frames dropped by the inbound queue) is filled with silence;
# shorter differences are network jitter (frames then arrive in a burst), not loss.
GAP_S = 0.5
PART_MAX_AGE_S = 86400.0  # leftovers of a killed process


@dataclass(slots=True)
class _Segment:
    pos: int  # first sample on the timeline
    offset: int  # first sample in the agent .part file
    n: int


class CallRecording:
    """One call's recording. Not thread-safe; ``close()`` / ``abort()`` once, from anywhere."""

    def __init__(self, path: Path, rate: int, relative: str, caller_f: BinaryIO, agent_f: BinaryIO) -> None:
        self.path = path
        self.rate = rate
        self.relative = relative  # what the call record stores (relative to the recordings directory)
        self._caller_f = caller_f
        self._agent_f = agent_f
        self._t0: float | None = None
        self._caller_n = 0  # samples on the left channel so far
        self._agent_stream_n = 0  # samples of FreeSWITCH's own agent channel (stereo mix)
        self._agent_n = 0  # samples in the agent .part file
        self._segments: list[_Segment] = []
        self.closed = False

    @property
    def caller_part(self) -> Path:
        return self.path.with_name(f".{self.path.stem}.caller.part")

    @property
    def agent_part(self) -> Path:
        return self.path.with_name(f".{self.path.stem}.agent.part")

    def _pos(self, t: float) -> int:
        if self._t0 is None:
            self._t0 = t
        return max(0, round((t - self._t0) * self.rate))

    def frame(self, caller: Int16Array, agent: Int16Array | None = None, t: float | None = None) -> None:
        """One caller frame (at ``rate``), received at monotonic ``t``; ``agent`` in stereo mix mode."""
        if self.closed:
            return
        if t is not None:
            start = self._pos(t - caller.size / self.rate)
            if start - self._caller_n > GAP_S * self.rate:  # frames were dropped: keep the timeline true
                self._write_caller(np.zeros(start - self._caller_n, np.int16))
        self._write_caller(caller)
        if agent is not None:
            if self._agent_stream_n < self._caller_n - agent.size:  # keep it aligned with the caller
                pad = self._caller_n - agent.size - self._agent_stream_n
                self._place(np.zeros(pad, np.int16), self._agent_stream_n)
                self._agent_stream_n += pad
            self._place(agent, self._agent_stream_n)
            self._agent_stream_n += agent.size

    def _write_caller(self, samples: Int16Array) -> None:
        self._caller_f.write(samples.astype("<i2", copy=False).tobytes())
        self._caller_n += samples.size

    def agent(self, samples: Int16Array, rate: int, start_t: float) -> None:
        """Agent audio that FreeSWITCH started playing at monotonic ``start_t``."""
        if self.closed or samples.size == 0:
            return
        data = resample(samples, rate, self.rate)
        self._place(data, self._pos(start_t))

    def cut_agent(self, t: float) -> None:
        """Barge-in at monotonic ``t``: agent audio placed so far is silent from ``t`` on."""
        cut = self._pos(t)
        for seg in self._segments:
            if seg.pos < cut:
                seg.n = min(seg.n, cut - seg.pos)
            else:
                seg.n = 0

    def _place(self, data: Int16Array, pos: int) -> None:
        self._agent_f.write(data.astype("<i2", copy=False).tobytes())
        last = self._segments[-1] if self._segments else None
        if last is not None and last.pos + last.n == pos and last.offset + last.n == self._agent_n:
            last.n += data.size  # contiguous (stereo mix frames): one segment
        else:
            self._segments.append(_Segment(pos, self._agent_n, data.size))
        self._agent_n += data.size

    def close(self) -> Path | None:
        """Write the stereo WAV (blocking; use ``asyncio.to_thread``). None if nothing was recorded."""
        if self.closed:
            return None
        self.closed = True
        self._caller_f.close()
        self._agent_f.close()
        segments = [s for s in self._segments if s.n > 0]
        total = max([self._caller_n, *(s.pos + s.n for s in segments)])
        tmp = self.path.with_name(f".{self.path.name}.part")
        try:
            if total == 0:
                return None
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
            with os.fdopen(fd, "wb") as raw, wave.open(raw, "wb") as w:
                w.setnchannels(2)
                w.setsampwidth(2)
                w.setframerate(self.rate)
                self._merge(w, segments, total)
            os.replace(tmp, self.path)
            return self.path
        finally:
            for p in (self.caller_part, self.agent_part, tmp):
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()

    def _merge(self, w: wave.Wave_write, segments: list[_Segment], total: int) -> None:
        block = self.rate  # one second
        with self.caller_part.open("rb") as left_f, self.agent_part.open("rb") as agent_f:
            for start in range(0, total, block):
                n = min(block, total - start)
                out = np.zeros((n, 2), np.int32)
                left = np.frombuffer(left_f.read(n * 2), dtype="<i2")
                out[: left.size, 0] = left
                for seg in segments:
                    a, b = max(start, seg.pos), min(start + n, seg.pos + seg.n)
                    if a >= b:
                        continue
                    agent_f.seek((seg.offset + a - seg.pos) * 2)
                    out[a - start : b - start, 1] += np.frombuffer(agent_f.read((b - a) * 2), dtype="<i2")
                w.writeframes(np.clip(out, -32768, 32767).astype("<i2").tobytes())

    def abort(self) -> None:
        """Discard the recording (e.g. the caller declined)."""
        self.closed = True
        self._caller_f.close()
        self._agent_f.close()
        for p in (self.caller_part, self.agent_part):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()


class Recordings:
    """The recordings directory. ``directory=""`` means recording is off."""

    def __init__(self, directory: str | Path, retention_days: int = 30) -> None:
        self.directory = Path(directory) if directory else None
        self.retention_days = retention_days

    @property
    def enabled(self) -> bool:
        return self.directory is not None

    def start(self, call_id: str, rate: int, *, now: datetime | None = None) -> CallRecording | None:
        """A new recording for ``call_id`` (None when recording is off). Creates the day's folder."""
        if self.directory is None:
            return None
        if not call_id or "/" in call_id or call_id.startswith("."):
            raise ValueError(f"unusable call id for a file name: {call_id!r}")
        day = (now or datetime.now(UTC)).strftime("%Y-%m-%d")
        folder = self.directory / day
        folder.mkdir(mode=0o750, parents=True, exist_ok=True)
        path = folder / f"{call_id}.wav"
        files: list[BinaryIO] = []
        try:
            for name in (f".{call_id}.caller.part", f".{call_id}.agent.part"):
                files.append(os.fdopen(os.open(folder / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640), "wb"))
        except OSError:
            for f in files:
                f.close()
            raise
        return CallRecording(path, rate, f"{day}/{call_id}.wav", files[0], files[1])

    def sweep(self, now: float | None = None) -> int:
        """Delete recordings older than ``retention_days`` (and stale ``.part`` files); returns how many.

        Blocking; ``retention_days <= 0`` keeps recordings forever.
        """
        if self.directory is None or not self.directory.is_dir():
            return 0
        now = time.time() if now is None else now
        removed = 0
        for path in self.directory.glob("*/*"):
            if not path.is_file():
                continue
            part = path.name.endswith(".part")
            if not part and (path.suffix != ".wav" or self.retention_days <= 0):
                continue
            max_age = PART_MAX_AGE_S if part else self.retention_days * 86400.0
            try:
                if now - path.stat().st_mtime > max_age:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
        for folder in self.directory.iterdir():
            if folder.is_dir():
                with contextlib.suppress(OSError):
                    folder.rmdir()  # only succeeds when empty
        if removed:
            log.info("recordings: deleted %d file(s) past retention", removed)
        return removed

    async def retention(self, interval_s: float = 86400.0) -> None:
        """Sweep now and then every ``interval_s`` (run it under the app's TaskGroup)."""
        while True:
            try:
                await asyncio.to_thread(self.sweep)
            except OSError as exc:
                log.warning("recordings: retention sweep failed: %s", exc)
            await asyncio.sleep(interval_s)
