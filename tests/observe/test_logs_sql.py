"""At DEBUG, the database drivers' own log lines (aiosqlite, SQLAlchemy's engine) keep their statements but never
repeat the caller words parley writes to the records, unless caller-text logging is on (issue 10 item 8)."""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from parley.observe import logs
from parley.observe.records import CallEnd, CallStart, RecordStore, TurnRow

CALLER_WORDS = "my card ends four two four two and I live at 12 Elm Street"
AGENT_WORDS = "Thanks Sarah, I booked Tuesday at three"


@pytest.fixture
def root_logging() -> Iterator[None]:
    """setup() owns the root logger; give it back as it was (pytest's capture handlers included)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    engine_log = logging.getLogger("sqlalchemy.engine")  # SQLAlchemy caps itself at WARN unless asked
    engine_level = engine_log.level
    engine_log.setLevel(logging.DEBUG)  # as an operator debugging SQL would
    yield
    engine_log.setLevel(engine_level)
    root.handlers[:] = handlers
    root.setLevel(level)


def write_a_call_at_debug(tmp: Path, *, caller_text: bool) -> str:
    stream = io.StringIO()
    logs.setup("DEBUG", caller_text=caller_text, stream=stream)

    async def main() -> None:
        async with RecordStore.open(f"sqlite+aiosqlite:///{tmp / 'calls.db'}") as store:
            recorder = await store.start_call(CallStart(fs_uuid="b8176bcb-105f-470a-94d0-a5c506ed4e11",
                                                        started_at=datetime.now(UTC), caller="+15551234567"))
            await recorder.add_turn(TurnRow(index=1, caller_text=CALLER_WORDS, agent_text=AGENT_WORDS,
                                            agent_full=AGENT_WORDS))
            await recorder.finish(CallEnd(hangup_cause="NORMAL_CLEARING", hangup_by="caller"))
        async with RecordStore.open(f"sqlite+aiosqlite:///{tmp / 'calls.db'}", migrate=False) as store:
            [summary] = await store.list_calls()
            detail = await store.get_call(summary.id)
            assert detail is not None and detail.turns[0].caller_text == CALLER_WORDS  # the row was written

    asyncio.run(main())
    return stream.getvalue()


def test_driver_debug_lines_keep_statements_but_not_caller_words(tmp_path: Path, root_logging: None) -> None:
    out = write_a_call_at_debug(tmp_path, caller_text=False)
    assert "INSERT INTO turns" in out  # the drivers did log the write...
    assert "aiosqlite" in out and "sqlalchemy.engine" in out
    assert logs.HIDDEN in out  # ...with its values replaced
    for secret in ("four two four two", "Elm Street", "Sarah", "booked Tuesday", "5551234567"):
        assert secret not in out, [line for line in out.splitlines() if secret in line][:3]


def test_caller_text_logging_shows_them(tmp_path: Path, root_logging: None) -> None:
    out = write_a_call_at_debug(tmp_path, caller_text=True)
    assert CALLER_WORDS in out and AGENT_WORDS in out  # the operator asked for them (PARLEY_LOG_CALLER_TEXT)


def test_parameters_line_of_a_sqlalchemy_error_is_hidden() -> None:
    record = logging.LogRecord("parley.observe.records", logging.ERROR, __file__, 1, "write failed: %s",
                               ("(sqlite3.IntegrityError) NOT NULL constraint failed\n[SQL: INSERT INTO turns "
                                "(caller_text) VALUES (?)]\n[parameters: ('" + CALLER_WORDS + "',)]\n(Background "
                                "on this error at: https://sqlalche.me/e/20/gkpj)",), None)
    logs.RedactionFilter().filter(record)
    message = record.getMessage()
    assert CALLER_WORDS not in message and "INSERT INTO turns" in message and logs.HIDDEN in message
