"""A loopback fake of AssemblyAI Universal-Streaming v3 (``/v3/ws``), on a real ``websockets`` server.

Reproduced (from the v3 spec and message-sequence docs, see docs/provider-protocols.md §3):
- auth by the raw key in ``Authorization`` or a ``?token=`` query parameter; a bad or missing key gets the
  documented close 1008 "Unauthorized Connection: ..." right after the upgrade, or (``auth_rejection=
  "http"``) an HTTP 401 refusal of the handshake, since the SDK treats some cases that way;
- query checks: ``speech_model`` required, ``sample_rate``, ``encoding``, ``format_turns`` and the
  turn-detection numbers parsed (a bad query is refused with HTTP 400: the real answer is not documented);
- ``Begin`` on connect (with a field clients must ignore); ``Turn`` messages in the documented shape:
  partials with ``transcript`` = finalized words and ``words`` carrying one trailing non-final word, then
  an ``end_of_turn`` Turn with ``utterance``; with ``format_turns`` a second, formatted ``end_of_turn``
  Turn of the same ``turn_order`` (the older pair behaviour; ``formatted_pair=False``: one formatted end);
- ``ForceEndpoint`` ends the open turn at once; ``Terminate`` ends the open turn, then ``Termination``
  (``audio_duration_seconds``, ``session_duration_seconds``) and close 1000;
- the audio rules: binary messages of 50-1000 ms, else close 3007; optionally (``realtime_factor``) not
  faster than real time, else close 3007 "Audio Transmission Rate Exceeded"; invalid JSON or an unknown
  message type closes 3006; the session cap (``max_session_s``, 3 h by default) closes 3008.

Simplified: recognition is scripted. Each :class:`ScriptedTurn` is "heard" one word per ``ms_per_word`` of
speech-level audio (RMS above ``speech_dbfs``); digital silence is silence. A turn ends at
``ForceEndpoint``, at ``Terminate``, or (``end="silence"``) after ``silence_ms`` of silent audio; ending a
turn that heard any speech completes its remaining scripted words. ``ForceEndpoint`` with no speech heard
in the turn (e.g. the server's turn detection already ended the turn, and only noise quieter than
``speech_dbfs`` followed) gets no ``Turn`` back: the live behaviour found in the issue-11 review of the
vendor reference and production clients (AssemblyAI does not document the case). Word times are positions in
the received audio; confidences are constants. No u3-rt-pro behaviour (``SpeechStarted``, punctuation-based
ends), no ``UpdateConfiguration`` effect (recorded only), no ``inactivity_timeout``, no temporary-token
endpoint. Faults are scripted per connection with :class:`SessionFault`.

Stall (``SessionFault.stall_after_audio``): from the n-th audio message on, the server hangs with its socket
open: it keeps reading, sends nothing more (no ``Turn``, no answer to ``ForceEndpoint``, no ``Termination``)
and never closes; the client has to give up and cut the connection. This is the hung recognizer of issue 10
(the same fault as the Deepgram fake's ``stall_after_frames``); AssemblyAI documents no message or close code
for it (docs/provider-protocols.md §3: only the optional ``inactivity_timeout`` and the 3 h cap end a session).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Literal
from urllib.parse import parse_qsl, urlsplit

import numpy as np
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

__all__ = ["FakeAssemblyAI", "ScriptedTurn", "SessionFault", "SessionRecord"]

log = logging.getLogger("testkit.fakes.assemblyai")
ENCODINGS = {"pcm_s16le": 2, "pcm_mulaw": 1}  # bytes per sample


class _QuietLog(logging.LoggerAdapter[logging.Logger]):
    """websockets' server log capped at INFO (its DEBUG output has the raw Authorization header)."""

    def isEnabledFor(self, level: int) -> bool:
        return level >= logging.INFO and self.logger.isEnabledFor(level)


@dataclass(frozen=True, slots=True)
class ScriptedTurn:
    """What the fake "recognizes" for one turn of speech."""

    words: tuple[str, ...]
    formatted: str | None = None  # the formatted transcript; default: capitalized, with a full stop
    end: Literal["force", "silence"] = "force"
    silence_ms: int = 400

    @classmethod
    def of(cls, text: str, **kwargs: object) -> ScriptedTurn:
        return cls(tuple(text.split()), **kwargs)  # type: ignore[arg-type]

    def formatted_text(self) -> str:
        if self.formatted is not None:
            return self.formatted
        text = " ".join(self.words)
        return text[:1].upper() + text[1:] + "." if text else ""


