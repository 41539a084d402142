"""Call records on SQLite: survive a killed process, round-trip, stay bounded while the database is locked."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
import wave
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from parley.agent.session import TurnRecord
from parley.config import FreeSwitchSettings
from parley.freeswitch.call import Call, CallInfo
from parley.observe import timings as tm
from parley.observe.recording import Recordings
from parley.observe.records import (
    Base,
    CallEnd,
    CallRecorder,
    CallStart,
    RecordStore,
    RecordStoreError,
    TurnRow,
    make_engine,
    migrate,
    redact_number,
)
from parley.providers.base import ToolCall, Usage

T0 = datetime(2025, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)


def sqlite_url(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path}"


def start(fs_uuid: str = "fs-1", at: datetime = T0, caller: str = "+15551234567") -> CallStart:
    return CallStart(
        fs_uuid=fs_uuid,
        started_at=at,
        caller=caller,
        caller_name="Ada",
        callee="parley",
        direction="inbound",
        codec="PCMU",
        codec_rate=8000,
        answered_at=at + timedelta(seconds=1),
        providers={"stt": ["deepgram", "whisper"], "llm": ["openai", "rules"], "tts": ["hibari"]},
    )


# ---- migrations -------------------------------------------------------------------------------------


async def test_migrations_create_the_file_run_twice_and_match_the_models(tmp_path: Path) -> None:
    db = tmp_path / "new" / "dir" / "calls.db"
    await migrate(sqlite_url(db))
    await migrate(sqlite_url(db))  # idempotent: already at head
    assert db.exists()
    con = sqlite3.connect(db)
    try:
        assert con.execute("PRAGMA journal_mode").fetchone() == ("wal",)  # persistent in the file
        assert con.execute("SELECT version_num FROM alembic_version").fetchall() == [("0002",)]
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    finally:
        con.close()
    assert {"calls", "turns", "usage", "events", "alembic_version"} <= tables

    engine = make_engine(sqlite_url(db))
    try:
        async with engine.connect() as conn:
            diff = await conn.run_sync(lambda c: compare_metadata(MigrationContext.configure(c), Base.metadata))
            synchronous = (await conn.exec_driver_sql("PRAGMA synchronous")).scalar_one()
            fks = (await conn.exec_driver_sql("PRAGMA foreign_keys")).scalar_one()
    finally:
        await engine.dispose()
    assert diff == []  # the revision creates exactly what the models describe
    assert (synchronous, fks) == (1, 1)  # NORMAL, enforced


async def test_bad_url_is_a_config_error() -> None:
    from parley.errors import ConfigError

    with pytest.raises(ConfigError, match=r"records\.url"):
        make_engine("nonsense://x")


async def test_unusable_sqlite_folder_is_a_config_error(tmp_path: Path) -> None:
    from parley.errors import ConfigError

    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(ConfigError, match="cannot create the folder"):
        make_engine(sqlite_url(tmp_path / "file" / "calls.db"))


async def test_open_fails_clearly_when_the_database_is_unreachable() -> None:
    pytest.importorskip("asyncpg")
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(RecordStoreError, match=r"cannot migrate .*127\.0\.0\.1") as info:
        async with RecordStore.open(f"postgresql://parley:secret@127.0.0.1:{port}/calls"):
            pass
    assert "secret" not in str(info.value) and info.value.retryable


# ---- round trip -------------------------------------------------------------------------------------


async def test_call_turns_usage_events_round_trip(tmp_path: Path) -> None:
    priced: list[tuple[int, float, str | None]] = []

    def pricer(usages: object, minutes: float, direction: str | None) -> float:
        priced.append((len(usages), minutes, direction))  # type: ignore[arg-type]
        return 0.0123

    async with RecordStore.open(sqlite_url(tmp_path / "calls.db"), pricer=pricer) as store:
        rec = await store.start_call(start())
        await rec.add_turn(
            TurnRow(
                index=1,
                caller_text="I'd like an appointment",
                agent_text="Sure, which day",
                agent_full="Sure, which day suits you?",
                barge_in=True,
                endpoint_reason="silence",
                timings_ms={"speech_end": 0.0, "playback_start": 812.5},
                voice_to_voice_ms=812.5,
                overhead_ms=9.25,
                barge_in_timings={"onset_to_detect_ms": 310.0, "onset_to_stop_ms": None, "heard_ms": 900.0},
                tool_calls=[{"name": "transfer", "arguments": {"destination": "1001"}}],
                created_at=T0 + timedelta(seconds=5),
            )
        )
        await rec.add_turn(TurnRow(index=2, caller_text="Tuesday", agent_text="Done", voice_to_voice_ms=700.0))
        await rec.add_turn(TurnRow(index=3, caller_text="[DTMF 1]", agent_text="Bye"))
        usages = [
            Usage("deepgram", "nova-3", "stt", audio_seconds=12.5),
            Usage("openai", "gpt-4o-mini", "llm", input_tokens=900, output_tokens=40, cancelled=True),
            Usage("hibari", "v1", "tts", characters=120, failed=True),
        ]
        await rec.add_usage(usages)
        await rec.add_event("dtmf", {"digits": "1", "nan": float("nan"), "when": T0})
        await rec.add_fallback("stt", "deepgram", "whisper", "ProviderTimeout: no reply in 5 s")
        await rec.finish(
            CallEnd(
                hangup_cause="NORMAL_CLEARING",
                hangup_by="caller",
                dtmf="1",
                ended_at=T0 + timedelta(seconds=61),
                recording="2025-03-01/x.wav",
            )
        )
        await rec.finish(CallEnd(hangup_cause="IGNORED", hangup_by="system", status="failed"))  # idempotent
        await rec.add_turn(TurnRow(index=9))  # after finish: ignored
        assert await store.flush(timeout=10)

        detail = await store.get_call(rec.id)
        assert detail is not None
        call = detail.call
        assert (call.fs_uuid, call.caller, call.caller_name, call.callee) == ("fs-1", "+15551234567", "Ada", "parley")
        assert (call.direction, call.codec, call.codec_rate) == ("inbound", "PCMU", 8000)
        assert call.started_at == T0 and call.started_at.tzinfo is not None
        assert call.answered_at == T0 + timedelta(seconds=1)
        assert call.ended_at == T0 + timedelta(seconds=61)
        assert (call.status, call.hangup_by, call.hangup_cause, call.failed) == (
            "completed",
            "caller",
            "NORMAL_CLEARING",
            False,
        )
        assert call.providers == {"stt": ["deepgram", "whisper"], "llm": ["openai", "rules"], "tts": ["hibari"]}
        assert [(f["capability"], f["from"], f["to"]) for f in call.fallbacks] == [("stt", "deepgram", "whisper")]
        assert call.dtmf == "1" and call.recording == "2025-03-01/x.wav"
        assert call.cost_usd == pytest.approx(0.0123)
        assert priced == [(3, 1.0, "inbound")]  # answered -> ended = 60 s

        assert [t.index for t in detail.turns] == [1, 2, 3]
        t1 = detail.turns[0]
        assert (t1.caller_text, t1.agent_text, t1.agent_full) == (
            "I'd like an appointment",
            "Sure, which day",
            "Sure, which day suits you?",
        )
        assert t1.barge_in and t1.endpoint_reason == "silence"
        assert t1.timings_ms == {"speech_end": 0.0, "playback_start": 812.5}
        assert (t1.voice_to_voice_ms, t1.overhead_ms) == (812.5, 9.25)
        assert t1.barge_in_timings == {"onset_to_detect_ms": 310.0, "onset_to_stop_ms": None, "heard_ms": 900.0}
        assert t1.tool_calls == [{"name": "transfer", "arguments": {"destination": "1001"}}]
        assert t1.created_at == T0 + timedelta(seconds=5)

        assert [u.usage for u in detail.usage] == usages
        kinds = [e.kind for e in detail.events]
        assert kinds == ["dtmf", "fallback"]
        assert detail.events[0].detail == {"digits": "1", "nan": None, "when": T0.isoformat()}
        assert detail.events[1].detail["error"] == "ProviderTimeout: no reply in 5 s"

        redacted = await store.get_call(rec.id, redact=True)
        assert redacted is not None
        assert (redacted.call.caller, redacted.call.caller_name) == ("**********67", None)
        assert await store.get_call("no-such-call") is None
        assert store.stats.dropped == 0 and store.stats.rejected == 0


async def test_list_calls_summaries_newest_first_with_since_limit_offset(tmp_path: Path) -> None:
    async with RecordStore.open(sqlite_url(tmp_path / "calls.db")) as store:
        ids = []
        for i in range(3):
            rec = await store.start_call(start(fs_uuid=f"fs-{i}", at=T0 + timedelta(minutes=i)))
            for j, v2v in enumerate((600.0, 900.0, 700.0)[: i + 1]):
                await rec.add_turn(TurnRow(index=j + 1, voice_to_voice_ms=v2v))
            if i < 2:
                status: Literal["completed", "failed"] = "failed" if i == 1 else "completed"
                await rec.finish(
                    CallEnd("NORMAL_CLEARING", "agent", status=status, ended_at=T0 + timedelta(minutes=i, seconds=30))
                )
            ids.append(rec.id)
        assert await store.flush(timeout=10)

        calls = await store.list_calls()
        assert [c.id for c in calls] == ids[::-1]
        newest, middle, oldest = calls
        assert newest.status == "in_progress" and newest.outcome == "in progress" and newest.duration_s is None
        assert newest.turns == 3 and newest.median_voice_to_voice_ms == 700.0
        assert middle.outcome == "failed" and middle.failed and middle.median_voice_to_voice_ms == 750.0
        assert oldest.outcome == "agent hung up" and oldest.duration_s == 30.0 and oldest.turns == 1
        assert [c.id for c in await store.list_calls(limit=1, offset=1)] == [ids[1]]
        assert [c.id for c in await store.list_calls(since=T0 + timedelta(seconds=30))] == [ids[2], ids[1]]
        assert (await store.list_calls(redact=True))[0].caller == "**********67"


def test_redact_number() -> None:
    assert redact_number(None) is None
    assert redact_number("1001") == "****"
    assert redact_number("+4930123456") == "*********56"


async def test_from_session_objects(tmp_path: Path) -> None:
    timings = tm.TurnTimings()
    for stage, t in ((tm.SPEECH_END, 10.0), (tm.ENDPOINT, 10.5), (tm.PLAYBACK_START, 11.25), (tm.FIRST_AUDIBLE, 11.26)):
        timings.mark(stage, t)
    turn = TurnRecord(
        index=4,
        caller="hello",
        agent="hi",
        agent_full="hi there",
        barge_in=True,
        endpoint_reason="smart_turn",
        timings=timings,
        barge=tm.BargeInTimings(20.0, 20.3, 20.31, None, 400.0),
        tool_calls=[ToolCall(id="c1", name="hangup", arguments={})],
    )
    row = TurnRow.from_record(turn)
    assert row.timings_ms == {"speech_end": 0.0, "endpoint": 500.0, "playback_start": 1250.0, "first_audible": 1260.0}
    assert row.voice_to_voice_ms == 1260.0 and row.overhead_ms is None  # the ear's figure, not PLAYBACK_START
    assert row.barge_in_timings == {
        "onset_to_detect_ms": 300.0,
        "onset_to_break_ms": 310.0,
        "onset_to_stop_ms": None,
        "onset_to_silent_ms": None,
        "heard_ms": 400.0,
    }
    assert row.tool_calls == [{"name": "hangup", "arguments": {}}]

    call = Call("fs-uuid-1", None, FreeSwitchSettings(), clock=lambda: 100.0)  # type: ignore[arg-type]
    call.info = CallInfo("fs-uuid-1", caller_number="1001", destination="parley", direction="inbound", codec="PCMA")
    call.answered_at = 101.5
    wall = datetime(2025, 1, 1, 0, 1, tzinfo=UTC)
    cs = CallStart.from_call(call, providers={"stt": ["whisper"]}, mono_now=160.0, wall_now=wall)
    assert cs.started_at == wall - timedelta(seconds=60) and cs.answered_at == wall - timedelta(seconds=58.5)
    assert (cs.fs_uuid, cs.caller, cs.callee, cs.codec, cs.codec_rate) == ("fs-uuid-1", "1001", "parley", "PCMA", 8000)
    assert len(cs.id) == 36 and cs.id != CallStart.from_call(call, providers={}, mono_now=160.0).id


async def test_each_turn_is_committed_promptly_without_flush(tmp_path: Path) -> None:
    db = tmp_path / "calls.db"
    async with RecordStore.open(sqlite_url(db)) as store:
        rec = await store.start_call(start())
        await rec.add_turn(TurnRow(index=1, caller_text="hi"))
        deadline = time.monotonic() + 5
        while True:  # another connection (as another process would) sees the committed turn
            con = sqlite3.connect(db)
            try:
                n = con.execute("SELECT count(*) FROM turns").fetchone()[0]
            finally:
                con.close()
            if n == 1 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.01)
        assert n == 1


# ---- faults -----------------------------------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import asyncio, os, signal, sys
    from datetime import UTC, datetime
    from parley.observe.records import CallStart, RecordStore, TurnRow

    async def main(url):
        async with RecordStore.open(url) as store:
            rec = await store.start_call(CallStart(fs_uuid="fs-killed", started_at=datetime.now(UTC), caller="1001"))
            await rec.add_event("dtmf", {"digits": "5"})
            for i in (1, 2, 3):
                await rec.add_turn(TurnRow(index=i, caller_text=f"caller {i}", agent_text=f"agent {i}",
                                           voice_to_voice_ms=700.0 + i))
                assert await store.flush(timeout=10)  # the turn completed and is committed
            print(rec.id, flush=True)
            await rec.add_turn(TurnRow(index=4, caller_text="in flight"))  # may or may not make it
            os.kill(os.getpid(), signal.SIGKILL)

    asyncio.run(main(sys.argv[1]))
    """
)


