"""The WebSocket server that FreeSWITCH's ``mod_audio_stream`` connects to with each call's audio.

Owns: the upgrade check (path, call UUID, per-stream format from the query, the per-call token), the
first-message metadata, splitting caller audio out of the frames, the bounded per-stream frame queue
(drop oldest, counted), the policy closes (unidentified stream, bad token, garbage flood) and the
connection bookkeeping. Must not know what a call does with its audio: each accepted connection is
handed to ``on_stream`` as an :class:`AudioStream`, and the call bridge binds, reads and closes it.

Wire facts (shared/docs/freeswitch-protocols.md §1.4-1.6, checked on the recordings): FreeSWITCH is
the client, sends ``GET <path?query>`` with ``Origin``, maybe ``Authorization`` from
``STREAM_EXTRA_HEADERS`` and maybe a permessage-deflate offer (declined here); then an optional TEXT
frame of start metadata, then BINARY s16le frames (one per 20 ms, stereo interleaved left = caller,
right = audio sent to the caller); it PINGs every ``STREAM_HEART_BEAT`` s and closes with 1000 on
hangup. Binary frames from us are ignored by the module; text frames are read as ``streamAudio`` JSON.

Per connection: ``process_request`` refuses the upgrade (404 unknown path, 400 malformed uuid / rate /
mix, 401 bad token when the path names the call, 503 with ``Retry-After`` while draining for a call the
server was not told it owns: see :meth:`AudioStreamServer.drain`, and 503 for a new call when the process is
at its ``max_calls``). Then one receive loop (the websockets handler task;
no task per frame) treats a first TEXT frame that is a JSON object as metadata (it may name the call,
the FreeSWITCH node that placed it (``node``: letters, digits, ``-``, ``_``) and override the format),
calls ``on_stream`` once (after the first message, or after 0.5 s of silence; never for a connection
refused by its first message or gone before), enqueues frames and counts garbage. Policy closes are
1008 (unidentified past the timeout, bad token, bad metadata, garbage flood); 1011 if ``on_stream``
raises. websockets answers pings; its DEBUG log is muted (tokens, audio).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import astuple, dataclass, field
from http import HTTPStatus
from types import MappingProxyType, TracebackType
from typing import Any, Self
from urllib.parse import parse_qsl, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.exceptions import ProtocolError as WsProtocolError
from websockets.http11 import Request, Response

from parley.config import NODE_NAME, AudioStreamSettings
from parley.errors import AudioStreamProtocolError, CallGone
from parley.freeswitch.stream_token import check_stream_token, is_call_uuid

MAX_MESSAGE_BYTES = 256 * 1024  # ~1.3 s of 48 kHz stereo in one message; anything bigger is refused (1009)
WS_MAX_QUEUE = 32  # frames websockets buffers before it stops reading the socket (back-pressure)
ANNOUNCE_AFTER_S = 0.5  # on_stream fires after the first message, or after this long with none
FLOOD_LIMIT = 100  # garbage frames tolerated per connection per FLOOD_WINDOW_S
FLOOD_WINDOW_S = 1.0
GARBAGE_LOG_INTERVAL_S = 1.0
OPEN_TIMEOUT_S = 5.0
REFUSAL_HOOK_S = 1.0  # how long a refusal may wait for on_refused's awaitable
CLOSE_TIMEOUT_S = 5.0
POLICY_VIOLATION, INTERNAL_ERROR = 1008, 1011
# Text frames from FreeSWITCH are only the start metadata (a few hundred bytes): anything longer, deeper or
# with longer numbers is garbage, refused before the JSON parser (whose recursion a deep frame would exhaust).
MAX_TEXT_CHARS = 16 * 1024
MAX_JSON_DEPTH = 16
MAX_INT_DIGITS = 32
_RATE_RE = re.compile(r"^(\d{1,6})(k?)$")
_METADATA_UUID_KEYS = ("uuid", "call_uuid", "callId")

TextCallback = Callable[[Mapping[str, object]], None]


@dataclass(frozen=True, slots=True)
class StreamFormat:
    sample_rate: int  # 8000, 16000, ... (multiple of 8000)
    channels: int  # 1 (mono/mixed) or 2 (stereo)

    @property
    def frame_bytes(self) -> int:
        """Bytes in one 20 ms message as FreeSWITCH sends it (all channels)."""
        return self.sample_rate // 50 * 2 * self.channels


@dataclass(frozen=True, slots=True)
class AudioFrame:
    pcm: bytes  # caller audio, mono s16le (for stereo: the left channel)
    t: float  # clock() when received
    seq: int  # 0, 1, 2 ... per stream, over accepted frames only
    agent_pcm: bytes | None = None  # stereo only: the right channel (what FreeSWITCH sent the caller)


class FrameQueue:
    """Bounded FIFO of AudioFrame; put() never blocks: when full it drops the OLDEST frame and counts it."""

    __slots__ = ("_closed", "_dropped", "_items", "_ready")

    def __init__(self, maxlen: int) -> None:
        if maxlen < 1:
            raise ValueError("FrameQueue maxlen must be at least 1")
        self._items: deque[AudioFrame] = deque(maxlen=maxlen)
        self._dropped = 0
        self._closed = False
        self._ready = asyncio.Event()

    def put(self, frame: AudioFrame) -> None:
        if self._closed:
            return
        if len(self._items) == self._items.maxlen:
            self._dropped += 1  # the deque discards the oldest on append
        self._items.append(frame)
        self._ready.set()

    async def get(self) -> AudioFrame | None:
        """The next frame; None once the queue is closed and drained."""
        while not self._items:
            if self._closed:
                return None
            self._ready.clear()
            await self._ready.wait()
        return self._items.popleft()

    def get_nowait(self) -> AudioFrame | None:
        return self._items.popleft() if self._items else None

    def close(self) -> None:
        self._closed = True
        self._ready.set()

    @property
    def dropped(self) -> int:
        return self._dropped

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        return len(self._items)

    def __aiter__(self) -> FrameQueue:
        return self

    async def __anext__(self) -> AudioFrame:
        frame = await self.get()
        if frame is None:
            raise StopAsyncIteration
        return frame


@dataclass(slots=True)
class StreamStats:
    frames: int = 0  # audio frames enqueued
    bytes: int = 0  # PCM bytes of those frames as received (all channels)
    dropped: int = 0  # mirror of frames.dropped
    garbage_binary: int = 0  # empty or misaligned binary frames
    garbage_text: int = 0  # text frames that are not a JSON object
    text_frames: int = 0  # every text frame received, metadata and garbage included


@dataclass(slots=True)
class ServerStats:
    connections: int = 0  # WebSocket connections accepted
    rejected: dict[str, int] = field(default_factory=dict)  # handshake refusals by reason
    unidentified_closed: int = 0
    bad_token_closed: int = 0  # token failures after the handshake (metadata or bind())
    bad_metadata_closed: int = 0
    flood_closed: int = 0
    callback_errors: int = 0  # on_stream / on_text raised
    frames: int = 0
    dropped: int = 0
    garbage_binary: int = 0
    garbage_text: int = 0


class _Refused(Exception):
    """Internal: an upgrade request we refuse, with the stats key, log reason and HTTP status."""

    def __init__(self, key: str, reason: str, status: HTTPStatus = HTTPStatus.BAD_REQUEST) -> None:
        super().__init__(reason)
        self.key, self.reason, self.status = key, reason, status


def parse_rate(value: object) -> int:
    """``8000``, ``"16000"``, ``"8k"``... -> Hz; ValueError unless a positive multiple of 8000."""
    match = _RATE_RE.match(str(value).strip().lower()) if isinstance(value, int | str) else None
    if match is None:
        raise ValueError(f"bad sample rate {value!r}")
    rate = int(match[1]) * (1000 if match[2] else 1)
    if rate <= 0 or rate % 8000 or rate > 192000:
        raise ValueError(f"bad sample rate {value!r}: need a multiple of 8000")
    return rate


def _parse_mix(value: object) -> int:
    if value in ("mono", "mixed"):
        return 1
    if value == "stereo":
        return 2
    raise ValueError(f"bad mix {value!r}: need mono, mixed or stereo")


def _parse_target(settings: AudioStreamSettings, raw_path: str) -> tuple[str, str | None, dict[str, str]]:
    """Split an upgrade path into (path, call uuid or None, query); raise _Refused for 404/400."""
    parts = urlsplit(raw_path)
    prefix = "/" + settings.path.strip("/")
    path = parts.path
    if prefix != "/" and path != prefix and not path.startswith(prefix + "/"):
        raise _Refused("not_found", "unknown path", HTTPStatus.NOT_FOUND)
    rest = [seg for seg in path[len(prefix) :].split("/") if seg]
    if len(rest) > 1:
        raise _Refused("not_found", "unknown path", HTTPStatus.NOT_FOUND)
    if rest and not is_call_uuid(rest[0]):
        raise _Refused("bad_uuid", "malformed call uuid")
    return path, (rest[0].lower() if rest else None), dict(parse_qsl(parts.query, keep_blank_values=True))


def _format_from(base: StreamFormat, rate: object, mix: object, channels: object = None) -> StreamFormat:
    """Apply optional rate / mix / channels overrides (ValueError when malformed)."""
    sample_rate = base.sample_rate if rate is None else parse_rate(rate)
    n = base.channels if mix is None else _parse_mix(mix)
    if channels is not None:
        if str(channels) not in ("1", "2"):
            raise ValueError(f"bad channels {channels!r}")
        n = int(str(channels))
    return StreamFormat(sample_rate, n)


def _token_ok(secret: str, call_uuid: str, headers: Headers) -> bool:
    auth = headers.get_all("Authorization")
    return len(auth) == 1 and check_stream_token(secret, call_uuid, {"Authorization": auth[0]})


def _public_headers(headers: Headers) -> dict[str, str]:
    """Lower-cased names, repeated headers joined with ', ', the Authorization value redacted."""
    out: dict[str, str] = {}
    for name, value in headers.raw_items():
        key = name.lower()
        out[key] = f"{out[key]}, {value}" if key in out else value
    if "authorization" in out:
        out["authorization"] = "<redacted>"
    return out


class _StreamLog(logging.LoggerAdapter[logging.Logger]):
    def __init__(self, logger: logging.Logger, stream: AudioStream) -> None:
        super().__init__(logger, {})
        self.stream = stream

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        s = self.stream
        kwargs["extra"] = {"conn_id": s.conn_id, "call_uuid": s.call_uuid}
        return f"[conn {s.conn_id} call {s.call_uuid or '-'}] {msg}", kwargs


class _WsLog(logging.LoggerAdapter[logging.Logger]):
    """websockets' own log, capped at INFO: its DEBUG output has raw headers (tokens) and frame bytes."""

    def isEnabledFor(self, level: int) -> bool:
        return level >= logging.INFO and self.logger.isEnabledFor(level)


