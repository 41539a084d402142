"""The asyncio shell around the ESL protocol core: one inbound Event Socket connection to FreeSWITCH.

Owns: the TCP connection, authentication, the event subscription, matching replies to commands, ``bgapi``
results (by a Job-UUID we choose), routing events to calls by ``Unique-ID``, and reconnecting with
backoff (re-authenticating and re-subscribing) when the socket drops. Must not know what a call *does*
with its events: handlers are plain callbacks that must not block.

Replies: FreeSWITCH answers the commands of one connection strictly in order (``api`` even runs in the
listener thread, holding events back until it returns), so a FIFO of futures pairs each reply with its
command. Events that FreeSWITCH emitted during an outage are lost (it keeps no backlog for a closed
listener); ``on_reconnect`` callbacks let owners resynchronise.

Errors at the edge: every socket, handshake and parse failure becomes a :mod:`parley.errors` type here. A
connect attempt that fails for any reason but a refused password or ACL (refused, reset, EOF, garbage,
a server that never sends ``auth/request``) is an :class:`EslConnectError`; a live connection that breaks
is an :class:`EslConnectionLost`. The supervisor task catches everything but cancellation, logs it,
backs off (exponential, with jitter, capped at ``reconnect_max_s``) and tries again until :meth:`close`;
a wrong password or ACL refusal is reported through :meth:`wait_fatal` and retried at the slowest pace.
A connection that owes a reply and has sent no byte for that command's whole timeout is stalled: it is
dropped and replaced. ``text/disconnect-notice`` (FreeSWITCH shutting down, or ``reload
mod_event_socket``: the bytes are the same) drops the connection at once. :attr:`stats` says what state
the link is in, since when, the last error and the failed attempts (``/health`` shows them).

When a command is re-sent (the one rule per command, see :func:`command_is_repeatable`):

- A command whose bytes were never written (the link was down, or dropped before the write) waits for
  the next connection and is sent once, whatever it is. That is how a call survives a short outage.
- Written, then the link dropped before the reply: only commands that are safe to run twice are re-sent
  on the next connection. Those are reads and commands whose second run changes nothing:
  ``api``/``bgapi`` ``status``, ``version``, ``uuid_exists``, ``uuid_getvar``, ``uuid_dump``, ``show``,
  ``global_getvar``, ``uuid_setvar`` (same value), ``uuid_break`` (stops what plays; playback holds its lock
  so nothing new is queued in between), ``uuid_audio_stream <uuid> stop``; and the connection's own
  ``event``/``nixevent``/``noevents``/``filter``/``myevents``/``exit``.
- Everything else is never re-sent: ``sendmsg`` (execute ``playback``, ``hangup``), ``uuid_transfer``,
  ``uuid_kill``, ``hangup``, ``originate``, ``uuid_broadcast``, ``uuid_audio_stream ... start`` and any
  command not listed above. Its caller gets :class:`EslOutcomeUnknown` (it may or may not have run), unless
  the client learns that it ran: a ``bgapi`` keeps waiting for the BACKGROUND_JOB of its own Job-UUID on
  the next connection (until its deadline), and a ``sendmsg`` carrying an ``Event-UUID`` whose
  CHANNEL_EXECUTE (``Application-UUID``) already arrived counts as sent. :meth:`EslClient.executed` tells
  a caller later whether an ``Event-UUID`` ran.
- A written command that times out raises :class:`~parley.errors.EslTimeout`; for a command that is not
  repeatable it says so and is not retryable (it may still run).

Owned-call filters (``filter_calls=True``, for `parley serve --call-ownership stream`): FreeSWITCH sends a
listener every subscribed event while it has no filter, and only the events a positive filter matches once
it has one (``mod_event_socket.c`` ``event_handler``). So each connection adds ``filter Unique-ID
<NO_CALL>`` (matches nothing: an idle worker gets no call's events) and ``filter Event-Name BACKGROUND_JOB``
(bgapi results carry no Unique-ID), then ``filter Unique-ID <uuid>`` for every call
this worker owns (:meth:`EslClient.own_call`; :meth:`EslClient.release_call` sends ``filter delete
Unique-ID <uuid>``). They are set before the ``event`` subscription, so no other call's event ever arrives;
filters belong to a connection: a reconnect sets them all again.

Size: over the 400-line aim because the link's whole life (connect, handshake, reader, supervisor) and the
re-send rules share one connection object and its pending-reply FIFO; splitting them would expose it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
import uuid as uuidlib
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from parley.config import EslSettings, require_esl_password
from parley.errors import (
    EslAccessDenied,
    EslAuthError,
    EslCommandError,
    EslConnectError,
    EslConnectionLost,
    EslOutcomeUnknown,
    EslProtocolError,
    EslTimeout,
)
from parley.freeswitch import esl_protocol as esl

log = logging.getLogger("parley.esl")

CALL_EVENTS: tuple[str, ...] = (
    "CHANNEL_CREATE",
    "CHANNEL_ANSWER",
    "CHANNEL_PARK",
    "CHANNEL_HANGUP",
    "CHANNEL_HANGUP_COMPLETE",
    "CHANNEL_EXECUTE",
    "CHANNEL_EXECUTE_COMPLETE",
    "PLAYBACK_START",
    "PLAYBACK_STOP",
    "DTMF",
    "BACKGROUND_JOB",
)
MOD_AUDIO_STREAM_EVENTS: tuple[str, ...] = tuple(
    f"mod_audio_stream::{x}" for x in ("connect", "disconnect", "error", "json", "play")
)

# api/bgapi commands that may run twice (reads, or a second run changes nothing). Everything else runs once.
REPEATABLE_API: frozenset[str] = frozenset(
    {"status", "version", "uuid_exists", "uuid_getvar", "uuid_dump", "show", "global_getvar", "uuid_setvar",
     "uuid_break", "hostname", "uptime"}
)
# commands that only change this connection's own state (re-done on a new connection anyway)
REPEATABLE_VERBS: frozenset[str] = frozenset({"event", "nixevent", "noevents", "filter", "myevents", "exit"})
_EXECUTED_MAX = 4096  # Application-UUIDs of CHANNEL_EXECUTE remembered for executed()
NO_CALL = "parley-owns-no-call-yet"  # a Unique-ID filter value no channel has: with it, no filter = no events

EventHandler = Callable[[esl.Event], None]
LinkState = Literal["connecting", "connected", "down", "refused", "closed"]


def command_is_repeatable(data: bytes) -> bool:
    """The re-send rule of one serialized command (see the module docstring)."""
    line = data.split(b"\n", 1)[0].decode("utf-8", errors="replace").strip()
    verb, _, rest = line.partition(" ")
    verb = verb.lower()
    if verb in REPEATABLE_VERBS:
        return True
    if verb in ("api", "bgapi"):
        words = rest.split()
        if not words:
            return False
        name = words[0].lower()
        if name == "uuid_audio_stream":
            return len(words) >= 3 and words[2].lower() == "stop"
        return name in REPEATABLE_API
    return False


def _verb(data: bytes) -> str:
    return data.split(b"\n", 1)[0][:80].decode(errors="replace")


def _event_uuid(data: bytes) -> str | None:
    for line in data.split(b"\n\n", 1)[0].split(b"\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"event-uuid":
            return value.strip().decode(errors="replace") or None
    return None


@dataclass(slots=True)
class EslStats:
    """Counters and the link's state, read by ``/metrics`` and ``/health``. Times are clock seconds."""

    connects: int = 0
    reconnects: int = 0
    events: int = 0
    commands: int = 0
    connect_failures: int = 0
    state: LinkState = "connecting"
    state_since: float | None = None
    last_error: str | None = None
    last_error_at: float | None = None
    attempts: int = 0  # failed connect attempts since the link was last up
    resent: int = 0  # repeatable commands sent again after a lost reply
    outcome_unknown: int = 0  # non-repeatable commands whose reply was lost (never re-sent)
    stalls: int = 0  # connections dropped because a reply was overdue and nothing arrived


