"""Sans-I/O wire format of the fake FreeSWITCH's Event Socket *server* side.

Owns: parsing the command blocks an ESL client sends (:class:`ClientCommandParser`), serializing events the
way FreeSWITCH 1.10 does (``text/event-plain`` with ``switch_url_encode``-d values, ``text/event-json`` as
compact cJSON), the fixed replies (``auth/request``, ``command/reply``, ``api/response``, the disconnect
notice, the ACL rejection), and an ESL listener's subscription + filter logic (:class:`Subscription`,
after ``mod_event_socket.c`` ``event_handler``). Knows nothing of sockets, clocks or calls.

The byte shapes were checked against the recordings in ``shared/fixtures/freeswitch``: re-serializing every
recorded event from its decoded headers reproduces the recorded bytes exactly (see
``tests/sim/test_fake_fidelity.py``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

EventFormat = Literal["plain", "json"]

# switch_utils.h SWITCH_URL_UNSAFE; bytes < 0x20 and > 0x7e are always encoded.
_URL_UNSAFE = frozenset(b'\r\n #%&+:;<=>?@[\\]^`{|}"')
_HEX_UPPER = frozenset(b"0123456789ABCDEF")

AUTH_REQUEST = b"Content-Type: auth/request\n\n"
_GOODBYE = b"Disconnected, goodbye.\nSee you at ClueCon! http://www.cluecon.com/\n"
DISCONNECT_NOTICE = b"Content-Type: text/disconnect-notice\nContent-Length: %d\n\n" % len(_GOODBYE) + _GOODBYE
_SHUTTING_DOWN = b"The system is being shut down.\n"
# a restart (`freeswitch -stop`) and `reload mod_event_socket` both send exactly this, then EOF (recorded)
SHUTDOWN_NOTICE = (
    b"Content-Type: text/disconnect-notice\nContent-Length: %d\n\n" % len(_SHUTTING_DOWN) + _SHUTTING_DOWN
)
_DENIED = b"Access Denied, go away.\n"
RUDE_REJECTION = b"Content-Type: text/rude-rejection\nContent-Length: %d\n\n" % len(_DENIED) + _DENIED

MAX_COMMAND_HEADER_BYTES = 64 * 1024
MAX_COMMAND_BODY_BYTES = 16 * 1024 * 1024  # mod_event_socket MAX_CONTENT_LENGTH


def url_encode(value: str) -> str:
    """FreeSWITCH ``switch_url_encode`` (no double encoding): existing ``%XX`` (upper-case hex) is kept."""
    raw = value.encode("utf-8")
    out = bytearray()
    n = len(raw)
    for i, b in enumerate(raw):
        if b == 0x25 and n - 1 - i > 1 and raw[i + 1] in _HEX_UPPER and raw[i + 2] in _HEX_UPPER:
            out.append(b)
        elif b < 0x20 or b > 0x7E or b in _URL_UNSAFE:
            out += b"%%%02X" % b
        else:
            out.append(b)
    return out.decode("ascii")


def command_reply(text: str, headers: Sequence[tuple[str, str]] = ()) -> bytes:
    extra = "".join(f"{k}: {v}\n" for k, v in headers)
    return f"Content-Type: command/reply\nReply-Text: {text}\n{extra}\n".encode()


def api_response(body: str) -> bytes:
    data = body.encode("utf-8")
    return b"Content-Type: api/response\nContent-Length: %d\n\n" % len(data) + data


class FsEvent:
    """One event as FreeSWITCH builds it: ordered headers (decoded values) and an optional body.

    Serialized lazily, once per format, however many listeners receive it.
    """

    __slots__ = ("_json", "_lower", "_plain", "body", "headers", "name")

    def __init__(self, name: str, headers: Sequence[tuple[str, str]], body: str | None = None) -> None:
        self.name = name
        self.headers = tuple(headers)
        self.body = body
        self._plain: bytes | None = None
        self._json: bytes | None = None
        self._lower: dict[str, str] | None = None

    def get(self, header: str) -> str | None:
        """Case-insensitive header lookup, like ``switch_event_get_header``."""
        if self._lower is None:
            self._lower = {}
            for k, v in self.headers:
                self._lower.setdefault(k.lower(), v)
        return self._lower.get(header.lower())

    @property
    def subclass(self) -> str | None:
        return self.get("Event-Subclass")

    def serialize(self, fmt: EventFormat) -> bytes:
        if fmt == "plain":
            if self._plain is None:
                self._plain = _frame("text/event-plain", self._plain_payload())
            return self._plain
        if self._json is None:
            self._json = _frame("text/event-json", self._json_payload())
        return self._json

    def _plain_payload(self) -> bytes:
        text = "".join(f"{k}: {url_encode(v)}\n" for k, v in self.headers)
        if self.body is None:
            return (text + "\n").encode()
        body = self.body.encode("utf-8")
        return (text + f"Content-Length: {len(body)}\n\n").encode() + body

    def _json_payload(self) -> bytes:
        """``switch_event_serialize_json``: one member per header (duplicates kept, in order),
        ``ARRAY::a|:b`` values as JSON arrays, then ``Content-Length`` and ``_body``."""
        members = list(self.headers)
        if self.body is not None:
            members += [("Content-Length", str(len(self.body.encode("utf-8")))), ("_body", self.body)]
        parts = []
        for k, v in members:
            value: str | list[str] = v.removeprefix("ARRAY::").split("|:") if v.startswith("ARRAY::") else v
            parts.append(_json(k) + ":" + _json(value))
        return ("{" + ",".join(parts) + "}").encode("utf-8")


def _json(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _frame(content_type: str, payload: bytes) -> bytes:
    return b"Content-Length: %d\nContent-Type: %s\n\n" % (len(payload), content_type.encode()) + payload


# --------------------------------------------------------------------------------------------------
# What the client sends
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClientCommand:
    """One command block: the command line, its headers (in order) and the optional body."""

    line: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    raw: bytes

    def header(self, name: str) -> str | None:
        low = name.lower()
        for k, v in self.headers:
            if k.lower() == low:
                return v
        return None

    @property
    def verb(self) -> str:
        return self.line.split(" ", 1)[0].lower()

    @property
    def arg(self) -> str:
        return self.line.partition(" ")[2]


class CommandError(Exception):
    """The client sent something no FreeSWITCH would accept; the connection is closed."""


_BLOCK_END = re.compile(rb"\r?\n\r?\n")


class ClientCommandParser:
    """Incremental parser for client command blocks: ``line\\n[Header: v\\n...]\\n[body]``."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pending: tuple[str, tuple[tuple[str, str], ...], bytes, int] | None = None

    def feed(self, data: bytes) -> list[ClientCommand]:
        self._buf += data
        out: list[ClientCommand] = []
        while True:
            cmd = self._next()
            if cmd is None:
                return out
            out.append(cmd)

    def _next(self) -> ClientCommand | None:
        if self._pending is None:
            while self._buf and self._buf[0] in (0x0A, 0x0D):
                del self._buf[:1]
            m = _BLOCK_END.search(self._buf)
            if m is None:
                if len(self._buf) > MAX_COMMAND_HEADER_BYTES:
                    raise CommandError("command block too long")
                return None
            head = bytes(self._buf[: m.start()])
            del self._buf[: m.end()]
            lines = head.decode("utf-8", errors="replace").replace("\r\n", "\n").split("\n")
            headers: list[tuple[str, str]] = []
            for line in lines[1:]:
                name, sep, value = line.partition(":")
                if sep:
                    headers.append((name.strip(), value.strip()))
            length = 0
            for name, value in headers:
                if name.lower() == "content-length":
                    if not value.isdigit() or int(value) > MAX_COMMAND_BODY_BYTES:
                        raise CommandError(f"bad content-length {value!r}")
                    length = int(value)
            self._pending = (lines[0].strip(), tuple(headers), head + b"\n\n", length)
        line, hdrs, raw_head, length = self._pending
        if len(self._buf) < length:
            return None
        body = bytes(self._buf[:length])
        del self._buf[:length]
        self._pending = None
        return ClientCommand(line, hdrs, body, raw_head + body)


