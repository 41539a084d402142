"""One live call as the agent sees it: caller audio in, events, playback out, call control.

Owns: the per-call state assembled from ESL events and the mod_audio_stream connections (which may arrive
in either order, and be replaced while the call lives), the queue of call events handed to the agent
(DTMF, hangup, the media given up), the call-control commands (hang up, transfer, set a variable) and
what the call did: which of them FreeSWITCH accepted, whether the media failed for good and why, and the
hangup cause CHANNEL_HANGUP_COMPLETE gave. Must not know what the agent says or how calls are discovered;
:mod:`parley.freeswitch.bridge` creates, restarts the media of, concludes and retires calls.

The media stream is not the call: :meth:`Call.frames` goes on across a replaced or restarted stream and
ends only on hangup or when the bridge gives the media up (:meth:`Call.end_media`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Literal

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
Concluder = Callable[["Call", "str | None"], Awaitable[None]]
Outcome = Literal["caller_hangup", "agent_hangup", "transferred", "shutdown"]


class CallEsl:
    """The call's side of the ESL client: every command a call sends goes through here, and those FreeSWITCH
    accepted are kept, so what the call did (a hangup, a transfer) is known from what was really sent."""

    def __init__(self, client: EslClient) -> None:
        self.client = client
        self.accepted: list[str] = []

    async def api(self, command: str, *, timeout: float | None = None, check: bool = True) -> str:
        reply = await self.client.api(command, timeout=timeout, check=check)
        if not reply.startswith("-ERR"):
            self.accepted.append(command)
        return reply


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
        node: str = "default",
    ) -> None:
        self.uuid = uuid
        self.node = node  # the FreeSWITCH node that placed the call: its ESL controls it (esl_client)
        self.info = CallInfo(uuid)
        self._info_from_event = False  # info came from an ESL event (not the stream metadata)
        self.settings = settings
        self.esl = CallEsl(esl_client)
        self._clock = clock
        self.created_at = clock()
        self.answered_at: float | None = None
        self.ended_at: float | None = None
        self.hangup_cause: str | None = None
        self.hangup_complete = asyncio.Event()  # CHANNEL_HANGUP_COMPLETE came: hangup_cause is FreeSWITCH's
        self.stream: AudioStream | None = None  # the latest stream (it may be closed: see stream_ready)
        self.stream_ready = asyncio.Event()  # a live stream is attached
        self.streams_seen = 0
        self.media_failure: str | None = None  # set once the media is given up for good (end_media)
        self.media_refused = False  # ... because our server refused the stream (a token, say)
        self.concluder: Concluder | None = None  # set by the bridge: apology, fallback, hangup
        self.shutdown = False  # parley ended the call because it is stopping
        self.fallback_by_dialplan = False
        self.stream_errors: list[tuple[int | None, str]] = []  # (code, error) of each mod_audio_stream::error
        self._media_end = asyncio.Event()
        self._conclusion: asyncio.Future[None] | None = None
        self._attached = asyncio.Event()  # pulsed on each attach (frames() waits for a replacement)
        self._cause_from_event = False
        self.hungup = asyncio.Event()
        self.retired = asyncio.Event()  # the bridge let go of it: agent stopped, spool removed, stream closed
        self.confirmed = asyncio.Event()  # FreeSWITCH told us about this UUID (an event, or uuid_exists)
        self.events: asyncio.Queue[CallEvent] = asyncio.Queue(maxsize=256)
        self.dtmf_digits: list[str] = []
        self.log = CallLog(log, {"call": uuid})
        self.playback = CallPlayback(
            uuid, esl_client, settings.playback, codec_rate=8000, clock=clock, send_stream_text=self._send_stream_text
        )

    # ---- what the call did (for its record) ------------------------------------------------------------

    def _accepted(self, verb: str) -> list[str]:
        prefix = f"{verb} {self.uuid} "
        return [c[len(prefix):].strip() for c in self.esl.accepted if c.startswith(prefix)]

    @property
    def transferred_to(self) -> str | None:
        """``<extension> XML <context>`` of the last transfer FreeSWITCH accepted, else None."""
        sent = self._accepted("uuid_transfer")
        return sent[-1] if sent else None

    @property
    def hung_up_by_us(self) -> bool:
        """FreeSWITCH accepted a ``uuid_kill`` for this call (the agent or parley ended it)."""
        return bool(self._accepted("uuid_kill"))

    @property
    def outcome(self) -> Outcome:
        """How the call left us: transferred, hung up by parley (agent or shutdown) or by the caller."""
        if self.transferred_to is not None:
            return "transferred"
        if self.shutdown:
            return "shutdown"
        return "agent_hangup" if self.hung_up_by_us else "caller_hangup"

    async def wait_hangup_cause(self, timeout: float = 1.0) -> str | None:
        """The hangup cause, waiting up to ``timeout`` for CHANNEL_HANGUP_COMPLETE once the call is hung up
        (FreeSWITCH may close the stream a few ms before its hangup events reach us)."""
        if self.hungup.is_set() and not self.hangup_complete.is_set():
            try:
                async with asyncio.timeout(timeout):
                    await self.hangup_complete.wait()
            except TimeoutError:
                pass
        return self.hangup_cause

    async def conclude(self, error: str | None = None) -> None:
        """The agent is done with the call: the bridge's ending (on ``error``: the apology, then the fallback
        transfer or a hangup; else a hangup). Without a bridge, just a hangup."""
        if self._conclusion is None:
            if self.hungup.is_set() or self.transferred_to is not None or self.hung_up_by_us:
                return
            if self.concluder is not None:
                self._conclusion = asyncio.ensure_future(self.concluder(self, error))
            else:
                cause = "TEMPORARY_FAILURE" if error else "NORMAL_CLEARING"
                self._conclusion = asyncio.ensure_future(self.hangup(cause))
        await asyncio.shield(self._conclusion)  # a second caller (the bridge after the agent) waits for the first

    @property
    def media_ended(self) -> bool:
        return self._media_end.is_set()

    @property
    def esl_confirmed(self) -> bool:
        return self.confirmed.is_set()

    # ---- what the agent uses -----------------------------------------------------------------------

    async def frames(self) -> AsyncIterator[AudioFrame]:
        """Caller audio (mono, stream rate), across replaced and restarted streams, until the call hangs up
        or the media is given up (:meth:`end_media`). ``seq`` runs on across streams, skipping the frames a
        gap between them would have held, so ``seq`` x frame length stays the call's media time."""
        done: AudioStream | None = None
        offset = 0  # added to the current stream's seq
        anchor: tuple[int, float] | None = None  # (seq, t) of the call's first frame
        last = -1
        while not self.hungup.is_set():
            stream = self.stream
            if stream is None or stream is done:
                if self._media_end.is_set():
                    return
                self._attached.clear()
                await self.wait_any(self._attached, self.hungup, self._media_end)
                continue
            first = True
            while not self.hungup.is_set():
                frame = stream.frames.get_nowait()
                if frame is None:
                    if stream.frames.closed:
                        break
                    frame = await stream.frames.get()
                    if frame is None:
                        break
                if anchor is None:
                    anchor = (frame.seq, frame.t)
                elif first and frame.pcm:
                    dur = len(frame.pcm) / 2 / stream.format.sample_rate
                    offset = max(last + 1, anchor[0] + round((frame.t - anchor[1]) / dur)) - frame.seq
                first = False
                if offset:
                    frame = replace(frame, seq=frame.seq + offset)
                last = frame.seq
                yield frame
            done = stream

    @property
    def codec(self) -> str | None:
        """The codec FreeSWITCH writes to the caller (Channel-Write-Codec-Name), once an event said it."""
        return self.info.codec

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
        self._info_from_event = True
        self.playback.set_codec_rate(self.info.codec_rate)

    def attach_stream(self, stream: AudioStream) -> None:
        """A new stream for this call; one still attached is replaced (its queued frames are dropped). Until an
        ESL event says who called (owned-call filters miss the early events), the stream metadata's ``caller``
        and ``callee`` (the Lua helper sends them) stand in."""
        meta = stream.metadata or {}
        if not self._info_from_event:
            caller, callee = (v if isinstance(v := meta.get(k), str) and 0 < len(v) <= 64 else None
                              for k in ("caller", "callee"))
            if caller is not None or callee is not None:
                self.info = replace(self.info, caller_number=caller, destination=callee)
        old = self.stream
        if old is not None and old is not stream:
            old.frames.close()
        self.stream = stream
        self.streams_seen += 1
        self.stream_ready.set()
        self._attached.set()

    def detach_stream(self, stream: AudioStream) -> None:
        """``stream`` closed: no live stream until the next attach (frames() waits for it)."""
        if self.stream is stream:
            self.stream_ready.clear()

    def end_media(self, reason: str, *, refused: bool = False, failure: bool = True) -> None:
        """No more media for the agent: frames() ends after what is queued; the agent hears StreamLost.
        ``failure``: the media was lost or refused (``reason`` goes to the record); else the call left us."""
        if failure and self.media_failure is None:
            self.media_failure, self.media_refused = reason, refused
        if self._media_end.is_set():
            return
        self._media_end.set()
        if self.stream is not None:
            self.stream.frames.close()
        self._post(StreamLost(reason, self._clock()))

    def handle_event(self, event: esl.Event) -> None:
        self.confirmed.set()
        if not self._info_from_event:  # the first event seen (owned-call filters miss the early ones)
            self.update_info(event)
        if event.variable("parley_fallback") == "lua":
            self.fallback_by_dialplan = True  # the Lua helper transfers a call whose stream never connects
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
        elif name in ("CHANNEL_HANGUP", "CHANNEL_HANGUP_COMPLETE"):
            cause = event.get("Hangup-Cause") or "NORMAL_CLEARING"
            if self.hungup.is_set() and not self._cause_from_event:
                self.hangup_cause = cause  # FreeSWITCH's own cause beats one parley had to guess
            self.mark_hungup(cause)
            self._cause_from_event = True
            if name == "CHANNEL_HANGUP_COMPLETE":
                self.hangup_complete.set()

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
