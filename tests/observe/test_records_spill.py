"""Writes still queued when the store closes with the database unavailable are spilled to local disk and
written at the next start (``observe/records_spill.py``), on a real SQLite file made read-only by SQLite
itself (``PRAGMA query_only`` on every connection the store checks out)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.pool import Pool

from parley.observe.records import CallEnd, CallStart, RecordStore, TurnRow, migrate
from parley.observe.records_spill import (
    PREFIX,
    SpilledWrite,
    claim_spills,
    decode_line,
    encode_line,
    spill_folder,
    write_spill,
)
from parley.providers.base import Usage

T0 = datetime(2025, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)


def url(tmp: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp / 'calls.db'}"


def start(fs_uuid: str = "fs-1") -> CallStart:
    return CallStart(fs_uuid=fs_uuid, started_at=T0, caller="+15551234567", caller_name="Ada", callee="parley",
                     direction="inbound", codec="PCMU", codec_rate=8000, answered_at=T0 + timedelta(seconds=1),
                     providers={"stt": ["whisper"], "llm": ["rules"], "tts": ["hibari"]})


@contextmanager
def read_only(db: Path) -> Iterator[None]:
    """Every connection to ``db`` checked out from any pool refuses writes ("attempt to write a readonly
    database"), until the block ends (after the store in it has closed)."""

    def on_checkout(dbapi_conn: Any, _record: Any, _proxy: Any) -> None:
        cur = dbapi_conn.cursor()
        try:
            cur.execute("PRAGMA database_list")
            mine = any(str(row[2]) == str(db) for row in cur.fetchall())
            cur.execute(f"PRAGMA query_only = {1 if mine else 0}")
        finally:
            cur.close()

    event.listen(Pool, "checkout", on_checkout)
    try:
        yield
    finally:
        event.remove(Pool, "checkout", on_checkout)


async def test_writes_queued_at_close_land_at_the_next_start(tmp_path: Path) -> None:
    spill = tmp_path / "spill"
    await migrate(url(tmp_path))
    with read_only(tmp_path / "calls.db"):
        async with RecordStore.open(url(tmp_path), spill_dir=spill, close_timeout_s=0.3, retry_max_s=0.05,
                                    migrate=False) as store:
            rec = await store.start_call(start())
            await rec.add_turn(TurnRow(index=1, caller_text="Tuesday, please", agent_text="Done",
                                       timings_ms={"speech_end": 0.0}, created_at=T0 + timedelta(seconds=5)))
            await rec.add_usage([Usage("hibari", "v1", "tts", characters=12)])
            await rec.add_event("dtmf", {"digits": "1", "when": T0})
            await rec.finish(CallEnd(hangup_cause="NORMAL_CLEARING", hangup_by="caller",
                                     ended_at=T0 + timedelta(seconds=61)))
            assert not await store.flush(timeout=0.3)  # read-only: nothing can land
            assert await store.list_calls() == []
    assert store.stats.spilled >= 4 and store.stats.dropped == 0
    [path] = spill.glob(f"{PREFIX}*.jsonl")
    assert path.stat().st_mode & 0o077 == 0  # caller words: private

    async with RecordStore.open(url(tmp_path), spill_dir=spill) as again:
        [summary] = await again.list_calls()
        detail = await again.get_call(summary.id)
    assert detail is not None
    assert detail.call.status == "completed" and detail.call.hangup_cause == "NORMAL_CLEARING"
    assert detail.call.ended_at == T0 + timedelta(seconds=61)
    assert [t.caller_text for t in detail.turns] == ["Tuesday, please"]
    assert [u.usage.provider for u in detail.usage] == ["hibari"]
    assert list(spill.iterdir()) == []  # written: the file is gone


async def test_without_a_spill_folder_the_queued_writes_are_dropped_and_counted(tmp_path: Path) -> None:
    await migrate(url(tmp_path))
    with read_only(tmp_path / "calls.db"):
        async with RecordStore.open(url(tmp_path), close_timeout_s=0.3, retry_max_s=0.05, migrate=False) as store:
            rec = await store.start_call(start())
            await rec.add_turn(TurnRow(index=1, caller_text="hello"))
    assert store.stats.dropped == 2 and store.stats.spilled == 0


async def test_a_spill_still_unwritten_at_the_next_close_is_spilled_again_once(tmp_path: Path) -> None:
    spill = tmp_path / "spill"
    await migrate(url(tmp_path))
    opts: dict[str, Any] = {"spill_dir": spill, "close_timeout_s": 0.3, "retry_max_s": 0.05, "migrate": False}
    with read_only(tmp_path / "calls.db"):
        async with RecordStore.open(url(tmp_path), **opts) as store:
            rec = await store.start_call(start())
            await rec.finish(CallEnd(hangup_cause="NORMAL_CLEARING", hangup_by="caller"))
    assert len(list(spill.glob("*.jsonl"))) == 1
    # the next run starts while the database still refuses writes, then closes: one file, the same writes
    with read_only(tmp_path / "calls.db"):
        async with RecordStore.open(url(tmp_path), **opts) as again:
            pass
    assert again.stats.spilled == 2
    assert len(list(spill.glob("*.jsonl"))) == 1 and not list(spill.glob("*.replaying-*"))
    async with RecordStore.open(url(tmp_path), spill_dir=spill) as third:
        [summary] = await third.list_calls()
        assert summary.status == "completed"
    assert list(spill.iterdir()) == []


def test_lines_round_trip_with_datetimes_and_nested_json() -> None:
    write = SpilledWrite("insert", table="events", rows=({"at": T0, "detail": {"when": T0, "x": [1, "a"]}},))
    back = decode_line(encode_line(write))
    assert back == write
    finish = SpilledWrite("finish", call_id="c1", values={"ended_at": T0, "status": "completed"}, start={"id": "c1"})
    assert decode_line(encode_line(finish)) == finish


def test_a_file_is_claimed_once_and_a_bad_one_is_set_aside(tmp_path: Path) -> None:
    good = write_spill(tmp_path, [SpilledWrite("finish", call_id="c1", values={"status": "completed"})], host="h/1")
    assert good is not None and "/" not in good.name.removeprefix(PREFIX)
    (tmp_path / f"{PREFIX}broken.jsonl").write_text(json.dumps({"kind": "nonsense"}) + "\n")
    first = list(claim_spills(tmp_path))
    assert [c.writes[0].call_id for c in first] == ["c1"]
    assert list(claim_spills(tmp_path)) == []  # already claimed (another worker starting at the same time)
    assert (tmp_path / f"{PREFIX}broken.jsonl.bad").exists()
    assert write_spill(tmp_path, [], host="h") is None


def test_the_spill_folder_sits_next_to_a_sqlite_file_else_in_the_state_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert spill_folder(f"sqlite+aiosqlite:///{tmp_path / 'calls.db'}") == tmp_path / "calls.db.spill"
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert spill_folder("postgresql+asyncpg://u@db/parley") == tmp_path / "state" / "parley" / "records-spill"
    assert spill_folder("postgresql+asyncpg://u@db/parley", "/var/spool/parley") == Path("/var/spool/parley")


def test_a_file_whose_claimer_died_is_claimed_again(tmp_path: Path) -> None:
    """A worker killed mid-replay leaves ``...jsonl.replaying-<pid>``: the next start takes it back (a live
    claimer's file is left alone)."""
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True).stdout.strip()  # a pid that has exited
    path = write_spill(tmp_path, [SpilledWrite("finish", call_id="c1", values={"status": "completed"})], host="h")
    assert path is not None
    orphan = path.rename(path.with_name(f"{path.name}.replaying-{dead}"))
    other = write_spill(tmp_path, [SpilledWrite("finish", call_id="c2", values={"status": "completed"})], host="h")
    assert other is not None
    live = other.rename(other.with_name(f"{other.name}.replaying-1"))  # pid 1 is always alive
    assert [c.writes[0].call_id for c in claim_spills(tmp_path)] == ["c1"]
    assert not orphan.exists() and live.exists()