class AudioStream:
    """One accepted mod_audio_stream connection. Created by the server; read it, bind it, close it."""

    def __init__(
        self,
        ws: ServerConnection,
        conn_id: int,
        settings: AudioStreamSettings,
        stats_total: ServerStats,
        clock: Callable[[], float],
        logger: logging.Logger,
    ) -> None:
        assert ws.request is not None
        path, uuid, query = _parse_target(settings, ws.request.path)
        self.conn_id, self.path, self.call_uuid = conn_id, path, uuid
        self.query: Mapping[str, str] = MappingProxyType(query)
        self.headers: Mapping[str, str] = MappingProxyType(_public_headers(ws.request.headers))
        self.remote = _remote(ws)
        self.metadata: Mapping[str, object] | None = None
        self.node: str | None = None  # the FreeSWITCH node that placed the call, as the metadata names it
        base = StreamFormat(settings.sample_rate, 2 if settings.mix == "stereo" else 1)
        self.format = _format_from(base, query.get("rate"), query.get("mix"))
        self.frames = FrameQueue(settings.queue_frames)
        self.stats = StreamStats()
        self.opened_at = clock()
        self.closed = asyncio.Event()
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self._ws, self._settings, self._total, self._clock = ws, settings, stats_total, clock
        self._raw_headers = ws.request.headers
        self._log = _StreamLog(logger, self)
        self._on_text: TextCallback | None = None
        self._closer: asyncio.Task[None] | None = None
        self._seq = 0
        self._flood_start, self._flood_count = self.opened_at, 0
        self._garbage_logged_at, self._garbage_unlogged = float("-inf"), 0

    def on_text(self, callback: TextCallback) -> None:
        """Later (non-metadata) text frames that are JSON objects go to ``callback``."""
        self._on_text = callback

    def bind(self, call_uuid: str) -> None:
        """Tie an anonymous stream to its call. ValueError: malformed uuid or bound to another call;
        CallGone: the stream is closed or closing; AudioStreamProtocolError: bad token (stream closed)."""
        if not is_call_uuid(call_uuid):
            raise ValueError("malformed call uuid")
        uuid = call_uuid.lower()
        if self.call_uuid is not None:
            if self.call_uuid != uuid:
                raise ValueError(f"stream {self.conn_id} is already bound to call {self.call_uuid}")
            return
        if self.closed.is_set() or self._closer is not None:
            raise CallGone(f"audio stream {self.conn_id} is closed")
        if self._settings.token_secret and not _token_ok(self._settings.token_secret, uuid, self._raw_headers):
            self._total.bad_token_closed += 1
            self._log.warning("bind to %s refused: missing or bad stream token", uuid)
            self._start_close(POLICY_VIOLATION, "bad token")
            raise AudioStreamProtocolError(f"stream {self.conn_id}: bad token for call {uuid}")
        self.call_uuid = uuid
        self._log.info("bound")

    async def send_text(self, text: str) -> None:
        """Send one text frame (e.g. a ``streamAudio`` message). CallGone once the stream is closed."""
        if self.closed.is_set():
            raise CallGone(f"audio stream {self.conn_id} is closed")
        try:
            await self._ws.send(text)
        except ConnectionClosed as exc:
            raise CallGone(f"audio stream {self.conn_id} is closed") from exc

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close the stream and wait until it is torn down (idempotent)."""
        try:
            await self._ws.close(code, reason)
        except WsProtocolError as exc:
            raise ValueError(f"bad close code {code}") from exc
        await self.closed.wait()

    # -- the per-connection receive loop (run by the server's handler task) ------------------------

    async def run(self, on_stream: Callable[[AudioStream], None]) -> None:
        """Receive until the connection ends. After a close has started, messages are read and dropped:
        websockets stops reading the socket while unread messages pile up, so the peer's close echo
        would otherwise wait behind them for the whole close timeout."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        announce_at, deadline = started + ANNOUNCE_AFTER_S, started + self._settings.unidentified_timeout_s
        first, announced = True, False
        self._log.info("open from %s path %s, %d Hz x%d", self.remote, self.path, *astuple(self.format))
        try:
            while True:
                closing = self._closer is not None
                until = None if announced or closing else announce_at
                if self.call_uuid is None and not closing:
                    until = deadline if until is None else min(until, deadline)
                try:
                    if until is None:  # the steady state: no timeout object per 20 ms frame (bench density)
                        message = await self._ws.recv()
                    else:
                        async with asyncio.timeout_at(until):
                            message = await self._ws.recv()
                except TimeoutError:
                    pass
                else:
                    if closing:
                        continue
                    refusal = self._first(message) if first else self._handle(message)
                    first = False
                    if refusal is not None:
                        self._start_close(POLICY_VIOLATION, refusal)
                        continue
                if not announced and (not first or loop.time() >= announce_at):
                    announced = True
                    try:
                        on_stream(self)
                    except Exception:
                        self._total.callback_errors += 1
                        self._log.exception("on_stream failed; closing the stream")
                        self._start_close(INTERNAL_ERROR, "internal error")
                if self.call_uuid is None and self._closer is None and loop.time() >= deadline:
                    self._total.unidentified_closed += 1
                    self._log.warning("still unidentified after %.1f s; closing", self._settings.unidentified_timeout_s)
                    self._start_close(POLICY_VIOLATION, "unidentified stream")
        except ConnectionClosed:
            pass
        except Exception:
            self._log.exception("receive loop failed; closing the stream")
            await self._ws.close(INTERNAL_ERROR, "internal error")
        finally:
            self._finish()

    def _start_close(self, code: int, reason: str) -> None:
        """Begin a close from inside (policy, errors); the receive loop keeps draining until it completes."""
        if self._closer is None:
            self._closer = asyncio.get_running_loop().create_task(self._ws.close(code, reason))
            self._closer.add_done_callback(self._close_done)

    def _close_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and (exc := task.exception()) is not None:
            self._log.error("closing the stream failed", exc_info=exc)

    def _first(self, message: str | bytes) -> str | None:
        """Handle the first message: JSON-object text is the metadata. Returns a close reason or None."""
        if isinstance(message, bytes):
            return self._handle(message)
        self.stats.text_frames += 1
        meta = self._json_object(message)
        if meta is None:
            return self._garbage("text", f"{len(message)}-char text frame is not a JSON object")
        self.metadata = MappingProxyType(meta)
        try:
            self.format = _format_from(
                self.format, meta.get("rate", meta.get("sample_rate")), meta.get("mix"), meta.get("channels")
            )
        except ValueError as exc:
            self._total.bad_metadata_closed += 1
            self._log.warning("refusing metadata: %s", exc)
            return "bad metadata"
        node = meta.get("node")
        if node is not None and not (isinstance(node, str) and NODE_NAME.fullmatch(node)):
            self._total.bad_metadata_closed += 1
            self._log.warning("refusing metadata: node %.70r is not a node name", node)
            return "bad metadata"
        self.node = node
        uuid = next(
            (v.lower() for k in _METADATA_UUID_KEYS if isinstance(v := meta.get(k), str) and is_call_uuid(v)), None
        )
        if uuid is not None and self.call_uuid is not None and uuid != self.call_uuid:
            self._total.bad_metadata_closed += 1
            self._log.warning("metadata names call %s, the stream is bound to another; closing", uuid)
            return "call uuid mismatch"
        if uuid is not None and self.call_uuid is None:
            secret = self._settings.token_secret
            if secret and not _token_ok(secret, uuid, self._raw_headers):
                self._total.bad_token_closed += 1
                self._log.warning("metadata names call %s: missing or bad stream token", uuid)
                return "bad token"
            self.call_uuid = uuid
        self._log.info(
            "metadata received (%d keys), format %d Hz x%d", len(meta), self.format.sample_rate, self.format.channels
        )
        return None

    def _handle(self, message: str | bytes) -> str | None:
        """Handle one message after the first. Returns a close reason (flood) or None."""
        if isinstance(message, str):
            self.stats.text_frames += 1
            obj = self._json_object(message)
            if obj is None:
                return self._garbage("text", f"{len(message)}-char text frame is not a JSON object")
            if self._on_text is not None:
                try:
                    self._on_text(obj)
                except Exception:
                    self._total.callback_errors += 1
                    self._log.exception("on_text callback failed")
            return None
        n, channels = len(message), self.format.channels
        if n == 0 or n % (2 * channels):
            return self._garbage("binary", f"{n}-byte frame does not hold whole {channels}-channel samples")
        if channels == 1:
            pcm, agent = message, None
        else:  # interleaved s16le: left = caller, right = what FreeSWITCH sent the caller
            samples = memoryview(message).cast("H")
            pcm, agent = samples[0::2].tobytes(), samples[1::2].tobytes()
        self.frames.put(AudioFrame(pcm, self._clock(), self._seq, agent))
        self._seq += 1
        st = self.stats
        st.frames += 1
        st.bytes += n
        self._total.frames += 1
        if (lost := self.frames.dropped - st.dropped) > 0:
            st.dropped += lost
            self._total.dropped += lost
        return None

    @staticmethod
    def _json_object(text: str) -> dict[str, object] | None:
        """A JSON object, or None for anything else: not JSON, too long, nested too deep, a huge number."""
        if len(text) > MAX_TEXT_CHARS or json_depth(text) > MAX_JSON_DEPTH:
            return None
        try:
            value = json.loads(text, parse_int=_bounded_int)
        except (ValueError, RecursionError):
            return None
        return value if isinstance(value, dict) else None

    def _garbage(self, kind: str, what: str) -> str | None:
        if kind == "text":
            self.stats.garbage_text += 1
            self._total.garbage_text += 1
        else:
            self.stats.garbage_binary += 1
            self._total.garbage_binary += 1
        now = self._clock()
        if now - self._flood_start > FLOOD_WINDOW_S:
            self._flood_start, self._flood_count = now, 0
        self._flood_count += 1
        if self._flood_count > FLOOD_LIMIT:
            self._total.flood_closed += 1
            self._log.warning("garbage flood (> %d frames in %.0f s); closing", FLOOD_LIMIT, FLOOD_WINDOW_S)
            return "garbage flood"
        if now - self._garbage_logged_at >= GARBAGE_LOG_INTERVAL_S:
            more = f" (+{self._garbage_unlogged} more since last report)" if self._garbage_unlogged else ""
            self._log.warning("ignoring %s garbage: %s%s", kind, what, more)
            self._garbage_logged_at, self._garbage_unlogged = now, 0
        else:
            self._garbage_unlogged += 1
        return None

    def _finish(self) -> None:
        proto = self._ws.protocol
        sent, rcvd = proto.close_sent, proto.close_rcvd
        if sent is not None and (rcvd is None or proto.close_rcvd_then_sent is False):
            self.close_code, self.close_reason = int(sent.code), sent.reason
        elif rcvd is not None:
            self.close_code, self.close_reason = int(rcvd.code), rcvd.reason
        else:
            self.close_code, self.close_reason = 1006, ""
        self.frames.close()
        self.closed.set()
        age = self._clock() - self.opened_at
        self._log.info("closed %d %r after %.1f s: %s", self.close_code, self.close_reason, age, self.stats)


