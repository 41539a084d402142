"""Deepgram live speech-to-text (Nova) over the ``/v1/listen`` WebSocket, spoken with ``websockets`` (no SDK).

Owns: the listen query string, the socket of one call (opened once per call by :meth:`DeepgramSTT.open`, so
later turns never pay a handshake), KeepAlive during the silences between caller turns, turning Deepgram's
``Results`` / ``SpeechStarted`` / ``UtteranceEnd`` messages into parley STT events, and translating every
handshake, close-frame and in-band failure into :mod:`parley.providers.errors` at this edge. The Deepgram
WebSocket helpers at the bottom (:func:`open_socket`, :func:`close_error`, :func:`parse_message`) are shared
with :mod:`parley.providers.deepgram_tts`. Must not know about calls, turns or the turn policy.

Wire (docs/provider-protocols.md §1): ``Authorization: Token <key>``; query ``encoding=linear16``,
``sample_rate``, ``channels=1``, ``model``, ``language``, ``interim_results``, ``endpointing``,
``utterance_end_ms`` (only with interim results), ``vad_events=true``, ``smart_format``. Audio goes as
binary frames (never a zero-length one); control messages (``KeepAlive``, ``Finalize``, ``CloseStream``)
as text frames. A fresh socket must see one audio frame within 10 s, KeepAlive alone does not count:
if no audio was sent by the first keepalive tick, 20 ms of silence is sent instead.

Turns (the sans-I/O :class:`ListenAssembler`): ``is_final`` segments are accumulated; a turn is closed by
ONE ``Transcript(final=True, speech_final=True)`` carrying every segment since the previous closing
transcript, emitted on a ``speech_final`` result, on the answer to ``Finalize`` (``from_finalize``), or
``finalize_timeout_s`` after ``Finalize`` when Deepgram answers nothing (it may not, with nothing buffered).
When ``speech_final`` already closed the turn and the Finalize answer brings no new words, nothing more is
emitted. Interim results and non-closing finals become ``Transcript(final=False)`` with the running turn
text. An empty ``speech_final`` is not a turn end (the Finalize answer will be).

A recognizer that hangs with its socket open (no results, no close: issue 10) is told apart from "nothing
was buffered" when the Finalize goes unanswered: Deepgram flushes on Finalize whatever it holds, and while
it has audio to work on it answers about once a second (interim revisions), so an unanswered Finalize while
it *holds words it showed* (an interim result never made final) or after more than ``STALL_AUDIO_S`` of
audio with no message at all is a stall, not an empty buffer; and when, at the Finalize, it already holds
shown words with more than ``STALL_AUDIO_S`` of audio unanswered, it stopped before the end of the turn and
the Finalize answer is not waited for. Either way the stream fails with
:class:`ProviderTimeout` (a fallback chain replays the turn into the next recognizer) instead of closing
the turn with the words it has, which would silently lose the caller's last words.

Failures: handshake 401/403 -> :class:`ProviderAuthError`; 429 and 5xx -> retryable
:class:`ProviderError`; close 1011 (``NET-*``) -> retryable, 1008/1009 -> not, both with the reason; a drop
without close frame -> :class:`ProviderConnectionError`; bad JSON -> :class:`ProviderProtocolError`. They
surface once, from the iterator (after ``Usage(failed=True)``), so a fallback chain switches exactly once;
``send_audio`` and ``finalize`` on a broken stream drop their input quietly.

The event queue is unbounded on purpose: Deepgram sends a few small messages per second, the consumer is
the call's own STT task, and the reader must never block (it also answers the finalize timer). No audio
is queued here: ``send_audio`` writes straight to the socket.

Billing: Deepgram bills streaming STT per second the connection is open (KeepAlive time included), so
the stream's one ``Usage`` carries the open time in ``audio_seconds`` (at least the audio sent).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import Mapping
from urllib.parse import urlencode

from websockets.asyncio.client import ClientConnection, connect
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed, InvalidStatus, InvalidURI, WebSocketException

from parley import wire_json
from parley.audio.pcm import Int16Array, to_bytes
from parley.errors import ConfigError
from parley.providers.base import Lifecycle, SpeechStarted, STTEvent, Transcript, Usage, UtteranceEnd, Verdict
from parley.providers.errors import (
    ProviderConnectionError,
    ProviderError,
    ProviderProtocolError,
    ProviderTimeout,
    error_for_status,
    redact,
)
from parley.providers.ws_connect import QuietWsLog

__all__ = ["DeepgramSTT", "DeepgramSTTStream", "ListenAssembler", "close_error", "open_socket", "parse_message"]

log = logging.getLogger("parley.providers.deepgram")

PROVIDER = "deepgram"
LISTEN_URL = "wss://api.deepgram.com/v1/listen"
CLOSE_WAIT_S = 3.0  # CloseStream -> remaining Results, Metadata, close 1000
PRIME_MS = 20
# Audio sent with no message back that an unanswered Finalize cannot explain as "nothing buffered": Deepgram
# revises interim results roughly once a second of audio (docs/provider-protocols.md §1), and parley's own
# endpoint waits 0.7 s of silence, of which Deepgram's endpointing (300 ms) answers the first part.
STALL_AUDIO_S = 1.0
MAX_MESSAGE_BYTES = 4 * 2**20
KEEPALIVE = json.dumps({"type": "KeepAlive"})
FINALIZE = json.dumps({"type": "Finalize"})
CLOSE_STREAM = json.dumps({"type": "CloseStream"})


def _num(value: object) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


class ListenAssembler:
    """``/v1/listen`` messages in, parley STT events out. No I/O, no clock: the shell reports Finalize
    requests and their timeouts."""

    __slots__ = ("_awaiting", "_emitted", "_holding", "_segments", "_t", "metadata")

    def __init__(self) -> None:
        self._segments: list[tuple[str, float | None]] = []  # is_final texts not yet in a closing transcript
        self._awaiting = False  # a Finalize was sent and not yet answered
        self._emitted = False  # a closing transcript went out, and no new words were heard since
        self._holding = False  # an interim result showed words that no final result has carried yet
        self._t = 0.0  # end of the latest result, seconds of stream audio
        self.metadata: Mapping[str, object] = {}

    @property
    def awaiting_finalize(self) -> bool:
        return self._awaiting

    @property
    def holding_words(self) -> bool:
        """Deepgram showed words (an interim result) it has not finalized: a Finalize must flush them."""
        return self._holding

    def finalize_sent(self) -> None:
        self._awaiting = True

    def finalize_expired(self) -> list[STTEvent]:
        """Deepgram did not answer the Finalize in time: close the turn with the words we have."""
        return self._close_turn(answer=True) if self._awaiting else []

    def feed(self, message: Mapping[str, object]) -> list[STTEvent]:
        match message.get("type"):
            case "Results":
                return self._results(message)
            case "SpeechStarted":
                return [SpeechStarted(_num(message.get("timestamp")))]
            case "UtteranceEnd":
                return [UtteranceEnd(_num(message.get("last_word_end")))]
            case "Metadata":
                self.metadata = message
                return []
            case "Error":
                raise in_band_error(message)
            case _:
                if "err_code" in message or "err_msg" in message:
                    raise in_band_error(message)
                return []  # unknown message types are ignored, as Deepgram asks

    def _results(self, message: Mapping[str, object]) -> list[STTEvent]:
        channel = message.get("channel")
        alternatives = channel.get("alternatives") if isinstance(channel, dict) else None
        best = alternatives[0] if isinstance(alternatives, list) and alternatives else {}
        best = best if isinstance(best, dict) else {}
        text = str(best.get("transcript") or "").strip()
        confidence = best.get("confidence")
        conf = float(confidence) if isinstance(confidence, int | float) else None
        self._t = max(self._t, _num(message.get("start")) + _num(message.get("duration")))
        if not message.get("is_final"):
            if not text:
                return []
            self._holding = True
            self._emitted = False  # new words: a Finalize answer must close this turn even if it adds none
            return [Transcript(self._joined(text), final=False, t=self._t, confidence=conf)]
        self._holding = False
        if text:
            self._segments.append((text, conf))
        if message.get("from_finalize") is True and self._awaiting:
            return self._close_turn(answer=True)
        if message.get("speech_final") is True:
            return self._close_turn(answer=False)
        return [Transcript(self._joined(), final=False, t=self._t, confidence=conf)] if text else []

    def _close_turn(self, *, answer: bool) -> list[STTEvent]:
        text = self._joined()
        events: list[STTEvent] = []
        if text or (answer and not self._emitted):
            known = [c for _, c in self._segments if c is not None]
            conf = sum(known) / len(known) if known else None
            events.append(Transcript(text, final=True, t=self._t, speech_final=True, confidence=conf))
            self._segments.clear()
            self._emitted = True
        if answer:  # the turn the Finalize asked for is over: the next one starts afresh
            self._awaiting = False
            self._emitted = False
        return events

    def _joined(self, extra: str = "") -> str:
        return " ".join([t for t, _ in self._segments] + ([extra] if extra else []))


class DeepgramSTT(Lifecycle):
    """An :class:`~parley.providers.base.STTProvider` for Deepgram's live ``/v1/listen`` (one socket per call)."""

    name: str = PROVIDER

    def __init__(
        self,
        api_key: str,
        *,
        model: str = "nova-3",
        language: str = "en-US",
        endpointing_ms: int | None = 300,
        utterance_end_ms: int | None = 1000,
        interim_results: bool = True,
        smart_format: bool = True,
        url: str = LISTEN_URL,
        keepalive_s: float = 5.0,
        connect_timeout_s: float = 5.0,
        finalize_timeout_s: float = 1.5,
    ) -> None:
        if not api_key:
            raise ConfigError("deepgram: an API key is required")
        if keepalive_s <= 0 or finalize_timeout_s <= 0:
            raise ConfigError("deepgram: keepalive_s and finalize_timeout_s must be > 0")
        self.model = model
        self.language = language
        self.endpointing_ms = endpointing_ms
        self.utterance_end_ms = utterance_end_ms
        self.interim_results = interim_results
        self.smart_format = smart_format
        self.url = url
        self.keepalive_s = keepalive_s
        self.connect_timeout_s = connect_timeout_s
        self.finalize_timeout_s = finalize_timeout_s
        self._api_key = api_key

    def __repr__(self) -> str:
        return f"DeepgramSTT(url={self.url!r}, model={self.model!r}, language={self.language!r})"

    def query(self, *, sample_rate: int, language: str | None = None) -> dict[str, str]:
        """The documented listen parameters (booleans as ``true``/``false``)."""
        q = {
            "encoding": "linear16",
            "sample_rate": str(sample_rate),
            "channels": "1",
            "model": self.model,
            "language": language or self.language,
            "interim_results": _bool(self.interim_results),
            "endpointing": "false" if self.endpointing_ms is None else str(self.endpointing_ms),
            "vad_events": "true",
            "smart_format": _bool(self.smart_format),
        }
        if self.utterance_end_ms is not None and self.interim_results:  # Deepgram needs interim results for it
            q["utterance_end_ms"] = str(self.utterance_end_ms)
        return q

    def listen_url(self, *, sample_rate: int, language: str | None = None) -> str:
        sep = "&" if "?" in self.url else "?"
        return self.url + sep + urlencode(self.query(sample_rate=sample_rate, language=language))

    async def check(self) -> Verdict | None:
        """Open a listen socket and close it: authenticates (billed: the connection's open time, a second)."""
        await (await self.open(sample_rate=8000)).close()
        return None

    async def open(self, *, sample_rate: int, language: str | None = None) -> DeepgramSTTStream:
        if sample_rate <= 0:
            raise ConfigError(f"deepgram: bad sample rate {sample_rate}")
        url = self.listen_url(sample_rate=sample_rate, language=language)
        ws = await open_socket(url, self._api_key, timeout_s=self.connect_timeout_s, what="/v1/listen")
        stream = DeepgramSTTStream(self, ws, sample_rate, self._api_key)
        stream.start()
        log.debug("deepgram listen opened at %d Hz (request %s)", sample_rate, stream.request_id)
        return stream


