"""Log output: plain text for people, one JSON object per line for log pipelines, both with the call id,
and the redaction every line passes through on its way out.

Owns: the formatters, the redaction filter and the root handler :func:`setup` installs. Every per-call
logger adapter in parley (``CallLog``, the audio-stream log) puts the call's UUID on the record as
``call``; the JSON formatter emits it as a field on every line of that call.

Redaction is enforced at the handler, so it covers every logger in the process (parley's, websockets',
httpx's): call sites pass caller speech and phone numbers as log arguments wrapped in
:class:`~parley.observe.redact.CallerText` / :class:`~parley.observe.redact.PhoneNumber`, which print as
placeholders; and the finished message, exception text and stack are passed through
:func:`~parley.observe.redact.mask_numbers` as a safety net. With caller-text logging on
(``PARLEY_LOG_CALLER_TEXT=1``, for debugging) the markers print their clear values and the safety net is
off: the operator asked to see what callers said, numbers included. Must not know where settings come from.

Database drivers log the values they write, and parley writes caller words (``INSERT INTO turns``): at DEBUG,
aiosqlite prints every call it runs with its arguments, SQLAlchemy's engine logger prints the parameters of
each statement (INFO) and the rows it reads (DEBUG), asyncpg's pool logs its queries' context, and a
SQLAlchemy error's text carries a ``[parameters: ...]`` line. Unless caller-text logging is on, the filter
keeps the statements and hides the values (:func:`_hide_sql_values`), so the drivers' DEBUG output stays
useful without repeating what callers said.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import sys
import time
from collections.abc import Mapping
from typing import TextIO

from parley.observe.redact import mask_numbers, reveal

_DONE = "parley_redacted"  # record attribute: a parley handler has already redacted this record
_EXC_FORMAT = logging.Formatter()
# loggers of the database drivers parley uses; they log the values of the statements they run
SQL_LOGGERS = ("aiosqlite", "sqlalchemy.engine", "asyncpg")
HIDDEN = "[values hidden: set PARLEY_LOG_CALLER_TEXT=1 to log them]"
_SQL_PARAMETERS = re.compile(r"^\[parameters: .*$", re.MULTILINE)  # in SQLAlchemy's StatementError text


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        call = getattr(record, "call", None)
        if call:
            entry["call"] = call
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:  # set (and masked) by RedactionFilter when it ran first
            entry["exc"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False)


class RedactionFilter(logging.Filter):
    """A handler filter: renders the message with markers redacted (or revealed) and masks phone numbers.

    It rewrites the record in place (``msg`` becomes the final message, ``args`` empty, ``exc_text`` the
    masked traceback): Python 3.11 handler filters cannot hand a copy to their handler. Other handlers
    that see the record afterwards therefore get the redacted text too, which is the safe direction.
    """

    def __init__(self, *, caller_text: bool = False) -> None:
        super().__init__()
        self.caller_text = caller_text

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, _DONE, False):
            return True
        if self.caller_text:
            record.msg = reveal(record.msg)
            record.args = _revealed(record.args)
        elif record.name.startswith(SQL_LOGGERS):
            _hide_sql_values(record)
        try:
            message = record.getMessage()
        except (TypeError, ValueError, KeyError) as exc:  # the handler would print the raw args
            message = f"{record.msg!s} (log arguments did not format: {type(exc).__name__})"
        if record.exc_info and not record.exc_text:
            record.exc_text = _EXC_FORMAT.formatException(record.exc_info)
        if not self.caller_text:
            message = mask_numbers(_SQL_PARAMETERS.sub(f"[parameters: {HIDDEN}]", message))
            if record.exc_text:
                record.exc_text = mask_numbers(_SQL_PARAMETERS.sub(f"[parameters: {HIDDEN}]", record.exc_text))
            if record.stack_info:
                record.stack_info = mask_numbers(record.stack_info)
        record.msg, record.args = message, ()
        setattr(record, _DONE, True)
        return True


def _hide_sql_values(record: logging.LogRecord) -> None:
    """Keep what a driver's log line says it did (the call, the SQL text, timings, column names); drop the
    values (bound parameters, rows) whatever their shape."""
    if isinstance(record.args, Mapping):
        record.args = {key: HIDDEN for key in record.args}
    elif record.args:
        record.args = tuple(_sql_safe(record.msg, arg) for arg in record.args)


def _sql_safe(msg: object, arg: object) -> object:
    if isinstance(arg, functools.partial):  # aiosqlite: "executing %s" with partial(conn.execute, sql, params)
        name = getattr(arg.func, "__name__", type(arg.func).__name__)
        sql = arg.args[0] if arg.args and isinstance(arg.args[0], str) else None
        return f"{name}({sql[:300]!r}, {HIDDEN})" if sql is not None else f"{name}(...)"
    if isinstance(arg, BaseException):  # aiosqlite: "returning exception %s": the class, not the text
        return type(arg).__name__
    if msg == "Col %r" or isinstance(arg, int | float | bool):  # SQLAlchemy column names; counts
        return arg
    if isinstance(arg, str) and msg == "[%s] %r":  # SQLAlchemy "[generated in 0.0001s] <params>": the stats
        return arg
    return HIDDEN


def _revealed(args: tuple[object, ...] | Mapping[str, object] | None) -> tuple[object, ...] | Mapping[str, object]:
    if args is None:
        return ()
    if isinstance(args, Mapping):
        return {key: reveal(value) for key, value in args.items()}
    return tuple(reveal(value) for value in args)


def setup(level: str, fmt: str = "text", *, caller_text: bool = False, stream: TextIO | None = None) -> logging.Handler:
    """Route all logging to one handler on ``stream`` (stderr), redacted unless ``caller_text``."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    handler.addFilter(RedactionFilter(caller_text=caller_text))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    return handler