async def test_records_survive_a_killed_process_and_recover_marks_them_interrupted(tmp_path: Path) -> None:
    db = tmp_path / "var" / "calls.db"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, sqlite_url(db), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == -signal.SIGKILL, err.decode()
    call_id = out.decode().strip()

    con = sqlite3.connect(db)
    try:
        assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        con.close()

    async with RecordStore.open(sqlite_url(db)) as store:
        detail = await store.get_call(call_id)
        assert detail is not None
        assert detail.call.status == "in_progress" and detail.call.ended_at is None
        assert [t.caller_text for t in detail.turns][:3] == ["caller 1", "caller 2", "caller 3"]
        assert len(detail.turns) in (3, 4)  # at most the turn in flight is lost
        assert [s.outcome for s in await store.list_calls()] == ["in progress"]

        live = await store.start_call(start(fs_uuid="fs-live", at=datetime.now(UTC)))  # this process's call
        assert await store.flush(timeout=10)
        assert await store.recover() == [call_id]
        assert await store.recover() == []

        detail = await store.get_call(call_id)
        assert detail is not None
        assert detail.call.status == "interrupted"
        assert detail.call.ended_at == max(t.created_at for t in detail.turns if t.created_at)
        assert detail.call.error and "in progress" in detail.call.error
        assert [e.kind for e in detail.events] == ["dtmf", "interrupted"]
        live_detail = await store.get_call(live.id)
        assert live_detail is not None and live_detail.call.status == "in_progress"
        await live.finish(CallEnd("NORMAL_CLEARING", "caller"))