def _bool(value: bool) -> str:
    return "true" if value else "false"


class DeepgramSTTStream:
    """One call's listen socket. Owns a reader task (messages -> events) and a keepalive task."""

    def __init__(self, provider: DeepgramSTT, ws: ClientConnection, sample_rate: int, api_key: str) -> None:
        self._provider = provider
        self._ws = ws
        self.sample_rate = sample_rate
        self._api_key = api_key
        self.request_id = ws.response.headers.get("dg-request-id") if ws.response is not None else None
        self._assembler = ListenAssembler()
        self._events: asyncio.Queue[STTEvent | ProviderError | None] = asyncio.Queue()
        self._reader: asyncio.Task[None] | None = None
        self._keeper: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._last_send = 0.0
        self._opened_at: float | None = None
        self.samples_sent = 0
        self._heard_at = 0  # samples_sent when the last message came in
        self.samples_dropped = 0  # audio offered after the connection broke (the fallback chain replays it)
        self.keepalives = 0
        self._closing = False  # close() was called: a close 1000 is the normal end
        self._dead = False  # the reader finished: no more sends
        self._finished = False  # Usage and the terminal item are queued
        self._done = False  # the iterator returned its terminal item

    def start(self) -> None:
        self._last_send = asyncio.get_running_loop().time()
        self._opened_at = self._last_send  # Deepgram bills the seconds the connection is open
        self._reader = asyncio.create_task(self._read(), name="deepgram-listen-reader")
        self._keeper = asyncio.create_task(self._keepalive(), name="deepgram-listen-keepalive")

    async def send_audio(self, samples: Int16Array) -> None:
        if self._closing:
            raise ProviderError("deepgram: the listen stream is closed", provider=PROVIDER, retryable=False)
        if self._dead:
            self.samples_dropped += int(samples.size)
            return
        if samples.size:  # a zero-length binary frame is Deepgram's deprecated end-of-stream
            await self._send_audio_bytes(to_bytes(samples), int(samples.size))

    def pause_hint(self) -> None:
        return None  # Deepgram finalizes on Finalize or its own endpointing; nothing to start early

    def speech_resumed(self) -> None:
        return None

    async def finalize(self) -> None:
        if self._closing:
            raise ProviderError("deepgram: the listen stream is closed", provider=PROVIDER, retryable=False)
        if self._dead:
            return
        if self._hung():  # it stopped answering some time ago: no need to wait for the Finalize answer
            return
        self._assembler.finalize_sent()
        if self._timer is None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self._provider.finalize_timeout_s, self._finalize_expired)
        with contextlib.suppress(ConnectionClosed):  # the reader reports the broken connection
            await self._ws.send(FINALIZE)
            self._last_send = asyncio.get_running_loop().time()

    async def close(self) -> None:
        """Send CloseStream and wait (bounded) for Deepgram's last results and its close; then Usage."""
        if self._closing:
            return
        self._closing = True
        self._cancel_timer()
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeper
        if not self._dead:
            with contextlib.suppress(ConnectionClosed):
                await self._ws.send(CLOSE_STREAM)
        if self._reader is not None:
            _, pending = await asyncio.wait({self._reader}, timeout=CLOSE_WAIT_S)
            if pending:
                log.warning("deepgram did not close the listen socket within %.0f s after CloseStream", CLOSE_WAIT_S)
        await self._ws.close()
        if self._reader is not None and not self._reader.done():
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        self._finish(None)

    def __aiter__(self) -> DeepgramSTTStream:
        return self

    async def __anext__(self) -> STTEvent:
        if self._done:
            raise StopAsyncIteration
        item = await self._events.get()
        if item is None:
            self._done = True
            raise StopAsyncIteration
        if isinstance(item, ProviderError):
            self._done = True
            raise item
        return item

    # ---- internals -----------------------------------------------------------------------------------

    async def _send_audio_bytes(self, data: bytes, n: int) -> bool:
        try:
            await self._ws.send(data)
        except ConnectionClosed:  # the reader reports it
            self.samples_dropped += n
            return False
        self.samples_sent += n
        self._last_send = asyncio.get_running_loop().time()
        return True

    async def _read(self) -> None:
        error: ProviderError | None = None
        try:
            error = await self._receive()
        finally:
            self._finish(error)  # also when cancelled by close(): Usage, then the end
        if error is not None and not isinstance(error, ProviderConnectionError):
            await self._ws.close()  # a socket we no longer trust

    async def _receive(self) -> ProviderError | None:
        try:
            while True:
                message = await self._ws.recv()
                if isinstance(message, bytes):
                    raise ProviderProtocolError("deepgram: binary frame on /v1/listen", provider=PROVIDER)
                self._heard_at = self.samples_sent
                for event in self._assembler.feed(parse_message(message, self._api_key)):
                    self._events.put_nowait(event)
                if not self._assembler.awaiting_finalize:
                    self._cancel_timer()
        except ConnectionClosed as exc:
            return close_error(exc, expected=self._closing, api_key=self._api_key)
        except ProviderError as exc:
            return exc
        except WebSocketException as exc:
            detail = redact(str(exc), [self._api_key]) or type(exc).__name__
            return ProviderConnectionError(f"deepgram: listen socket failed: {detail}", provider=PROVIDER)

    async def _keepalive(self) -> None:
        loop = asyncio.get_running_loop()
        period = self._provider.keepalive_s
        while not self._dead:
            wait = self._last_send + period - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            if self.samples_sent == 0:  # KeepAlive alone does not keep a fresh socket open
                n = self.sample_rate * PRIME_MS // 1000
                if not await self._send_audio_bytes(bytes(2 * n), n):
                    return
                continue
            try:
                await self._ws.send(KEEPALIVE)  # a TEXT frame: Deepgram mishandles a binary KeepAlive
            except ConnectionClosed:
                return
            self.keepalives += 1
            self._last_send = loop.time()

    def _unanswered_s(self) -> float:
        return (self.samples_sent - self._heard_at) / self.sample_rate

    def _hung(self) -> bool:
        """At the end of a turn: Deepgram holds words it showed and has said nothing for more than
        ``STALL_AUDIO_S`` of audio (it revises interims about once a second and answers the pause that ended
        the turn with ``speech_final`` after its endpointing, 300 ms), so it stopped, or fell too far behind
        the call, before the Finalize: fail now (a fallback already has the turn's audio) rather than wait.
        Without endpointing nothing answers the pause: the Finalize timer decides."""
        unanswered = self._unanswered_s()
        if self._provider.endpointing_ms is None or not (self._assembler.holding_words and unanswered > STALL_AUDIO_S):
            return False
        self._fail(ProviderTimeout(
            f"deepgram: holding words it showed and silent for {unanswered:.1f} s of audio at the end of the "
            "turn: the recognizer stopped answering with its socket open", provider=PROVIDER))
        return True

    def _finalize_expired(self) -> None:
        self._timer = None
        if self._finished or not self._assembler.awaiting_finalize:
            return
        wait = self._provider.finalize_timeout_s
        unanswered = self._unanswered_s()
        if self._assembler.holding_words or unanswered > STALL_AUDIO_S:
            held = "words it showed" if self._assembler.holding_words else f"{unanswered:.1f} s of audio unanswered"
            self._fail(ProviderTimeout(
                f"deepgram: no answer to Finalize within {wait:.1f} s while holding {held}: the recognizer "
                "stopped answering with its socket open", provider=PROVIDER))
            return
        log.debug("deepgram sent no answer to Finalize within %.1f s (nothing was buffered)", wait)
        for event in self._assembler.finalize_expired():
            self._events.put_nowait(event)

    def _fail(self, error: ProviderError) -> None:
        """Give up on a connection that still looks open: the error goes out now, the socket is dropped."""
        self._finish(error)
        if self._reader is not None:
            self._reader.cancel()
        self._ws.transport.abort()  # a hung peer would hold a close handshake for CLOSE_WAIT_S

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _finish(self, error: ProviderError | None) -> None:
        """Queue Usage and the terminal item once (error to raise, or None for the end)."""
        self._dead = True
        if self._finished:
            return
        self._finished = True
        self._cancel_timer()
        if self._keeper is not None:
            self._keeper.cancel()
        seconds = self.samples_sent / self.sample_rate
        if self._opened_at is not None:  # billed: the connection's open time (at least the audio sent)
            seconds = max(seconds, asyncio.get_running_loop().time() - self._opened_at)
        model = self._provider.model
        self._events.put_nowait(Usage(PROVIDER, model, "stt", audio_seconds=seconds, failed=error is not None))
        self._events.put_nowait(error)


