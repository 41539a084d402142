"""Sans-I/O core of the FreeSWITCH Event Socket (ESL) protocol, inbound mode.

Owns: turning the bytes FreeSWITCH sends into typed messages (:class:`EslParser`), and turning the
commands parley sends into bytes (the ``*_command`` functions). Knows nothing of sockets, asyncio,
clocks or calls; the asyncio shell is :mod:`parley.freeswitch.esl_client`.

Framing (mod_event_socket.c ``read_packet``/``switch_event_serialize``, checked against the recordings in
``shared/fixtures/freeswitch``): a message is a block of ``Name: value`` lines ended by a blank line; if
the block has ``Content-Length: N``, exactly N body bytes follow. Events arrive as
``text/event-plain`` (the body is another header block with URL-encoded values, optionally followed by
its own ``Content-Length`` and body) or ``text/event-json`` (one JSON object, every value a string, the
event body under ``_body``).
JSON is decoded by :func:`parley.wire_json.loads` (nesting and number sizes bounded) and every number
read from a header is ASCII digits of bounded length, so no input raises anything but ``EslProtocolError``
(fuzzed: ``scripts/fuzz.py``).

The parser accepts input split anywhere (one byte at a time works), scans each byte a bounded number of
times, and refuses input that would make it buffer without bound: a header block longer than
``max_header_bytes`` or a declared body longer than ``max_body_bytes`` raises
:class:`~parley.errors.EslProtocolError` at once. Once it has raised, the parser stays failed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal, TypeAlias
from urllib.parse import unquote

from parley import wire_json
from parley.errors import EslProtocolError

DEFAULT_MAX_HEADER_BYTES = 64 * 1024
# FreeSWITCH caps what it *accepts* at 16 MiB; what it *sends* can be larger (a failed streamAudio
# message comes back whole inside mod_audio_stream::json). 64 MiB bounds memory and still fits those.
DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024

EventFormat: TypeAlias = Literal["plain", "json"]


# --------------------------------------------------------------------------------------------------
# Messages FreeSWITCH sends
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuthRequest:
    """``Content-Type: auth/request``: sent once, right after the TCP connect."""

    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CommandReply:
    """``command/reply``: the answer to auth, event, bgapi, sendmsg, filter, exit..."""

    reply_text: str
    headers: Mapping[str, str]

    @property
    def ok(self) -> bool:
        return self.reply_text.startswith("+OK")

    @property
    def job_uuid(self) -> str | None:
        return self.headers.get("Job-UUID")


@dataclass(frozen=True, slots=True)
class ApiResponse:
    """``api/response``: the synchronous output of ``api <cmd>``."""

    body: str
    headers: Mapping[str, str]

    @property
    def ok(self) -> bool:
        """False when FreeSWITCH signalled failure (``-ERR``/``-USAGE``); many commands print data instead."""
        return not self.body.startswith(("-ERR", "-USAGE"))


@dataclass(frozen=True, slots=True)
class Event:
    """One FreeSWITCH event, from ``text/event-plain`` or ``text/event-json``.

    ``headers`` hold decoded values (URL-decoding done for plain events). Multi-valued headers appear
    as FreeSWITCH's own ``ARRAY::a|:b`` string in both formats, so the two formats compare equal.
    """

    name: str
    headers: Mapping[str, str]
    body: str | None
    format: EventFormat

    @property
    def subclass(self) -> str | None:
        return self.headers.get("Event-Subclass")

    @property
    def unique_id(self) -> str | None:
        return self.headers.get("Unique-ID")

    @property
    def job_uuid(self) -> str | None:
        return self.headers.get("Job-UUID")

    def get(self, name: str, default: str | None = None) -> str | None:
        return self.headers.get(name, default)

    def variable(self, name: str) -> str | None:
        """A channel variable carried as ``variable_<name>``."""
        return self.headers.get(f"variable_{name}")

    @property
    def timestamp_us(self) -> int | None:
        """FreeSWITCH's own event time (``Event-Date-Timestamp``, microseconds since the epoch)."""
        return _small_int(self.headers.get("Event-Date-Timestamp"))


@dataclass(frozen=True, slots=True)
class DisconnectNotice:
    """``text/disconnect-notice``: FreeSWITCH is about to close the socket (or linger)."""

    body: str
    headers: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class RudeRejection:
    """``text/rude-rejection``: the client address failed the ESL ACL; the socket closes next."""

    body: str
    headers: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class LogData:
    """``log/data``: a log line, only after ``log <level>``."""

    body: str
    headers: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class UnknownMessage:
    """A content type this parser does not model (e.g. ``text/event-xml``); kept, never fatal."""

    content_type: str
    body: bytes
    headers: Mapping[str, str]