async def test_recover_leaves_other_hosts_calls_alone(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "calls.db")
    async with RecordStore.open(url, host="other-box") as other:
        theirs = await other.start_call(start())
    async with RecordStore.open(url, host="this-box") as store:
        assert await store.recover() == []
        assert await store.recover(all_hosts=True) == [theirs.id]


async def test_writer_survives_a_locked_database_with_a_bounded_queue(tmp_path: Path) -> None:
    db = tmp_path / "calls.db"
    await migrate(sqlite_url(db))
    locker = sqlite3.connect(db, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")  # another process holds the write lock: every write is "database is locked"
    try:
        async with RecordStore.open(
            sqlite_url(db), migrate=False, queue_max=5, busy_timeout_s=0.05, retry_max_s=0.1
        ) as store:
            rec = await store.start_call(start())
            for i in range(10):  # never raises, never blocks
                await rec.add_turn(TurnRow(index=i + 1, caller_text=f"t{i}"))
            await rec.add_usage([Usage("openai", "m", "llm", input_tokens=1)])
            await rec.finish(CallEnd("NORMAL_CLEARING", "caller"))  # the outcome is never dropped
            assert store.stats.dropped == 6  # 5 turns beyond queue_max, then the usage row
            assert not await store.flush(timeout=0.3)
            for _ in range(500):  # the writer keeps retrying
                if store.stats.retries >= 2:
                    break
                await asyncio.sleep(0.01)
            assert store.stats.retries >= 2 and "locked" in (store.stats.last_error or "")
            assert store.stats.written == 0

            locker.execute("ROLLBACK")  # the database is back
            assert await store.flush(timeout=10)
            detail = await store.get_call(rec.id)
            assert detail is not None
            assert [t.caller_text for t in detail.turns] == ["t0", "t1", "t2", "t3", "t4"]
            assert detail.call.status == "completed" and detail.usage == []
            assert store.stats.written == 7  # start + 5 turns + finish
    finally:
        locker.close()


async def test_close_gives_up_after_its_timeout_when_the_database_stays_down(tmp_path: Path) -> None:
    db = tmp_path / "calls.db"
    await migrate(sqlite_url(db))
    locker = sqlite3.connect(db, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        t0 = time.monotonic()
        async with RecordStore.open(
            sqlite_url(db), migrate=False, busy_timeout_s=0.05, retry_max_s=0.1, close_timeout_s=0.3
        ) as store:
            rec = await store.start_call(start())
            await rec.add_turn(TurnRow(index=1))
            await rec.finish(CallEnd("NORMAL_CLEARING", "caller"))
        assert time.monotonic() - t0 < 5
        assert store.stats.dropped == 3 and store.stats.written == 0
        assert store.closed
        late = await store.start_call(start())  # a store that is closed still never raises
        await late.add_turn(TurnRow(index=1))
        await late.finish(CallEnd(None, "system"))
    finally:
        locker.close()


async def test_a_rejected_row_is_dropped_alone(tmp_path: Path) -> None:
    async with RecordStore.open(sqlite_url(tmp_path / "calls.db")) as store:
        good = await store.start_call(start())
        orphan = CallRecorder(store, start(fs_uuid="never-started"))  # its call row does not exist
        await orphan.add_turn(TurnRow(index=1))  # foreign key violation, in the same batch as good rows
        await good.add_turn(TurnRow(index=1, caller_text="kept"))
        assert await store.flush(timeout=10)
        assert store.stats.rejected == 1
        detail = await store.get_call(good.id)
        assert detail is not None and [t.caller_text for t in detail.turns] == ["kept"]
        await orphan.finish(CallEnd("NORMAL_CLEARING", "caller"))  # finish inserts the missing call row
        assert await store.flush(timeout=10)
        recovered = await store.get_call(orphan.id)
        assert recovered is not None and recovered.call.status == "completed"


async def test_in_memory_database(tmp_path: Path) -> None:
    async with RecordStore.open("sqlite://") as store:
        rec = await store.start_call(start())
        await rec.finish(CallEnd("NORMAL_CLEARING", "agent"))
        assert await store.flush(timeout=10)
        assert [c.outcome for c in await store.list_calls()] == ["agent hung up"]
    assert os.listdir(tmp_path) == []


# ---- stereo recordings ------------------------------------------------------------------------------


def read_stereo(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path), "rb") as w:
        assert (w.getnchannels(), w.getsampwidth()) == (2, 2)
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, 2)
        return data, w.getframerate()


