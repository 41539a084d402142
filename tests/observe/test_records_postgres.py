"""Call records on a real PostgreSQL server, started here in a temporary directory and stopped at the end.

Needs Debian's ``postgresql`` package (initdb / pg_ctl under /usr/lib/postgresql/<version>/bin) and
asyncpg; skipped with the reason otherwise. As root, the server runs as the ``postgres`` user (initdb
refuses root).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from parley.observe.records import Base, CallEnd, CallStart, RecordStore, TurnRow, make_engine, migrate
from parley.providers.base import Usage
from testkit.postgres import PgServer, PgUnavailable, pg_server

pytest.importorskip("asyncpg", reason="asyncpg is not installed (pip install asyncpg)")

T0 = datetime(2025, 3, 1, 12, 0, 0, 654321, tzinfo=UTC)


@pytest.fixture(scope="module")
def postgres() -> Iterator[PgServer]:
    try:
        with pg_server() as server:
            yield server
    except PgUnavailable as exc:
        pytest.skip(str(exc))


async def test_migrate_twice_and_schema_matches_models(postgres: PgServer) -> None:
    await migrate(postgres.url)
    await migrate(postgres.url)
    engine = make_engine(postgres.url)
    try:
        async with engine.connect() as conn:
            diff = await conn.run_sync(lambda c: compare_metadata(MigrationContext.configure(c), Base.metadata))
            version = (await conn.exec_driver_sql("SELECT version_num FROM alembic_version")).scalars().all()
    finally:
        await engine.dispose()
    assert diff == []
    assert version == ["0002"]  # the head: 0002 added the call outcome


async def test_write_a_call_and_read_it_back(postgres: PgServer) -> None:
    async with RecordStore.open(postgres.url, pricer=lambda u, m, d: 0.5) as store:
        rec = await store.start_call(
            CallStart(
                fs_uuid="pg-1",
                started_at=T0,
                caller="+15550001111",
                direction="inbound",
                providers={"stt": ["whisper"], "llm": ["rules"], "tts": ["hibari"]},
            )
        )
        await rec.add_turn(
            TurnRow(
                index=1,
                caller_text="hello\x00",  # PostgreSQL text refuses NUL: stripped, not rejected
                agent_text="Grüß Gott ☎",
                timings_ms={"speech_end": 0.0, "playback_start": 650.0},
                voice_to_voice_ms=650.0,
                barge_in_timings={"heard_ms": 120.0, "onset_to_stop_ms": None},
                tool_calls=[{"name": "hangup", "arguments": {}}],
            )
        )
        await rec.add_usage([Usage("whisper", "small", "stt", audio_seconds=3.5)])
        await rec.add_event("barge_in", {"heard_ms": 120.0})
        await rec.finish(CallEnd("NORMAL_CLEARING", "agent", ended_at=T0 + timedelta(seconds=42)))
        assert await store.flush(timeout=20)

        detail = await store.get_call(rec.id)
        assert detail is not None
        assert detail.call.started_at == T0 and detail.call.ended_at == T0 + timedelta(seconds=42)
        assert detail.call.status == "completed" and detail.call.cost_usd == 0.5
        assert detail.call.providers == {"stt": ["whisper"], "llm": ["rules"], "tts": ["hibari"]}
        (turn,) = detail.turns
        assert (turn.caller_text, turn.agent_text, turn.voice_to_voice_ms) == ("hello", "Grüß Gott ☎", 650.0)
        assert turn.barge_in_timings == {"heard_ms": 120.0, "onset_to_stop_ms": None}
        assert [u.usage for u in detail.usage] == [Usage("whisper", "small", "stt", audio_seconds=3.5)]
        assert [(e.kind, e.detail) for e in detail.events] == [("barge_in", {"heard_ms": 120.0})]
        (summary,) = [s for s in await store.list_calls(since=T0) if s.id == rec.id]
        assert (summary.turns, summary.duration_s, summary.outcome) == (1, 42.0, "agent hung up")
        assert store.stats.dropped == 0 and store.stats.rejected == 0


async def test_writer_rides_out_a_database_restart(postgres: PgServer) -> None:
    async with RecordStore.open(postgres.url, retry_max_s=0.5, queue_max=100) as store:
        rec = await store.start_call(CallStart(fs_uuid="pg-outage", started_at=datetime.now(UTC)))
        await rec.add_turn(TurnRow(index=1, caller_text="before"))
        assert await store.flush(timeout=20)

        await asyncio.to_thread(postgres.stop, "fast")
        try:
            await rec.add_turn(TurnRow(index=2, caller_text="during 1"))
            await rec.add_turn(TurnRow(index=3, caller_text="during 2"))
            await rec.finish(CallEnd("NORMAL_CLEARING", "caller"))
            assert not await store.flush(timeout=1.0)  # nothing raised; the writer keeps retrying
            assert store.stats.retries >= 1
        finally:
            await asyncio.to_thread(postgres.start)

        assert await store.flush(timeout=30)
        detail = await store.get_call(rec.id)
        assert detail is not None
        assert [t.caller_text for t in detail.turns] == ["before", "during 1", "during 2"]
        assert detail.call.status == "completed"
        assert store.stats.dropped == 0
