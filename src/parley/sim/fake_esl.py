"""One inbound Event Socket connection to the fake FreeSWITCH (mod_event_socket's listener).

Owns: the per-connection command loop (``auth``, ``event``/``nixevent``/``noevents``/``myevents``,
``filter``, ``api``, ``bgapi``, ``sendmsg``, ``exit``), the replies in the recorded byte shapes, and
delivering events that pass the connection's subscription and filters. Commands are handled one at a
time in arrival order and ``api`` runs synchronously, so nothing else is written on the socket until its
reply is out (as in FreeSWITCH, where ``api`` runs in the listener thread).

Before ``auth`` every other command gets ``-ERR command not found`` and the connection stays open
(mod_event_socket ``parse_command``: the unauthenticated branch falls through to that reply); only
``exit`` works. A wrong password gets ``-ERR invalid``, the disconnect notice, and the socket closes.
"""

from __future__ import annotations

import asyncio
import uuid as uuidlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from parley.sim.esl_wire import (
    AUTH_REQUEST,
    DISCONNECT_NOTICE,
    MYEVENTS,
    RUDE_REJECTION,
    ClientCommand,
    ClientCommandParser,
    CommandError,
    FsEvent,
    Subscription,
    api_response,
    command_reply,
)

if TYPE_CHECKING:
    from parley.sim.fake_freeswitch import FakeFreeSwitch

MAX_PENDING_WRITE_BYTES = 64 * 1024 * 1024  # a listener that stops reading is dropped (FreeSWITCH kills it)
_READ_CHUNK = 64 * 1024