Message: TypeAlias = (
    AuthRequest | CommandReply | ApiResponse | Event | DisconnectNotice | RudeRejection | LogData | UnknownMessage
)

# --------------------------------------------------------------------------------------------------
# The parser
# --------------------------------------------------------------------------------------------------

_BLANK_LINE = re.compile(rb"\r?\n\r?\n")


class EslParser:
    """Incremental parser: ``feed(bytes)`` returns the messages completed by those bytes."""

    def __init__(
        self,
        *,
        max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    ) -> None:
        self._buf = bytearray()
        self._pos = 0  # start of unconsumed bytes in _buf
        self._scan_from = 0  # where to resume the search for the blank line
        self._headers: dict[str, str] | None = None  # parsed envelope awaiting its body
        self._body_len = 0
        self._offset = 0  # absolute stream offset of _buf[0], for error messages
        self._failed: EslProtocolError | None = None
        self._max_header = max_header_bytes
        self._max_body = max_body_bytes

    @property
    def buffered(self) -> int:
        """Bytes held that do not yet form a complete message."""
        return len(self._buf) - self._pos

    def feed(self, data: bytes) -> list[Message]:
        if self._failed is not None:
            raise self._failed
        self._buf += data
        out: list[Message] = []
        try:
            while (msg := self._next()) is not None:
                out.append(msg)
        except EslProtocolError as exc:
            self._failed = exc
            self._buf.clear()
            self._pos = 0
            raise
        # drop consumed bytes once per feed (not per message: that would be quadratic on big reads)
        del self._buf[: self._pos]
        self._scan_from -= self._pos
        self._pos = 0
        return out

    def feed_eof(self) -> None:
        """The peer closed the stream: raise if a message was cut off."""
        if self._failed is not None:
            raise self._failed
        rest = self._buf[self._pos :]
        if self._headers is not None:
            self._failed = EslProtocolError(
                f"ESL stream ended inside a message body: {len(rest)} of {self._body_len} bytes received "
                f"(Content-Type {self._headers.get('Content-Type', '?')!r}, stream offset {self._offset})"
            )
            raise self._failed
        if rest.strip(b"\r\n"):
            self._failed = EslProtocolError(
                f"ESL stream ended inside a header block: {len(rest)} bytes without the closing "
                f"blank line (stream offset {self._offset})"
            )
            raise self._failed

    # ---- internals -------------------------------------------------------------------------------

    def _next(self) -> Message | None:
        buf = self._buf
        if self._headers is None:
            # FreeSWITCH never sends stray newlines between messages, but tolerate them.
            while self._pos < len(buf) and buf[self._pos] in (10, 13):  # \n, \r
                self._pos += 1
                self._offset += 1
            if self._pos >= len(buf):
                self._scan_from = self._pos
                return None
            m = _BLANK_LINE.search(buf, max(self._pos, self._scan_from - 3))
            if m is None or m.start() - self._pos > self._max_header:
                if m is not None or len(buf) - self._pos > self._max_header:
                    raise EslProtocolError(
                        f"ESL header block exceeds {self._max_header} bytes without a blank line "
                        f"(stream offset {self._offset})"
                    )
                self._scan_from = len(buf)
                return None
            block = bytes(buf[self._pos : m.start()])
            self._headers = parse_header_block(block, where=f"envelope at stream offset {self._offset}")
            self._body_len = _content_length(self._headers, self._max_body, self._offset)
            self._offset += m.end() - self._pos
            self._pos = m.end()
            self._scan_from = self._pos
        if len(buf) - self._pos < self._body_len:
            return None
        body = bytes(buf[self._pos : self._pos + self._body_len])
        self._pos += self._body_len
        self._scan_from = self._pos
        headers = self._headers
        start = self._offset
        self._offset += self._body_len
        self._headers = None
        self._body_len = 0
        return _build_message(headers, body, start)


def parse_header_block(block: bytes, *, where: str, url_decoded: bool = False) -> dict[str, str]:
    """Parse ``Name: value`` lines. Values are URL-decoded when ``url_decoded`` (plain event bodies)."""
    try:
        text = block.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EslProtocolError(
            f"ESL {where}: header bytes are not valid UTF-8 (byte 0x{block[exc.start]:02x} at offset {exc.start})"
        ) from None
    headers: dict[str, str] = {}
    for lineno, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r")
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise EslProtocolError(f"ESL {where}: line {lineno} is not a 'Name: value' header: {line[:80]!r}")
        value = value.removeprefix(" ")
        if url_decoded:
            value = unquote(value, errors="replace")
        if name == "Content-Length" and name in headers and headers[name] != value:
            raise EslProtocolError(f"ESL {where}: conflicting Content-Length headers")
        headers.setdefault(name, value)
    return headers


