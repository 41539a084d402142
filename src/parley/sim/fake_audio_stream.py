"""The fake mod_audio_stream (amigniter community edition, ec2a781): a WebSocket *client* per stream.

Owns: the WebSocket connection to the app (handshake shaped like libwsc's: ``Origin: http://host:port``,
no permessage-deflate, no User-Agent, ``STREAM_EXTRA_HEADERS`` added), the metadata text frame, one
pacing task that sends 20 ms s16le frames on an absolute schedule, and the app's text frames
(``streamAudio`` -> temp file + ``mod_audio_stream::play``; anything else -> ``mod_audio_stream::json``;
an app-initiated close -> ``mod_audio_stream::disconnect``). Reports CUSTOM events through a callback;
knows nothing of ESL.

Recorded behaviour reproduced: metadata first, then binary frames; ``mono`` carries only the caller;
``mixed``/``stereo`` (left = caller, right = what the caller hears) send nothing while nothing plays
(measured: a parked idle channel writes no audio, and the READ+WRITE media bug then yields no frames);
closes started by FreeSWITCH (hangup, ``stop``) fire no ``::disconnect``; no reconnect; a refused upgrade
(any non-101 answer, e.g. 401) is ``::error`` code 6 "WebSocket upgrade failed"; a connection dropped
without a close frame is ``::error`` code 1 "Connection reset by peer" and no ``::disconnect`` (the bug is
closed, so a new ``start`` is accepted); an app close frame is ``::disconnect`` with its code and reason
(the bug stays attached, dead, until ``stop``). Like
``stream_session_init``, a stream takes ``STREAM_EXTRA_HEADERS`` (JSON), ``STREAM_BUFFER_SIZE`` (ms per
message, multiple of 20) and ``STREAM_HEART_BEAT`` (ping interval) from the channel variables at start.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import errno
import json
import os
import random
from collections.abc import Callable, Mapping
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI
from websockets.typing import Origin

from parley.sim.fake_playback import Int16Array

FIRST_FRAME_DELAY_S = 0.020  # recorded: the first frame arrives 10-45 ms after the upgrade
CONNECT_TIMEOUT_S = 2.0  # libwsc's connect timeout
RAW_EXTENSIONS = {8000: ".r8", 16000: ".r16", 24000: ".r24", 32000: ".r32", 48000: ".r48", 64000: ".r64"}
FILE_EXTENSIONS = {"wav": ".wav", "mp3": ".mp3", "ogg": ".ogg", "pcmu": ".pcmu", "pcma": ".pcma"}

RESET_ERROR = {"code": 1, "error": "Connection reset by peer (system error 104)"}  # recorded
EventSink = Callable[[str, str], None]  # (subclass suffix, JSON body) -> fire mod_audio_stream::<suffix>
HeardSource = Callable[[float, float], "Int16Array | None"]  # codec-rate audio the caller hears in [t0, t1)


def connect_error(exc: BaseException) -> dict[str, object]:
    """The ``mod_audio_stream::error`` body for a failed connect (code 6 = CONNECT_FAILED, as recorded)."""
    if isinstance(exc, ConnectionRefusedError):
        return {"code": 6, "error": "Connection refused (system error 111)"}
    if isinstance(exc, TimeoutError):
        return {"code": 10, "error": "Connection timed out"}
    if isinstance(exc, OSError) and exc.errno:
        return {"code": 6, "error": f"{os.strerror(exc.errno)} (system error {exc.errno})"}
    if isinstance(exc, InvalidStatus):  # recorded (ws-401-refused): any non-101 answer to the upgrade
        return {"code": 6, "error": "WebSocket upgrade failed"}
    return {"code": 1, "error": str(exc) or type(exc).__name__}


class AudioStream:
    """One ``uuid_audio_stream start``: connect, stream frames, react to the app, close."""

    def __init__(
        self,
        *,
        call_uuid: str,
        url: str,
        mix: str,
        rate: int,
        metadata: str | None,
        extra_headers: Mapping[str, str] | None,
        caller_audio: Int16Array,
        caller_start: int,
        heard: HeardSource,
        on_event: EventSink,
        on_text: Callable[[str], None],
        on_app_close: Callable[[int, str], None],
        temp_dir: Path,
        clock: Callable[[], float],
        frame_jitter_s: float = 0.0,
        frame_ms: int = 20,
        heart_beat_s: float | None = None,
    ) -> None:
        self.call_uuid = call_uuid
        self.url = url
        self.mix = mix
        self.rate = rate
        self.metadata = metadata
        self.extra_headers = dict(extra_headers or {})
        self._caller = bytearray(caller_audio.astype("<i2").tobytes())
        self._pos = 2 * caller_start  # byte offset of the next caller frame in _caller
        self._heard = heard
        self._on_event = on_event
        self._on_text = on_text
        self._on_app_close = on_app_close
        self._temp_dir = temp_dir
        self._clock = clock
        self._jitter = frame_jitter_s
        self.frame_s = frame_ms / 1000  # STREAM_BUFFER_SIZE: one message per N ms
        self._heart_beat = heart_beat_s
        self._rng = random.Random(call_uuid)
        self._ws: ClientConnection | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._fs_closing = False
        self._files: list[Path] = []
        self._file_seq = 0
        self.paused = False
        self.reset = False  # the connection dropped without a close frame (the bug is then closed)
        self.frames_sent = 0
        self.first_frame_at: float | None = None
        self.closed = asyncio.Event()
        self._t0: float | None = None  # media time of the first frame's first sample
        self._k = 0  # frames taken from the caller buffer so far (the one being filled is frame _k)

    @property
    def samples_per_frame(self) -> int:
        return round(self.rate * self.frame_s)

    # ---- lifecycle ------------------------------------------------------------------------------

    async def open(self) -> dict[str, object] | None:
        """Connect and send the metadata; returns the ``::error`` message on failure, else None."""
        parts = urlsplit(self.url)
        origin = f"http://{parts.hostname}:{parts.port or (443 if parts.scheme == 'wss' else 80)}"
        try:
            self._ws = await connect(
                self.url,
                origin=Origin(origin),
                compression=None,
                user_agent_header=None,
                additional_headers=self.extra_headers or None,
                proxy=None,
                open_timeout=CONNECT_TIMEOUT_S,
                ping_interval=self._heart_beat,  # STREAM_HEART_BEAT (libwsc pings only when set)
                close_timeout=1.0,
                max_size=None,
            )
            if self._fs_closing:  # FreeSWITCH gave up on the stream while it was connecting
                await self._ws.close(1000, "Normal closure")
                return None
            if self.metadata:
                await self._ws.send(self.metadata)
        except (OSError, TimeoutError, InvalidHandshake, InvalidURI, ConnectionClosed) as exc:
            self.closed.set()
            return connect_error(exc)
        return None

    def start(self) -> None:
        """Start streaming caller audio and listening to the app (after ``::connect`` was fired)."""
        assert self._ws is not None
        self._tasks = [
            asyncio.create_task(self._pace(self._ws), name=f"fake-mas-pace-{self.call_uuid}"),
            asyncio.create_task(self._read(self._ws), name=f"fake-mas-read-{self.call_uuid}"),
        ]

    async def close(self, text: str | None = None) -> None:
        """FreeSWITCH closes the stream (hangup, ``stop``): 1000 "Normal closure", no ``::disconnect``."""
        if self._fs_closing:
            await self.closed.wait()
            return
        self._fs_closing = True
        ws = self._ws
        if ws is not None:
            with contextlib.suppress(ConnectionClosed, OSError):
                if text:
                    await ws.send(text)
                await ws.close(1000, "Normal closure")
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)  # our own cancellation still propagates
        self.closed.set()

    async def abort(self) -> None:
        """Drop the TCP connection without a closing handshake (fake shutdown)."""
        self._fs_closing = True
        for task in self._tasks:
            task.cancel()
        if self._ws is not None:
            self._ws.transport.abort()
        self.closed.set()

    def drop(self) -> None:
        """Fault hook: the TCP connection is reset mid-call (no close frame either way), as a middlebox or a
        crashed peer does. The app sees 1006; FreeSWITCH fires ``::error`` code 1 (recorded)."""
        if self._ws is not None and not self._fs_closing:
            self._ws.transport.abort()

    async def send_garbage(self, count: int) -> None:
        """Fault hook: ``count`` binary frames of one byte each (no whole sample), as fast as possible."""
        if self._ws is None:
            return
        with contextlib.suppress(ConnectionClosed, OSError):
            for _ in range(count):
                await self._ws.send(b"\x01")

    async def send_text(self, text: str) -> None:
        if self._ws is not None and not self._fs_closing:
            with contextlib.suppress(ConnectionClosed, OSError):
                await self._ws.send(text)

    def delete_files(self) -> None:
        for path in self._files:
            with contextlib.suppress(OSError):
                path.unlink()
        self._files.clear()

    # ---- caller audio ---------------------------------------------------------------------------

    def inject(self, samples: Int16Array) -> None:
        """The caller says ``samples`` (at the stream rate) from now on, over any scripted audio: placed at
        the current position inside the frame being filled, so the audio's media time is the moment it
        was said (see ``_pace`` for when that frame leaves)."""
        start = self._pos
        if self._t0 is not None:
            # its place on the media clock, which may lie a frame or two ahead of a sender running late
            into = round((self._clock() - (self._t0 + self._k * self.frame_s)) * self.rate)
            start += 2 * max(0, into)
        end = start + 2 * samples.size
        if len(self._caller) < end:
            self._caller.extend(bytes(end - len(self._caller)))
        existing = np.frombuffer(bytes(self._caller[start:end]), dtype="<i2").astype(np.int32)
        mixed = np.clip(existing + samples.astype(np.int32), -32768, 32767).astype("<i2")
        self._caller[start:end] = mixed.tobytes()

    async def _pace(self, ws: ClientConnection) -> None:
        n = self.samples_per_frame
        nbytes = 2 * n
        silence = bytes(nbytes)
        t0 = self._clock() + FIRST_FRAME_DELAY_S
        self._t0 = t0
        k = 0
        try:
            while not self._fs_closing:
                # Frame k carries the caller's audio of [t0 + k*f, t0 + (k+1)*f] and leaves when that audio
                # has been read, at its end: mod_audio_stream's media bug runs on SWITCH_ABC_TYPE_READ, after
                # FreeSWITCH read a whole frame. (Sending it at its start would hand parley audio 20 ms
                # before a real line can: a kinder fake, and every latency figure 20 ms too good.)
                target = t0 + (k + 1) * self.frame_s
                if self._jitter:
                    target += self._rng.uniform(0.0, self._jitter)
                delay = target - self._clock()
                if delay > 0:
                    await asyncio.sleep(delay)
                chunk = bytes(self._caller[self._pos : self._pos + nbytes])
                self._pos += nbytes
                frame_t0 = t0 + k * self.frame_s
                k += 1
                self._k = k
                if self.mix == "mono":
                    frame: bytes | None = chunk + silence[len(chunk) :] if len(chunk) < nbytes else chunk
                else:
                    frame = self._two_way_frame(chunk, frame_t0, frame_t0 + self.frame_s)
                if frame is None or self.paused:
                    continue
                await ws.send(frame)
                self.frames_sent += 1
                if self.first_frame_at is None:
                    self.first_frame_at = self._clock()
        except ConnectionClosed:
            pass

    def _two_way_frame(self, chunk: bytes, t0: float, t1: float) -> bytes | None:
        heard = self._heard(t0, t1)
        if heard is None:  # nothing written to the caller: the READ+WRITE bug yields no frame
            return None
        n = self.samples_per_frame
        left = np.zeros(n, dtype=np.int32)
        caller = np.frombuffer(chunk, dtype="<i2")
        left[: len(caller)] = caller
        right = _stretch(heard, n).astype(np.int32)
        if self.mix == "mixed":
            return bytes(np.clip(left + right, -32768, 32767).astype("<i2").tobytes())
        out = np.empty(2 * n, dtype="<i2")
        out[0::2] = left
        out[1::2] = right
        return bytes(out.tobytes())

    # ---- what the app sends ---------------------------------------------------------------------

    async def _read(self, ws: ClientConnection) -> None:
        try:
            async for message in ws:
                if isinstance(message, str):
                    self._on_text(message)
                    self._handle_text(message)
        except ConnectionClosed:
            pass
        finally:
            if not self._fs_closing:
                self._fs_closing = True  # stop pacing; libwsc does not reconnect
                rcvd = ws.protocol.close_rcvd
                if rcvd is None:  # recorded (ws-reset-midcall): ::error code 1, no ::disconnect, bug closed
                    self.reset = True
                    self._on_app_close(1006, "")
                    body: dict[str, object] = {"status": "error", "message": RESET_ERROR}
                    self._on_event("error", _dumps(body))
                else:
                    self._on_app_close(rcvd.code, rcvd.reason)
                    body = {"status": "disconnected", "message": {"code": rcvd.code, "reason": rcvd.reason}}
                    self._on_event("disconnect", _dumps(body))
                self.closed.set()

    def _handle_text(self, text: str) -> None:
        try:
            obj = json.loads(text)
        except ValueError:
            obj = None
        data = obj.get("data") if isinstance(obj, dict) and obj.get("type") == "streamAudio" else None
        if not isinstance(data, dict):
            self._on_event("json", text)
            return
        path = self._write_audio(data)
        if path is None:
            self._on_event("json", text)
            return
        body = {k: v for k, v in data.items() if k != "audioData"}
        body["file"] = str(path)
        self._on_event("play", _dumps(body))

    def _write_audio(self, data: Mapping[str, object]) -> Path | None:
        kind = data.get("audioDataType")
        payload = data.get("audioData")
        if not isinstance(kind, str) or not isinstance(payload, str):
            return None
        if kind == "raw":
            rate = data.get("sampleRate")
            ext = RAW_EXTENSIONS.get(rate) if isinstance(rate, int) else None
        else:
            ext = FILE_EXTENSIONS.get(kind)
        if ext is None:
            return None
        try:
            audio = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            return None
        path = self._temp_dir / f"{self.call_uuid}_{self._file_seq}.tmp{ext}"
        self._file_seq += 1
        try:
            path.write_bytes(audio)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise
            return None
        self._files.append(path)
        return path


def _stretch(samples: Int16Array, n: int) -> Int16Array:
    """Resample one frame's worth of codec-rate audio to ``n`` samples (linear; good enough here)."""
    if len(samples) == n:
        return samples
    if len(samples) == 0:
        return np.zeros(n, dtype=np.int16)
    x = np.linspace(0, len(samples) - 1, n)
    return np.interp(x, np.arange(len(samples)), samples.astype(np.float64)).astype(np.int16)


def _dumps(obj: object) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
