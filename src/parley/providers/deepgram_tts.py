"""Deepgram Aura-2 text-to-speech over the ``/v1/speak`` WebSocket, spoken with ``websockets`` (no SDK).

Owns: a small pool of open speak sockets reused across requests (sequential use needs exactly one;
concurrent requests each get their own socket), the per-call stream that binds one of them to a call
(:meth:`DeepgramTTS.open`), the Speak / Flush / Clear exchange of one request, and translating failures
into :mod:`parley.providers.errors` (handshake and close-frame mapping shared with
:mod:`parley.providers.deepgram_stt`). Must not know what a call does (its turns, playback, other
providers): a call is only the stream it opened.

Wire (docs/provider-protocols.md §2): ``Authorization: Token <key>``; query ``model``,
``encoding=linear16``, ``sample_rate``. One request = ``{"type":"Speak","text":...}`` (split at spaces when
longer than Deepgram's 2000 characters per Speak) + ``{"type":"Flush"}``; the answer is binary frames of
raw little-endian int16 (no header) then ``{"type":"Flushed"}``. ``Metadata``, ``Warning``, stale
``Cleared`` and unknown messages are ignored (warnings logged).

Sockets: :meth:`prewarm` opens one ahead of the first turn. A socket goes back to the pool only in a known
state (after ``Flushed``, or ``Cleared`` following a barge-in); one the server closed while idle (idle
timeout) is replaced lazily, and a request whose reused socket turns out closed before any audio is
retried once on a fresh one. A call's stream (:meth:`DeepgramTTS.open`) takes a socket from the pool at its
first request and keeps it between its requests, in the same known states, so one call's Flushes count on
one connection and two calls never interleave on one socket; ``close()`` gives it back to the pool (or
closes it when the pool is full), and a bound socket found unusable (closed, or at its Flush cap) is
replaced from the pool like an idle one. :meth:`synthesize` outside a call takes and returns a socket per
request.

Flush cap: Deepgram processes at most 20 Flushes per 60 s; beyond that a ``Warning`` comes back and the
Flush is not processed (docs tts-ws-flush), so no audio and no ``Flushed`` follow. The docs do not say
whether the cap counts per connection or per key. A socket that sent 20 in the window is not reused (a
fresh one absorbs a per-connection cap); a flush ``Warning`` all the same means the cap counts wider, so
the request fails at once with a retryable ``flush_limit`` error (the fallback chain takes the sentence,
instead of waiting ``read_timeout_s`` for a ``Flushed`` that never comes), the socket (which still buffers
the text) is closed, and later requests fail the same way without sending until the window has passed.
One Flush per sentence stays: :meth:`synthesize` speaks one sentence and needs ``Flushed`` to end it;
flushing once per reply (the vendor's advice, also better prosody) needs a per-reply stream.

Barge-in: closing the generator (``aclose()``) or cancelling its task sends ``{"type":"Clear"}`` at once
and reports ``Usage(cancelled=True)`` to the request's ``on_cancel`` sink (in a call, the ``on_usage`` sink
its stream was opened with); a background task owned by the provider then drops the in-flight audio until
``Cleared`` (bounded by ``clear_timeout_s``, else the socket is closed) so the next request on that socket
hears none of it, and gives the socket back to its call (or to the pool once the call closed). The next
request waits for that drain (bounded): in a call, for its own call's drain only.

Failures yield ``Usage(failed=True)`` and raise: 401/403 -> :class:`ProviderAuthError`, 429/5xx -> retryable
:class:`ProviderError`, no frame within ``read_timeout_s`` -> :class:`ProviderTimeout`, a drop ->
:class:`ProviderConnectionError`, bad JSON -> :class:`ProviderProtocolError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import AsyncGenerator, Coroutine, Mapping
from contextlib import aclosing
from dataclasses import dataclass, field
from types import TracebackType
from urllib.parse import urlencode

import numpy as np
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, WebSocketException
from websockets.protocol import State

from parley.errors import ConfigError
from parley.providers.base import AudioChunk, Lifecycle, TTSEvent, Usage, UsageSink, Verdict
from parley.providers.deepgram_stt import PROVIDER, close_error, in_band_error, open_socket, parse_message
from parley.providers.errors import ProviderConnectionError, ProviderError, ProviderTimeout, redact

__all__ = ["DeepgramTTS", "DeepgramTTSStream", "speak_control"]

log = logging.getLogger("parley.providers.deepgram")

SPEAK_URL = "wss://api.deepgram.com/v1/speak"
SAMPLE_RATES = (8000, 16000, 24000, 32000, 48000)
MAX_SPEAK_CHARS = 2000
FLUSH_LIMIT, FLUSH_WINDOW_S = 20, 60.0
MAX_IDLE_SOCKETS = 4
FLUSH = json.dumps({"type": "Flush"})
CLEAR = json.dumps({"type": "Clear"})
CLOSE = json.dumps({"type": "Close"})


@dataclass(slots=True)
class _Socket:
    ws: ClientConnection
    flushes: deque[float] = field(default_factory=deque)  # loop times of recent Flushes

    def usable(self, now: float) -> bool:
        while self.flushes and now - self.flushes[0] >= FLUSH_WINDOW_S:
            self.flushes.popleft()
        return self.ws.state is State.OPEN and len(self.flushes) < FLUSH_LIMIT


@dataclass(slots=True)
class _Request:
    text: str
    sent: bool = False  # a Speak reached a live socket (Deepgram bills it)
    produced: bool = False  # audio was yielded
    done: bool = False  # Flushed arrived


class _StaleSocket(Exception):
    """A pooled socket was closed before it produced anything: retry on a fresh one."""


class DeepgramTTS(Lifecycle):
    """A :class:`~parley.providers.base.TTSProvider` for Deepgram's ``/v1/speak`` WebSocket."""

    name: str = PROVIDER

    def __init__(
        self,
        api_key: str,
        *,
        model: str = "aura-2-thalia-en",
        sample_rate: int = 16000,
        url: str = SPEAK_URL,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 5.0,
        clear_timeout_s: float = 1.0,
    ) -> None:
        if not api_key:
            raise ConfigError("deepgram: an API key is required")
        if sample_rate not in SAMPLE_RATES:
            raise ConfigError(f"deepgram: linear16 sample_rate must be one of {SAMPLE_RATES}, not {sample_rate}")
        self.model = model
        self.sample_rate = sample_rate
        self.url = url
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.clear_timeout_s = clear_timeout_s
        self.connections = 0  # handshakes made (reuse shows as a low count)
        self._api_key = api_key
        self._idle: list[_Socket] = []
        self._calls: set[DeepgramTTSStream] = set()  # open per-call streams (their bound sockets)
        self._draining: set[asyncio.Task[None]] = set()
        self._closing: set[asyncio.Task[None]] = set()
        self._flushes: deque[float] = deque(maxlen=FLUSH_LIMIT)  # loop times of recent Flushes, every socket
        self._flush_blocked_until = 0.0  # a flush Warning came: no Flush is processed before this loop time

    def __repr__(self) -> str:
        return f"DeepgramTTS(url={self.url!r}, model={self.model!r}, sample_rate={self.sample_rate})"

    def speak_url(self) -> str:
        query = urlencode({"model": self.model, "encoding": "linear16", "sample_rate": str(self.sample_rate)})
        return self.url + ("&" if "?" in self.url else "?") + query

    async def prewarm(self) -> None:
        """Open a socket now, so the first sentence does not pay the handshake."""
        now = asyncio.get_running_loop().time()
        if not any(s.usable(now) for s in self._idle):
            self._idle.append(await self._connect())

    async def check(self) -> Verdict | None:
        """Open the vendor socket: authenticates without synthesizing (nothing billed)."""
        await self.prewarm()
        return None

    async def aclose(self) -> None:
        """Close every pooled socket and every socket bound to a call (``Close`` message, then the WebSocket
        close)."""
        if self._draining:
            await asyncio.wait(set(self._draining))
        for call in self._calls:
            if call.sock is not None:
                self._discard(call.sock, polite=True)
                call.sock = None
        idle, self._idle = self._idle, []
        for sock in idle:
            self._discard(sock, polite=True)
        if self._closing:
            await asyncio.wait(set(self._closing))

    async def __aenter__(self) -> DeepgramTTS:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def open(self, on_usage: UsageSink) -> DeepgramTTSStream:
        """The voice of one call: its requests share one speak socket (see the module)."""
        call = DeepgramTTSStream(self, on_usage)
        self._calls.add(call)
        return call

    def synthesize(self, text: str, *, on_cancel: UsageSink | None = None) -> AsyncGenerator[TTSEvent, None]:
        """One request outside a call, on a socket taken from the pool for it alone."""
        return self._synthesize(text, on_cancel, None)

    async def _synthesize(
        self, text: str, on_cancel: UsageSink | None, call: DeepgramTTSStream | None
    ) -> AsyncGenerator[TTSEvent, None]:
        request = _Request(text)
        failure: ProviderError | None = None
        try:
            if text.strip():
                async with aclosing(self._audio(request, call)) as chunks:
                    async for chunk in chunks:
                        yield chunk
            request.done = True
        except ProviderError as exc:
            failure = exc
        finally:
            if not request.done and failure is None and on_cancel is not None:
                on_cancel(self._usage(request, cancelled=True))  # stopped early: cannot be yielded
        if failure is not None:
            yield self._usage(request, failed=True)
            raise failure
        yield self._usage(request)

    def _usage(self, request: _Request, *, cancelled: bool = False, failed: bool = False) -> Usage:
        characters = len(request.text) if request.sent else 0
        return Usage(PROVIDER, self.model, "tts", characters=characters, cancelled=cancelled, failed=failed)

    # ---- one request ---------------------------------------------------------------------------------

    async def _audio(self, request: _Request, call: DeepgramTTSStream | None) -> AsyncGenerator[AudioChunk, None]:
        now = asyncio.get_running_loop().time()
        if now < self._flush_blocked_until:
            raise self._flush_limit(f"Flush cap reached; {self._flush_blocked_until - now:.0f} s left in the window")
        # a barge-in's Clear is still being answered: its socket is about to be free (the call's own, if bound)
        if call is not None and call.draining is not None:
            await asyncio.wait({call.draining}, timeout=self.clear_timeout_s)
        elif call is None and self._draining:
            await asyncio.wait(set(self._draining), timeout=self.clear_timeout_s)
        for attempt in range(2):
            sock, reused = await self._take(call)
            try:
                async with aclosing(self._speak(sock, reused, request, call)) as chunks:
                    async for chunk in chunks:
                        yield chunk
                return
            except _StaleSocket as exc:
                if attempt:
                    raise ProviderConnectionError("deepgram: speak socket closed at once", provider=PROVIDER) from exc
                log.debug("deepgram speak socket was closed while idle; reconnecting")

    async def _speak(
        self, sock: _Socket, reused: bool, request: _Request, call: DeepgramTTSStream | None
    ) -> AsyncGenerator[AudioChunk, None]:
        ws = sock.ws
        loop = asyncio.get_running_loop()
        try:
            try:
                for piece in _pieces(request.text, MAX_SPEAK_CHARS):
                    await ws.send(json.dumps({"type": "Speak", "text": piece}))
                sock.flushes.append(loop.time())
                self._flushes.append(loop.time())
                await ws.send(FLUSH)
                request.sent = True
                carry = b""
                while True:
                    async with asyncio.timeout(self.read_timeout_s):
                        message = await ws.recv()
                    if isinstance(message, bytes):
                        data = carry + message
                        cut = len(data) & ~1
                        carry = data[cut:]
                        if cut:
                            samples = np.frombuffer(data[:cut], dtype="<i2").astype(np.int16)
                            first = not request.produced
                            request.produced = True
                            yield AudioChunk(samples, self.sample_rate, request.text if first else None)
                        continue
                    control = parse_message(message, self._api_key)
                    kind = speak_control(control)
                    if kind == "Flushed":
                        break
                    if kind == "Warning" and "flush" in f"{control.get('code')} {control.get('description')}".lower():
                        oldest = self._flushes[0] if len(self._flushes) == FLUSH_LIMIT else loop.time()
                        self._flush_blocked_until = max(oldest + FLUSH_WINDOW_S, loop.time() + 1.0)
                        raise self._flush_limit("the server refused a Flush (cap of 20 per 60 s)")
            except ConnectionClosed as exc:
                if reused and not request.produced and (exc.rcvd is None or exc.rcvd.code not in (1008, 1009)):
                    request.sent = False
                    raise _StaleSocket from exc
                error = close_error(exc, expected=False, api_key=self._api_key)
                assert error is not None
                raise error from exc
            except TimeoutError as exc:
                msg = f"deepgram: no audio or Flushed within {self.read_timeout_s:g} s"
                raise ProviderTimeout(msg, provider=PROVIDER) from exc
            except WebSocketException as exc:
                detail = redact(str(exc), [self._api_key]) or type(exc).__name__
                raise ProviderConnectionError(f"deepgram: speak socket failed: {detail}", provider=PROVIDER) from exc
        except (GeneratorExit, asyncio.CancelledError):
            await self._interrupt(sock, call)
            raise
        except BaseException:
            self._discard(sock)
            raise
        request.done = True
        self._release(sock, call)

    @staticmethod
    def _flush_limit(detail: str) -> ProviderError:
        return ProviderError(f"deepgram: {detail}", provider=PROVIDER, code="flush_limit", retryable=True)

    # ---- the socket pool ------------------------------------------------------------------------------

    async def _connect(self) -> _Socket:
        ws = await open_socket(self.speak_url(), self._api_key, timeout_s=self.connect_timeout_s, what="/v1/speak")
        self.connections += 1
        return _Socket(ws)

    async def _take(self, call: DeepgramTTSStream | None) -> tuple[_Socket, bool]:
        now = asyncio.get_running_loop().time()
        if call is not None and call.sock is not None:
            sock, call.sock = call.sock, None
            if sock.usable(now):
                return sock, True
            self._discard(sock, polite=True)  # the call's socket closed, or at its Flush limit: take another
        while self._idle:
            sock = self._idle.pop()
            if sock.usable(now):
                return sock, True
            self._discard(sock, polite=True)  # closed while idle (idle timeout), or at its Flush limit
        return await self._connect(), False

    def _release(self, sock: _Socket, call: DeepgramTTSStream | None = None) -> None:
        """``sock`` is in a known state: back to its call while the call is open and holds no other, else to
        the pool (or closed when the pool is full or the socket is not open)."""
        if call is not None and not call.closed and call.sock is None and sock.ws.state is State.OPEN:
            call.sock = sock
            return
        if sock.ws.state is State.OPEN and len(self._idle) < MAX_IDLE_SOCKETS:
            self._idle.append(sock)
        else:
            self._discard(sock, polite=True)

    async def _interrupt(self, sock: _Socket, call: DeepgramTTSStream | None) -> None:
        """Barge-in: Clear now; drain to ``Cleared`` in the background, then the socket is reusable."""
        try:
            await sock.ws.send(CLEAR)
        except (ConnectionClosed, WebSocketException):
            self._discard(sock)
            return
        task = self._spawn(self._draining, self._drain(sock, call), "deepgram-speak-clear")
        if call is not None:
            call.draining = task

    async def _drain(self, sock: _Socket, call: DeepgramTTSStream | None) -> None:
        try:
            async with asyncio.timeout(self.clear_timeout_s):
                while True:
                    message = await sock.ws.recv()
                    if isinstance(message, str) and parse_message(message, self._api_key).get("type") == "Cleared":
                        break
        except (TimeoutError, ConnectionClosed, WebSocketException, ProviderError) as exc:
            log.debug("deepgram speak socket dropped after Clear: %s", type(exc).__name__)
            self._discard(sock)
            return
        self._release(sock, call)

    def _discard(self, sock: _Socket, *, polite: bool = False) -> None:
        if sock.ws.state is not State.CLOSED:
            self._spawn(self._closing, self._close_socket(sock.ws, polite), "deepgram-speak-close")

    async def _close_socket(self, ws: ClientConnection, polite: bool) -> None:
        with contextlib.suppress(ConnectionClosed, WebSocketException, OSError):
            if polite and ws.state is State.OPEN:
                await ws.send(CLOSE)
            await ws.close()

    def _spawn(
        self, tasks: set[asyncio.Task[None]], coro: Coroutine[object, object, None], name: str
    ) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name=name)
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        return task

    def _hang_up(self, call: DeepgramTTSStream) -> None:
        """``call`` ended: its socket goes back to the pool (a drain in progress returns it when done)."""
        call.closed = True
        self._calls.discard(call)
        if call.sock is not None:
            sock, call.sock = call.sock, None
            self._release(sock)


