"""Agent audio into a live call: WAV chunks in a spool directory, played by FreeSWITCH over ESL.

Owns: cutting an utterance's audio (as it is synthesized) into short WAV chunks at the call's codec
rate, writing them where FreeSWITCH can read them, queueing each with ``sendmsg <uuid>`` execute
``playback`` (``event-lock: true``, an ``Event-UUID``, a ``{parley_utterance=..,parley_chunk=..}`` tag,
no ``lead-frames``), tracking PLAYBACK_START/STOP per chunk, and reporting how many milliseconds of each
utterance the caller heard. Barge-in is ``uuid_break <uuid> all``. Must not know where the audio comes
from (TTS, a greeting file, an echo) or what the conversation does with the heard position.

Why this shape (measured on FreeSWITCH 1.10.12, ``shared/docs/freeswitch-streaming-playback.md``):
- queued ``sendmsg`` playbacks join with no gap (median 0.0 ms per boundary); first audio reaches the
  caller ~30 ms after the command, against ~128 ms for ``uuid_broadcast`` (its ``lead-frames: 5``);
- 16 kHz chunks on an 8 kHz call click at every boundary (the per-file resampler restarts); chunks
  written at the codec rate through one continuous resampler come out sample-identical;
- ``uuid_break <uuid> all`` silences in ~30 ms and flushes the queue; flushed chunks get *no* events at
  all (not even EXECUTE_COMPLETE), so nothing here ever waits for them;
- ``variable_playback_ms`` on a broken playback is FreeSWITCH's file read-ahead (e.g. 4096 ms reported
  for 2500 ms played), so the heard position comes from the PLAYBACK_START/STOP event timestamps.

Modes: ``sendmsg`` (default, fastest), ``broadcast`` (``uuid_broadcast ... aleg``, the article's path,
~100 ms slower per chunk) and ``remote`` (no shared disk: each WAV goes over the mod_audio_stream
WebSocket as ``streamAudio``; the module writes it on the FreeSWITCH host and names it in a
``mod_audio_stream::play`` event, which we then play).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import re
import shutil
import time
import uuid as uuidlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

from parley.audio.pcm import Int16Array, samples_for_ms
from parley.audio.resample import StreamResampler
from parley.audio.wav import wav_bytes, write_wav_atomic
from parley.config import PlaybackSettings
from parley.errors import CallGone, EslCommandError, EslOutcomeUnknown, PlaybackError, SpoolError
from parley.freeswitch import esl_protocol as esl
from parley.freeswitch.esl_client import Sent

log = logging.getLogger("parley.playback")

ChunkStatus = Literal["queued", "playing", "done", "break", "flushed", "failed"]
_TAG_RE = re.compile(r"^\{([^}]*)\}")
LOW_WATER_MS = 120.0  # emit a partial chunk when the queued audio ahead of the caller falls below this


class EslLike(Protocol):
    async def send(self, data: bytes, *, timeout: float | None = None) -> Sent: ...
    async def sendmsg(self, data: bytes, *, timeout: float | None = None) -> Sent: ...
    async def api(self, command: str, *, timeout: float | None = None, check: bool = True) -> str: ...


@dataclass(slots=True)
class Chunk:
    utterance_id: str
    index: int
    path: Path
    samples: int
    rate: int
    event_uuid: str
    status: ChunkStatus = "queued"
    queued_at: float | None = None  # command written
    started_at: float | None = None  # PLAYBACK_START received (our clock)
    stopped_at: float | None = None
    fs_start_us: int | None = None  # FreeSWITCH's own event times
    fs_stop_us: int | None = None
    owned: bool = True  # parley wrote it (and removes it); False for FreeSWITCH's own files and tones

    @property
    def duration_ms(self) -> float:
        return 1000.0 * self.samples / self.rate

    def heard_ms(self, now: float) -> float:
        if self.status == "done":
            return self.duration_ms
        if self.status in ("queued", "flushed", "failed") or self.started_at is None:
            return 0.0
        if self.fs_start_us is not None and self.fs_stop_us is not None:
            played = (self.fs_stop_us - self.fs_start_us) / 1000.0
        else:
            played = 1000.0 * ((self.stopped_at or now) - self.started_at)
        return max(0.0, min(self.duration_ms, played))


@dataclass(frozen=True, slots=True)
class UtteranceReport:
    utterance_id: str
    chunks: int
    queued_ms: float
    heard_ms: float
    interrupted: bool
    complete: bool
    first_command_at: float | None
    first_start_at: float | None
    ended_at: float | None


@dataclass(frozen=True, slots=True)
class BargeIn:
    """What a barge-in did: when the break left, when playback stopped, and what each utterance heard."""

    requested_at: float
    break_written_at: float
    stopped_at: float | None
    utterances: tuple[UtteranceReport, ...]

    @property
    def heard_ms(self) -> float:
        return sum(u.heard_ms for u in self.utterances)


@dataclass(slots=True)
class PlaybackStats:
    chunks: int = 0
    commands: int = 0
    breaks: int = 0
    failed: int = 0
    flushed: int = 0
    bytes_written: int = 0


class Utterance:
    """One agent utterance being streamed out; ``write`` audio as it is produced, then ``finish``."""

    def __init__(self, owner: CallPlayback, utterance_id: str, source_rate: int) -> None:
        self.id = utterance_id
        self._owner = owner
        self._resampler = owner._resampler_for(source_rate)
        self._pending: list[Int16Array] = []
        self._pending_n = 0
        self.chunks: list[Chunk] = []
        self.finished = False
        self.cancelled = False
        self._done = asyncio.Event()
        self._timer: asyncio.TimerHandle | None = None
        self._flush_task: asyncio.Task[None] | None = None
        self.ended_at: float | None = None
        self.started_at: float | None = None  # PLAYBACK_START of its first chunk (our clock)
        self._started = asyncio.Event()

    # ---- producer side -------------------------------------------------------------------------------

    async def write(self, samples: Int16Array) -> None:
        """Audio at the source rate given to :meth:`CallPlayback.utterance`, any length."""
        if self.cancelled or self.finished:
            return
        out = self._resampler.process(samples)
        if out.size:
            self._pending.append(out)
            self._pending_n += out.size
        while not self.cancelled and self._pending_n >= self._target():
            await self._emit(self._target())

    async def finish(self) -> None:
        """No more audio: queue what is left. Returns once every chunk is queued (not played)."""
        if self.finished or self.cancelled:
            return
        tail = self._resampler.flush()
        if tail.size:
            self._pending.append(tail)
            self._pending_n += tail.size
        if self._pending_n:
            await self._emit(self._pending_n)
        self.finished = True
        self._check_done()

    async def wait_played(self, timeout: float | None = None) -> UtteranceReport:
        """Until the last chunk stopped, the utterance was interrupted, or the call ended."""
        async with asyncio.timeout(timeout):
            await self._done.wait()
        return self.report()

    async def wait_started(self) -> float | None:
        """When the caller started hearing it (PLAYBACK_START of its first chunk); None if it never did."""
        waiter = asyncio.ensure_future(self._started.wait())
        done = asyncio.ensure_future(self._done.wait())
        try:
            await asyncio.wait((waiter, done), return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            done.cancel()
        return self.started_at

    def _mark_started(self, at: float) -> None:
        if self.started_at is None:
            self.started_at = at
            self._started.set()

    # ---- state ---------------------------------------------------------------------------------------

    @property
    def done(self) -> bool:
        return self._done.is_set()

    @property
    def first_command_at(self) -> float | None:
        """When the first chunk's playback command was written (None before)."""
        return self.chunks[0].queued_at if self.chunks else None

    def heard_ms(self) -> float:
        now = self._owner._clock()
        return sum(c.heard_ms(now) for c in self.chunks)

    def report(self) -> UtteranceReport:
        return UtteranceReport(
            utterance_id=self.id,
            chunks=len(self.chunks),
            queued_ms=sum(c.duration_ms for c in self.chunks),
            heard_ms=self.heard_ms(),
            interrupted=self.cancelled,
            complete=self.finished and all(c.status == "done" for c in self.chunks),
            first_command_at=self.chunks[0].queued_at if self.chunks else None,
            first_start_at=self.chunks[0].started_at if self.chunks else None,
            ended_at=self.ended_at,
        )

    def _target(self) -> int:
        s = self._owner.settings
        # A small first chunk gets audio to the caller sooner, unless earlier audio is still playing anyway.
        busy = any(not u.done for u in self._owner._utterances if u is not self)
        ms = s.first_chunk_ms if not self.chunks and not busy else s.chunk_ms
        return max(1, samples_for_ms(ms, self._owner.codec_rate))

    async def _emit(self, n: int) -> None:
        n = min(n, self._pending_n)
        if n <= 0:
            return
        buf = np.concatenate(self._pending) if len(self._pending) > 1 else self._pending[0]
        data, rest = buf[:n], buf[n:]
        self._pending = [rest] if rest.size else []
        self._pending_n = int(rest.size)
        await self._owner._queue_chunk(self, data)
        self._arm_low_water_timer()

    def _arm_low_water_timer(self) -> None:
        """If synthesis is slower than playout, send what we have before the caller hears a gap."""
        if self._timer is not None:
            self._timer.cancel()
        dry_at = self._owner.queue_dry_at
        if dry_at is None or self.cancelled or self.finished:
            return
        delay = max(0.0, dry_at - LOW_WATER_MS / 1000.0 - self._owner._clock())
        self._timer = asyncio.get_running_loop().call_later(delay, self._low_water)

    def _low_water(self) -> None:
        min_n = samples_for_ms(40, self._owner.codec_rate)
        if self.cancelled or self.finished or self._pending_n < min_n:
            return
        if self._flush_task is None or self._flush_task.done():
            self._flush_task = asyncio.create_task(self._flush_low_water(min_n), name=f"low-water-{self.id}")
            self._flush_task.add_done_callback(_retrieve)

    async def _flush_low_water(self, min_n: int) -> None:
        # What is pending NOW: write()/finish() may have emitted it between the timer and this task.
        if not (self.cancelled or self.finished) and self._pending_n >= min_n:
            await self._emit(self._pending_n)

    def _check_done(self) -> None:
        if self._done.is_set():
            return
        ended = self.cancelled or (
            self.finished and all(c.status in ("done", "break", "flushed", "failed") for c in self.chunks)
        )
        if ended:
            if self._timer is not None:
                self._timer.cancel()
            self.ended_at = self._owner._clock()
            self._done.set()