class EslConnection:
    def __init__(self, fs: FakeFreeSwitch, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._fs = fs
        self._reader = reader
        self._writer = writer
        self.sub = Subscription()
        self.delivered: set[str] = set()  # Unique-IDs of the events this connection was sent (tests: filters)
        self.authed = False
        self.closed = False

    async def run(self, *, acl_reject: bool, password: str, on_command: Callable[[bytes], None]) -> None:
        try:
            if acl_reject:
                self._send(RUDE_REJECTION)
                return
            self._send(AUTH_REQUEST)
            parser = ClientCommandParser()
            while not self.closed:
                data = await self._reader.read(_READ_CHUNK)
                if not data:
                    return
                for cmd in parser.feed(data):
                    on_command(cmd.raw)
                    if not self._handle(cmd, password):
                        return
        except (CommandError, ConnectionError):
            return
        finally:
            self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._writer.close()

    def abort(self) -> None:
        """Drop the TCP connection at once (an outage as the client sees it)."""
        self.closed = True
        self._writer.transport.abort()

    def say_goodbye(self, notice: bytes) -> None:
        """Send a disconnect notice, then close (FIN): what a shutting-down FreeSWITCH does to a listener."""
        self._send(notice)
        self.close()

    def deliver(self, event: FsEvent) -> None:
        if self.authed and not self.closed and self.sub.wants(event):
            if (uuid := event.get("Unique-ID")) is not None:
                self.delivered.add(uuid)
            self._send(event.serialize(self.sub.fmt))

    def _send(self, data: bytes) -> None:
        if self.closed:
            return
        self._writer.write(data)
        if self._writer.transport.get_write_buffer_size() > MAX_PENDING_WRITE_BYTES:
            self.abort()

    def _reply(self, text: str, headers: tuple[tuple[str, str], ...] = ()) -> None:
        self._send(command_reply(text, headers))

    # ---- commands ---------------------------------------------------------------------------------

    def _handle(self, cmd: ClientCommand, password: str) -> bool:
        """Answer one command; False closes the connection."""
        verb = cmd.verb
        if verb == "exit":
            self._reply("+OK bye")
            self._send(DISCONNECT_NOTICE)
            return False
        if verb == "auth":
            if cmd.arg == password:
                self.authed = True
                self._reply("+OK accepted")
                return True
            if self.authed:
                self._reply("-ERR command not found")
                return True
            self._reply("-ERR invalid")
            self._send(DISCONNECT_NOTICE)
            return False
        if not self.authed:
            self._reply("-ERR command not found")
            return True
        handler = {
            "event": self._event,
            "nixevent": self._nixevent,
            "noevents": self._noevents,
            "myevents": self._myevents,
            "filter": self._filter,
            "api": self._api,
            "bgapi": self._bgapi,
            "sendmsg": self._sendmsg,
        }.get(verb)
        if handler is not None:
            handler(cmd)
        elif verb in ("linger", "nolinger", "getvar", "resume"):
            self._reply("-ERR not controlling a session")
        else:
            self._reply("-ERR command not found")
        return True

    def _event(self, cmd: ClientCommand) -> None:
        words = cmd.arg.split()
        fmt = "plain"
        if words and words[0].lower() in ("plain", "json", "xml"):
            fmt = words.pop(0).lower()
        if fmt == "xml":
            self._reply("-ERR the fake FreeSWITCH does not serialize XML events")
            return
        if not self.sub.subscribe(words):
            self._reply("-ERR no keywords supplied")
            return
        self.sub.fmt = "json" if fmt == "json" else "plain"
        self._reply(f"+OK event listener enabled {fmt}")

    def _nixevent(self, cmd: ClientCommand) -> None:
        if not self.sub.active:
            self._reply("-ERR not listening for events")
            return
        self.sub.unsubscribe(cmd.arg.split())
        self._reply("+OK events nixed")

    def _noevents(self, cmd: ClientCommand) -> None:
        if not self.sub.active:
            self._reply("-ERR not listening for events")
            return
        self.sub.clear()
        self._reply("+OK no longer listening for events")

    def _myevents(self, cmd: ClientCommand) -> None:
        words = cmd.arg.split()
        if not words or self._fs.api.live(words[0]) is None:
            self._reply("-ERR invalid uuid")
            return
        self.sub.myevents_uuid = words[0]
        self.sub.names |= MYEVENTS
        self.sub.active = True
        if len(words) > 1 and words[1].lower() == "json":
            self.sub.fmt = "json"
        self._reply("+OK Events Enabled")

    def _filter(self, cmd: ClientCommand) -> None:
        header, _, value = cmd.arg.partition(" ")
        if header.lower() == "delete":
            name, _, val = value.partition(" ")
            if not name:
                self._reply("-ERR invalid syntax")
                return
            self.sub.delete_filter(name, val or None)
            self._reply(f"+OK filter deleted. [{name}][{val}]")  # no '=' here (mod_event_socket.c)
        elif header and value:
            self.sub.add_filter(header, value)
            self._reply(f"+OK filter added. [{header}]=[{value}]")
        else:
            self._reply("-ERR invalid syntax")

    def _api(self, cmd: ClientCommand) -> None:
        self._send(api_response(self._fs.api.run(cmd.arg)))

    def _bgapi(self, cmd: ClientCommand) -> None:
        job = cmd.header("Job-UUID") or str(uuidlib.uuid4())
        self._reply(f"+OK Job-UUID: {job}", (("Job-UUID", job),))
        line = cmd.arg
        asyncio.get_running_loop().call_soon(self._fs.run_background_job, job, line)

    def _sendmsg(self, cmd: ClientCommand) -> None:
        uuid = cmd.arg.strip() or (cmd.header("session-id") or "")
        call = self._fs.api.live(uuid)
        if call is None:
            self._reply(f"-ERR invalid session id [{uuid}]")
            return
        command = (cmd.header("call-command") or "").lower()
        if command == "execute":
            app = cmd.header("execute-app-name") or ""
            arg = cmd.header("execute-app-arg")
            if arg is None and cmd.body:
                arg = cmd.body.decode("utf-8", errors="replace")
            lead = cmd.header("lead-frames") or "0"
            delay = self._fs.playback_start_delay_s + (int(lead) if lead.isdigit() else 0) * 0.020
            call.queue_execute(app, arg or "", app_uuid=cmd.header("Event-UUID"), delay_s=delay)
        elif command == "hangup":
            call.kill(cmd.header("hangup-cause") or "NORMAL_CLEARING")
        self._reply("+OK")