def test_recording_is_off_by_default(tmp_path: Path) -> None:
    off = Recordings("")
    assert not off.enabled and off.start("call-1", 8000) is None and off.sweep() == 0


def test_mono_mix_places_agent_audio_by_playback_time_and_cuts_at_barge_in(tmp_path: Path) -> None:
    rec = Recordings(tmp_path / "rec").start("call-1", 8000, now=datetime(2025, 3, 1, tzinfo=UTC))
    assert rec is not None and rec.relative == "2025-03-01/call-1.wav"
    for i in range(50):  # 1 s of caller audio, 20 ms frames received at 10.02, 10.04, ...
        rec.frame(np.full(160, 1000, np.int16), t=10.0 + 0.02 * (i + 1))
    rec.agent(np.full(8000, 2000, np.int16), 16000, start_t=10.25)  # 0.5 s of TTS audio at 16 kHz
    rec.cut_agent(10.5)  # the caller barged in: only 0.25 s was heard
    rec.agent(np.full(800, -3000, np.int16), 8000, start_t=10.95)  # the next reply, runs past the caller audio
    path = rec.close()
    assert path == tmp_path / "rec" / "2025-03-01" / "call-1.wav"
    assert path.stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in path.parent.iterdir()) == ["call-1.wav"]  # .part files gone
    data, rate = read_stereo(path)
    assert rate == 8000 and data.shape == (8400, 2)  # the reply (0.95 s + 0.1 s) runs past the caller's 1 s
    assert (data[:8000, 0] == 1000).all() and (data[8000:, 0] == 0).all()
    right = data[:, 1]
    assert (right[:1990] == 0).all()
    assert (np.abs(right[2100:3900] - 2000) < 50).all()  # heard part (resampled 16k -> 8k)
    assert (right[4010:7600] == 0).all()  # cut at the barge-in
    assert (right[7600:] == -3000).all()
    assert rec.close() is None  # once