_MAX_INT_DIGITS = 19  # anything FreeSWITCH counts (bytes, microseconds since the epoch) fits in 19 digits


def _small_int(raw: str | None) -> int | None:
    """A header value of ASCII digits (at most 19 significant ones) as an int, else None.

    ``str.isdigit`` alone lets through ``'²'`` or Arabic-Indic digits, and ``int()`` refuses 4301+ digits.
    """
    if raw is None or not raw.isascii() or not raw.isdigit():
        return None
    digits = raw.lstrip("0")
    return int(digits or "0") if len(digits) <= _MAX_INT_DIGITS else None


def _content_length(headers: Mapping[str, str], limit: int, offset: int) -> int:
    raw = headers.get("Content-Length")
    if raw is None:
        return 0
    if not raw.isascii() or not raw.isdigit():
        raise EslProtocolError(
            f"ESL Content-Length {raw[:40]!r} is not a non-negative integer (message at stream offset {offset})"
        )
    n = _small_int(raw)
    if n is None or n > limit:
        shown = str(n) if n is not None else f"{len(raw.lstrip('0'))}-digit"
        raise EslProtocolError(
            f"ESL body of {shown} bytes exceeds the limit of {limit} bytes (message at stream offset {offset})"
        )
    return n


def _decode_text(body: bytes, what: str, offset: int) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EslProtocolError(
            f"ESL {what} body is not valid UTF-8 (byte 0x{body[exc.start]:02x} at body offset {exc.start}, "
            f"message at stream offset {offset})"
        ) from None


def _build_message(headers: dict[str, str], body: bytes, offset: int) -> Message:
    ctype = headers.get("Content-Type", "")
    if ctype == "auth/request":
        return AuthRequest(headers)
    if ctype == "command/reply":
        return CommandReply(headers.get("Reply-Text", ""), headers)
    if ctype == "api/response":
        return ApiResponse(_decode_text(body, "api/response", offset), headers)
    if ctype == "text/event-plain":
        return parse_plain_event(body, offset=offset)
    if ctype == "text/event-json":
        return parse_json_event(body, offset=offset)
    if ctype == "text/disconnect-notice":
        return DisconnectNotice(_decode_text(body, "disconnect-notice", offset), headers)
    if ctype == "text/rude-rejection":
        return RudeRejection(_decode_text(body, "rude-rejection", offset), headers)
    if ctype == "log/data":
        return LogData(body.decode("utf-8", errors="replace"), headers)
    if not ctype:
        raise EslProtocolError(f"ESL message without Content-Type (stream offset {offset}): {dict(headers)!r:.120}")
    return UnknownMessage(ctype, body, headers)


def parse_plain_event(payload: bytes, *, offset: int = 0) -> Event:
    """Parse the payload of a ``text/event-plain`` message."""
    m = _BLANK_LINE.search(payload)
    block, rest = (payload, b"") if m is None else (payload[: m.start()], payload[m.end() :])
    headers = parse_header_block(block, where=f"plain event at stream offset {offset}", url_decoded=True)
    body: str | None = None
    if "Content-Length" in headers:
        n = _content_length(headers, DEFAULT_MAX_BODY_BYTES, offset)
        if len(rest) < n:
            raise EslProtocolError(
                f"ESL plain event declares a {n}-byte body but only {len(rest)} bytes follow "
                f"(stream offset {offset})"
            )
        body = _decode_text(rest[:n], "event", offset)
    name = headers.get("Event-Name")
    if not name:
        raise EslProtocolError(f"ESL plain event without Event-Name (stream offset {offset})")
    return Event(name, headers, body, "plain")


def parse_json_event(payload: bytes, *, offset: int = 0) -> Event:
    """Parse the payload of a ``text/event-json`` message."""
    try:
        obj = wire_json.loads(payload)
    except wire_json.WireJsonError as exc:
        raise EslProtocolError(f"ESL JSON event is not valid JSON (stream offset {offset}): {exc}") from None
    if not isinstance(obj, dict):
        raise EslProtocolError(f"ESL JSON event is a {type(obj).__name__}, not an object (stream offset {offset})")
    headers: dict[str, str] = {}
    body: str | None = None
    for key, value in obj.items():
        if key == "_body":
            body = value if isinstance(value, str) else json.dumps(value)
        elif isinstance(value, str):
            headers[key] = value
        elif isinstance(value, list):
            headers[key] = "ARRAY::" + "|:".join(str(v) for v in value)
        else:
            headers[key] = json.dumps(value)
    name = headers.get("Event-Name")
    if not name:
        raise EslProtocolError(f"ESL JSON event without Event-Name (stream offset {offset})")
    return Event(name, headers, body, "json")


