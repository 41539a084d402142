"""Streaming speech-to-text with AssemblyAI Universal-Streaming v3 over its WebSocket API (no SDK).

Owns: the v3 wire protocol spoken with ``websockets`` (query parameters, auth, binary audio, the JSON
``Begin`` / ``Turn`` / ``Termination`` messages, ``ForceEndpoint`` and ``Terminate``), turning ``Turn``
messages into parley's :class:`Transcript` events, and translating handshake refusals, close codes and
transport failures into :mod:`parley.providers.errors` at this edge. Must not know about calls, VAD or
turn-taking policy: parley's own endpointing calls :meth:`AssemblyAISTTStream.finalize`.

Sans-I/O cores: :class:`AudioBatcher` (20 ms frames in, 50-1000 ms binary messages out, as the server
requires; a shorter message closes the session with 3007) and :class:`TurnAssembler` (``Turn`` messages,
``finalize`` and explicit ``now`` values in, transcripts out; never sleeps).

Turns. A partial ``Turn`` (``end_of_turn: false``) becomes ``Transcript(final=False)`` with the finalized
words plus the trailing non-final word. An ended turn becomes one ``Transcript(final=True)``; with
``format_turns`` the client waits (at most ``format_wait_s``) for the formatted variant of the same
``turn_order`` when the server sends the unformatted end first, and ignores whichever of the pair comes
late, so each server turn yields exactly one final. ``speech_final`` is set on the one final that closes
parley's turn: the first turn to end after :meth:`finalize` (which sends ``ForceEndpoint``). Turns the
server ends on its own (its turn detection) are ``final`` but not ``speech_final``. If no turn is open and
no speech-level audio was sent since the last ended turn, ``finalize`` closes parley's turn at once with
an empty final (the ended turns' finals already carry its words). The live server answers a
``ForceEndpoint`` with no open turn with no ``Turn`` at all, so when only louder-than-silence audio (line
noise, or words whose first partial is still on its way) followed the last ended turn, the client waits
``no_turn_wait_s`` (0.5 s) for a partial and then closes with "", instead of ``finalize_wait_s``; a partial
in that time reopens the full wait (and ``ForceEndpoint`` is sent again).

A server that hangs with its socket open (no messages, no close: issue 10) is told apart from that silent
answer, as the Deepgram client does: the server answers every word with a partial ``Turn`` (and a
``ForceEndpoint`` with a turn open with its end), so a :class:`Stall` is (a) a ``ForceEndpoint`` left
unanswered for ``finalize_wait_s`` (1.5 s, as Deepgram's Finalize wait) while a turn it showed (a partial)
is open, or (b) more than ``stall_audio_s`` (1 s) of speech-level audio sent with no message at all since,
checked at ``finalize`` (then the answer is not waited for) and when the wait ends. Only speech-level audio
counts: the server owes no answer to silence, nor to line noise after a turn it ended itself (that brief,
documented no-answer case still closes with ""). The stream then fails with a retryable
:class:`ProviderTimeout` and ``Usage(failed=True)`` (the STT chain replays the turn into the next
recognizer) instead of closing the turn with its last partial or "", which would silently lose the caller's
words. Not caught: a hang right after the server ended a turn, followed by less than ``stall_audio_s`` of
speech and no partial (indistinguishable from noise); a long word-less sound (a sustained "mmm") the server
shows nothing for looks like (b).

Billing. AssemblyAI bills the time the socket is open, not the audio sent, so the one :class:`Usage` per
stream (emitted after ``Termination``, or on failure / cancellation) carries the billed seconds in
``audio_seconds``: ``Termination.session_duration_seconds``, else the counted open time.
``audio_duration_s`` and ``session_duration_s`` on the stream keep both figures. Parley opens one stream
per call; ``close()`` sends ``Terminate`` (an unterminated session is billed up to 3 h).

Failures: HTTP refusal at the handshake (401/403 -> :class:`ProviderAuthError`, 429/5xx retryable); close
1008 (and the v2 4001/4002) -> :class:`ProviderAuthError`; 3005, 3008, 3009, 1011, 1013 -> retryable
:class:`ProviderError`; 3006 and undecodable JSON -> :class:`ProviderProtocolError`; 3007 -> not retryable;
a dropped socket -> :class:`ProviderConnectionError`; connect deadline -> :class:`ProviderTimeout`. A failed
stream yields ``Usage(failed=True)`` then raises from the iterator; ``send_audio`` / ``finalize`` raise
the same error. The key (or token) is never logged: websockets' DEBUG log (raw headers) is muted here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from urllib.parse import urlencode

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI
from websockets.protocol import State

from parley import wire_json
from parley.audio.pcm import Int16Array, rms_dbfs, to_bytes
from parley.providers.base import Lifecycle, SpeechStarted, STTEvent, Transcript, Usage, Verdict
from parley.providers.errors import (
    ProviderAuthError,
    ProviderConnectionError,
    ProviderError,
    ProviderProtocolError,
    ProviderTimeout,
    error_for_status,
    redact,
)
from parley.providers.ws_connect import QuietWsLog

__all__ = [
    "AssemblyAISTT",
    "AssemblyAISTTStream",
    "AudioBatcher",
    "Stall",
    "TurnAssembler",
    "TurnEvent",
    "close_error",
    "parse_message",
]

PROVIDER = "assemblyai"
MIN_MESSAGE_MS = 50
MAX_MESSAGE_MS = 1000
MAX_PENDING_EVENTS = 64  # partials beyond this backlog are dropped (and counted); finals never are
# Speech-level audio with no message back that the no-answer case cannot explain: the server answers each
# word with a partial Turn within a few hundred ms; the same figure as Deepgram's STALL_AUDIO_S.
STALL_AUDIO_S = 1.0
log = logging.getLogger("parley.providers.assemblyai")


# ---- sans-I/O: audio batching -------------------------------------------------------------------------------


class AudioBatcher:
    """int16 frames in, s16le messages of ``message_ms`` (50-1000 ms) out; ``flush`` pads the rest to 50 ms."""

    __slots__ = ("_buf", "_min", "_target")

    def __init__(self, sample_rate: int, message_ms: int = MIN_MESSAGE_MS) -> None:
        if not MIN_MESSAGE_MS <= message_ms <= MAX_MESSAGE_MS:
            raise ValueError(f"message_ms must be within {MIN_MESSAGE_MS}-{MAX_MESSAGE_MS}, not {message_ms}")
        self._min = 2 * math.ceil(sample_rate * MIN_MESSAGE_MS / 1000)
        self._target = 2 * math.ceil(sample_rate * message_ms / 1000)
        self._buf = bytearray()

    def feed(self, samples: Int16Array) -> list[bytes]:
        self._buf += to_bytes(samples)
        out: list[bytes] = []
        while len(self._buf) >= self._target:
            out.append(bytes(self._buf[: self._target]))
            del self._buf[: self._target]
        return out

    def flush(self) -> bytes | None:
        """What is buffered, padded with silence to the 50 ms minimum (None if nothing is)."""
        if not self._buf:
            return None
        data = bytes(self._buf) + bytes(max(0, self._min - len(self._buf)))
        self._buf.clear()
        return data


# ---- sans-I/O: Turn messages -> transcripts --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Stall:
    """The server stopped answering with its socket open (see the module docstring); ``reason`` says why."""

    reason: str


TurnEvent = Transcript | Stall


@dataclass(slots=True)
class _Held:
    order: int
    text: str
    t: float
    confidence: float | None
    deadline: float


@dataclass(slots=True)
class _Pending:
    deadline: float
    saw_turn: bool  # a server turn was open at finalize time, or opened since


def _words(msg: Mapping[str, object]) -> list[Mapping[str, object]]:
    words = msg.get("words")
    return [w for w in words if isinstance(w, dict)] if isinstance(words, list) else []


def _num(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


class TurnAssembler:
    """``Turn`` messages in, :class:`Transcript` events out; see the module docstring for the rules.

    ``t`` arguments are stream time (seconds of audio sent), used when a message has no word timings.
    """

    def __init__(
        self,
        *,
        format_turns: bool,
        format_wait_s: float = 0.8,
        finalize_wait_s: float = 1.5,
        no_turn_wait_s: float = 0.5,
        stall_audio_s: float = STALL_AUDIO_S,
    ) -> None:
        self.format_turns = format_turns
        self.stall_audio_s = stall_audio_s
        self.format_wait_s = format_wait_s
        self.finalize_wait_s = finalize_wait_s
        self.no_turn_wait_s = min(no_turn_wait_s, finalize_wait_s)
        self._open: tuple[int, str] | None = None  # (turn_order, latest partial text) of the open turn
        self._last_closed = -1
        self._held: _Held | None = None
        self._pending: _Pending | None = None
        self._speech_since_end = False
        self._unanswered_s = 0.0  # speech-level audio sent since the server's last message

    def audio(self, speech: bool, seconds: float = 0.0) -> None:
        """``seconds`` of audio were sent; ``speech``: it was louder than silence."""
        self._speech_since_end = self._speech_since_end or speech
        if speech:
            self._unanswered_s += seconds

    def heard(self) -> None:
        """The server sent a message (any): it answered the audio sent so far."""
        self._unanswered_s = 0.0

    def turn(self, msg: Mapping[str, object], now: float, t: float) -> tuple[list[Transcript], bool]:
        """Events for one ``Turn`` message, and whether ``ForceEndpoint`` should be sent again (a turn
        opened after the last one was sent, while parley waits for its turn to close)."""
        self.heard()
        order_value = msg.get("turn_order")
        order = order_value if isinstance(order_value, int) else self._last_closed + 1
        if order <= self._last_closed:
            return [], False  # the late half of an unformatted/formatted pair, or a repeat
        events: list[Transcript] = []
        if self._held is not None and self._held.order != order:
            events.append(self._emit(self._held.order, self._held.text, self._held.t, self._held.confidence))
        words = _words(msg)
        end = _num(words[-1].get("end")) if words else None
        t_msg = end / 1000.0 if end is not None else t
        transcript = str(msg.get("transcript") or "")
        if not msg.get("end_of_turn"):
            text = " ".join(str(w.get("text", "")) for w in words).strip() or transcript
            self._open = (order, text)
            resend = self._pending is not None and not self._pending.saw_turn
            if resend and self._pending is not None:
                self._pending = _Pending(now + self.finalize_wait_s, saw_turn=True)
            if text:
                events.append(Transcript(text, final=False, t=t_msg))
            return events, resend
        self._open = None
        self._speech_since_end = False
        confs = [c for c in (_num(w.get("confidence")) for w in words) if c is not None]
        confidence = sum(confs) / len(confs) if confs else None
        if self.format_turns and not msg.get("turn_is_formatted"):
            self._held = _Held(order, transcript, t_msg, confidence, now + self.format_wait_s)
            return events, False
        events.append(self._emit(order, transcript, t_msg, confidence))
        return events, False

    def finalize(self, now: float, t: float) -> list[TurnEvent]:
        """Parley's turn ended (``ForceEndpoint`` is being sent, unless this returns a :class:`Stall`)."""
        if self._pending is not None:
            return []
        if self._held is None and (self._open is not None or self._speech_since_end) and self._silent_too_long():
            return [self._stall(f"silent for {self._unanswered_s:.1f} s of speech at the end of the turn")]
        if self._held is not None:
            self._pending = _Pending(self._held.deadline, saw_turn=True)
        elif self._open is not None:
            self._pending = _Pending(now + self.finalize_wait_s, saw_turn=True)
        elif self._speech_since_end:
            # no turn open: the server answers this ForceEndpoint with nothing (it already ended the turn, and
            # noise louder than silence_dbfs is not words); wait briefly for a turn to open, then close
            self._pending = _Pending(now + self.no_turn_wait_s, saw_turn=False)
        else:  # the server already ended every turn and only silence followed: close parley's turn now
            return [Transcript("", final=True, t=t, speech_final=True)]
        return []

    def tick(self, now: float, t: float) -> list[TurnEvent]:
        """Deadlines that passed: a formatted variant that never came, a finalize the server left open (a
        :class:`Stall` when a turn it showed is open or it was silent too long, else an empty close)."""
        return self._expire(now, t, stall=True)

    def flush(self, t: float) -> list[Transcript]:
        """The session ended: release everything still waiting (the open turn's last partial closes it)."""
        return [e for e in self._expire(math.inf, t, stall=False) if isinstance(e, Transcript)]

    def _expire(self, now: float, t: float, *, stall: bool) -> list[TurnEvent]:
        events: list[TurnEvent] = []
        if self._held is not None and now >= self._held.deadline:
            events.append(self._emit(self._held.order, self._held.text, self._held.t, self._held.confidence))
        if self._pending is not None and now >= self._pending.deadline:
            if stall and self._open is not None:
                wait = f"{self.finalize_wait_s:.1f} s"
                events.append(self._stall(f"no answer to ForceEndpoint within {wait} while a turn it showed is open"))
            elif stall and self._silent_too_long():
                silent = f"{self._unanswered_s:.1f} s of speech"
                events.append(self._stall(f"silent for {silent} and no answer to ForceEndpoint"))
            elif self._open is not None:  # the session ended: use what was heard
                events.append(self._emit(self._open[0], self._open[1], t, None))
                self._open = None
            else:
                self._pending = None
                events.append(Transcript("", final=True, t=t, speech_final=True))
        return events

    def _silent_too_long(self) -> bool:
        return self._unanswered_s > self.stall_audio_s

    def _stall(self, why: str) -> Stall:
        """Give up on the open turn: its partial is no final (the next recognizer gets the turn's audio)."""
        self._open = None
        self._pending = None
        return Stall(f"{why}: the recognizer stopped answering with its socket open")

    def next_deadline(self) -> float | None:
        deadlines = [d.deadline for d in (self._held, self._pending) if d is not None]
        return min(deadlines) if deadlines else None

    def _emit(self, order: int, text: str, t: float, confidence: float | None) -> Transcript:
        self._last_closed = max(self._last_closed, order)
        self._held = None
        if self._open is not None and self._open[0] <= order:
            self._open = None
        speech_final = self._pending is not None
        self._pending = None
        return Transcript(text, final=True, t=t, speech_final=speech_final, confidence=confidence)


