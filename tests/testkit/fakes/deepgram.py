"""A loopback fake of Deepgram's live STT (``/v1/listen``) and streaming TTS (``/v1/speak``) WebSockets.

Owns: one ``websockets`` server on 127.0.0.1 (port 0) serving both paths, scripted transcripts, synthetic
speech audio, scriptable faults, and a record of everything each client sent. Must not import parley's
providers: it is checked against the documented protocol (docs/provider-protocols.md §1, §2), not against
our client.

Reproduced from the documentation:
- Handshake: ``Authorization: Token <key>`` required (``Bearer`` with an API key is 401); refusals carry an
  HTTP status, ``dg-error`` and ``dg-request-id`` headers and a JSON body, ``{err_code, err_msg,
  request_id}`` for 4xx, ``{category, message, details, request_id}`` for 5xx (both documented shapes);
  the query is validated (``encoding`` values, ``sample_rate`` required with ``encoding``, booleans as
  ``true``/``false``, ``endpointing`` ms or ``false``; speak: linear16/mulaw/alaw and the listed rates,
  an ``aura`` model) and answered 400 otherwise. Every accepted handshake returns ``dg-request-id``.
- Listen: binary frames are audio, text frames JSON controls. ``Results`` are shaped as documented
  (``type, channel_index, start, duration, is_final, speech_final, from_finalize, channel.alternatives[0]
  {transcript, confidence, words[{word, start, end, confidence, punctuated_word}]}, metadata{request_id,
  model_info, model_uuid}``) plus one unknown field (``fake_unknown_field``) clients must ignore;
  ``SpeechStarted`` (with ``vad_events=true``), ``UtteranceEnd`` (with ``utterance_end_ms`` and interim
  results), interim results (with ``interim_results=true``), ``speech_final`` after ``endpointing`` ms of
  silence, ``Finalize`` answered with ``from_finalize: true``, ``CloseStream`` answered with the remaining
  result, one ``Metadata`` (sha256 and duration of the audio received) and close 1000. Idle timeout:
  close 1011 with the NET-0001 reason when no audio or text arrives for ``idle_timeout_s``; KeepAlive
  only counts once at least one audio frame arrived (a fresh socket needs audio).
- Speak: ``Metadata`` at connect; ``Speak`` texts are joined as-is; ``Flush`` -> binary linear16 frames then
  ``{"type":"Flushed","sequence_id":n}``; ``Clear`` -> audio stops between frames, then ``Cleared``;
  ``Close`` -> close 1000 at once; a ``Speak`` over 2000 characters -> close 1009 ``BIG-0001``.

Simplified:
- Recognition is scripted: ``transcripts`` is a queue of utterances, one popped when speech starts. ``|``
  in an utterance marks ``is_final`` segment boundaries: one segment is finalized per ``segment_s`` of
  speech, the rest at the endpoint / Finalize / CloseStream. Interim result ``k`` shows the first ``k``
  words of the current segment. "Speech" is a linear16 frame with a sample at or above ``voice_threshold``
  (other encodings: every frame); all timing runs on audio time, so results are deterministic.
- A Finalize with no utterance in progress is answered with an empty ``from_finalize`` result when
  ``answer_empty_finalize`` (default), or not at all (Deepgram "may" answer nothing).
- Speak audio is a 440 Hz tone, ``ms_per_char`` per character, in ``speak_frame_ms`` frames;
  ``sequence_id`` counts Flushed and Cleared separately per socket from 0 (the docs show 0 for both).
  ``speak_idle_timeout_s`` (off by default; Deepgram documents none) closes an idle speak socket with the
  listen NET-0001 close. The 2400 characters/min limit is not enforced.
- The Flush cap (``flush_limit``, off by default; docs tts-ws-flush: "at most 20 times every 60 seconds.
  After that, you will receive a warning message stating that we cannot process any more flush messages
  until the 60-second time window has passed"): a Flush over the cap gets
  ``{"type":"Warning","code":"FLUSH_LIMIT_EXCEEDED","description":...}`` and is not processed (no audio,
  no ``Flushed``; its text stays buffered). The docs do not say whether the cap counts per connection or
  per key: ``flush_limit_scope`` picks one ("key" counts across every speak socket of this fake); the
  warning's code and text are not documented and are this fake's own.
- Faults (:class:`Faults`, one per path, attributes may be changed between connections): refuse the
  handshake with ``reject_status`` (``reject_count`` times, or always), ``delay_s`` before each Results /
  each Flush's audio, and after ``*_after_frames`` frames (audio received on listen, audio sent on speak):
  drop the TCP connection without a close frame, send a malformed JSON text frame, or close with
  ``close_code`` / ``close_reason``; or, from ``stall_after_frames`` on, hang with the socket open: keep
  reading, answer nothing (no Results, no answer to Finalize or CloseStream) and never close (issue 10: a
  hung recognizer; Deepgram's own ``1011 NET-0000`` for it comes only after its own window, §1). Where the
  client must tell this from "nothing buffered", the fake's interim results (``interim_every_s``) are what
  shows the words it holds.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import uuid
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from types import TracebackType
from typing import Literal, Self
from urllib.parse import parse_qs, urlsplit

import numpy as np
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

NET_0001 = (
    "Deepgram did not receive audio data or a text message within the timeout window. See https://dpgr.am/net0001"
)
FLUSH_WARNING = ("Flush limit exceeded: at most 20 Flush messages every 60 seconds; no more Flush messages are "
                 "processed until the 60-second window has passed.")
LISTEN_ENCODINGS = {"linear16", "linear32", "flac", "alaw", "mulaw", "amr-nb", "amr-wb", "opus", "ogg-opus", "speex",
                    "g729"}
LISTEN_BOOLEANS = ("interim_results", "vad_events", "smart_format", "punctuate", "numerals", "profanity_filter",
                   "dictation", "multichannel", "diarize")
SPEAK_RATES = {"linear16": {8000, 16000, 24000, 32000, 48000}, "mulaw": {8000, 16000}, "alaw": {8000, 16000}}
MODEL_INFO = {"name": "general-nova-3", "version": "2025-04-17.21547", "arch": "nova-3"}
MAX_SPEAK_CHARS = 2000


class _QuietLog(logging.LoggerAdapter[logging.Logger]):
    """websockets' server log capped at INFO: its DEBUG output would print the client's API key."""

    def isEnabledFor(self, level: int) -> bool:
        return level >= logging.INFO and self.logger.isEnabledFor(level)


@dataclass(slots=True)
class Faults:
    """Scripted misbehaviour of one path (listen or speak)."""

    reject_status: int | None = None
    reject_count: int | None = None  # None: refuse every handshake
    delay_s: float = 0.0
    drop_after_frames: int | None = None
    malformed_after_frames: int | None = None
    close_after_frames: int | None = None
    # From this audio frame on the fake answers nothing (no Results, no answer to Finalize, no close) and keeps
    # reading: a recognizer that hung, what Deepgram reports as ``1011 NET-0000`` ("the service did not produce a
    # result in time") only after its own window (docs/provider-protocols.md §1, Deepgram's
    # stt-troubleshooting-websocket-data-and-net-errors page).
    stall_after_frames: int | None = None
    close_code: int = 1011
    close_reason: str = "NET-0000: the service did not produce a result in time (fake)"
    rejected: int = 0

    def take_rejection(self) -> bool:
        if self.reject_count is not None and self.rejected >= self.reject_count:
            return False
        self.rejected += 1
        return True


@dataclass(slots=True)
class Handshake:
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    status: int = 101


@dataclass(slots=True)
class Session:
    """What one client connection sent, and how the fake ended it."""

    query: dict[str, str]
    request_id: str
    received: list[dict[str, object]] = field(default_factory=list)  # JSON text frames, in order
    sent: list[dict[str, object]] = field(default_factory=list)  # JSON messages the fake sent
    text_frames: int = 0
    binary_frames: int = 0  # listen: audio frames received; speak: audio frames sent
    audio_bytes: int = 0
    json_in_binary: int = 0  # control messages wrongly sent as binary audio
    closed: tuple[int, str] | None = None  # close code/reason the fake sent
    dropped: bool = False
    stalled: bool = False  # Faults.stall_after_frames took effect: nothing more was sent

    def count(self, kind: str) -> int:
        return sum(1 for m in self.received if m.get("type") == kind)


def _http_error(ws: ServerConnection, status: int, message: str, request_id: str) -> Response:
    code = HTTPStatus(status).phrase.upper().replace(" ", "_")
    body = (
        {"category": code, "message": message, "details": "fake deepgram", "request_id": request_id}
        if status >= 500
        else {"err_code": code, "err_msg": message, "request_id": request_id}
    )
    response = ws.respond(status, json.dumps(body))
    del response.headers["Content-Type"]
    response.headers["Content-Type"] = "application/json"
    response.headers["dg-error"] = message
    response.headers["dg-request-id"] = request_id
    return response


class _Listen:
    """Sans-I/O recognizer script: audio and controls in, Deepgram messages out."""

    def __init__(self, fake: FakeDeepgram, query: dict[str, str], request_id: str) -> None:
        self.fake = fake
        self.request_id = request_id
        self.rate = int(query.get("sample_rate", "16000"))
        self.linear16 = query.get("encoding", "linear16") == "linear16"
        self.interim = query.get("interim_results") == "true"
        self.vad = query.get("vad_events") == "true"
        endpointing = query.get("endpointing", "10")
        self.endpointing = None if endpointing == "false" else int(endpointing) / 1000
        ue = query.get("utterance_end_ms")
        self.utterance_end = int(ue) / 1000 if ue and self.interim else None
        self.pos = self.seg_start = self.voice_end = self.seg_speech = self.since_interim = 0.0
        self.in_speech = self.ue_pending = False
        self.utt: list[str] | None = None  # segments not yet sent as final
        self.interims = 0
        self.sha = hashlib.sha256()

    def audio(self, frame: bytes) -> list[dict[str, object]]:
        out: list[dict[str, object]] = []
        self.sha.update(frame)
        n = len(frame) // 2 if self.linear16 else len(frame)
        t0, self.pos = self.pos, self.pos + n / self.rate
        dur = self.pos - t0
        samples = np.frombuffer(frame[: 2 * n], dtype="<i2") if self.linear16 else None
        voiced = samples is None or (n > 0 and int(np.abs(samples.astype(np.int32)).max()) >= self.fake.voice_threshold)
        if voiced:
            if not self.in_speech and self.vad:
                out.append({"type": "SpeechStarted", "channel": [0, 1], "timestamp": round(t0, 3)})
            self.in_speech = self.ue_pending = True
            if self.utt is None:
                script = self.fake.transcripts.popleft() if self.fake.transcripts else ""
                self.utt = [s.strip() for s in script.split("|")]
                self.interims = 0
            self.voice_end = self.pos
            self.seg_speech += dur
            self.since_interim += dur
            if len(self.utt) > 1 and self.seg_speech >= self.fake.segment_s:
                out.append(self.result(self.utt.pop(0), is_final=True))
            elif self.interim and self.since_interim >= self.fake.interim_every_s:
                self.since_interim = 0.0
                self.interims += 1
                out.append(self.result(" ".join(self.utt[0].split()[: self.interims]), is_final=False))
            return out
        self.in_speech = False
        silence = self.pos - self.voice_end
        if self.utt is not None and self.endpointing is not None and silence >= self.endpointing:
            out.append(self.result(" ".join(self.utt), is_final=True, speech_final=True))
            self.utt = None
        if self.ue_pending and self.utterance_end is not None and silence >= self.utterance_end:
            self.ue_pending = False
            out.append({"type": "UtteranceEnd", "channel": [0, 1], "last_word_end": round(self.voice_end, 3)})
        return out

    def finalize(self) -> list[dict[str, object]]:
        if self.utt is not None:
            text, self.utt = " ".join(self.utt), None
            return [self.result(text, is_final=True, from_finalize=True)]
        return [self.result("", is_final=True, from_finalize=True)] if self.fake.answer_empty_finalize else []

    def close_stream(self) -> list[dict[str, object]]:
        out = [self.result(" ".join(self.utt), is_final=True)] if self.utt is not None else []
        self.utt = None
        created = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        out.append({"type": "Metadata", "transaction_key": "deprecated", "request_id": self.request_id,
                    "sha256": self.sha.hexdigest(), "created": created, "duration": round(self.pos, 3),
                    "channels": 1, "models": [str(uuid.uuid5(uuid.NAMESPACE_DNS, "nova-3"))],
                    "model_info": MODEL_INFO})
        return out

    def result(self, text: str, *, is_final: bool, speech_final: bool = False, from_finalize: bool = False
               ) -> dict[str, object]:
        start, duration = self.seg_start, self.pos - self.seg_start
        if is_final:
            self.seg_start, self.seg_speech, self.since_interim, self.interims = self.pos, 0.0, 0.0, 0
        words = text.split()
        step = duration / max(1, len(words))
        return {
            "type": "Results", "channel_index": [0, 1], "start": round(start, 3), "duration": round(duration, 3),
            "is_final": is_final, "speech_final": speech_final, "from_finalize": from_finalize,
            "channel": {"alternatives": [{"transcript": text, "confidence": 0.98 if words else 0.0, "words": [
                {"word": w.strip(".,?!").lower(), "start": round(start + i * step, 3),
                 "end": round(start + (i + 1) * step, 3), "confidence": 0.98, "punctuated_word": w}
                for i, w in enumerate(words)]}]},
            "metadata": {"request_id": self.request_id, "model_info": MODEL_INFO,
                         "model_uuid": str(uuid.uuid5(uuid.NAMESPACE_DNS, "nova-3"))},
            "fake_unknown_field": {"note": "not in the spec; clients must ignore it"},
        }


class FakeDeepgram:
    """``/v1/listen`` and ``/v1/speak`` on one loopback port. Use as ``async with FakeDeepgram() as dg:``."""

    def __init__(
        self,
        api_key: str = "dg-test-key",
        *,
        transcripts: Iterable[str] = (),
        idle_timeout_s: float = 10.0,
        speak_idle_timeout_s: float | None = None,
        interim_every_s: float = 0.2,
        segment_s: float = 1.0,
        answer_empty_finalize: bool = True,
        voice_threshold: int = 500,
        ms_per_char: float = 10.0,
        speak_frame_ms: float = 20.0,
        speak_frame_delay_s: float = 0.0,
        flush_limit: int | None = None,
        flush_window_s: float = 60.0,
        flush_limit_scope: Literal["connection", "key"] = "key",
        listen: Faults | None = None,
        speak: Faults | None = None,
    ) -> None:
        self.api_key = api_key
        self.transcripts: deque[str] = deque(transcripts)
        self.idle_timeout_s = idle_timeout_s
        self.speak_idle_timeout_s = speak_idle_timeout_s
        self.interim_every_s = interim_every_s
        self.segment_s = segment_s
        self.answer_empty_finalize = answer_empty_finalize
        self.voice_threshold = voice_threshold
        self.ms_per_char = ms_per_char
        self.speak_frame_ms = speak_frame_ms
        self.speak_frame_delay_s = speak_frame_delay_s
        self.flush_limit = flush_limit
        self.flush_window_s = flush_window_s
        self.flush_limit_scope = flush_limit_scope
        self.flush_warnings = 0
        self._key_flushes: deque[float] = deque()
        self.listen_faults = listen or Faults()
        self.speak_faults = speak or Faults()
        self.handshakes: list[Handshake] = []
        self.listen_sessions: list[Session] = []
        self.speak_sessions: list[Session] = []
        self._server: Server | None = None
        self._request_ids: dict[ServerConnection, str] = {}

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("FakeDeepgram is not started")
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def listen_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/listen"

    @property
    def speak_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/speak"

    async def start(self) -> None:
        self._server = await serve(
            self._handle, "127.0.0.1", 0, process_request=self._check, process_response=self._stamp,
            compression=None, server_header=None, ping_interval=None,
            logger=_QuietLog(logging.getLogger("testkit.fakes.deepgram"), {}),
        )

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # ---- handshake -----------------------------------------------------------------------------------

    def _check(self, ws: ServerConnection, request: Request) -> Response | None:
        target = urlsplit(request.path)
        query = {k: v[-1] for k, v in parse_qs(target.query, keep_blank_values=True).items()}
        shake = Handshake(target.path, query, {k.lower(): v for k, v in request.headers.raw_items()})
        self.handshakes.append(shake)
        request_id = str(uuid.uuid4())
        faults = {"/v1/listen": self.listen_faults, "/v1/speak": self.speak_faults}.get(target.path)
        if faults is None:
            status, message = 404, f"No route for {target.path}"
        elif request.headers.get("Authorization") != f"Token {self.api_key}":
            status, message = 401, "Invalid credentials."
        elif faults.reject_status is not None and faults.take_rejection():
            status, message = faults.reject_status, f"Scripted refusal {faults.reject_status} (fake)"
        elif problem := (_listen_problem(query) if target.path == "/v1/listen" else _speak_problem(query)):
            status, message = 400, problem
        else:
            self._request_ids[ws] = request_id
            return None
        shake.status = status
        return _http_error(ws, status, message, request_id)

    def _stamp(self, ws: ServerConnection, request: Request, response: Response) -> Response:
        if response.status_code == 101:
            response.headers["dg-request-id"] = self._request_ids.get(ws, "")
        return response

    async def _handle(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        target = urlsplit(ws.request.path)
        query = {k: v[-1] for k, v in parse_qs(target.query, keep_blank_values=True).items()}
        session = Session(query, self._request_ids.pop(ws, ""))
        try:
            if target.path == "/v1/listen":
                self.listen_sessions.append(session)
                await self._listen(ws, session)
            else:
                self.speak_sessions.append(session)
                await self._speak(ws, session)
        except ConnectionClosed:
            pass

    # ---- listen --------------------------------------------------------------------------------------

    async def _listen(self, ws: ServerConnection, session: Session) -> None:
        logic = _Listen(self, session.query, session.request_id)
        faults = self.listen_faults
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.idle_timeout_s
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    frame = await ws.recv()
            except TimeoutError:
                await self._close(ws, session, 1011, NET_0001)
                return
            if isinstance(frame, bytes):
                deadline = loop.time() + self.idle_timeout_s
                session.binary_frames += 1
                session.audio_bytes += len(frame)
                if frame.lstrip().startswith(b"{"):
                    session.json_in_binary += 1
                if not frame:  # the deprecated zero-length end-of-stream frame: behave like CloseStream
                    await self._send_all(ws, session, logic.close_stream(), faults.delay_s)
                    await self._close(ws, session, 1000, "")
                    return
                if await self._fault(ws, session, faults):
                    return
                await self._send_all(ws, session, logic.audio(frame), faults.delay_s)
                continue
            session.text_frames += 1
            if session.binary_frames:
                deadline = loop.time() + self.idle_timeout_s  # KeepAlive counts once audio has flowed
            message = _json(frame)
            session.received.append(message)
            match message.get("type"):
                case "Finalize":
                    await self._send_all(ws, session, logic.finalize(), faults.delay_s)
                case "CloseStream":
                    await self._send_all(ws, session, logic.close_stream(), faults.delay_s)
                    await self._close(ws, session, 1000, "")
                    return
                case _:
                    pass  # KeepAlive (no reply) and anything else

    # ---- speak ---------------------------------------------------------------------------------------

    async def _speak(self, ws: ServerConnection, session: Session) -> None:
        rate = int(session.query.get("sample_rate", "24000"))
        await self._send(ws, session, {"type": "Metadata", "request_id": session.request_id,
                                       "model_name": session.query.get("model", "aura-asteria-en"),
                                       "model_version": "2025-04-01", "model_uuid": str(uuid.uuid4()),
                                       "fake_unknown_field": True})
        state = {"generation": 0, "flushed": 0, "cleared": 0, "phase": 0}
        jobs: asyncio.Queue[tuple[int, str]] = asyncio.Queue()
        worker = asyncio.create_task(self._synthesize(ws, session, rate, jobs, state))
        own_flushes: deque[float] = deque()
        buffer: list[str] = []
        try:
            while True:
                try:
                    async with asyncio.timeout(self.speak_idle_timeout_s):
                        frame = await ws.recv()
                except TimeoutError:
                    await self._close(ws, session, 1011, NET_0001)
                    return
                if isinstance(frame, bytes):
                    session.json_in_binary += 1
                    continue
                session.text_frames += 1
                message = _json(frame)
                session.received.append(message)
                match message.get("type"):
                    case "Speak":
                        text = str(message.get("text", ""))
                        if len(text) > MAX_SPEAK_CHARS:
                            await self._close(ws, session, 1009, "BIG-0001: text exceeds 2000 characters")
                            return
                        buffer.append(text)
                    case "Flush":
                        if not self._flush_allowed(own_flushes):
                            self.flush_warnings += 1
                            await self._send(ws, session, {"type": "Warning", "code": "FLUSH_LIMIT_EXCEEDED",
                                                           "description": FLUSH_WARNING})
                            continue
                        jobs.put_nowait((state["generation"], "".join(buffer)))
                        buffer.clear()
                    case "Clear":
                        state["generation"] += 1
                        buffer.clear()
                        while not jobs.empty():
                            jobs.get_nowait()
                        await self._send(ws, session, {"type": "Cleared", "sequence_id": state["cleared"]})
                        state["cleared"] += 1
                    case "Close":
                        await self._close(ws, session, 1000, "")
                        return
                    case _:
                        pass
        finally:
            worker.cancel()

    def _flush_allowed(self, own: deque[float]) -> bool:
        """Count one Flush against the cap (per socket or per key); False when it is over the cap."""
        if self.flush_limit is None:
            return True
        flushes = self._key_flushes if self.flush_limit_scope == "key" else own
        now = asyncio.get_running_loop().time()
        while flushes and now - flushes[0] >= self.flush_window_s:
            flushes.popleft()
        if len(flushes) >= self.flush_limit:
            return False
        flushes.append(now)
        return True

    async def _synthesize(self, ws: ServerConnection, session: Session, rate: int,
                          jobs: asyncio.Queue[tuple[int, str]], state: dict[str, int]) -> None:
        faults = self.speak_faults
        frame_n = max(1, round(rate * self.speak_frame_ms / 1000))
        try:
            await self._synthesis_loop(ws, session, rate, frame_n, jobs, state, faults)
        except ConnectionClosed:
            pass

    async def _synthesis_loop(self, ws: ServerConnection, session: Session, rate: int, frame_n: int,
                              jobs: asyncio.Queue[tuple[int, str]], state: dict[str, int], faults: Faults) -> None:
        while True:
            generation, text = await jobs.get()
            if generation != state["generation"]:
                continue  # cleared before it started
            if faults.delay_s:
                await asyncio.sleep(faults.delay_s)
            total = round(rate * self.ms_per_char * len(text) / 1000)
            for start in range(0, total, frame_n):
                if generation != state["generation"]:
                    break  # cleared: stop between frames
                n = min(frame_n, total - start)
                t = (state["phase"] + np.arange(n)) / rate
                state["phase"] += n
                tone = (0.25 * 32767 * np.sin(2 * math.pi * 440.0 * t)).astype("<i2").tobytes()
                await ws.send(tone)
                session.binary_frames += 1
                session.audio_bytes += len(tone)
                if await self._fault(ws, session, faults):
                    return
                if self.speak_frame_delay_s:
                    await asyncio.sleep(self.speak_frame_delay_s)
            else:
                await self._send(ws, session, {"type": "Flushed", "sequence_id": state["flushed"]})
                state["flushed"] += 1

    # ---- shared --------------------------------------------------------------------------------------

    async def _fault(self, ws: ServerConnection, session: Session, faults: Faults) -> bool:
        """Apply a scripted fault due at this frame count; True when the connection is finished."""
        n = session.binary_frames
        if faults.stall_after_frames is not None and n >= faults.stall_after_frames:
            session.stalled = True
            return False
        if n == faults.drop_after_frames:
            session.dropped = True
            ws.transport.abort()
            return True
        if n == faults.malformed_after_frames:
            await ws.send('{"type": "Results", "channel": {"alternatives": [')
        if n == faults.close_after_frames:
            await self._close(ws, session, faults.close_code, faults.close_reason)
            return True
        return False

    async def _send_all(self, ws: ServerConnection, session: Session, messages: list[dict[str, object]],
                        delay_s: float) -> None:
        for message in messages:
            if delay_s and message.get("type") == "Results":
                await asyncio.sleep(delay_s)
            await self._send(ws, session, message)

    async def _send(self, ws: ServerConnection, session: Session, message: dict[str, object]) -> None:
        if session.stalled:
            return
        session.sent.append(message)
        await ws.send(json.dumps(message))

    async def _close(self, ws: ServerConnection, session: Session, code: int, reason: str) -> None:
        if session.stalled:  # a hung recognizer does not close either; the client gives up
            await ws.wait_closed()
            return
        session.closed = (code, reason)
        await ws.close(code, reason)


def _json(frame: str) -> dict[str, object]:
    try:
        parsed: object = json.loads(frame)
    except json.JSONDecodeError:
        return {"type": "<not json>", "raw": frame}
    return parsed if isinstance(parsed, dict) else {"type": "<not an object>", "raw": frame}


def _listen_problem(query: dict[str, str]) -> str | None:
    encoding = query.get("encoding")
    if encoding is not None and encoding not in LISTEN_ENCODINGS:
        return f"Unsupported encoding: {encoding}"
    if encoding is not None and not query.get("sample_rate", "").isdigit():
        return "sample_rate is required (a positive integer) when encoding is set"
    if not query.get("channels", "1").isdigit():
        return "channels must be an integer"
    for name in LISTEN_BOOLEANS:
        if query.get(name, "false") not in ("true", "false"):
            return f"{name} must be true or false"
    endpointing = query.get("endpointing", "10")
    if endpointing != "false" and not endpointing.isdigit():
        return "endpointing must be an integer number of milliseconds or false"
    if not query.get("utterance_end_ms", "1000").isdigit():
        return "utterance_end_ms must be an integer"
    return None


def _speak_problem(query: dict[str, str]) -> str | None:
    encoding = query.get("encoding", "linear16")
    rates = SPEAK_RATES.get(encoding)
    if rates is None:
        return f"Unsupported encoding for streaming: {encoding}"
    rate = query.get("sample_rate", "24000")
    if not rate.isdigit() or int(rate) not in rates:
        return f"Unsupported sample_rate {rate} for {encoding}"
    if not query.get("model", "aura-asteria-en").startswith("aura"):
        return "No such model/language/tier combination found."
    return None
