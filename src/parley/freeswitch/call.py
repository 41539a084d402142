"""One live call as the agent sees it: caller audio in, events, playback out, call control.

Owns: the per-call state assembled from ESL events and the mod_audio_stream connection (which may arrive
in either order), the queue of call events handed to the agent (DTMF, hangup, stream loss), and the
call-control commands (hang up, transfer, set a variable). Must not know what the agent says or how
calls are discovered; :mod:`parley.freeswitch.bridge` creates and retires calls.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from parley.config import DIALPLAN_CONTEXT, DIALPLAN_EXTENSION, FreeSwitchSettings
from parley.errors import CallGone, EslCommandError
from parley.freeswitch import esl_protocol as esl
from parley.freeswitch.audio_stream import AudioFrame, AudioStream
from parley.freeswitch.esl_client import EslClient
from parley.freeswitch.playback import CallPlayback

log = logging.getLogger("parley.call")


@dataclass(frozen=True, slots=True)
class CallInfo:
    uuid: str
    caller_number: str | None = None
    caller_name: str | None = None
    destination: str | None = None
    direction: str | None = None
    codec: str | None = None
    codec_rate: int = 8000
    channel_name: str | None = None

    @classmethod
    def from_event(cls, uuid: str, event: esl.Event | None) -> CallInfo:
        if event is None:
            return cls(uuid)
        rate = event.get("Channel-Write-Codec-Rate") or event.variable("write_rate") or ""
        return cls(
            uuid=uuid,
            caller_number=event.get("Caller-Caller-ID-Number"),
            caller_name=event.get("Caller-Caller-ID-Name"),
            destination=event.get("Caller-Destination-Number"),
            direction=event.get("Call-Direction"),
            codec=event.get("Channel-Write-Codec-Name"),
            codec_rate=int(rate) if rate.isdigit() and int(rate) > 0 else 8000,
            channel_name=event.get("Channel-Name"),
        )


@dataclass(frozen=True, slots=True)
class Dtmf:
    digit: str
    t: float
    duration_ms: float


@dataclass(frozen=True, slots=True)
class Hangup:
    cause: str
    t: float


@dataclass(frozen=True, slots=True)
class StreamLost:
    reason: str
    t: float


CallEvent = Dtmf | Hangup | StreamLost


class CallLog(logging.LoggerAdapter[logging.Logger]):
    """Prefixes every line with the call id (never caller audio or secrets)."""

    def process(self, msg: str, kwargs: object) -> tuple[str, object]:  # type: ignore[override]
        call = self.extra["call"] if self.extra else "?"
        if isinstance(kwargs, dict):
            kwargs.setdefault("extra", {})["call"] = call  # the JSON log format emits it as a field
        return f"[call {call}] {msg}", kwargs


class Call:
    def __init__(
        self,
        uuid: str,
        esl_client: EslClient,
        settings: FreeSwitchSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.uuid = uuid
        self.info = CallInfo(uuid)
        self.settings = settings
        self.esl = esl_client
        self._clock = clock
        self.created_at = clock()
        self.answered_at: float | None = None
        self.ended_at: float | None = None
        self.hangup_cause: str | None = None
        self.stream: AudioStream | None = None
        self.stream_ready = asyncio.Event()
        self.hungup = asyncio.Event()
        self.retired = asyncio.Event()  # the bridge let go of it: agent stopped, spool removed, stream closed
        self.confirmed = asyncio.Event()  # FreeSWITCH told us about this UUID (an event, or uuid_exists)
        self.events: asyncio.Queue[CallEvent] = asyncio.Queue(maxsize=256)
        self.dtmf_digits: list[str] = []
        self.log = CallLog(log, {"call": uuid})
        self.playback = CallPlayback(
            uuid, esl_client, settings.playback, codec_rate=8000, clock=clock, send_stream_text=self._send_stream_text
        )

    @property
    def esl_confirmed(self) -> bool:
        return self.confirmed.is_set()

    # ---- what the agent uses -----------------------------------------------------------------------

    async def frames(self) -> AsyncIterator[AudioFrame]:
        """Caller audio (mono, stream rate), until the stream closes or the call hangs up."""
        await self.wait_any(self.stream_ready, self.hungup)
        stream = self.stream
        if stream is None:
            return
        while not self.hungup.is_set():
            frame = stream.frames.get_nowait()
            if frame is None:
                if stream.frames.closed:
                    return
                frame = await stream.frames.get()
                if frame is None:
                    return
            yield frame

    @property
    def stream_rate(self) -> int:
        return self.stream.format.sample_rate if self.stream is not None else self.settings.audio_stream.sample_rate

    async def hangup(self, cause: str = "NORMAL_CLEARING") -> None:
        if self.hungup.is_set():
            return
        try:
            await self.esl.api(f"uuid_kill {self.uuid} {cause}")
        except EslCommandError as exc:
            if "No such channel" not in exc.reply:
                raise

    async def transfer(self, destination: str, *, dialplan: str = "XML", context: str | None = None) -> None:
        """Blind transfer to the extension ``destination`` of the XML dialplan in ``context`` (default: the
        agent's own), as ``uuid_transfer <uuid> <extension> XML <context>``, so the dialplan and its
        ``toll_allow`` decide what happens next. Only a plain extension token is accepted: never a dial
        string (``sofia/...``, ``sip:...``, ``bridge:``, ``&app``), and ``dialplan`` must be ``XML`` (never
        ``inline``), whoever asks. An operator who wants calls to reach an outside number writes an
        extension for it in their dialplan (bridging to their gateway there) and names that extension in
        ``conversation.transfer_targets``.

        Raises ValueError for anything else (nothing is sent)."""
        ctx = context or self.settings.dialplan.context
        if not DIALPLAN_EXTENSION.fullmatch(destination):
            raise ValueError(f"refusing to transfer to {destination[:80]!a}: not a plain dialplan extension")
        if dialplan != "XML":
            raise ValueError(f"refusing to transfer with dialplan {dialplan[:80]!a}: only XML")
        if not DIALPLAN_CONTEXT.fullmatch(ctx):
            raise ValueError(f"refusing to transfer into context {ctx[:80]!a}: not a dialplan context name")
        await self.esl.api(f"uuid_transfer {self.uuid} {destination} XML {ctx}")

    async def set_var(self, name: str, value: str) -> None:
        await self.esl.api(f"uuid_setvar {self.uuid} {name} {value}")

    # ---- fed by the bridge ---------------------------------------------------------------------------

    def update_info(self, event: esl.Event) -> None:
        if event.get("Caller-Caller-ID-Number") is None and event.get("Channel-Write-Codec-Rate") is None:
            return
        self.info = CallInfo.from_event(self.uuid, event)
        self.playback.set_codec_rate(self.info.codec_rate)

    def attach_stream(self, stream: AudioStream) -> None:
        self.stream = stream
        self.stream_ready.set()

    def handle_event(self, event: esl.Event) -> None:
        self.confirmed.set()
        name = event.name
        if name in ("CHANNEL_ANSWER", "CHANNEL_PARK", "CHANNEL_CREATE") or (
            event.subclass == "mod_audio_stream::connect"
        ):
            self.update_info(event)
            if name == "CHANNEL_ANSWER" or (self.answered_at is None and event.get("Answer-State") == "answered"):
                self.answered_at = self.answered_at or self._clock()
        if name in ("PLAYBACK_START", "PLAYBACK_STOP", "CHANNEL_EXECUTE_COMPLETE") or (
            event.subclass == "mod_audio_stream::play"
        ):
            self.playback.handle_event(event)
        elif name == "DTMF":
            digit = event.get("DTMF-Digit") or ""
            samples = event.get("DTMF-Duration") or "0"
            self.dtmf_digits.append(digit)
            self._post(Dtmf(digit, self._clock(), 1000.0 * int(samples) / 8000 if samples.isdigit() else 0.0))
        elif name == "CHANNEL_HANGUP":
            self.mark_hungup(event.get("Hangup-Cause") or "NORMAL_CLEARING")

    def mark_hungup(self, cause: str) -> None:
        if self.hungup.is_set():
            return
        self.hangup_cause = cause
        self.ended_at = self._clock()
        self.hungup.set()
        if self.stream is not None:
            self.stream.frames.close()  # frames() ends after what is queued: the agent winds down by itself
        self._post(Hangup(cause, self.ended_at))
        self.log.info("hung up: %s", cause)

    def stream_lost(self, reason: str) -> None:
        self._post(StreamLost(reason, self._clock()))

    def _post(self, ev: CallEvent) -> None:
        try:
            self.events.put_nowait(ev)
        except asyncio.QueueFull:
            self.log.warning("call event queue full; dropping %s", type(ev).__name__)

    async def _send_stream_text(self, text: str) -> None:
        if self.stream is None:
            raise CallGone(f"call {self.uuid} has no mod_audio_stream connection")
        await self.stream.send_text(text)

    @staticmethod
    async def wait_any(*events: asyncio.Event) -> None:
        if any(e.is_set() for e in events):
            return
        waiters = [asyncio.ensure_future(e.wait()) for e in events]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()