# ---- Deepgram WebSocket helpers (shared with deepgram_tts) ---------------------------------------------


async def open_socket(url: str, api_key: str, *, timeout_s: float, what: str) -> ClientConnection:
    """Open a Deepgram WebSocket with ``Authorization: Token <key>``; failures become ProviderErrors."""
    try:
        return await connect(
            url,
            additional_headers={"Authorization": f"Token {api_key}"},
            open_timeout=timeout_s,
            close_timeout=CLOSE_WAIT_S,
            compression=None,
            max_size=MAX_MESSAGE_BYTES,
            logger=QuietWsLog(logging.getLogger("parley.providers.deepgram.websockets"), {}),
        )
    except InvalidStatus as exc:
        response = exc.response
        raise handshake_error(response.status_code, response.headers, response.body, api_key) from exc
    except TimeoutError as exc:
        raise ProviderTimeout(f"deepgram: {what} handshake timed out after {timeout_s:g} s", provider=PROVIDER) from exc
    except InvalidURI as exc:
        raise ProviderError(f"deepgram: bad URL for {what}: {exc}", provider=PROVIDER, retryable=False) from exc
    except (OSError, WebSocketException) as exc:
        detail = redact(str(exc), [api_key]) or type(exc).__name__
        raise ProviderConnectionError(f"deepgram: could not connect to {what}: {detail}", provider=PROVIDER) from exc