def json_depth(text: str) -> int:
    """The deepest nesting of ``[``/``{`` in ``text`` outside strings (a linear scan; no recursion)."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def _bounded_int(digits: str) -> int:
    if len(digits.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError("integer too long")
    return int(digits)


def _remote(ws: ServerConnection) -> str:
    try:
        host, port = ws.remote_address[:2]
    except (TypeError, ValueError, OSError):
        return "?"
    return f"{host}:{port}"


FULL_RETRY_AFTER_S = 2  # a full worker has room again as soon as one of its calls ends


class AudioStreamServer:
    """Listens for mod_audio_stream connections; one handler task (owned by websockets) per connection."""

    def __init__(
        self,
        settings: AudioStreamSettings,
        on_stream: Callable[[AudioStream], None],
        *,
        clock: Callable[[], float] = time.monotonic,
        logger: logging.Logger | None = None,
        on_refused: Callable[[str | None, str], Awaitable[None] | None] | None = None,
        reuse_port: bool = False,
        has_room: Callable[[str | None], bool] | None = None,
    ) -> None:
        self.settings = settings
        self.stats = ServerStats()
        self._reuse_port = reuse_port  # SO_REUSEPORT: several worker processes share the port (the kernel spreads)
        self._on_stream = on_stream
        # (call uuid from the path or None, stats key) per refused upgrade; an awaitable it returns is awaited (at
        # most REFUSAL_HOOK_S) before the refusal goes out: e.g. an ESL filter that lets the ::error in first
        self._on_refused = on_refused
        # capacity (settings.max_calls): may a stream for this call (None: not named in the path) be taken?
        # False refuses it like a drain does, counted as rejected["full"]
        self._has_room = has_room
        self._clock = clock
        self._log = logger or logging.getLogger(__name__)
        self._streams: dict[int, AudioStream] = {}
        self._ids = itertools.count(1)
        self._server: Server | None = None
        self._owns: Callable[[str], bool] | None = None  # set by drain(): the calls still welcome
        self._retry_after_s = 0
        self._port: int | None = None

    @property
    def streams(self) -> Mapping[int, AudioStream]:
        return MappingProxyType(self._streams)

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("AudioStreamServer is not started")
        if self._port is None:  # kept: stop_listening() closes the sockets it is read from
            self._port = int(self._server.sockets[0].getsockname()[1])
        return self._port

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("AudioStreamServer is already started")
        s = self.settings
        heartbeat = float(s.heartbeat_s) if s.heartbeat_s > 0 else None
        self._server = await serve(
            self._handle,
            s.listen_host,
            s.listen_port,
            process_request=self._check_request,
            compression=None,
            max_size=MAX_MESSAGE_BYTES,
            max_queue=WS_MAX_QUEUE,
            server_header=None,
            ping_interval=heartbeat,
            ping_timeout=None if heartbeat is None else 2 * heartbeat,
            open_timeout=OPEN_TIMEOUT_S,
            close_timeout=CLOSE_TIMEOUT_S,
            logger=_WsLog(self._log.getChild("websockets"), {}),
            reuse_port=self._reuse_port or None,
        )
        self._port = None
        self._log.info("audio stream server listening on %s:%d%s", s.listen_host, self.port, s.path)

    async def close(self) -> None:
        """Stop listening, close every open stream with 1001 and wait for their handlers."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    def drain(self, owns: Callable[[str], bool], *, retry_after_s: int = 5) -> None:
        """From now on refuse every upgrade except a stream for a call ``owns`` (a live call's restarted or
        replacing stream), with ``503 Service Unavailable`` and ``Retry-After: retry_after_s``; counted as
        ``rejected["draining"]`` and reported to ``on_refused`` with the key ``"draining"``.

        What the fallback sees: mod_audio_stream reports any refused upgrade as ``mod_audio_stream::error``
        code 6 "WebSocket upgrade failed" (it does not expose the status; recording ``ws-401-refused``), so
        the dialplan's Lua helper transfers the call to the fallback extension (another worker's or a
        person's) and parley skips the apology. An HTTP client or a proxy in front of several workers
        sees a 503 with Retry-After, the usual "try another upstream" answer."""
        self._owns = owns
        self._retry_after_s = max(0, int(retry_after_s))

    def stop_listening(self) -> None:
        """Close the listening socket and keep every open stream (a drained worker of several sharing the
        port with SO_REUSEPORT: the kernel then hands new streams to the other workers instead of this one
        refusing them; a live call's restarted stream goes to another worker, which takes the call over).
        Streams already in this socket's accept queue are reset, as a refused upgrade would have been."""
        if self._server is not None and self._server.server.is_serving():
            _ = self.port
            self._server.server.close()  # asyncio's Server: the listeners only, connections stay open
            self._log.info("stopped listening on port %d (draining); open streams go on", self.port)

    @property
    def draining(self) -> bool:
        return self._owns is not None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def _check_request(self, ws: ServerConnection, request: Request) -> Response | None:
        """websockets' process_request hook: refuse bad paths, formats and tokens before the upgrade."""
        uuid: str | None = None
        try:
            _, uuid, query = _parse_target(self.settings, request.path)
            if self._owns is not None and (uuid is None or not self._owns(uuid)):
                raise _Refused("draining", "draining: not taking new calls", HTTPStatus.SERVICE_UNAVAILABLE)
            try:
                _format_from(StreamFormat(8000, 1), query.get("rate"), query.get("mix"))
            except ValueError as exc:
                raise _Refused("bad_format", str(exc)) from None
            secret = self.settings.token_secret
            if uuid is not None and secret and not _token_ok(secret, uuid, request.headers):
                raise _Refused("bad_token", "missing or bad stream token", HTTPStatus.UNAUTHORIZED)
            if self._has_room is not None and not self._has_room(uuid):
                raise _Refused("full", f"full: {self.settings.max_calls} calls up", HTTPStatus.SERVICE_UNAVAILABLE)
        except _Refused as refused:
            self.stats.rejected[refused.key] = self.stats.rejected.get(refused.key, 0) + 1
            self._log.warning("refused upgrade from %s (%d): %s", _remote(ws), refused.status, refused.reason)
            if self._on_refused is not None:
                try:
                    pending = self._on_refused(uuid, refused.key)
                    if pending is not None:
                        async with asyncio.timeout(REFUSAL_HOOK_S):
                            await pending
                except TimeoutError:
                    self._log.warning("on_refused took over %.1f s; refusing anyway", REFUSAL_HOOK_S)
                except Exception:
                    self.stats.callback_errors += 1
                    self._log.exception("on_refused failed")
            response = ws.respond(refused.status, f"{refused.status.phrase}: {refused.reason}\n")
            if refused.status == HTTPStatus.SERVICE_UNAVAILABLE:
                retry = self._retry_after_s if refused.key == "draining" else FULL_RETRY_AFTER_S
                response.headers["Retry-After"] = str(retry)
            return response
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        conn_id = next(self._ids)
        stream = AudioStream(ws, conn_id, self.settings, self.stats, self._clock, self._log)
        self.stats.connections += 1
        self._streams[conn_id] = stream
        try:
            await stream.run(self._on_stream)
        finally:
            self._streams.pop(conn_id, None)