def test_stereo_mix_takes_freeswitch_agent_channel_and_fills_dropped_frames(tmp_path: Path) -> None:
    rec = Recordings(tmp_path).start("call-2", 8000)
    assert rec is not None
    for i in range(10):
        rec.frame(np.full(160, i, np.int16), np.full(160, 100 + i, np.int16), t=1.0 + 0.02 * (i + 1))
    rec.frame(np.full(160, 7, np.int16), np.full(160, 107, np.int16), t=1.2 + 1.0 + 0.02)  # 1 s of frames lost
    path = rec.close()
    assert path is not None
    data, _ = read_stereo(path)
    assert data.shape == (1600 + 8000 + 160, 2)
    assert (data[:1600, 0] == np.repeat(np.arange(10), 160)).all()
    assert (data[:1600, 1] == np.repeat(np.arange(100, 110), 160)).all()
    assert (data[1600:9600] == 0).all()
    assert (data[9600:, 0] == 7).all() and (data[9600:, 1] == 107).all()


def test_abort_and_empty_recordings_leave_no_files(tmp_path: Path) -> None:
    recs = Recordings(tmp_path)
    a, b = recs.start("call-3", 8000), recs.start("call-4", 8000)
    assert a is not None and b is not None
    a.frame(np.ones(160, np.int16))
    a.abort()
    assert b.close() is None
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_retention_sweep_deletes_old_recordings_and_stale_parts(tmp_path: Path) -> None:
    recs = Recordings(tmp_path, retention_days=30)
    now = time.time()
    old_day, new_day = tmp_path / "2025-01-01", tmp_path / "2025-03-01"
    old_day.mkdir()
    new_day.mkdir()
    files = {
        old_day / "a.wav": 31,
        new_day / "b.wav": 29,
        new_day / ".c.caller.part": 2,  # a killed process's leftovers
        new_day / ".d.agent.part": 0.5,  # a call in progress
        new_day / "notes.txt": 400,  # not ours
    }
    for f, days in files.items():
        f.write_bytes(b"x")
        os.utime(f, (now - days * 86400, now - days * 86400))
    assert recs.sweep(now) == 2
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == [".d.agent.part", "b.wav", "notes.txt"]
    assert not old_day.exists()  # emptied day folders go too
    assert Recordings(tmp_path, retention_days=0).sweep(now + 1e9) == 1  # 0: keep recordings forever


async def test_retention_task_sweeps_at_start(tmp_path: Path) -> None:
    day = tmp_path / "2020-01-01"
    day.mkdir()
    (day / "x.wav").write_bytes(b"x")
    os.utime(day / "x.wav", (0, 0))
    task = asyncio.create_task(Recordings(tmp_path, 1).retention(interval_s=3600))
    try:
        for _ in range(200):
            if not day.exists():
                break
            await asyncio.sleep(0.01)
        assert not day.exists()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