def parse_stream(data: bytes, **limits: int) -> list[Message]:
    """Parse a complete capture; raise if it ends inside a message."""
    parser = EslParser(**limits)
    out = parser.feed(data)
    parser.feed_eof()
    return out


# --------------------------------------------------------------------------------------------------
# Commands parley sends
# --------------------------------------------------------------------------------------------------

_FORBIDDEN = re.compile(r"[\r\n\x00]")


def _safe(value: str, what: str) -> str:
    """Refuse CR/LF/NUL: inside a command they would smuggle extra ESL lines (header injection)."""
    if _FORBIDDEN.search(value):
        raise ValueError(f"{what} must not contain CR, LF or NUL: {value[:60]!r}")
    return value


def auth_command(password: str) -> bytes:
    return f"auth {_safe(password, 'ESL password')}\n\n".encode()


def api_command(command: str) -> bytes:
    return f"api {_safe(command, 'api command')}\n\n".encode()


def bgapi_command(command: str, job_uuid: str) -> bytes:
    return f"bgapi {_safe(command, 'bgapi command')}\nJob-UUID: {_safe(job_uuid, 'Job-UUID')}\n\n".encode()


def event_command(
    events: Iterable[str], custom: Iterable[str] = (), *, fmt: Literal["plain", "json", "xml"] = "json"
) -> bytes:
    names = [_safe(e, "event name") for e in events]
    subclasses = [_safe(s, "event subclass") for s in custom]
    if subclasses:
        names += ["CUSTOM", *subclasses]
    if not names:
        raise ValueError("event subscription needs at least one event name")
    return f"event {fmt} {' '.join(names)}\n\n".encode()


def nixevent_command(events: Iterable[str], custom: Iterable[str] = ()) -> bytes:
    names = [_safe(e, "event name") for e in events]
    subclasses = [_safe(s, "event subclass") for s in custom]
    if subclasses:
        names += ["CUSTOM", *subclasses]
    if not names:
        raise ValueError("nixevent needs at least one event name")
    return f"nixevent {' '.join(names)}\n\n".encode()


def noevents_command() -> bytes:
    return b"noevents\n\n"


def filter_command(header: str, value: str) -> bytes:
    return f"filter {_safe(header, 'filter header')} {_safe(value, 'filter value')}\n\n".encode()


def filter_delete_command(header: str | None = None, value: str | None = None) -> bytes:
    if header is None:
        return b"filter delete all\n\n"
    tail = f" {_safe(value, 'filter value')}" if value is not None else ""
    return f"filter delete {_safe(header, 'filter header')}{tail}\n\n".encode()


def sendmsg_command(uuid: str, headers: Mapping[str, str], body: bytes | None = None) -> bytes:
    """``sendmsg <uuid>`` with headers in the given order and an optional body (adds content-length)."""
    lines = [f"sendmsg {_safe(uuid, 'call UUID')}"]
    for name, value in headers.items():
        if ":" in name or not name.strip():
            raise ValueError(f"bad sendmsg header name {name!r}")
        lines.append(f"{_safe(name, 'sendmsg header name')}: {_safe(value, 'sendmsg header value')}")
    if body is not None:
        lines.append(f"content-length: {len(body)}")
        return ("\n".join(lines) + "\n\n").encode() + body
    return ("\n".join(lines) + "\n\n").encode()


def execute_command(
    uuid: str,
    app: str,
    arg: str = "",
    *,
    event_uuid: str | None = None,
    event_lock: bool = True,
    lead_frames: int | None = None,
    loops: int | None = None,
) -> bytes:
    """``sendmsg`` ``call-command: execute``; the recorded form is the template."""
    headers = {"call-command": "execute", "execute-app-name": app}
    if arg:
        headers["execute-app-arg"] = arg
    if loops is not None:
        headers["loops"] = str(loops)
    if event_lock:
        headers["event-lock"] = "true"
    if lead_frames is not None:
        headers["lead-frames"] = str(lead_frames)
    if event_uuid is not None:
        headers["Event-UUID"] = event_uuid
    return sendmsg_command(uuid, headers)


def hangup_command(uuid: str, cause: str = "NORMAL_CLEARING") -> bytes:
    return sendmsg_command(uuid, {"call-command": "hangup", "hangup-cause": cause})


def exit_command() -> bytes:
    return b"exit\n\n"


def myevents_command(uuid: str, fmt: Literal["plain", "json", "xml"] = "json") -> bytes:
    return f"myevents {_safe(uuid, 'call UUID')} {fmt}\n\n".encode()