def handshake_error(status: int, headers: Headers, body: bytes | bytearray | None, api_key: str) -> ProviderError:
    """The error for a refused upgrade: ``{err_code, err_msg}`` or ``{category, message}`` body, ``dg-error``."""
    text = (body or b"").decode("utf-8", "replace").strip()
    try:
        parsed: object = wire_json.loads(text) if text else {}
    except wire_json.WireJsonError:
        parsed = {}
    info = parsed if isinstance(parsed, dict) else {}
    message = str(info.get("err_msg") or info.get("message") or headers.get("dg-error") or text[:300])
    code = info.get("err_code") or info.get("category")
    request_id = headers.get("dg-request-id") or info.get("request_id")
    if request_id:
        message = f"{message} (request {request_id})"
    return error_for_status(status, redact(message, [api_key]), provider=PROVIDER, code=str(code) if code else None)


_REASON_CODE = re.compile(r"\b([A-Z]{2,8}-\d{4})\b")
_REASON_LINK = re.compile(r"dpgr\.am/([a-z]+)(\d{4})")


def reason_code(reason: str) -> str | None:
    """``NET-0001`` from a close reason that names it or links to ``https://dpgr.am/net0001``."""
    if m := _REASON_CODE.search(reason):
        return m[1]
    if m := _REASON_LINK.search(reason):
        return f"{m[1].upper()}-{m[2]}"
    return None


