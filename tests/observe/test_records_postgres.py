"""Call records on a real PostgreSQL server, started here in a temporary directory and stopped at the end.

Needs Debian's ``postgresql`` package (initdb / pg_ctl under /usr/lib/postgresql/<version>/bin) and
asyncpg; skipped with the reason otherwise. As root, the server runs as the ``postgres`` user (initdb
refuses root).
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from parley.observe.records import Base, CallEnd, CallStart, RecordStore, TurnRow, make_engine, migrate
from parley.providers.base import Usage

pytest.importorskip("asyncpg", reason="asyncpg is not installed (pip install asyncpg)")

T0 = datetime(2025, 3, 1, 12, 0, 0, 654321, tzinfo=UTC)


def _bindir() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    return found[-1].parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class PgServer:
    url: str
    bindir: Path
    data: Path
    base: Path
    port: int
    run_as: list[str]

    def _ctl(self, *args: str) -> None:
        subprocess.run(
            [*self.run_as, str(self.bindir / "pg_ctl"), "-D", str(self.data), *args],
            check=True,
            capture_output=True,
            timeout=120,
        )

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._ctl("-l", str(self.base / "server.log"), "-w", "-t", "60", "-o", opts, "start")

    def stop(self, mode: str = "fast") -> None:
        self._ctl("-w", "-t", "60", "-m", mode, "stop")


@pytest.fixture(scope="module")
def postgres() -> Iterator[PgServer]:
    bindir = _bindir()
    if bindir is None or not (bindir / "pg_ctl").exists():
        pytest.skip("PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin (apt-get install postgresql)")
    base = Path(tempfile.mkdtemp(prefix="parley-pg-"))
    run_as: list[str] = []
    if os.geteuid() == 0:
        runuser = shutil.which("runuser")
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            pw = None
        if runuser is None or pw is None:
            shutil.rmtree(base, ignore_errors=True)
            pytest.skip("running as root: initdb refuses root, and there is no 'postgres' user / runuser to run as")
        os.chown(base, pw.pw_uid, pw.pw_gid)
        run_as = [runuser, "-u", "postgres", "--"]
    data = base / "data"
    server = PgServer("", bindir, data, base, _free_port(), run_as)
    server.url = f"postgresql+asyncpg://parley@127.0.0.1:{server.port}/postgres"
    initdb = [str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "parley", "-E", "UTF8", "--locale=C"]
    try:
        subprocess.run(
            [*run_as, *initdb, "--no-sync"],
            check=True,
            capture_output=True,
            timeout=120,
        )
        server.start()
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(base, ignore_errors=True)
        pytest.fail(f"could not start PostgreSQL: {exc.stderr.decode(errors='replace')}")
    try:
        yield server
    finally:
        try:
            server.stop("immediate")
        except subprocess.CalledProcessError:
            pass  # already stopped
        shutil.rmtree(base, ignore_errors=True)


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