@dataclass(frozen=True, slots=True)
class Sent:
    """A command written to the socket: its reply and when the bytes left (clock seconds)."""

    reply: esl.CommandReply | esl.ApiResponse
    written_at: float


@dataclass(slots=True)
class _Pending:
    fut: asyncio.Future[esl.CommandReply | esl.ApiResponse]
    written_at: float
    timeout: float


class _NotWritten(Exception):
    """Internal: the command never left (no connection, or it was replaced); safe to send later."""


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, now: float) -> None:
        self.reader = reader
        self.writer = writer
        self.parser = esl.EslParser()
        self.pending: deque[_Pending] = deque()
        self.lock = asyncio.Lock()
        self.last_rx = now
        self.dropped = False

    def fail_pending(self, exc: BaseException) -> None:
        while self.pending:
            fut = self.pending.popleft().fut
            if not fut.done():
                fut.set_exception(exc)


class EslClient:
    """One authenticated, subscribed ESL connection that keeps itself alive. Use ``async with``."""

    def __init__(
        self,
        settings: EslSettings,
        *,
        events: Sequence[str] = CALL_EVENTS,
        custom: Sequence[str] = MOD_AUDIO_STREAM_EVENTS,
        clock: Callable[[], float] = time.monotonic,
        filter_calls: bool = False,
    ) -> None:
        self._password = require_esl_password(settings)
        self.filter_calls = filter_calls  # only the owned calls' events (see the module docstring)
        self._owned: dict[str, None] = {}  # calls whose events this connection filters in (ordered)
        self._settings = settings
        self._events = tuple(events)
        self._custom = tuple(custom)
        self._clock = clock
        self._conn: _Connection | None = None
        self._connected = asyncio.Event()
        self._down = asyncio.Event()
        self._down.set()
        self._closing = False
        self._fatal: BaseException | None = None
        self._fatal_event = asyncio.Event()
        self._jobs: dict[str, asyncio.Future[esl.Event]] = {}
        self._executed: OrderedDict[str, None] = OrderedDict()
        self._call_handlers: dict[str, EventHandler] = {}
        self._default_handlers: list[EventHandler] = []
        self._reconnect_handlers: list[Callable[[], None]] = []
        self._supervisor: asyncio.Task[None] | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self.stats = EslStats(state_since=clock())

    # ---- lifecycle ----------------------------------------------------------------------------------

    async def __aenter__(self) -> EslClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self, *, wait: bool = True) -> None:
        """Connect (raising at once on a wrong password, ACL rejection or failed connect when ``wait``),
        then keep the connection alive in the background."""
        if wait:
            await self._connect_once()
        self._supervisor = asyncio.create_task(self._supervise(), name="esl-supervisor")

    async def close(self) -> None:
        self._closing = True
        conn = self._conn
        if conn is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    fut, _ = await self._write(conn, esl.exit_command(), 1.0)
                    await fut
        for task in (self._supervisor, self._reader_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._drop(EslConnectionLost("ESL client closed"))
        self._set_state("closed")
        self._connected.set()  # wake waiters: they see _closing

    async def wait_fatal(self) -> BaseException:
        """Return the error that made the client give up (wrong password, ACL rejection)."""
        await self._fatal_event.wait()
        assert self._fatal is not None
        return self._fatal

    @property
    def host(self) -> str:
        return self._settings.host

    @property
    def port(self) -> int:
        return self._settings.port

    @property
    def connected(self) -> bool:
        return self._conn is not None and self.stats.state == "connected"

    @property
    def supervising(self) -> bool:
        """True while the background task that keeps the link alive runs (it only ends in close())."""
        return self._supervisor is not None and not self._supervisor.done()

    async def wait_connected(self, timeout: float | None = None) -> None:
        try:
            async with asyncio.timeout(timeout):
                while not self.connected:
                    if self._fatal is not None:
                        raise self._fatal
                    if self._closing:
                        raise EslConnectionLost("ESL client closed")
                    waiter = asyncio.ensure_future(self._connected.wait())
                    fatal = asyncio.ensure_future(self._fatal_event.wait())
                    try:
                        await asyncio.wait({waiter, fatal}, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        waiter.cancel()
                        fatal.cancel()
        except TimeoutError:
            raise EslTimeout(f"ESL not connected to {self._where} within {timeout} s") from None

    def executed(self, event_uuid: str) -> bool:
        """Whether a CHANNEL_EXECUTE with this ``Application-UUID`` (a sendmsg's Event-UUID) has arrived."""
        return event_uuid in self._executed

    # ---- routing -------------------------------------------------------------------------------------

    def on_event(self, handler: EventHandler) -> None:
        """Events of calls nobody claimed with :meth:`route_call` (and events without a Unique-ID)."""
        self._default_handlers.append(handler)

    def on_reconnect(self, handler: Callable[[], None]) -> None:
        self._reconnect_handlers.append(handler)

    def route_call(self, call_uuid: str, handler: EventHandler) -> Callable[[], None]:
        """Deliver every event whose Unique-ID is ``call_uuid`` to ``handler``; returns the undo."""
        self._call_handlers[call_uuid] = handler

        def unroute() -> None:
            if self._call_handlers.get(call_uuid) is handler:
                del self._call_handlers[call_uuid]

        return unroute

    # ---- owned-call filters ------------------------------------------------------------------------------

    @property
    def owned_calls(self) -> frozenset[str]:
        return frozenset(self._owned)

    async def own_call(self, call_uuid: str) -> None:
        """From now on this connection receives ``call_uuid``'s events (``filter Unique-ID <uuid>``; kept across
        reconnects). Without ``filter_calls``, nothing to do: every event comes anyway. Returns once FreeSWITCH
        acknowledged the filter, or at once while the link is down (the next connection adds it)."""
        if not self.filter_calls or call_uuid in self._owned:
            return
        self._owned[call_uuid] = None
        if self.connected:
            await self._filter(esl.filter_command("Unique-ID", call_uuid))

    async def release_call(self, call_uuid: str) -> None:
        """No more events of ``call_uuid`` (``filter delete Unique-ID <uuid>``)."""
        if self._owned.pop(call_uuid, 0) is None and self.connected:
            await self._filter(esl.filter_delete_command("Unique-ID", call_uuid))

    async def _filter(self, data: bytes) -> None:
        try:
            reply = (await self.send(data)).reply
        except (EslConnectionLost, EslTimeout) as exc:  # the link went: the next handshake sets the filters
            log.info("ESL %r not acknowledged (%s); the next connection sets the filters", _verb(data), exc)
            return
        if not isinstance(reply, esl.CommandReply) or not reply.ok:
            raise EslCommandError(_verb(data), getattr(reply, "reply_text", type(reply).__name__))

    # ---- commands ------------------------------------------------------------------------------------

    async def api(self, command: str, *, timeout: float | None = None, check: bool = True) -> str:
        """Run ``api <command>``; return its output. ``-ERR``/``-USAGE`` raise EslCommandError if ``check``."""
        sent = await self.send(esl.api_command(command), timeout=timeout)
        if not isinstance(sent.reply, esl.ApiResponse):
            raise EslProtocolError(f"expected api/response to {command[:60]!r}, got {type(sent.reply).__name__}")
        if check and not sent.reply.ok:
            raise EslCommandError(command, sent.reply.body.strip())
        return sent.reply.body

    async def bgapi(self, command: str, *, timeout: float | None = None, check: bool = True) -> str:
        """Run ``bgapi <command>`` with our own Job-UUID and wait for its BACKGROUND_JOB result.

        If the reply is lost after the bytes left, the command is not re-sent (unless repeatable): the
        client keeps waiting for its BACKGROUND_JOB on the next connection, which proves it ran."""
        job_uuid = str(uuidlib.uuid4())
        fut: asyncio.Future[esl.Event] = asyncio.get_running_loop().create_future()
        self._jobs[job_uuid] = fut
        deadline = self._settings.bgapi_timeout_s if timeout is None else timeout
        try:
            try:
                sent = await self.send(esl.bgapi_command(command, job_uuid), timeout=deadline)
            except EslOutcomeUnknown as exc:
                exc.job_uuid = job_uuid
                try:
                    async with asyncio.timeout(deadline):
                        event = await fut
                except TimeoutError:
                    raise exc from None
                log.info("bgapi %r: reply lost with the connection, but its BACKGROUND_JOB came", command[:60])
            else:
                reply = sent.reply
                if not isinstance(reply, esl.CommandReply) or not reply.ok:
                    raise EslCommandError(command, getattr(reply, "reply_text", repr(reply)))
                try:
                    async with asyncio.timeout(deadline):
                        event = await fut
                except TimeoutError:
                    raise EslTimeout(f"no BACKGROUND_JOB for {command!r} within {deadline} s",
                                     retryable=command_is_repeatable(b"bgapi " + command.encode())) from None
        finally:
            self._jobs.pop(job_uuid, None)
        body = event.body or ""
        if check and body.startswith("-ERR"):
            raise EslCommandError(command, body.strip())
        return body

    async def sendmsg(self, data: bytes, *, timeout: float | None = None) -> Sent:
        """Send a serialized ``sendmsg`` (see esl_protocol); ``-ERR`` raises EslCommandError."""
        sent = await self.send(data, timeout=timeout)
        if not isinstance(sent.reply, esl.CommandReply):
            raise EslProtocolError(f"expected command/reply to sendmsg, got {type(sent.reply).__name__}")
        if not sent.reply.ok:
            raise EslCommandError(data.split(b"\n", 1)[0].decode(errors="replace"), sent.reply.reply_text)
        return sent

    async def send(self, data: bytes, *, timeout: float | None = None, repeatable: bool | None = None) -> Sent:
        """Write one serialized command and wait for its reply, waiting for the connection if it is down.

        ``repeatable`` overrides :func:`command_is_repeatable`. See the module docstring for the rules."""
        again = command_is_repeatable(data) if repeatable is None else repeatable
        deadline = self._settings.api_timeout_s if timeout is None else timeout
        written = False
        try:
            async with asyncio.timeout(deadline):
                while True:
                    await self.wait_connected()
                    conn = self._conn
                    if conn is None:
                        continue
                    try:
                        fut, written_at = await self._write(conn, data, deadline)
                    except _NotWritten:
                        await asyncio.sleep(0.005)
                        continue
                    written = True
                    try:
                        return Sent(await fut, written_at)
                    except EslConnectionLost as exc:
                        if self._closing:
                            raise
                        if not again:
                            return self._lost_once(data, written_at, exc)
                        self.stats.resent += 1
                        log.info("ESL reply to %r lost with the connection; sending it again", _verb(data))
        except TimeoutError:
            maybe = written and not again
            hint = " (it was sent and may still run: not retried)" if maybe else ""
            raise EslTimeout(f"no reply to {_verb(data)!r} from {self._where} within {deadline} s{hint}",
                             retryable=not maybe) from None

    def _lost_once(self, data: bytes, written_at: float, exc: EslConnectionLost) -> Sent:
        event_uuid = _event_uuid(data)
        if event_uuid is not None and self.executed(event_uuid):  # it ran: FreeSWITCH said CHANNEL_EXECUTE
            return Sent(esl.CommandReply("+OK (inferred from CHANNEL_EXECUTE)", {}), written_at)
        self.stats.outcome_unknown += 1
        raise EslOutcomeUnknown(
            f"ESL connection lost after {_verb(data)!r} was sent, before its reply: it may have run, so it "
            f"is not sent again ({exc})",
            command=_verb(data), event_uuid=event_uuid,
        ) from exc

    async def _write(
        self, conn: _Connection, data: bytes, timeout: float
    ) -> tuple[asyncio.Future[esl.CommandReply | esl.ApiResponse], float]:
        """Queue the reply future and write; raise _NotWritten if the bytes cannot have left."""
        fut: asyncio.Future[esl.CommandReply | esl.ApiResponse] = asyncio.get_running_loop().create_future()
        async with conn.lock:
            if conn is not self._conn or conn.dropped:
                raise _NotWritten
            if conn.writer.transport.is_closing():
                self._drop(EslConnectionLost(f"ESL connection to {self._where} is closing"), conn)
                raise _NotWritten
            written_at = self._clock()
            conn.pending.append(_Pending(fut, written_at, timeout))
            try:
                conn.writer.write(data)
            except (ConnectionError, OSError, RuntimeError) as exc:
                conn.pending.pop()
                self._drop(EslConnectionLost(f"ESL write to {self._where} failed: {exc}"), conn)
                raise _NotWritten from exc
            self.stats.commands += 1
            try:
                await conn.writer.drain()
            except (ConnectionError, OSError) as exc:  # the bytes may be out: the future fails with the link
                self._drop(EslConnectionLost(f"ESL connection to {self._where} lost: {exc}"), conn)
        return fut, written_at

    # ---- connection management -----------------------------------------------------------------------

    @property
    def _where(self) -> str:
        return f"{self._settings.host}:{self._settings.port}"

    async def _connect_once(self) -> None:
        """One connect + auth + subscribe. Any failure but a refused password/ACL is an EslConnectError."""
        s = self._settings
        try:
            async with asyncio.timeout(s.connect_timeout_s):
                reader, writer = await asyncio.open_connection(s.host, s.port, limit=1 << 20)
        except TimeoutError:
            raise self._failed(EslConnectError(
                f"ESL connect to {self._where} timed out after {s.connect_timeout_s} s")) from None
        except OSError as exc:
            why = os.strerror(exc.errno) if exc.errno else str(exc)
            raise self._failed(EslConnectError(
                f"ESL connect to {self._where} failed: {why} "
                "(is FreeSWITCH running with mod_event_socket listening there?)"
            )) from exc
        conn = _Connection(reader, writer, self._clock())
        try:
            async with asyncio.timeout(s.connect_timeout_s):
                backlog = await self._handshake(conn)
        except (EslAuthError, EslAccessDenied) as exc:
            writer.close()
            raise self._failed(exc) from None
        except TimeoutError:
            writer.close()
            raise self._failed(EslConnectError(
                f"ESL handshake with {self._where} timed out after {s.connect_timeout_s} s "
                "(no auth/request or no reply)")) from None
        except (EslProtocolError, EslConnectError, EslCommandError) as exc:
            writer.close()
            raise self._failed(EslConnectError(f"ESL handshake with {self._where} failed: {exc}")) from exc
        except (ConnectionError, OSError) as exc:
            writer.close()
            raise self._failed(EslConnectError(
                f"ESL handshake with {self._where} failed: {exc.strerror or exc!r}")) from exc
        except BaseException:
            writer.close()
            raise
        self._conn = conn
        self._down.clear()
        self._reader_task = asyncio.create_task(self._read_loop(conn), name="esl-reader")
        was_down = self.stats.connects > 0
        self.stats.connects += 1
        self.stats.attempts = 0
        self._fatal = None
        self._fatal_event.clear()
        self._set_state("connected")
        self._connected.set()
        log.info("ESL %sconnected to %s, subscribed to %d events (%s)", "re" if was_down else "", self._where,
                 len(self._events), s.event_format)
        for msg in backlog:  # events that came in the same read as the subscription's reply
            self._dispatch(conn, msg)

    def _failed(self, exc: BaseException) -> BaseException:
        self.stats.connect_failures += 1
        self.stats.attempts += 1
        self._note_error(exc)
        return exc

    async def _handshake(self, conn: _Connection) -> list[esl.Message]:
        """auth/request -> auth -> +OK accepted -> event ... -> +OK; returns what came after that reply."""
        backlog: list[esl.Message] = []

        async def next_message() -> esl.Message:
            while not backlog:
                data = await conn.reader.read(65536)
                if not data:
                    conn.parser.feed_eof()
                    raise EslConnectError(f"ESL server {self._where} closed the connection during the handshake")
                backlog.extend(conn.parser.feed(data))
            return backlog.pop(0)

        async def write(data: bytes) -> None:
            conn.writer.write(data)
            await conn.writer.drain()

        first = await next_message()
        if isinstance(first, esl.RudeRejection):
            raise EslAccessDenied(
                f"FreeSWITCH at {self._where} refused this client by ACL ({first.body.strip()!r}); add this "
                "host to the apply-inbound-acl list of event_socket.conf.xml"
            )
        if isinstance(first, esl.DisconnectNotice):
            raise EslConnectError(f"FreeSWITCH at {self._where} is closing: {first.body.strip()[:80]!r}")
        if not isinstance(first, esl.AuthRequest):
            raise EslProtocolError(f"expected auth/request from {self._where}, got {type(first).__name__}")
        await write(esl.auth_command(self._password))
        reply = await next_message()
        if not isinstance(reply, esl.CommandReply):
            raise EslProtocolError(f"expected a reply to auth from {self._where}, got {type(reply).__name__}")
        if not reply.ok:
            raise EslAuthError(
                f"FreeSWITCH at {self._where} rejected the ESL password ({reply.reply_text}); check "
                "PARLEY_ESL_PASSWORD against event_socket.conf.xml"
            )
        if backlog:  # nothing may arrive before we subscribe
            raise EslProtocolError(f"unexpected {type(backlog[0]).__name__} right after auth")
        if self.filter_calls:  # filters before the subscription: nothing but our own calls from the first event on
            filters = [("Unique-ID", NO_CALL), ("Event-Name", "BACKGROUND_JOB")]
            filters += [("Unique-ID", uuid) for uuid in list(self._owned)]
            await write(b"".join(esl.filter_command(h, v) for h, v in filters))
            self.stats.commands += len(filters)
            for header, value in filters:
                reply = await next_message()
                if not isinstance(reply, esl.CommandReply) or not reply.ok:
                    why = getattr(reply, "reply_text", type(reply).__name__)
                    raise EslCommandError(f"filter {header} {value}", why)
        await write(esl.event_command(self._events, self._custom, fmt=self._settings.event_format))
        self.stats.commands += 1
        reply = await next_message()
        if not isinstance(reply, esl.CommandReply) or not reply.ok:
            raise EslCommandError("event subscription", getattr(reply, "reply_text", type(reply).__name__))
        return backlog

    async def _read_loop(self, conn: _Connection) -> None:
        reason: EslConnectionLost = EslConnectionLost(f"ESL connection to {self._where} closed by FreeSWITCH")
        poll = max(0.01, min(0.5, self._settings.api_timeout_s / 4))
        try:
            while not conn.dropped:
                try:
                    async with asyncio.timeout(poll):
                        data = await conn.reader.read(1 << 16)
                except TimeoutError:
                    if (stalled := self._stalled(conn)) is not None:
                        self.stats.stalls += 1
                        reason = stalled
                        break
                    continue
                if not data:
                    conn.parser.feed_eof()
                    break
                conn.last_rx = self._clock()
                for msg in conn.parser.feed(data):
                    self._dispatch(conn, msg)
                    if conn.dropped:
                        return
        except asyncio.CancelledError:
            raise
        except EslProtocolError as exc:
            log.error("ESL protocol error from %s: %s; reconnecting", self._where, exc)
            reason = EslConnectionLost(f"ESL protocol error from {self._where}: {exc}")
        except (ConnectionError, OSError) as exc:
            reason = EslConnectionLost(f"ESL connection to {self._where} lost: {exc.strerror or exc!r}")
        except Exception as exc:  # a bug in a handler path must not leave a dead link looking alive
            log.exception("ESL reader failed")
            reason = EslConnectionLost(f"ESL reader failed: {exc!r}")
        finally:
            self._drop(reason, conn)

    def _stalled(self, conn: _Connection) -> EslConnectionLost | None:
        if not conn.pending:
            return None
        oldest = conn.pending[0]
        now = self._clock()
        if now - oldest.written_at < oldest.timeout or conn.last_rx > oldest.written_at:
            return None
        return EslConnectionLost(
            f"ESL connection to {self._where} stalled: no reply and no byte for {now - oldest.written_at:.1f} s"
        )

    def _dispatch(self, conn: _Connection, msg: esl.Message) -> None:
        match msg:
            case esl.CommandReply() | esl.ApiResponse():
                if conn.pending:
                    fut = conn.pending.popleft().fut
                    if not fut.done():
                        fut.set_result(msg)
                else:
                    log.warning("ESL reply with no command waiting: %r", msg)
            case esl.Event():
                self.stats.events += 1
                self._route(msg)
            case esl.DisconnectNotice(body=body):
                text = body.strip().splitlines()[0] if body.strip() else "disconnect notice"
                log.info("ESL disconnect notice from %s: %s", self._where, text)
                if not self._closing:
                    self._drop(EslConnectionLost(f"FreeSWITCH closed the ESL connection: {text}"), conn)
            case esl.RudeRejection():
                self._drop(EslAccessDenied(f"FreeSWITCH at {self._where} refused this client by ACL"), conn)
            case _:
                log.debug("ignoring ESL %s", type(msg).__name__)

    def _route(self, event: esl.Event) -> None:
        if event.name == "BACKGROUND_JOB":
            job = event.job_uuid
            fut = self._jobs.get(job) if job else None
            if fut is not None and not fut.done():
                fut.set_result(event)
                return
        elif event.name == "CHANNEL_EXECUTE" and (app_uuid := event.get("Application-UUID")):
            self._executed[app_uuid] = None
            if len(self._executed) > _EXECUTED_MAX:
                self._executed.popitem(last=False)
        handler = self._call_handlers.get(event.unique_id or "")
        targets = [handler] if handler is not None else self._default_handlers
        for target in targets:
            try:
                target(event)
            except Exception:
                log.exception("event handler failed on %s for %s", event.name, event.unique_id)

    def _drop(self, reason: BaseException, conn: _Connection | None = None) -> None:
        """Take ``conn`` (default: the current one) out of service and fail its pending replies."""
        conn = conn or self._conn
        if conn is None or conn.dropped:
            return
        conn.dropped = True
        if self._conn is conn:
            self._conn = None
            self._connected.clear()
            self._down.set()
            if not self._closing:
                self._set_state("down")
                self._note_error(reason)
                log.warning("%s", reason)
        conn.fail_pending(reason)
        conn.writer.close()

    def _set_state(self, state: LinkState) -> None:
        if self.stats.state != state:
            self.stats.state = state
            self.stats.state_since = self._clock()

    def _note_error(self, exc: BaseException) -> None:
        self.stats.last_error = str(exc) or type(exc).__name__
        self.stats.last_error_at = self._clock()

    async def _supervise(self) -> None:
        """Keep the link up until close(): reconnect with exponential backoff and jitter, forever.

        Nothing but cancellation ends this loop: every failure is logged and waited out."""
        s = self._settings
        delay = s.reconnect_initial_s
        while not self._closing:
            try:
                if self.connected:
                    delay = s.reconnect_initial_s
                    await self._down.wait()
                    continue
                was_up = self.stats.connects > 0
                await self._connect_once()
            except asyncio.CancelledError:
                raise
            except (EslAuthError, EslAccessDenied) as exc:
                self._fatal = exc
                self._fatal_event.set()
                self._set_state("refused")
                log.error("%s; retrying every %.0f s", exc, s.reconnect_max_s)
                await asyncio.sleep(s.reconnect_max_s)
                continue
            except Exception as exc:  # parley's own errors, and anything unforeseen: never fatal
                if not isinstance(exc, EslConnectError):
                    log.exception("ESL reconnect attempt failed unexpectedly")
                    self._failed(exc)
                n = self.stats.attempts
                if self.stats.state == "connected":
                    self._set_state("down")
                level = logging.WARNING if n <= 1 or n & (n - 1) == 0 else logging.DEBUG  # 1, 2, 4, 8...
                log.log(level, "%s; attempt %d failed, retrying in about %.2f s", exc, n, delay)
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, s.reconnect_max_s)
                continue
            if was_up:
                self.stats.reconnects += 1
                for handler in self._reconnect_handlers:
                    try:
                        handler()
                    except Exception:
                        log.exception("reconnect handler failed")


def event_headers(event: esl.Event, names: Sequence[str]) -> Mapping[str, str | None]:
    """A small view of selected headers, for logs."""
    return {n: event.get(n) for n in names}