def _retrieve(task: asyncio.Task[None]) -> None:
    """A low-water flush that lost its call (hangup) is expected; anything else is logged."""
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None and not isinstance(exc, CallGone):
        log.warning("low-water flush failed: %s", exc)


class CallPlayback:
    """All agent audio of one call. Feed it the call's ESL events with :meth:`handle_event`."""

    def __init__(
        self,
        call_uuid: str,
        esl_client: EslLike,
        settings: PlaybackSettings,
        *,
        codec_rate: int = 8000,
        clock: Callable[[], float] = time.monotonic,
        send_stream_text: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self.call_uuid = call_uuid
        self.settings = settings
        self.codec_rate = codec_rate
        self._esl = esl_client
        self._clock = clock
        self._send_text = send_stream_text
        self._dir = Path(settings.spool_dir) / call_uuid
        self._fs_dir = settings.fs_dir.rstrip("/") + "/" + call_uuid
        self._lock = asyncio.Lock()  # chunks leave in order; a break never overtakes a command in flight
        self._utterances: list[Utterance] = []
        self._chunks: dict[tuple[str, int], Chunk] = {}
        self._remote_waiters: dict[tuple[str, int], asyncio.Future[str]] = {}
        self._resampler: StreamResampler | None = None
        self._stopped = asyncio.Event()
        self._closed = False
        self.queue_dry_at: float | None = None  # when the queued audio runs out, if nothing else is sent
        self.stats = PlaybackStats()

    # ---- producer API ------------------------------------------------------------------------------

    def utterance(self, source_rate: int, utterance_id: str | None = None) -> Utterance:
        if self._closed:
            raise CallGone(f"call {self.call_uuid} has ended")
        utt = Utterance(self, utterance_id or uuidlib.uuid4().hex[:12], source_rate)
        self._utterances = [u for u in self._utterances if not u.done] + [utt]
        return utt

    async def play(self, samples: Int16Array, rate: int, utterance_id: str | None = None) -> Utterance:
        """Queue a whole buffer (a greeting, an echo) as one utterance."""
        utt = self.utterance(rate, utterance_id)
        await utt.write(samples)
        await utt.finish()
        return utt

    @property
    def is_playing(self) -> bool:
        """True while any chunk is queued or playing."""
        return any(not u.done for u in self._utterances)

    def set_codec_rate(self, rate: int) -> None:
        if rate > 0 and rate != self.codec_rate and not self.is_playing:
            self.codec_rate = rate
            self._resampler = None

    async def barge_in(self, *, wait_stop_s: float = 0.5, written: asyncio.Event | None = None) -> BargeIn | None:
        """Stop the caller hearing us: ``uuid_break <uuid> all``. None if nothing was playing.

        ``written`` is set as soon as the break is on the socket (before PLAYBACK_STOP is waited for), so
        that a newer utterance can be queued behind it without being flushed by it.
        """
        requested = self._clock()
        active = [u for u in self._utterances if not u.done]
        if not active:
            if written is not None:
                written.set()
            return None
        for utt in active:
            utt.cancelled = True
        if self._resampler is not None:
            self._resampler.reset()
        async with self._lock:  # let a command in flight land first, so the break flushes it
            try:
                sent = await self._esl.send(esl.api_command(f"uuid_break {self.call_uuid} all"))
            finally:
                if written is not None:
                    written.set()
            written_at = sent.written_at
        self.stats.breaks += 1
        for chunk in self._chunks.values():
            if chunk.status == "queued" and chunk.utterance_id in {u.id for u in active}:
                chunk.status = "flushed"
                self.stats.flushed += 1
                self._unlink(chunk)
        stopped_at: float | None = None
        if any(c.status == "playing" for c in self._chunks.values()):
            self._stopped.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait_stop_s):
                    while any(c.status == "playing" for c in self._chunks.values()):
                        await self._stopped.wait()
                        self._stopped.clear()
                stopped_at = self._clock()
        self.queue_dry_at = None
        for utt in active:
            utt._check_done()
        return BargeIn(requested, written_at, stopped_at, tuple(u.report() for u in active))

    async def close(self) -> None:
        """The call ended: stop waiting on anything and remove this call's spool files."""
        self._closed = True
        for utt in self._utterances:
            utt.cancelled = True
            utt._check_done()
        for fut in self._remote_waiters.values():
            if not fut.done():
                fut.set_exception(CallGone(f"call {self.call_uuid} ended"))
        await asyncio.to_thread(shutil.rmtree, self._dir, True)

    # ---- events --------------------------------------------------------------------------------------

    def handle_event(self, event: esl.Event) -> None:
        name = event.name
        if name in ("PLAYBACK_START", "PLAYBACK_STOP"):
            chunk = self._chunk_of(event)
            if chunk is None:
                return
            now = self._clock()
            if name == "PLAYBACK_START":
                chunk.status = "playing"
                chunk.started_at = now
                chunk.fs_start_us = event.timestamp_us
                self._utterance(chunk.utterance_id, lambda u: u._mark_started(now))
            else:
                if chunk.started_at is None:  # START lost (ESL outage): assume it played up to now
                    chunk.started_at = chunk.queued_at
                chunk.status = "break" if event.get("Playback-Status") == "break" else "done"
                chunk.stopped_at = now
                chunk.fs_stop_us = event.timestamp_us
                self._unlink(chunk)
                self._stopped.set()
                self._utterance(chunk.utterance_id, lambda u: u._check_done())
        elif name == "CHANNEL_EXECUTE_COMPLETE" and event.get("Application") == "playback":
            response = event.get("Application-Response") or ""
            chunk = self._chunk_of(event)
            if chunk is not None and chunk.status == "queued" and "NOT FOUND" in response.upper():
                chunk.status = "failed"
                self.stats.failed += 1
                log.error("call %s: FreeSWITCH could not open %s (%s); is the spool dir shared and readable?",
                          self.call_uuid, chunk.path, response)
                self._utterance(chunk.utterance_id, lambda u: u._check_done())
        elif name == "CUSTOM" and event.subclass == "mod_audio_stream::play":
            self._on_remote_play(event)

    # ---- internals -----------------------------------------------------------------------------------

    def _resampler_for(self, source_rate: int) -> StreamResampler:
        if self._resampler is None or self._resampler.in_rate != source_rate or (
            self._resampler.out_rate != self.codec_rate
        ):
            self._resampler = StreamResampler(source_rate, self.codec_rate)
        return self._resampler

    def _utterance(self, utterance_id: str, fn: Callable[[Utterance], None]) -> None:
        for utt in self._utterances:
            if utt.id == utterance_id:
                fn(utt)

    def _chunk_of(self, event: esl.Event) -> Chunk | None:
        utt, idx = event.get("parley_utterance"), event.get("parley_chunk")
        if utt is None or idx is None:
            m = _TAG_RE.match(event.get("Playback-File-Path") or event.get("Application-Data") or "")
            if m is None:
                return None
            tags = dict(kv.split("=", 1) for kv in m.group(1).split(",") if "=" in kv)
            utt, idx = tags.get("parley_utterance"), tags.get("parley_chunk")
        if utt is None or idx is None or not idx.isdigit():
            return None
        return self._chunks.get((utt, int(idx)))

    def _unlink(self, chunk: Chunk) -> None:
        if self.settings.mode != "remote" and chunk.owned:
            chunk.path.unlink(missing_ok=True)

    async def _queue_chunk(self, utt: Utterance, data: Int16Array) -> None:
        if self._closed:
            raise CallGone(f"call {self.call_uuid} has ended")
        index = len(utt.chunks)
        name = f"{utt.id}_{index:04d}.wav"
        chunk = Chunk(utt.id, index, self._dir / name, int(data.size), self.codec_rate, str(uuidlib.uuid4()))
        tag = f"{{parley_utterance={utt.id},parley_chunk={index}}}"
        async with self._lock:
            if utt.cancelled:
                return
            utt.chunks.append(chunk)
            self._chunks[(utt.id, index)] = chunk
            try:
                if self.settings.mode == "remote":
                    fs_path = await self._send_remote(chunk, data)
                else:
                    self._write_spool(chunk, data)
                    fs_path = f"{self._fs_dir}/{name}"
                self.stats.bytes_written += int(data.size) * 2
                chunk.queued_at = await self._send_play(tag + fs_path, chunk.event_uuid)
            except EslOutcomeUnknown as exc:
                # written, then the link dropped: FreeSWITCH may or may not play it, and it is never sent
                # twice. If it plays, its PLAYBACK events (tagged) still reach this chunk; the utterance goes on.
                chunk.status = "failed"
                chunk.queued_at = self._clock()
                log.warning("call %s: chunk %s may not have been queued (%s); not sending it again",
                            self.call_uuid, name, exc)
                self.stats.chunks += 1
                return
            except EslCommandError as exc:
                chunk.status = "failed"
                self.stats.failed += 1
                self._unlink(chunk)
                if "invalid session id" in exc.reply or "No such channel" in exc.reply:
                    raise CallGone(f"call {self.call_uuid} is gone ({exc.reply})") from exc
                raise PlaybackError(f"call {self.call_uuid}: could not queue chunk {name}: {exc.reply}") from exc
            self.stats.chunks += 1
            start = max(self._clock(), self.queue_dry_at or 0.0)
            self.queue_dry_at = start + chunk.duration_ms / 1000.0

    def _write_spool(self, chunk: Chunk, data: Int16Array) -> None:
        """Write one chunk where FreeSWITCH reads it; a full, read-only or missing spool is a SpoolError."""
        try:
            self._dir.mkdir(parents=True, exist_ok=True, mode=0o755)
            write_wav_atomic(chunk.path, data, self.codec_rate, mode=0o644)
        except OSError as exc:
            chunk.status = "failed"
            self.stats.failed += 1
            raise SpoolError(
                f"call {self.call_uuid}: cannot write {chunk.path.name} to the spool {self._dir}: "
                f"{exc.strerror or exc}"
            ) from exc

    async def play_file(self, fs_path: str, utterance_id: str | None = None) -> Utterance:
        """Play a file FreeSWITCH already has (its own sounds, a ``tone_stream://``), writing nothing here:
        the way to reach the caller when the spool cannot be written. Tracked like any utterance."""
        utt = self.utterance(self.codec_rate, utterance_id)
        chunk = Chunk(utt.id, 0, Path(fs_path), 0, self.codec_rate, str(uuidlib.uuid4()), owned=False)
        tag = f"{{parley_utterance={utt.id},parley_chunk=0}}"
        async with self._lock:
            utt.chunks.append(chunk)
            self._chunks[(utt.id, 0)] = chunk
            try:
                chunk.queued_at = await self._send_play(tag + fs_path, chunk.event_uuid)
            except EslCommandError as exc:
                chunk.status = "failed"
                raise PlaybackError(f"call {self.call_uuid}: could not play {fs_path}: {exc.reply}") from exc
        utt.finished = True
        return utt

    async def _send_play(self, arg: str, event_uuid: str) -> float:
        self.stats.commands += 1
        if self.settings.mode == "broadcast":
            before = self._clock()
            await self._esl.api(f"uuid_broadcast {self.call_uuid} {arg} aleg")
            return before
        sent = await self._esl.sendmsg(esl.execute_command(self.call_uuid, "playback", arg, event_uuid=event_uuid))
        return sent.written_at

    async def _send_remote(self, chunk: Chunk, data: Int16Array) -> str:
        if self._send_text is None:
            raise PlaybackError("remote playback mode needs the call's mod_audio_stream WebSocket")
        key = (chunk.utterance_id, chunk.index)
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._remote_waiters[key] = fut
        message = {
            "type": "streamAudio",
            "data": {
                "audioDataType": "wav",
                "audioData": base64.b64encode(wav_bytes(data, self.codec_rate)).decode("ascii"),
                "parley_utterance": chunk.utterance_id,
                "parley_chunk": chunk.index,
            },
        }
        try:
            await self._send_text(json.dumps(message, separators=(",", ":")))
            async with asyncio.timeout(2.0):
                path = await fut
        except TimeoutError:
            raise PlaybackError(
                f"call {self.call_uuid}: mod_audio_stream did not confirm chunk {chunk.index} (no ::play event)"
            ) from None
        finally:
            self._remote_waiters.pop(key, None)
        chunk.path = Path(path)
        return path

    def _on_remote_play(self, event: esl.Event) -> None:
        try:
            body = json.loads(event.body or "")
            key = (str(body["parley_utterance"]), int(body["parley_chunk"]))
            path = str(body["file"])
        except (ValueError, KeyError, TypeError):
            log.warning("call %s: mod_audio_stream::play without a parley tag: %.200s", self.call_uuid, event.body)
            return
        fut = self._remote_waiters.get(key)
        if fut is not None and not fut.done():
            fut.set_result(path)