# ---- sans-I/O: decoding one server message ----------------------------------------------------------------


def parse_message(text: str, redact_text: Callable[[str], str] = str) -> dict[str, object]:
    """One JSON text frame as an object (``type`` says which); anything else breaks the protocol.

    Depth and number sizes are bounded (:mod:`parley.wire_json`); ``redact_text`` cleans the snippet of a
    bad frame that goes into the error message.
    """
    try:
        msg: object = wire_json.loads(text)
    except wire_json.WireJsonError as exc:
        raise ProviderProtocolError(
            f"{PROVIDER}: message is not JSON ({exc}): {redact_text(text[:120])!r}", provider=PROVIDER
        ) from None
    if not isinstance(msg, dict):
        raise ProviderProtocolError(f"{PROVIDER}: message is not a JSON object", provider=PROVIDER)
    return msg


# ---- errors ---------------------------------------------------------------------------------------------------

_AUTH_CODES = frozenset({1008, 4001, 4002, 4003})
_RETRYABLE_CODES = frozenset({1011, 1012, 1013, 3005, 3008, 3009})


def close_error(code: int | None, reason: str) -> ProviderError:
    """The error for a session the server closed (``code`` None: no close frame, the socket dropped)."""
    if code is None or code == 1006:
        return ProviderConnectionError(f"{PROVIDER}: connection lost", provider=PROVIDER, code="1006")
    text = f"{PROVIDER}: session closed with code {code}: {reason or 'no reason given'}"
    if code in _AUTH_CODES:
        return ProviderAuthError(text, provider=PROVIDER, code=str(code))
    if code == 3006:
        return ProviderProtocolError(text, provider=PROVIDER, code=str(code))
    if code in (1000, 1001):
        return ProviderConnectionError(text, provider=PROVIDER, code=str(code))
    return ProviderError(text, provider=PROVIDER, code=str(code), retryable=code in _RETRYABLE_CODES)


