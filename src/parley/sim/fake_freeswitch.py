"""A fake FreeSWITCH 1.10 + community mod_audio_stream that speaks the real wire protocols over real sockets.

Owns: the Event Socket server (inbound mode: parley connects as a client), the calls it places, and the
composition of the parts: :mod:`~parley.sim.esl_wire` (bytes), :mod:`~parley.sim.fake_esl` (one ESL
connection), :mod:`~parley.sim.fake_api` (``api``/``bgapi`` commands), :mod:`~parley.sim.fake_call`
(dialplan, execute queue, playback, DTMF, hangup), :mod:`~parley.sim.fake_audio_stream` (the
mod_audio_stream WebSocket client) and :mod:`~parley.sim.fake_channel` (event templates derived from
the genuine recordings in ``shared/fixtures/freeswitch``). Must not be imported by production code.

Usage::

    async with FakeFreeSwitch(password="secret") as fs:
        call = await fs.place_call(
            ws_url="ws://127.0.0.1:8765/call/{uuid}",  # dialplan-started stream, like the recordings
            caller_audio=speech,                       # int16 mono at caller_rate (8 kHz by default)
            channel_vars={"parley_agent": "true"},     # extra dialplan `set`s (parley's dialplan marks its calls)
        )
        ...                      # parley connects to 127.0.0.1:fs.esl_port and drives the call
        await call.hangup()
        assert fs.calls[call.uuid].playbacks[0].status == "done"

A named node (``FakeFreeSwitch(node="fs-a")``) plays one of several FreeSWITCH nodes: every stream it starts
sends the metadata ``{"node":"fs-a"}`` as its first text frame (unless ``place_call`` is given its own),
as `parley freeswitch config --node fs-a` renders it, and it has its own ESL port; two fakes side by side
are two nodes.

Timing defaults are the medians measured on a real box (README of the fixtures): a playback starts
~21 ms after its ``sendmsg``, ``uuid_break`` stops it ~21 ms after the command, ``uuid_broadcast``
starts ~110 ms after (its ``lead-frames: 5``). ``clock`` must advance in real time (it timestamps
records and schedules media, e.g. ``time.monotonic`` or the event loop's ``time``).

Reproduced from the recordings (and checked by ``tests/sim/test_fake_fidelity.py``): the handshake
bytes, every reply text, event names / header names and order / static values / variable order,
plain and JSON serialization, the dialplan event sequence (``agent``: answer, set x4, log, park; without a
WS URL ``park``: answer, park), WS-before-ESL ordering, playback/break/flush/DTMF-``*`` semantics,
``Playback-Status: done`` on hangup, BACKGROUND_JOB, mod_audio_stream connect/error/play/disconnect, a
restart (:meth:`FakeFreeSwitch.restart`: calls hung up with ``SYSTEM_SHUTDOWN``, the shutdown
disconnect notice, ESL refused for a while) and ``reload mod_event_socket`` (:meth:`FakeFreeSwitch.reload_esl`).

Modelled from FreeSWITCH / mod_audio_stream source knowledge, not recorded: ``-ERR command not found``
before auth (the connection stays open); ``filter``/``nixevent``/``noevents``/``myevents`` replies and
filter semantics (no recording covers ``filter``: from ``mod_event_socket.c``, ``+OK filter added.
[Unique-ID]=[<uuid>]``, ``+OK filter deleted. [Unique-ID][<uuid>]``; a listener with no filter gets every
event it subscribed to, one with filters only those a positive filter matches and no negative one does);
FILE NOT FOUND (CHANNEL_EXECUTE then CHANNEL_EXECUTE_COMPLETE, no PLAYBACK_*);
``uuid_kill``/``sendmsg hangup`` (``sip_hangup_disposition=send_bye``, no ``sip_term_*``); ``uuid_transfer``
(ends the park loop, re-parks); ``::error`` codes other than "connection refused"; ``::disconnect``
1006 when the app drops TCP; temp files deleted on ``stop``/hangup; ``mixed``/``stereo`` streams
sending nothing while nothing plays (measured, not in a recording); ``uuid_broadcast`` to an unknown
uuid answering ``-ERR No such channel!`` (unverified: FreeSWITCH may say ``+OK Message sent``).

Simplified: no SIP/RTP; caller audio is resampled straight to the stream rate (no G.711 band-limit or
companding); every execute queues FIFO like an event-locked one (a non-event-locked one is not nested);
``loops`` > 1 is ignored; applications: playback (WAV of any PCM width, ``.r8``/``.r16``,
``silence_stream://``), set/unset/export/log/answer, sleep, hangup; no XML events, ``userauth``, ``log``
or ``linger``; CDR RTP statistics and SIP dialog values are the recorded constants; a ``uuid_break``
with nothing playing is dropped; a listener more than 64 MiB behind is disconnected.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import tempfile
import time
import uuid as uuidlib
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType, TracebackType

import numpy as np
import numpy.typing as npt

from parley.sim.esl_wire import SHUTDOWN_NOTICE, FsEvent
from parley.sim.fake_api import ApiCommands, SessionStats
from parley.sim.fake_call import CallContext, FakeCall
from parley.sim.fake_channel import ChannelState, EventFactory, Templates
from parley.sim.fake_esl import EslConnection
from parley.sim.fake_playback import PlaybackRecord

__all__ = ["FakeCall", "FakeFreeSwitch", "PlaybackRecord"]

MIXES = ("mono", "mixed", "stereo")


class FakeFreeSwitch:
    """ESL server + call simulator; see the module docstring."""

    def __init__(
        self,
        *,
        password: str,
        host: str = "127.0.0.1",
        esl_port: int = 0,
        temp_dir: Path | None = None,
        acl_reject: bool = False,
        playback_start_delay_s: float = 0.021,
        break_stop_delay_s: float = 0.021,
        broadcast_lead_s: float = 0.110,
        clock: Callable[[], float] = time.monotonic,
        node: str | None = None,
    ) -> None:
        self.password = password
        self.node = node  # the node name this fake plays: its streams' metadata says it
        self.host = host
        self.esl_port = esl_port
        self.temp_dir = temp_dir
        self.acl_reject = acl_reject
        self.playback_start_delay_s = playback_start_delay_s
        self.break_stop_delay_s = break_stop_delay_s
        self.broadcast_lead_s = broadcast_lead_s
        self.clock = clock
        self.commands: list[bytes] = []
        self._calls: dict[str, FakeCall] = {}
        self._conns: set[EslConnection] = set()
        self._server: asyncio.Server | None = None
        self._serve_task: asyncio.Task[None] | None = None
        self._pending_sock: socket.socket | None = None  # bound by refuse_esl(False), served shortly
        self._conn_tasks: set[asyncio.Task[None]] = set()
        self._own_temp: Path | None = None
        self._events: EventFactory | None = None
        self._ctx: CallContext | None = None
        self._stats = SessionStats(started_at=time.monotonic())
        self._api: ApiCommands | None = None

    # ---- lifecycle ----------------------------------------------------------------------------------

    async def start(self) -> None:
        templates = Templates.load()
        self._events = EventFactory(templates, core_uuid=str(uuidlib.uuid4()))
        if self.temp_dir is None:
            self._own_temp = Path(tempfile.mkdtemp(prefix="fake-freeswitch-"))
            self.temp_dir = self._own_temp
        self.temp_dir.mkdir(parents=True, exist_ok=True)  # where mod_audio_stream writes streamAudio files
        self._ctx = CallContext(
            events=self._events,
            fire=self.fire,
            clock=self.clock,
            temp_dir=self.temp_dir,
            playback_start_delay_s=self.playback_start_delay_s,
            break_stop_delay_s=self.break_stop_delay_s,
            broadcast_lead_s=self.broadcast_lead_s,
        )
        self._stats = SessionStats(started_at=time.monotonic())
        self._api = ApiCommands(
            self._calls,
            stats=self._stats,
            status_template=templates.status_body,
            broadcast_lead_s=lambda: self.broadcast_lead_s,
        )
        sock = self._listening_socket()
        self.esl_port = sock.getsockname()[1]
        self._server = await asyncio.start_server(self._on_client, sock=sock)

    async def close(self) -> None:
        for call in list(self._calls.values()):
            await call.shutdown()
        if self._serve_task is not None:
            await asyncio.gather(self._serve_task, return_exceptions=True)
        if self._pending_sock is not None:
            self._pending_sock.close()
            self._pending_sock = None
        if self._server is not None:
            self._server.close()
            self._server = None
        for conn in list(self._conns):
            conn.abort()  # their tasks then see EOF and end on their own
        if self._conn_tasks:
            await asyncio.wait(list(self._conn_tasks), timeout=2)
        if self._own_temp is not None:
            shutil.rmtree(self._own_temp, ignore_errors=True)
            self._own_temp = None

    async def __aenter__(self) -> FakeFreeSwitch:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # ---- what tests use -------------------------------------------------------------------------

    @property
    def calls(self) -> Mapping[str, FakeCall]:
        """Every call placed so far, by uuid (hung-up ones stay, with ``hungup`` True)."""
        return MappingProxyType(self._calls)

    def forget(self, call_uuid: str) -> None:
        """Drop a hung-up call (its audio, playbacks and events) from :attr:`calls`. Long runs that place
        thousands of calls (``scripts/soak.py``) call it so the fake's memory stays bounded; ValueError for
        a call that is still up."""
        call = self._calls.get(call_uuid)
        if call is not None and not call.hungup:
            raise ValueError(f"call {call_uuid} is still up")
        self._calls.pop(call_uuid, None)
        for conn in self._conns:
            conn.delivered.discard(call_uuid)

    @property
    def esl_connections(self) -> frozenset[EslConnection]:
        """The ESL connections open now (each has ``sub.filters`` and ``delivered``: what it was sent)."""
        return frozenset(self._conns)

    @property
    def api(self) -> ApiCommands:
        if self._api is None:
            raise RuntimeError("FakeFreeSwitch is not started")
        return self._api

    async def place_call(
        self,
        *,
        ws_url: str | None,
        caller_audio: npt.NDArray[np.int16] | None = None,
        caller_rate: int = 8000,
        codec: str = "PCMU",
        stream_rate: int = 16000,
        mix: str = "mono",
        metadata: str | None = None,
        extra_headers: Mapping[str, str] | None = None,
        caller_number: str = "+15550001111",
        destination: str = "parley",
        uuid: str | None = None,
        ws_first: bool = True,
        frame_jitter_s: float = 0.0,
        channel_vars: Mapping[str, str] | None = None,
    ) -> FakeCall:
        """An inbound call runs the dialplan and parks; with ``ws_url`` the dialplan starts the stream.

        ``channel_vars`` are extra ``set`` actions the dialplan runs before ``answer`` (e.g.
        ``{"parley_agent": "true", "playback_terminators": "none"}`` like parley's rendered dialplan);
        without them the event sequence is exactly the recorded one. Returns once CHANNEL_PARK and
        ``mod_audio_stream::connect`` (or ``::error``) have been emitted.
        """
        if self._ctx is None or self._events is None:
            raise RuntimeError("FakeFreeSwitch is not started")
        if mix not in MIXES:
            raise ValueError(f"mix must be one of {MIXES}, not {mix!r}")
        if stream_rate <= 0 or stream_rate % 8000:
            raise ValueError(f"mod_audio_stream only accepts multiples of 8000 Hz, not {stream_rate}")
        call_uuid = uuid or str(uuidlib.uuid4())
        if metadata is None and self.node is not None and ws_url:
            metadata = json.dumps({"node": self.node}, separators=(",", ":"))
        if call_uuid in self._calls:
            raise ValueError(f"a call with uuid {call_uuid} already exists")
        self._stats.total += 1
        channel = ChannelState(
            uuid=call_uuid,
            caller=caller_number,
            dest=destination,
            codec=codec,
            session_id=self._stats.total,
            templates=self._events.templates,
        )
        call = FakeCall(
            self._ctx, channel, caller_audio=caller_audio, caller_rate=caller_rate, frame_jitter_s=frame_jitter_s
        )
        self._calls[call_uuid] = call
        self._stats.peak = max(self._stats.peak, sum(1 for c in self._calls.values() if not c.hungup))
        await call.setup(
            ws_url=ws_url.replace("{uuid}", call_uuid) if ws_url else None,
            mix=mix,
            stream_rate=stream_rate,
            metadata=metadata,
            extra_headers=extra_headers,
            ws_first=ws_first,
            channel_vars=channel_vars,
        )
        return call

    async def drop_esl_connections(self) -> None:
        """Abruptly close every ESL client socket (an outage as parley sees it)."""
        for conn in list(self._conns):
            conn.abort()
        await asyncio.sleep(0)

    def refuse_esl(self, refuse: bool) -> None:
        """Stop (True) or resume (False) accepting ESL connections; the listener reopens on the same port.

        Existing connections are left alone. Reopening binds synchronously, so a connect right after
        this call succeeds (it waits in the backlog until the server task picks it up).
        """
        if refuse:
            if self._serve_task is not None and not self._serve_task.done():
                self._serve_task.cancel()
            if self._pending_sock is not None:
                self._pending_sock.close()
                self._pending_sock = None
            if self._server is not None:
                self._server.close()
                self._server = None
            return
        if self._server is not None or self._pending_sock is not None:
            return
        sock = self._pending_sock = self._listening_socket()

        async def serve() -> None:
            self._server = await asyncio.start_server(self._on_client, sock=sock)
            self._pending_sock = None

        self._serve_task = asyncio.get_running_loop().create_task(serve())

    async def restart(self, *, esl_down_s: float, notice_after_s: float = 1.2) -> None:
        """FreeSWITCH restarts, as ``fs-shutdown`` recorded it; returns once ESL accepts connections again.

        Every live call is hung up by FreeSWITCH with ``SYSTEM_SHUTDOWN`` (CHANNEL_HANGUP, its park's
        EXECUTE_COMPLETE, CHANNEL_HANGUP_COMPLETE; the streams close with 1000); ``notice_after_s`` later
        each ESL listener gets ``text/disconnect-notice`` "The system is being shut down." and EOF; then
        connects are refused for ``esl_down_s`` (about 6.5 s on the recorded box). The new instance
        reports a fresh uptime in ``status``.
        """
        live = [c for c in self._calls.values() if not c.hungup]
        for call in live:
            call.kill("SYSTEM_SHUTDOWN")
        await asyncio.gather(*(c.wait_hungup() for c in live), return_exceptions=True)
        await asyncio.sleep(notice_after_s)
        await self._esl_goes_away(esl_down_s)
        self._stats.started_at = time.monotonic()

    async def reload_esl(self, *, down_s: float = 0.25) -> None:
        """``reload mod_event_socket`` (``esl-reload``): the same notice and EOF, calls untouched; the
        first reconnect ~250 ms later is refused. Returns once ESL accepts connections again."""
        await self._esl_goes_away(down_s)

    async def _esl_goes_away(self, down_s: float) -> None:
        self.refuse_esl(True)
        for conn in list(self._conns):
            conn.say_goodbye(SHUTDOWN_NOTICE)
        await asyncio.sleep(down_s)
        self.refuse_esl(False)
        if self._serve_task is not None:
            await asyncio.gather(self._serve_task, return_exceptions=True)

    # ---- internals ------------------------------------------------------------------------------

    def fire(self, event: FsEvent) -> None:
        """Deliver one event to every connection whose subscription and filters want it."""
        for conn in list(self._conns):
            conn.deliver(event)

    def run_background_job(self, job_uuid: str, line: str) -> None:
        """Run a ``bgapi`` command after its reply went out, then fire BACKGROUND_JOB."""
        assert self._events is not None
        output = self.api.run(line)
        cmd, _, arg = line.strip().partition(" ")
        extra: dict[str, str | None] = {"Job-UUID": job_uuid, "Job-Command": cmd, "Job-Command-Arg": arg or None}
        self.fire(self._events.build("BACKGROUND_JOB", None, extra, output))

    def _listening_socket(self) -> socket.socket:
        family, kind, proto, _, addr = socket.getaddrinfo(self.host, self.esl_port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(addr)
            sock.listen(128)
        except OSError:
            sock.close()
            raise
        sock.setblocking(False)
        return sock

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = EslConnection(self, reader, writer)
        self._conns.add(conn)
        task = asyncio.current_task()
        if task is not None:
            self._conn_tasks.add(task)
        try:
            await conn.run(acl_reject=self.acl_reject, password=self.password, on_command=self.commands.append)
        finally:
            self._conns.discard(conn)
            if task is not None:
                self._conn_tasks.discard(task)
