"""The asyncio shell around the ESL protocol core: one inbound Event Socket connection to FreeSWITCH.

Owns: the TCP connection, authentication, the event subscription, matching replies to commands, ``bgapi``
results (by a Job-UUID we choose), routing events to calls by ``Unique-ID``, and reconnecting with
backoff (re-authenticating and re-subscribing) when the socket drops. Must not know what a call *does*
with its events: handlers are plain callbacks that must not block.

Replies: FreeSWITCH answers the commands of one connection strictly in order (``api`` even runs in the
listener thread, holding events back until it returns), so a FIFO of futures pairs each reply with its
command. Commands issued while the connection is down wait for it (up to their own timeout) instead of
failing at once, so a call survives a short ESL outage. Events that FreeSWITCH emitted during the outage
are lost (it keeps no backlog for a closed listener); ``on_reconnect`` callbacks let owners resynchronise.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid as uuidlib
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from parley.config import EslSettings, require_esl_password
from parley.errors import (
    EslAccessDenied,
    EslAuthError,
    EslCommandError,
    EslConnectError,
    EslConnectionLost,
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

EventHandler = Callable[[esl.Event], None]


@dataclass(slots=True)
class EslStats:
    connects: int = 0
    reconnects: int = 0
    events: int = 0
    commands: int = 0
    connect_failures: int = 0


@dataclass(frozen=True, slots=True)
class Sent:
    """A command written to the socket: its reply and when the bytes left (clock seconds)."""

    reply: esl.CommandReply | esl.ApiResponse
    written_at: float


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.parser = esl.EslParser()
        self.pending: deque[asyncio.Future[esl.CommandReply | esl.ApiResponse]] = deque()
        self.lock = asyncio.Lock()

    def fail_pending(self, exc: BaseException) -> None:
        while self.pending:
            fut = self.pending.popleft()
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
    ) -> None:
        self._password = require_esl_password(settings)
        self._settings = settings
        self._events = tuple(events)
        self._custom = tuple(custom)
        self._clock = clock
        self._conn: _Connection | None = None
        self._connected = asyncio.Event()
        self._closing = False
        self._fatal: BaseException | None = None
        self._fatal_event = asyncio.Event()
        self._jobs: dict[str, asyncio.Future[esl.Event]] = {}
        self._call_handlers: dict[str, EventHandler] = {}
        self._default_handlers: list[EventHandler] = []
        self._reconnect_handlers: list[Callable[[], None]] = []
        self._supervisor: asyncio.Task[None] | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self.stats = EslStats()

    # ---- lifecycle ----------------------------------------------------------------------------------

    async def __aenter__(self) -> EslClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self, *, wait: bool = True) -> None:
        """Connect (raising at once on a wrong password, ACL rejection or refused connection when
        ``wait``), then keep the connection alive in the background."""
        if wait:
            await self._connect_once()
        self._supervisor = asyncio.create_task(self._supervise(), name="esl-supervisor")

    async def close(self) -> None:
        self._closing = True
        conn = self._conn
        if conn is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    await self._command(conn, esl.exit_command())
        for task in (self._supervisor, self._reader_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._drop(EslConnectionLost("ESL client closed"))

    async def wait_fatal(self) -> BaseException:
        """Return the error that made the client give up (wrong password, ACL rejection)."""
        await self._fatal_event.wait()
        assert self._fatal is not None
        return self._fatal

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def wait_connected(self, timeout: float | None = None) -> None:
        if self._fatal is not None:
            raise self._fatal
        try:
            async with asyncio.timeout(timeout):
                await self._connected.wait()
        except TimeoutError:
            raise EslTimeout(f"ESL not connected to {self._where} within {timeout} s") from None
        if self._fatal is not None:
            raise self._fatal

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

    # ---- commands ------------------------------------------------------------------------------------

    async def api(self, command: str, *, timeout: float | None = None, check: bool = True) -> str:
        """Run ``api <command>``; return its output. ``-ERR``/``-USAGE`` raise EslCommandError if ``check``."""
        sent = await self.send(esl.api_command(command), timeout=timeout)
        assert isinstance(sent.reply, esl.ApiResponse)
        if check and not sent.reply.ok:
            raise EslCommandError(command, sent.reply.body.strip())
        return sent.reply.body

    async def bgapi(self, command: str, *, timeout: float | None = None, check: bool = True) -> str:
        """Run ``bgapi <command>`` with our own Job-UUID and wait for its BACKGROUND_JOB result."""
        job_uuid = str(uuidlib.uuid4())
        fut: asyncio.Future[esl.Event] = asyncio.get_running_loop().create_future()
        self._jobs[job_uuid] = fut
        deadline = self._settings.bgapi_timeout_s if timeout is None else timeout
        try:
            sent = await self.send(esl.bgapi_command(command, job_uuid), timeout=deadline)
            reply = sent.reply
            assert isinstance(reply, esl.CommandReply)
            if not reply.ok:
                raise EslCommandError(command, reply.reply_text)
            try:
                async with asyncio.timeout(deadline):
                    event = await fut
            except TimeoutError:
                raise EslTimeout(f"no BACKGROUND_JOB for {command!r} within {deadline} s") from None
        finally:
            self._jobs.pop(job_uuid, None)
        body = event.body or ""
        if check and body.startswith("-ERR"):
            raise EslCommandError(command, body.strip())
        return body

    async def sendmsg(self, data: bytes, *, timeout: float | None = None) -> Sent:
        """Send a serialized ``sendmsg`` (see esl_protocol); ``-ERR`` raises EslCommandError."""
        sent = await self.send(data, timeout=timeout)
        assert isinstance(sent.reply, esl.CommandReply)
        if not sent.reply.ok:
            raise EslCommandError(data.split(b"\n", 1)[0].decode(errors="replace"), sent.reply.reply_text)
        return sent

    async def send(self, data: bytes, *, timeout: float | None = None) -> Sent:
        """Write one serialized command and wait for its reply, (re)connecting first if needed."""
        deadline = self._settings.api_timeout_s if timeout is None else timeout
        try:
            async with asyncio.timeout(deadline):
                while True:
                    await self.wait_connected()
                    conn = self._conn
                    if conn is None:
                        continue
                    try:
                        return await self._command(conn, data)
                    except EslConnectionLost:
                        if self._closing:
                            raise
                        continue  # the command may not have reached FreeSWITCH: wait and resend
        except TimeoutError:
            verb = data.split(b"\n", 1)[0][:80].decode(errors="replace")
            raise EslTimeout(f"no reply to {verb!r} from {self._where} within {deadline} s") from None

    async def _command(self, conn: _Connection, data: bytes) -> Sent:
        fut: asyncio.Future[esl.CommandReply | esl.ApiResponse] = asyncio.get_running_loop().create_future()
        async with conn.lock:
            if conn is not self._conn:
                raise EslConnectionLost("ESL connection replaced")
            conn.pending.append(fut)
            try:
                conn.writer.write(data)
                written_at = self._clock()
                await conn.writer.drain()
            except (ConnectionError, OSError) as exc:
                raise EslConnectionLost(f"ESL write failed: {exc}") from exc
        self.stats.commands += 1
        return Sent(await fut, written_at)

    # ---- connection management -----------------------------------------------------------------------

    @property
    def _where(self) -> str:
        return f"{self._settings.host}:{self._settings.port}"

    async def _connect_once(self) -> None:
        s = self._settings
        try:
            async with asyncio.timeout(s.connect_timeout_s):
                reader, writer = await asyncio.open_connection(s.host, s.port, limit=1 << 20)
        except TimeoutError:
            self.stats.connect_failures += 1
            raise EslConnectError(f"ESL connect to {self._where} timed out after {s.connect_timeout_s} s") from None
        except OSError as exc:
            self.stats.connect_failures += 1
            raise EslConnectError(
                f"ESL connect to {self._where} failed: {exc.strerror or exc} "
                "(is FreeSWITCH running with mod_event_socket listening there?)"
            ) from exc
        conn = _Connection(reader, writer)
        try:
            async with asyncio.timeout(s.connect_timeout_s):
                await self._handshake(conn)
        except TimeoutError:
            writer.close()
            raise EslConnectError(f"ESL handshake with {self._where} timed out") from None
        except BaseException:
            writer.close()
            raise
        self._conn = conn
        self._reader_task = asyncio.create_task(self._read_loop(conn), name="esl-reader")
        # subscribe through the normal command path now that the reader runs
        reply = (await self._command(conn, esl.event_command(self._events, self._custom, fmt=s.event_format))).reply
        if not isinstance(reply, esl.CommandReply) or not reply.ok:
            raise EslCommandError("event subscription", getattr(reply, "reply_text", repr(reply)))
        self.stats.connects += 1
        self._connected.set()
        log.info("ESL connected to %s, subscribed to %d events (%s)", self._where, len(self._events), s.event_format)

    async def _handshake(self, conn: _Connection) -> None:
        backlog: list[esl.Message] = []

        async def next_message() -> esl.Message:
            while not backlog:
                data = await conn.reader.read(65536)
                if not data:
                    conn.parser.feed_eof()
                    raise EslConnectError(f"ESL server {self._where} closed the connection during the handshake")
                backlog.extend(conn.parser.feed(data))
            return backlog.pop(0)

        first = await next_message()
        if isinstance(first, esl.RudeRejection):
            raise EslAccessDenied(
                f"FreeSWITCH at {self._where} refused this client by ACL ({first.body.strip()!r}); add this "
                "host to the apply-inbound-acl list of event_socket.conf.xml"
            )
        if not isinstance(first, esl.AuthRequest):
            raise EslProtocolError(f"expected auth/request from {self._where}, got {type(first).__name__}")
        conn.writer.write(esl.auth_command(self._password))
        await conn.writer.drain()
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

    async def _read_loop(self, conn: _Connection) -> None:
        reason: BaseException = EslConnectionLost(f"ESL connection to {self._where} closed by FreeSWITCH")
        try:
            while True:
                data = await conn.reader.read(1 << 16)
                if not data:
                    conn.parser.feed_eof()
                    break
                for msg in conn.parser.feed(data):
                    self._dispatch(conn, msg)
        except asyncio.CancelledError:
            raise
        except EslProtocolError as exc:
            log.error("ESL protocol error from %s: %s; reconnecting", self._where, exc)
            reason = EslConnectionLost(f"ESL protocol error: {exc}")
        except (ConnectionError, OSError) as exc:
            reason = EslConnectionLost(f"ESL connection to {self._where} lost: {exc}")
        finally:
            if self._conn is conn:
                self._drop(reason)

    def _dispatch(self, conn: _Connection, msg: esl.Message) -> None:
        match msg:
            case esl.CommandReply() | esl.ApiResponse():
                if conn.pending:
                    fut = conn.pending.popleft()
                    if not fut.done():
                        fut.set_result(msg)
                else:
                    log.warning("ESL reply with no command waiting: %r", msg)
            case esl.Event():
                self.stats.events += 1
                self._route(msg)
            case esl.DisconnectNotice(body=body):
                log.info("ESL disconnect notice from %s: %s", self._where, body.strip().splitlines()[:1])
            case esl.RudeRejection():
                self._fatal = EslAccessDenied(f"FreeSWITCH at {self._where} refused this client by ACL")
            case _:
                log.debug("ignoring ESL %s", type(msg).__name__)

    def _route(self, event: esl.Event) -> None:
        if event.name == "BACKGROUND_JOB":
            job = event.job_uuid
            fut = self._jobs.get(job) if job else None
            if fut is not None and not fut.done():
                fut.set_result(event)
                return
        handler = self._call_handlers.get(event.unique_id or "")
        targets = [handler] if handler is not None else self._default_handlers
        for target in targets:
            try:
                target(event)
            except Exception:
                log.exception("event handler failed on %s for %s", event.name, event.unique_id)

    def _drop(self, reason: BaseException) -> None:
        conn, self._conn = self._conn, None
        self._connected.clear()
        if conn is not None:
            conn.fail_pending(reason)
            conn.writer.close()
            if not self._closing:
                log.warning("%s", reason)

    async def _supervise(self) -> None:
        """Reconnect with exponential backoff and jitter whenever the connection is down."""
        delay = self._settings.reconnect_initial_s
        was_connected = self.connected
        while not self._closing:
            if self.connected:
                was_connected = True
                delay = self._settings.reconnect_initial_s
                await self._wait_disconnected()
                continue
            try:
                await self._connect_once()
            except (EslAuthError, EslAccessDenied) as exc:
                self._fatal = exc
                self._fatal_event.set()
                self._connected.set()  # wake waiters so they see the fatal error
                log.error("%s", exc)
                return
            except (EslConnectError, EslConnectionLost, EslProtocolError, EslCommandError) as exc:
                log.warning("%s; retrying in %.2f s", exc, delay)
                await asyncio.sleep(delay * (0.8 + 0.4 * random.random()))
                delay = min(delay * 2, self._settings.reconnect_max_s)
                continue
            if was_connected:
                self.stats.reconnects += 1
                for handler in self._reconnect_handlers:
                    try:
                        handler()
                    except Exception:
                        log.exception("reconnect handler failed")

    async def _wait_disconnected(self) -> None:
        task = self._reader_task
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.shield(task)
        else:
            await asyncio.sleep(0.05)


def event_headers(event: esl.Event, names: Sequence[str]) -> Mapping[str, str | None]:
    """A small view of selected headers, for logs."""
    return {n: event.get(n) for n in names}