def _handshake_error(exc: InvalidStatus, secrets: Sequence[str | None]) -> ProviderError:
    response = exc.response
    body = response.body.decode("utf-8", "replace").strip() if response.body else ""
    try:
        parsed: object = wire_json.loads(body)
    except wire_json.WireJsonError:
        parsed = body
    if isinstance(parsed, dict):
        parsed = parsed.get("error") or parsed.get("message") or body
    message = redact(str(parsed)[:300], secrets)
    return error_for_status(response.status_code, message, provider=PROVIDER)


# ---- the provider and its stream ----------------------------------------------------------------------------


class AssemblyAISTT(Lifecycle):
    """An :class:`~parley.providers.base.STTProvider`: one Universal-Streaming session per ``open()``."""

    name = PROVIDER

    def __init__(
        self,
        api_key: str | None,
        *,
        url: str = "wss://streaming.assemblyai.com/v3/ws",
        speech_model: str = "universal-streaming-english",
        token: str | None = None,
        format_turns: bool = True,
        end_of_turn_confidence_threshold: float | None = None,
        min_turn_silence: int | None = None,
        min_end_of_turn_silence_when_confident: int | None = None,
        max_turn_silence: int | None = None,
        message_ms: int = MIN_MESSAGE_MS,
        format_wait_s: float = 0.8,
        finalize_wait_s: float = 1.5,
        no_turn_wait_s: float = 0.5,
        silence_dbfs: float = -50.0,
        connect_timeout_s: float = 5.0,
        close_timeout_s: float = 3.0,
        on_usage: Callable[[Usage], None] | None = None,
    ) -> None:
        if not api_key and not token:
            raise ValueError("AssemblyAI needs an API key or a temporary streaming token")
        if not MIN_MESSAGE_MS <= message_ms <= MAX_MESSAGE_MS:
            raise ValueError(f"message_ms must be within {MIN_MESSAGE_MS}-{MAX_MESSAGE_MS}, not {message_ms}")
        self.url = url
        self.speech_model = speech_model
        self.format_turns = format_turns
        self.end_of_turn_confidence_threshold = end_of_turn_confidence_threshold
        # min_end_of_turn_silence_when_confident: the deprecated name of min_turn_silence, sent as the new one
        self.min_turn_silence = (
            min_turn_silence if min_turn_silence is not None else min_end_of_turn_silence_when_confident
        )
        self.max_turn_silence = max_turn_silence
        self.message_ms = message_ms
        self.format_wait_s = format_wait_s
        self.finalize_wait_s = finalize_wait_s
        self.no_turn_wait_s = no_turn_wait_s
        self.silence_dbfs = silence_dbfs
        self.connect_timeout_s = connect_timeout_s
        self.close_timeout_s = close_timeout_s
        self.on_usage = on_usage
        self._api_key = api_key
        self._token = token

    def __repr__(self) -> str:
        return f"AssemblyAISTT(url={self.url!r}, speech_model={self.speech_model!r})"

    def query(self, sample_rate: int) -> dict[str, str]:
        """The connection's query parameters (without the token)."""
        params = {
            "speech_model": self.speech_model,
            "sample_rate": str(sample_rate),
            "encoding": "pcm_s16le",
            "format_turns": "true" if self.format_turns else "false",
        }
        optional: dict[str, float | int | None] = {
            "end_of_turn_confidence_threshold": self.end_of_turn_confidence_threshold,
            "min_turn_silence": self.min_turn_silence,
            "max_turn_silence": self.max_turn_silence,
        }
        params.update({k: str(v) for k, v in optional.items() if v is not None})
        return params

    async def check(self) -> Verdict | None:
        """Open a session and terminate it: authenticates (billed: the session's open time, a second)."""
        await (await self.open(sample_rate=16000)).close()
        return None

    async def open(self, *, sample_rate: int, language: str | None = None) -> AssemblyAISTTStream:
        """Connect and wait for ``Begin``. ``language`` is not sent (v3 picks it by ``speech_model``)."""
        params = self.query(sample_rate)
        if self._token:
            params["token"] = self._token
        url = f"{self.url}?{urlencode(params)}"
        headers = {"Authorization": self._api_key} if self._api_key and not self._token else {}
        log.debug("%s: connecting to %s model=%s rate=%d", PROVIDER, self.url, self.speech_model, sample_rate)
        try:
            ws = await connect(
                url,
                additional_headers=headers,
                open_timeout=self.connect_timeout_s,
                close_timeout=self.close_timeout_s,
                compression=None,
                logger=QuietWsLog(log, {}),
            )
        except InvalidStatus as exc:
            raise _handshake_error(exc, self._secrets()) from exc
        except TimeoutError as exc:
            raise ProviderTimeout(f"{PROVIDER}: connect timed out", provider=PROVIDER) from exc
        except (OSError, InvalidHandshake, InvalidURI) as exc:
            detail = self._redact(str(exc)) or type(exc).__name__
            raise ProviderConnectionError(f"{PROVIDER}: connect failed: {detail}", provider=PROVIDER) from exc
        stream = AssemblyAISTTStream(self, ws, sample_rate)
        await stream.start()
        return stream

    def _secrets(self) -> list[str | None]:
        return [self._api_key, self._token]

    def _redact(self, text: str) -> str:
        return redact(text, self._secrets())


