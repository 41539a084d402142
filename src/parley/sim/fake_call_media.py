"""The mod_audio_stream side of one fake call: its media bug's streams and the caller's audio.

Owns: creating streams the way ``stream_session_init`` configures them (channel variables read at start:
``STREAM_EXTRA_HEADERS``, ``STREAM_BUFFER_SIZE``, ``STREAM_HEART_BEAT``), the one-bug-per-channel rule
(a second ``start`` fails while a stream is attached, even a dead one the app closed), the
connect / error events, ``stop`` / ``send_text`` / ``pause`` / ``resume``, and where the caller's audio
continues when a new stream starts (one timeline per call). Knows nothing of ESL framing.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from typing import Any

from parley.sim.fake_audio_stream import FIRST_FRAME_DELAY_S, AudioStream, EventSink, HeardSource
from parley.sim.fake_playback import Int16Array, resample


class CallMedia:
    def __init__(
        self,
        *,
        call_uuid: str,
        caller_audio: Int16Array,
        caller_rate: int,
        frame_jitter_s: float,
        heard: HeardSource,
        on_event: EventSink,
        is_ending: Callable[[], bool],
        clock: Callable[[], float],
        temp_dir: Path,
    ) -> None:
        self.call_uuid = call_uuid
        self._caller = caller_audio
        self._caller_rate = caller_rate
        self._jitter = frame_jitter_s
        self._heard = heard
        self._on_event = on_event
        self._is_ending = is_ending
        self._clock = clock
        self._temp_dir = temp_dir
        self.streams: list[AudioStream] = []
        self.attached: AudioStream | None = None
        self.ws_close: tuple[int, str] | None = None
        self.stream_texts: list[str] = []
        self._caller_t0: float | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def new_stream(
        self,
        url: str,
        mix: str,
        rate: int,
        metadata: str | None,
        extra_headers: Mapping[str, str] | None,
        channel_vars: Mapping[str, str],
    ) -> AudioStream:
        """Attach a stream configured from ``channel_vars`` (as they are when the stream starts)."""
        start = 0
        if self._caller_t0 is not None:  # the caller kept talking while no stream was attached
            start = max(0, round((self._clock() + FIRST_FRAME_DELAY_S - self._caller_t0) * rate))
        stream = AudioStream(
            call_uuid=self.call_uuid,
            url=url,
            mix=mix,
            rate=rate,
            metadata=metadata,
            extra_headers=extra_headers,
            caller_audio=resample(self._caller, self._caller_rate, rate),
            caller_start=start,
            heard=self._heard,
            on_event=self._on_event,
            on_text=self.stream_texts.append,
            on_app_close=self._app_closed,
            temp_dir=self._temp_dir,
            clock=self._clock,
            frame_jitter_s=self._jitter,
            frame_ms=buffer_ms(channel_vars.get("STREAM_BUFFER_SIZE")),
            heart_beat_s=positive(channel_vars.get("STREAM_HEART_BEAT")),
        )
        self.streams.append(stream)
        self.attached = stream
        return stream

    def opened(self, stream: AudioStream, error: dict[str, object] | None) -> None:
        """The connect finished: fire ``::connect`` and start streaming, or ``::error`` and detach."""
        if error is not None:  # the media bug is closed again
            if self.attached is stream:
                self.attached = None
            self._on_event("error", json.dumps({"status": "error", "message": error}, separators=(",", ":")))
            return
        if self._is_ending():
            self._spawn(stream.close())
            return
        self._on_event("connect", '{"status":"connected"}')
        if self._caller_t0 is None:
            self._caller_t0 = self._clock() + FIRST_FRAME_DELAY_S
        stream.start()

    def say(self, samples: Int16Array, rate: int) -> None:
        """Live caller speech (int16 mono at ``rate``) into the attached stream, from now on."""
        if self.attached is not None:
            self.attached.inject(resample(samples, rate, self.attached.rate))

    def _app_closed(self, code: int, reason: str) -> None:
        stream = self.attached
        if code == 1006 and stream is not None and stream.reset:
            self.attached = None  # ::error closes the media bug: a new start is accepted (recorded)
            return
        self.ws_close = (code, reason)

    # ---- fault hooks (tests) ----------------------------------------------------------------------

    def reset_stream(self) -> None:
        """The attached stream's TCP connection is reset: parley sees 1006, FreeSWITCH ``::error`` code 1."""
        if self.attached is not None:
            self.attached.drop()

    def silence_stream(self) -> None:
        """The attached stream stops sending frames; its connection stays open (a stalled media bug)."""
        if self.attached is not None:
            self.attached.paused = True

    async def flood_stream(self, count: int) -> None:
        """The attached stream sends ``count`` garbage binary frames back to back."""
        if self.attached is not None:
            await self.attached.send_garbage(count)

    async def second_stream(self, url: str, channel_vars: Mapping[str, str]) -> AudioStream:
        """A second WebSocket for this call while the first is up (the module itself refuses a second
        ``start``; this is another sender naming the same call, e.g. a restart racing the old stream)."""
        headers = extra_headers(channel_vars.get("STREAM_EXTRA_HEADERS"))
        stream = self.new_stream(url, "mono", 16000, None, headers, channel_vars)
        self.opened(stream, await stream.open())
        return stream

    # ---- uuid_audio_stream ------------------------------------------------------------------------

    def start(self, url: str, mix: str, rate: int, metadata: str | None, channel_vars: Mapping[str, str]) -> bool:
        """``start``: False when a stream is already attached ("bug already attached")."""
        if self.attached is not None or self._is_ending():
            return False
        headers = extra_headers(channel_vars.get("STREAM_EXTRA_HEADERS"))
        stream = self.new_stream(url, mix, rate, metadata, headers, channel_vars)

        async def connect() -> None:
            self.opened(stream, await stream.open())

        self._spawn(connect())
        return True

    def stop(self, text: str | None) -> bool:
        stream = self.attached
        if stream is None:
            return False
        self.attached = None
        self._spawn(self._close(stream, text))
        return True

    def command(self, action: str, text: str | None = None) -> bool:
        stream = self.attached
        if stream is None:
            return False
        if action == "send_text" and text is not None:
            self._spawn(stream.send_text(text))
        elif action in ("pause", "resume"):
            stream.paused = action == "pause"
        return True

    # ---- the channel goes away --------------------------------------------------------------------

    def close_all(self) -> list[asyncio.Task[None]]:
        """Hangup: FreeSWITCH closes every stream (1000 "Normal closure") and deletes the temp files."""
        self.attached = None
        return [self._spawn(self._close(s, None)) for s in self.streams]

    async def abort_all(self) -> None:
        for task in self._tasks:
            task.cancel()
        for stream in self.streams:
            await stream.abort()
            stream.delete_files()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _close(self, stream: AudioStream, text: str | None) -> None:
        await stream.close(text)
        stream.delete_files()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task


def buffer_ms(value: str | None) -> int:
    """``STREAM_BUFFER_SIZE``: a multiple of 20 ms, anything else falls back to 20."""
    ms = int(value) if value is not None and value.isdigit() else 20
    return ms if ms >= 20 and ms % 20 == 0 else 20


def positive(value: str | None) -> float | None:
    try:
        seconds = float(value) if value else 0.0
    except ValueError:
        return None
    return seconds if seconds > 0 else None


def extra_headers(value: str | None) -> dict[str, str] | None:
    """``STREAM_EXTRA_HEADERS``: a JSON object of string values (anything else is ignored)."""
    try:
        obj = json.loads(value) if value else None
    except ValueError:
        return None
    if not isinstance(obj, dict):
        return None
    return {str(k): str(v) for k, v in obj.items() if isinstance(v, str)}