@dataclass(frozen=True, slots=True)
class SessionFault:
    """A failure scripted for one connection (the n-th connection gets the n-th fault)."""

    reject_status: int | None = None  # refuse the upgrade with this HTTP status and an {"error": ...} body
    close_code: int | None = None  # close the session with this code and reason ...
    close_reason: str = ""
    after_audio: int = 0  # ... after this many audio messages (0: right after Begin)
    drop_after_audio: int | None = None  # cut the TCP connection after this many audio messages
    malformed_after_audio: int | None = None  # send a text frame that is not JSON after this many
    begin_delay_s: float = 0.0  # a slow start
    response_delay_s: float = 0.0  # each Turn message comes this much later (a slow server)
    termination_delay_s: float = 0.0  # Termination comes this much after Terminate
    stall_after_audio: int | None = None  # after this many audio messages: send nothing more, never close


@dataclass(slots=True)
class SessionRecord:
    """What one client connection sent, as the fake saw it."""

    headers: dict[str, str]
    query: dict[str, str]
    audio_ms: list[float] = field(default_factory=list)  # duration of each binary message
    controls: list[dict[str, object]] = field(default_factory=list)  # the client's JSON messages
    sent: list[dict[str, object]] = field(default_factory=list)  # the fake's JSON messages
    close_code: int | None = None  # the code that ended the session (either side), None: dropped
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    stalled: bool = False  # SessionFault.stall_after_audio took effect: nothing was sent since

    @property
    def audio_seconds(self) -> float:
        return sum(self.audio_ms) / 1000.0