@dataclass(slots=True)
class AssemblyAIStats:
    messages_sent: int = 0  # binary audio messages
    force_endpoints: int = 0
    dropped_partials: int = 0  # partial transcripts dropped because the consumer fell behind


class AssemblyAISTTStream:
    """One streaming session. Events: partial and final :class:`Transcript`, then one :class:`Usage`.

    The event queue is unbounded for finals, errors and usage; partials are dropped (and counted) while
    more than ``MAX_PENDING_EVENTS`` events wait. The receive loop is a task owned by this stream,
    started by ``open()`` and ended by ``close()``.
    """

    def __init__(self, provider: AssemblyAISTT, ws: ClientConnection, sample_rate: int) -> None:
        self._p = provider
        self._ws = ws
        self.sample_rate = sample_rate
        self._batcher = AudioBatcher(sample_rate, provider.message_ms)
        self._turns = TurnAssembler(
            format_turns=provider.format_turns,
            format_wait_s=provider.format_wait_s,
            finalize_wait_s=provider.finalize_wait_s,
            no_turn_wait_s=provider.no_turn_wait_s,
        )
        self._loop = asyncio.get_running_loop()
        self._opened_at = self._loop.time()
        self._events: asyncio.Queue[STTEvent | BaseException | None] = asyncio.Queue()
        self._reader: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._samples_sent = 0
        self._error: ProviderError | None = None
        self._closing = False
        self._terminated = False
        self._usage: Usage | None = None
        self.session_id: str | None = None
        self.audio_duration_s: float | None = None
        self.session_duration_s: float | None = None
        self.stats = AssemblyAIStats()

    # ---- lifecycle ----------------------------------------------------------------------------------

    async def start(self) -> None:
        """Wait for ``Begin`` (an auth refusal arrives as a close frame instead), then start reading."""
        try:
            async with asyncio.timeout(self._p.connect_timeout_s):
                while self.session_id is None:
                    self._handle(await self._ws.recv())
        except ConnectionClosed as exc:
            raise self._closed_error(exc) from exc
        except TimeoutError as exc:
            await self._shutdown()
            raise ProviderTimeout(f"{PROVIDER}: no Begin message in time", provider=PROVIDER) from exc
        except BaseException:
            self._drop()
            raise
        self._reader = asyncio.create_task(self._read(), name=f"assemblyai-{self.session_id}")

    async def close(self) -> None:
        """Send what is buffered and ``Terminate``, wait for ``Termination`` and the close, emit Usage.

        Cancelled while waiting: the TCP connection is cut at once and Usage(cancelled=True) is emitted."""
        if self._closing:
            return
        self._closing = True
        cancelled = False
        try:
            if self._error is None and self._reader is not None and not self._reader.done():
                async with asyncio.timeout(self._p.close_timeout_s):
                    with contextlib.suppress(ConnectionClosed):
                        if (rest := self._batcher.flush()) is not None:
                            await self._ws.send(rest)
                        await self._ws.send(json.dumps({"type": "Terminate"}))
                    await asyncio.shield(self._reader)
        except TimeoutError:
            log.warning("%s: no Termination within %.1f s; closing", PROVIDER, self._p.close_timeout_s)
        except asyncio.CancelledError:
            cancelled = True
            self._drop()
            self._finish(cancelled=True)
            raise
        finally:
            if self._reader is not None and not self._reader.done():
                self._reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._reader
            if not cancelled:
                await self._shutdown()
            self._finish()

    async def __aenter__(self) -> AssemblyAISTTStream:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # ---- STTStream ----------------------------------------------------------------------------------

    async def send_audio(self, samples: Int16Array) -> None:
        self._check()
        self._samples_sent += int(samples.size)
        speech = samples.size > 0 and rms_dbfs(samples) > self._p.silence_dbfs
        self._turns.audio(speech, samples.size / self.sample_rate)
        for message in self._batcher.feed(samples):
            await self._send(message)

    def pause_hint(self) -> None:
        """Nothing to do: the server transcribes continuously."""

    def speech_resumed(self) -> None:
        """Nothing to do: an early result is never taken from this provider."""

    async def finalize(self) -> None:
        self._check()
        if (rest := self._batcher.flush()) is not None:
            await self._send(rest)
        events = self._turns.finalize(self._loop.time(), self._t())
        self._deliver(events)
        if any(isinstance(e, Stall) for e in events):
            return  # it stopped answering some time ago: no ForceEndpoint answer to wait for
        await self._force_endpoint()
        self._schedule()

    def __aiter__(self) -> AssemblyAISTTStream:
        return self

    async def __anext__(self) -> STTEvent:
        item = await self._events.get()
        if item is None or isinstance(item, BaseException):
            self._events.put_nowait(None)  # later iterations end too
            if item is None:
                raise StopAsyncIteration
            raise item
        return item

    # ---- receiving ----------------------------------------------------------------------------------

    async def _read(self) -> None:
        try:
            async for message in self._ws:
                if self._handle(message):
                    await self._force_endpoint()
        except ConnectionClosed as exc:
            if not self._terminated or self._ws.close_code not in (1000, None):
                self._fail(self._closed_error(exc))
        except ProviderError as exc:
            self._fail(exc)
            await self._shutdown()
        else:
            if not self._terminated and not self._closing:
                self._fail(close_error(self._ws.close_code, self._ws.close_reason or ""))
        self._flush_turns()
        self._finish()

    def _handle(self, message: str | bytes) -> bool:
        """Queue the events of one server message; True: ``ForceEndpoint`` should be sent again."""
        if isinstance(message, bytes):
            return False  # the server sends JSON only; ignore anything else
        msg = parse_message(message, self._p._redact)
        self._turns.heard()
        match msg.get("type"):
            case "Begin":
                self.session_id = str(msg.get("id") or "")
                log.debug("%s: session %s began", PROVIDER, self.session_id)
            case "Turn":
                events, resend = self._turns.turn(msg, self._loop.time(), self._t())
                for event in events:
                    self._put(event)
                self._schedule()
                return resend and not self._closing
            case "SpeechStarted":
                ms = _num(msg.get("timestamp"))
                self._put(SpeechStarted(ms / 1000.0 if ms is not None else self._t()))
            case "Termination":
                self._terminated = True
                self.audio_duration_s = _num(msg.get("audio_duration_seconds"))
                self.session_duration_s = _num(msg.get("session_duration_seconds"))
            case "Error":
                detail = self._p._redact(str(msg.get("error") or msg))[:300]
                log.warning("%s: server error message: %s", PROVIDER, detail)
            case _:
                pass  # Warning, Heartbeat and whatever comes next
        return False

    def _put(self, event: STTEvent | BaseException | None) -> None:
        if isinstance(event, Transcript) and not event.final and self._events.qsize() >= MAX_PENDING_EVENTS:
            self.stats.dropped_partials += 1
            return
        self._events.put_nowait(event)

    def _fail(self, error: ProviderError) -> None:
        if self._error is None:
            self._error = error
            log.warning("%s: %s", PROVIDER, error)

    def _flush_turns(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for event in self._turns.flush(self._t()):
            self._put(event)

    def _finish(self, *, cancelled: bool = False) -> None:
        """Emit the one Usage of this session (then the error, if any) and end the event stream."""
        if self._usage is not None:
            return
        self._flush_turns()
        counted = self._loop.time() - self._opened_at
        billed = self.session_duration_s if self.session_duration_s is not None else counted
        self._usage = Usage(
            PROVIDER,
            self._p.speech_model,
            "stt",
            audio_seconds=billed,
            cancelled=cancelled,
            failed=self._error is not None,
        )
        self._put(self._usage)
        if self._p.on_usage is not None:
            self._p.on_usage(self._usage)
        if self._error is not None:
            self._put(self._error)
        self._put(None)

    # ---- sending ------------------------------------------------------------------------------------

    def _check(self) -> None:
        if self._error is not None:
            raise self._error
        if self._closing:
            raise ProviderError(f"{PROVIDER}: the stream is closed", provider=PROVIDER)

    async def _send(self, data: bytes | str) -> None:
        try:
            await self._ws.send(data)
        except ConnectionClosed as exc:
            self._fail(self._closed_error(exc))
            assert self._error is not None
            raise self._error from exc
        if isinstance(data, bytes):
            self.stats.messages_sent += 1

    async def _force_endpoint(self) -> None:
        self.stats.force_endpoints += 1
        await self._send(json.dumps({"type": "ForceEndpoint"}))

    def _schedule(self) -> None:
        deadline = self._turns.next_deadline()
        if self._timer is not None and (deadline is None or self._timer.when() != deadline):
            self._timer.cancel()
            self._timer = None
        if deadline is not None and self._timer is None:
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._deliver(self._turns.tick(self._loop.time(), self._t()))
        self._schedule()

    def _deliver(self, events: Sequence[TurnEvent]) -> None:
        """Queue transcripts; a :class:`Stall` fails the stream (Usage(failed=True), then the error) and
        cuts the socket: a hung server would hold a close handshake for ``close_timeout_s``."""
        for event in events:
            if isinstance(event, Transcript):
                self._put(event)
                continue
            self._fail(ProviderTimeout(f"{PROVIDER}: {event.reason}", provider=PROVIDER))
            if self._reader is not None:
                self._reader.cancel()
            self._drop()
            self._finish()
            return

    # ---- helpers ------------------------------------------------------------------------------------

    def _t(self) -> float:
        return self._samples_sent / self.sample_rate

    def _closed_error(self, exc: ConnectionClosed) -> ProviderError:
        rcvd = exc.rcvd
        return close_error(rcvd.code if rcvd is not None else None, self._p._redact(rcvd.reason if rcvd else ""))

    async def _shutdown(self) -> None:
        """Close the socket (the close handshake is bounded by ``close_timeout_s``, then the TCP is cut)."""
        if self._ws.state in (State.CONNECTING, State.OPEN):
            with contextlib.suppress(ConnectionClosed, OSError):
                await self._ws.close()
        self._drop()

    def _drop(self) -> None:
        """Cut the TCP connection now (cancellation: no handshake, no waiting)."""
        if self._ws.transport is not None:
            self._ws.transport.abort()