class DeepgramTTSStream:
    """One call's voice on :class:`DeepgramTTS`: its requests run one at a time on the speak socket bound to the
    call (``sock``, held only between requests, in a known state); usage of a request stopped early goes to
    ``on_usage``."""

    def __init__(self, provider: DeepgramTTS, on_usage: UsageSink) -> None:
        self.provider = provider
        self.on_usage = on_usage
        self.sample_rate = provider.sample_rate
        self.sock: _Socket | None = None
        self.draining: asyncio.Task[None] | None = None  # the Clear of this call's last barge-in
        self.closed = False

    def synthesize(self, text: str) -> AsyncGenerator[TTSEvent, None]:
        return self.provider._synthesize(text, self.on_usage, self)

    async def close(self) -> None:
        self.provider._hang_up(self)


def speak_control(message: Mapping[str, object]) -> str:
    """The ``type`` of one ``/v1/speak`` JSON message; an in-band error raises, a warning is logged."""
    kind = message.get("type")
    kind = kind if isinstance(kind, str) else ""
    if kind == "Error" or "err_code" in message:
        raise in_band_error(message)
    if kind == "Warning":
        log.warning("deepgram speak warning %.80s: %.300s", message.get("code"), message.get("description"))
    return kind


def _pieces(text: str, limit: int) -> list[str]:
    """``text`` in pieces of at most ``limit`` characters, cut after a space where possible (joined as-is)."""
    pieces: list[str] = []
    while len(text) > limit:
        cut = text.rfind(" ", 0, limit) + 1 or limit
        pieces.append(text[:cut])
        text = text[cut:]
    return [*pieces, text] if text else pieces