class _Session:
    """One connection's recognition state (scripted turns heard from audio)."""

    def __init__(self, fake: FakeAssemblyAI, ws: ServerConnection, record: SessionRecord, fault: SessionFault):
        self.fake, self.ws, self.record, self.fault = fake, ws, record, fault
        self.rate = int(record.query.get("sample_rate", "16000"))
        self.width = ENCODINGS[record.query.get("encoding", "pcm_s16le")]
        self.format_turns = record.query.get("format_turns", "false") == "true"
        self.script = list(fake.turns)
        self.order = 0
        self.heard: list[tuple[str, float, float]] = []  # (word, start ms, end ms) of the open turn
        self.speech_ms = 0.0  # speech in the open turn not yet turned into a word
        self.turn_speech = False
        self.silence_ms = 0.0
        self.pos_ms = 0.0
        self.started = time.monotonic()
        self.closer: asyncio.Task[None] | None = None

    async def pause(self, delay: float) -> None:
        """Wait ``delay`` seconds, or less if the client goes away meanwhile."""
        if delay > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self.ws.wait_closed()

    async def send(self, msg: dict[str, object], delay: float = 0.0) -> None:
        await self.pause(delay)
        if self.record.stalled:
            return
        self.record.sent.append(msg)
        await self.ws.send(json.dumps(msg))

    async def close(self, code: int, reason: str) -> None:
        """Start the closing handshake; the caller keeps draining (websockets stops reading the socket while
        unread messages pile up, so the client's close echo would wait behind them). A stalled session never
        closes: the client gives up."""
        if self.record.stalled:
            return
        self.record.close_code = code
        self.closer = asyncio.create_task(self.ws.close(code, reason))

    # ---- audio ----------------------------------------------------------------------------------------

    async def audio(self, data: bytes) -> bool:
        """Handle one binary message; False: it broke a rule and the session is closing."""
        ms = 1000.0 * len(data) / self.width / self.rate
        self.record.audio_ms.append(ms)
        if not 50.0 - 1e-6 <= ms <= 1000.0 + 1e-6:
            await self.close(3007, f"Input duration violation: {ms:.0f} ms; audio must be sent in 50-1000 ms chunks")
            return False
        if self.fake.realtime_factor is not None:
            allowed = (time.monotonic() - self.started) * self.fake.realtime_factor + self.fake.burst_s
            if self.record.audio_seconds > allowed:
                await self.close(3007, "Audio Transmission Rate Exceeded")
                return False
        start = self.pos_ms
        self.pos_ms += ms
        if not self.script:
            return True
        turn = self.script[0]
        if self._is_speech(data):
            self.turn_speech = True
            self.silence_ms = 0.0
            self.speech_ms += ms
            while self.speech_ms >= self.fake.ms_per_word and len(self.heard) < len(turn.words):
                self.speech_ms -= self.fake.ms_per_word
                word_start = max(0.0, self.pos_ms - self.fake.ms_per_word)
                self.heard.append((turn.words[len(self.heard)], word_start, start + ms))
                await self.send(self._turn(partial=True), self.fault.response_delay_s)
        elif self.turn_speech:
            self.silence_ms += ms
            if turn.end == "silence" and self.silence_ms >= turn.silence_ms:
                await self.end_turn()
        return True

    def _is_speech(self, data: bytes) -> bool:
        if self.width != 2 or len(data) < 2:
            return any(data)
        x = np.frombuffer(data[: len(data) // 2 * 2], dtype="<i2").astype(np.float64)
        rms = float(np.sqrt(np.mean(x * x))) / 32768.0
        return rms > 0 and 20.0 * float(np.log10(rms)) > self.fake.speech_dbfs

    # ---- turns ----------------------------------------------------------------------------------------

    async def end_turn(self) -> None:
        """End the open turn (if it heard speech): unformatted end, then the formatted variant."""
        if not self.script or not self.turn_speech:
            return
        turn = self.script.pop(0)
        while len(self.heard) < len(turn.words):
            self.heard.append((turn.words[len(self.heard)], self.pos_ms, self.pos_ms))
        delay = self.fault.response_delay_s
        if self.format_turns and not self.fake.formatted_pair:
            await self.send(self._turn(partial=False, formatted=turn.formatted_text()), delay)
        else:
            await self.send(self._turn(partial=False), delay)
            if self.format_turns:
                await self.send(self._turn(partial=False, formatted=turn.formatted_text()), delay)
        self.order += 1
        self.heard, self.speech_ms, self.turn_speech, self.silence_ms = [], 0.0, False, 0.0

    def _turn(self, *, partial: bool, formatted: str | None = None) -> dict[str, object]:
        heard = self.heard
        texts = formatted.split() if formatted is not None else [w for w, _, _ in heard]
        words = [
            {
                "start": round(start),
                "end": round(end),
                "text": texts[i] if i < len(texts) else word,
                "confidence": 0.93,
                "word_is_final": not (partial and i == len(heard) - 1),
            }
            for i, (word, start, end) in enumerate(heard)
        ]
        final_words = [w for w, _, _ in (heard[:-1] if partial else heard)]
        transcript = formatted if formatted is not None else " ".join(final_words)
        return {
            "turn_order": self.order,
            "turn_is_formatted": formatted is not None,
            "end_of_turn": not partial,
            "transcript": transcript,
            "end_of_turn_confidence": 0.02 if partial else 0.91,
            "words": words,
            "utterance": "" if partial else transcript,
            "language_code": "en",
            "type": "Turn",
        }

    # ---- control messages -----------------------------------------------------------------------------

    async def control(self, text: str) -> None:
        """Handle one text message."""
        try:
            msg = json.loads(text)
        except json.JSONDecodeError:
            await self.close(3006, "Invalid JSON")
            return
        if not isinstance(msg, dict):
            await self.close(3006, "Invalid Message")
            return
        self.record.controls.append(msg)
        match msg.get("type"):
            case "ForceEndpoint":
                await self.end_turn()
            case "Terminate":
                await self.end_turn()
                await self.send(
                    {
                        "type": "Termination",
                        "audio_duration_seconds": round(self.record.audio_seconds, 3),
                        "session_duration_seconds": round(time.monotonic() - self.started, 3),
                    },
                    self.fault.termination_delay_s,
                )
                await self.close(1000, "")
                return
            case "UpdateConfiguration" | "KeepAlive":
                pass
            case other:
                await self.close(3006, f"Invalid Message Type: {other}")
                return


class FakeAssemblyAI:
    """``async with FakeAssemblyAI(api_key, turns=[...]) as fake:`` then connect to ``fake.url``."""

    def __init__(
        self,
        api_key: str,
        *,
        turns: Sequence[ScriptedTurn] = (),
        tokens: Collection[str] = (),
        faults: Sequence[SessionFault | None] = (),
        auth_rejection: Literal["close", "http"] = "close",
        formatted_pair: bool = True,
        ms_per_word: float = 100.0,
        speech_dbfs: float = -45.0,
        realtime_factor: float | None = None,
        burst_s: float = 1.0,
        max_session_s: float = 3 * 3600.0,
    ) -> None:
        self.api_key = api_key
        self.turns = list(turns)
        self.tokens = set(tokens)
        self.faults = list(faults)
        self.auth_rejection = auth_rejection
        self.formatted_pair = formatted_pair
        self.ms_per_word = ms_per_word
        self.speech_dbfs = speech_dbfs
        self.realtime_factor = realtime_factor
        self.burst_s = burst_s
        self.max_session_s = max_session_s
        self.sessions: list[SessionRecord] = []
        self.rejected: list[int] = []  # HTTP statuses of refused handshakes
        self.url = ""
        self._server: Server | None = None
        self._attempts = 0
        self._faults_by_connection: dict[ServerConnection, SessionFault] = {}

    async def __aenter__(self) -> FakeAssemblyAI:
        self._server = await serve(
            self._handle,
            "127.0.0.1",
            0,
            process_request=self._check_request,
            compression=None,
            logger=_QuietLog(log, {}),
        )
        port = next(iter(self._server.sockets)).getsockname()[1]
        self.url = f"ws://127.0.0.1:{port}/v3/ws"
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    def _fault(self) -> SessionFault:
        index = self._attempts
        self._attempts += 1
        fault = self.faults[index] if index < len(self.faults) else None
        return fault or SessionFault()

    def _authorized(self, request: Request, query: dict[str, str]) -> bool:
        if "token" in query:
            return query["token"] in self.tokens
        return request.headers.get("Authorization") == self.api_key

    def _check_request(self, ws: ServerConnection, request: Request) -> Response | None:
        parts = urlsplit(request.path)
        query = dict(parse_qsl(parts.query))
        fault = self._fault()
        self._faults_by_connection[ws] = fault
        if fault.reject_status is not None:
            return self._refuse(fault.reject_status, f"fake refusal {fault.reject_status}")
        if parts.path != "/v3/ws":
            return self._refuse(404, "Not Found")
        if self.auth_rejection == "http" and not self._authorized(request, query):
            return self._refuse(401, "Unauthorized Connection: Invalid API key")
        problem = self._query_problem(query)
        return self._refuse(400, problem) if problem else None

    def _refuse(self, status: int, error: str) -> Response:
        self.rejected.append(status)
        body = json.dumps({"error": error}).encode()
        phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error"
        headers = Headers([("Connection", "close"), ("Content-Length", str(len(body)))])
        headers["Content-Type"] = "application/json"
        return Response(status, phrase, headers, body)

    @staticmethod
    def _query_problem(query: dict[str, str]) -> str | None:
        if not query.get("speech_model"):
            return "speech_model is required"
        if not query.get("sample_rate", "16000").isdigit():
            return "sample_rate must be an integer"
        if query.get("encoding", "pcm_s16le") not in ENCODINGS:
            return f"unsupported encoding {query.get('encoding')!r}"
        if query.get("format_turns", "false") not in ("true", "false"):
            return "format_turns must be true or false"
        for name in ("end_of_turn_confidence_threshold", "min_turn_silence", "max_turn_silence"):
            if name in query:
                try:
                    float(query[name])
                except ValueError:
                    return f"{name} must be a number"
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        query = dict(parse_qsl(urlsplit(ws.request.path).query))
        record = SessionRecord(headers={k.lower(): v for k, v in ws.request.headers.raw_items()}, query=query)
        self.sessions.append(record)
        fault = self._faults_by_connection.pop(ws, SessionFault())
        session = _Session(self, ws, record, fault)
        try:
            if not self._authorized(ws.request, query):
                missing = "token" not in query and "Authorization" not in ws.request.headers
                why = "Missing Authorization header" if missing else "Invalid API key"
                await session.close(1008, f"Unauthorized Connection: {why}")
                await self._serve(session, fault)
                return
            await session.pause(fault.begin_delay_s)
            begin = {"type": "Begin", "id": str(uuid.uuid4()), "expires_at": int(time.time() + self.max_session_s)}
            await session.send({**begin, "x_fake_unknown_field": {"clients": "must ignore this"}})
            if fault.close_code is not None and fault.after_audio == 0:
                await session.close(fault.close_code, fault.close_reason)
            try:
                async with asyncio.timeout(self.max_session_s):
                    await self._serve(session, fault)
            except TimeoutError:
                await session.close(3008, "Session Expired: Maximum session duration exceeded")
                await self._serve(session, fault)
        except ConnectionClosed:
            pass
        finally:
            if session.closer is not None:
                with contextlib.suppress(ConnectionClosed):
                    await session.closer
            if record.close_code is None and ws.close_code not in (None, 1006):
                record.close_code = ws.close_code
            record.closed.set()

    async def _serve(self, session: _Session, fault: SessionFault) -> None:
        n_audio = 0
        async for message in session.ws:
            if session.closer is not None:
                continue  # closing: drain until the client's close echo arrives
            if isinstance(message, str):
                await session.control(message)
                continue
            n_audio += 1
            if not await session.audio(message):
                continue
            if fault.stall_after_audio is not None and n_audio >= fault.stall_after_audio:
                session.record.stalled = True
            if fault.drop_after_audio is not None and n_audio >= fault.drop_after_audio:
                session.ws.transport.abort()
                return
            if fault.malformed_after_audio is not None and n_audio == fault.malformed_after_audio:
                await session.ws.send('{"type": "Turn", "turn_order": 0, "transcript": "hel')
            if fault.close_code is not None and n_audio == fault.after_audio:
                await session.close(fault.close_code, fault.close_reason)

    async def wait_closed(self, index: int = -1, timeout: float = 2.0) -> SessionRecord:
        """The record of session ``index`` once its connection has ended."""
        record = self.sessions[index]
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await record.closed.wait()
        return record