def close_error(exc: ConnectionClosed, *, expected: bool, api_key: str) -> ProviderError | None:
    """The error for a closed socket, or None when it is the normal end of a close we asked for."""
    frame = exc.rcvd
    if expected and (frame is None or frame.code in (1000, 1001)):
        return None
    if frame is None:
        return ProviderConnectionError("deepgram: connection dropped (no close frame)", provider=PROVIDER)
    reason = redact(frame.reason, [api_key])
    text = f"deepgram: connection closed by the server: {frame.code} {reason}".rstrip()
    code = reason_code(reason) or f"ws-{frame.code}"
    if frame.code in (1000, 1001):
        return ProviderConnectionError(text, provider=PROVIDER, code=code)
    retryable = frame.code not in (1003, 1007, 1008, 1009)  # bad data / too big: the same request fails again
    return ProviderError(text, provider=PROVIDER, code=code, retryable=retryable)


def in_band_error(message: Mapping[str, object]) -> ProviderError:
    text = message.get("description") or message.get("message") or message.get("err_msg") or message.get("variant")
    code = message.get("code") or message.get("err_code")
    code_s = str(code) if code else None
    retryable = bool(code_s and code_s.startswith("NET"))
    return ProviderError(f"deepgram: error: {text or message}", provider=PROVIDER, code=code_s, retryable=retryable)


def parse_message(text: str, api_key: str) -> dict[str, object]:
    """One JSON text frame; anything but a JSON object breaks the documented protocol (depth and number
    sizes bounded by :mod:`parley.wire_json`)."""
    try:
        parsed: object = wire_json.loads(text)
    except wire_json.WireJsonError as exc:
        snippet = redact(text[:120], [api_key])
        raise ProviderProtocolError(f"deepgram: message is not JSON ({exc}): {snippet!r}", provider=PROVIDER) from None
    if not isinstance(parsed, dict):
        raise ProviderProtocolError("deepgram: message is not a JSON object", provider=PROVIDER)
    return parsed