# --------------------------------------------------------------------------------------------------
# A listener's subscription (mod_event_socket.c: parse_command "event"/"nixevent"/"filter", event_handler)
# --------------------------------------------------------------------------------------------------

MYEVENTS = frozenset(
    {
        *(
            f"CHANNEL_{x}"
            for x in (
                "CREATE ANSWER APPLICATION BRIDGE DATA DESTROY EXECUTE EXECUTE_COMPLETE HANGUP HANGUP_COMPLETE "
                "ORIGINATE UUID OUTGOING PARK PROGRESS PROGRESS_MEDIA STATE UNBRIDGE UNPARK"
            ).split()
        ),
        "DETECTED_SPEECH",
        "DTMF",
        "TALK",
        "NOTALK",
    }
)


@dataclass(slots=True)
class Subscription:
    fmt: EventFormat = "plain"
    active: bool = False
    all: bool = False
    names: set[str] = field(default_factory=set)
    custom: set[str] = field(default_factory=set)
    filters: list[tuple[str, str]] = field(default_factory=list)
    myevents_uuid: str | None = None

    def subscribe(self, words: Iterable[str]) -> int:
        """``event`` keywords after the format; returns how many were recognised."""
        count, custom = 0, False
        for word in words:
            if custom:
                self.custom.add(word)
            elif word.upper() == "ALL":
                self.all, count = True, count + 1
            elif word.upper() == "CUSTOM":
                self.names.add("CUSTOM")
                custom, count = True, count + 1
            elif word:
                self.names.add(word.upper())
                count += 1
        if count:
            self.active = True
        return count

    def unsubscribe(self, words: Iterable[str]) -> None:
        custom = False
        for word in words:
            if custom:
                self.custom.discard(word)
            elif word.upper() == "ALL":
                self.all = False
                self.names.clear()
                self.custom.clear()
            elif word.upper() == "CUSTOM":
                custom = True
            else:
                self.names.discard(word.upper())

    def clear(self) -> None:
        self.active = self.all = False
        self.names.clear()
        self.custom.clear()

    def add_filter(self, header: str, value: str) -> None:
        self.filters.append((header, value))

    def delete_filter(self, header: str, value: str | None) -> None:
        if header.lower() == "all":
            self.filters.clear()
            return
        self.filters = [
            (h, v) for h, v in self.filters if not (h.lower() == header.lower() and (value is None or v == value))
        ]

    def wants(self, event: FsEvent) -> bool:
        if not self.active:
            return False
        if self.all:
            send = True
        elif event.name in self.names:
            sub = event.subclass
            send = event.name != "CUSTOM" or sub is None or sub in self.custom
        else:
            send = False
        if send and self.myevents_uuid is not None:
            send = event.get("Unique-ID") == self.myevents_uuid
        if send and self.filters:
            send = _filters_pass(self.filters, event)
        return send


def _filters_pass(filters: Sequence[tuple[str, str]], event: FsEvent) -> bool:
    """mod_event_socket ``event_handler``: positive filters let events in, negative ones take them out."""
    send = False
    for name, raw in filters:
        hval = event.get(name)
        if hval is None:
            continue
        pos, comp = True, raw
        while comp and comp[0] in "+- ":
            if comp[0] == "+":
                pos = True
            elif comp[0] == "-":
                pos = False
            comp = comp[1:]
        if send and pos:
            continue
        if raw.startswith("/"):
            hit = _regex_match(comp, hval)
        else:
            hit = hval.lower() == comp.lower()
        if hit:
            if not pos:
                return False
            send = True
    return send


def _regex_match(pattern: str, value: str) -> bool:
    """``switch_regex_perform`` with FreeSWITCH's ``/pattern/flags`` form."""
    pat = pattern[1:] if pattern.startswith("/") else pattern
    flags = 0
    if "/" in pat:
        pat, _, opts = pat.rpartition("/")
        if "i" in opts:
            flags |= re.IGNORECASE
    try:
        return re.search(pat, value, flags) is not None
    except re.error:
        return False
