"""Fault rows: the call-records database fills up or goes away mid-call.

Each row is a whole simulated call on the local stack (real sockets, the fake FreeSWITCH, whisper, the
rules brain, hibari) writing its record to a real database:

* **full**: SQLite answers ``SQLITE_FULL`` ("database or disk is full") from 2 s into the call until 3 s
  after the first write that met it. The error is SQLite's own: every connection the records engine checks
  out gets ``PRAGMA max_page_count`` capped at the file's current size while the fault is on (the same error
  a full disk gives; a small tmpfs would need mount rights CI lacks).
* **gone**: the PostgreSQL server is stopped (``pg_ctl stop -m fast``: connections are cut) 2 s into the
  call, for at least 3 s and until a write has met the outage, then started again on the same port.

* **gone past the call**: PostgreSQL stops 2 s into the call and is still down when parley closes: the
  writes still queued are spilled to local disk and written by the next start.

Either way the call must go on as if nothing happened (the writer queues and retries off the audio path),
and once the database is back every turn must land, exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from silence import agent_silence  # tests/faults/silence.py (pytest puts tests/faults on sys.path)
from sqlalchemy import event
from sqlalchemy.pool import Pool

from parley.agent.engine import Engine
from parley.app import build_engine
from parley.config import Settings
from parley.observe.records import CallDetail, RecordStore
from parley.observe.records import log as records_log
from parley.observe.records_spill import spill_folder
from parley.sim.caller_voice import caller_voice
from parley.sim.simulate import SimulationResult, load_scenario, run_scenario
from testkit.postgres import PgServer, PgUnavailable, pg_server

RecordRow = Callable[..., None]  # the fault_row fixture of tests/faults/conftest.py

TWO_TURNS = ("  - wait_agent: true\n  - say: 'Hi, I would like to book a cleaning.'\n  - wait_agent: true\n"
             "  - say: 'Tuesday, please.'\n  - wait_agent: true\n  - hangup: true\n")
FAULT_AFTER_S = 2.0  # the greeting and the first turn are under way
FAULT_FOR_S = 3.0


@pytest.fixture(scope="module")
def engine() -> Engine:
    return build_engine(Settings())


def run(engine: Engine, tmp: Path, url: str) -> SimulationResult:
    scenario_file = tmp / "s.yaml"
    scenario_file.write_text("name: records-fault\ntimeout_s: 40\nsteps:\n" + TWO_TURNS)
    return asyncio.run(run_scenario(load_scenario(scenario_file), engine, caller_voice("hibari-low", engine.tts),
                                    tmp / "spool", records_url=url))


async def call_record(store: RecordStore, fs_uuid: str) -> CallDetail:
    """This call's record, exactly one (the PostgreSQL server is shared by the module's rows)."""
    details = [await store.get_call(summary.id) for summary in await store.list_calls(limit=1000)]
    [detail] = [d for d in details if d is not None and d.call.fs_uuid == fs_uuid]
    return detail


def read_back(url: str, fs_uuid: str) -> CallDetail:
    async def read() -> CallDetail:
        async with RecordStore.open(url, migrate=False) as store:
            return await call_record(store, fs_uuid)

    return asyncio.run(read())


@contextlib.contextmanager
def sqlite_fault(db: Path, seconds: float, *, after: float, on: Callable[[Any], None],
                 off: Callable[[Any], None]) -> Iterator[threading.Event]:
    """From ``after`` s on, every checkout of a connection to ``db`` runs ``on(cursor)`` (``off`` otherwise),
    until ``seconds`` after the first checkout that met the fault (so a write always meets it, however the
    call's turns fall). Yields the event of that first checkout."""
    state = {"on": False}
    hit = threading.Event()
    stop = threading.Event()

    def on_checkout(dbapi_conn: Any, _record: Any, _proxy: Any) -> None:
        cur = dbapi_conn.cursor()
        try:
            cur.execute("PRAGMA database_list")
            if not any(str(row[2]) == str(db) for row in cur.fetchall()):
                return
            if state["on"]:
                on(cur)
                hit.set()
            else:
                off(cur)
        finally:
            cur.close()

    def fault() -> None:
        if stop.wait(after):
            return
        state["on"] = True
        if hit.wait(60):
            stop.wait(seconds)
        state["on"] = False

    thread = threading.Thread(target=fault, daemon=True)
    event.listen(Pool, "checkout", on_checkout)
    thread.start()
    try:
        yield hit
    finally:
        stop.set()
        thread.join()
        event.remove(Pool, "checkout", on_checkout)


@contextlib.contextmanager
def small_disk(tmp: Path) -> Iterator[Path]:
    """A 4 MB tmpfs mounted at ``tmp/disk`` (root with mount rights only; skips otherwise)."""
    disk = tmp / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)], capture_output=True,
                             check=False) if shutil.which("mount") else None
    if mounted is None or mounted.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root with mount rights): "
                    + (mounted.stderr.decode(errors="replace").strip() if mounted else "no mount binary"))
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk: Path) -> Path:
    """Fill ``disk`` to the last byte with one file; delete it to give the space back."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for size in (65536, 512, 1):
            with contextlib.suppress(OSError):  # ENOSPC: full at this granularity
                while True:
                    os.write(fd, b"\0" * size)
    finally:
        os.close(fd)
    return filler


class _Noticed(logging.Handler):
    """Sets ``seen`` when the records writer logs that the database is unavailable (it is retrying)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.seen = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if "database unavailable" in record.getMessage():
            self.seen.set()


@contextlib.contextmanager
def noticed() -> Iterator[threading.Event]:
    handler = _Noticed()
    logger = records_log
    logger.addHandler(handler)
    try:
        yield handler.seen
    finally:
        logger.removeHandler(handler)


def test_records_disk_full_for_seconds_mid_call(engine: Engine, tmp_path: Path, fault_row: RecordRow) -> None:
    """The records database sits on a small disk that fills up (another file takes every byte) 2 s into the
    call and frees again 3 s after a write met it: SQLite's WAL cannot grow (SQLITE_FULL)."""
    with small_disk(tmp_path) as disk:
        db = disk / "calls.db"
        url = f"sqlite+aiosqlite:///{db}"
        done = threading.Event()
        filled = threading.Event()

        def fault(retried: threading.Event) -> None:
            if done.wait(FAULT_AFTER_S):
                return
            filler = fill(disk)
            filled.set()
            done.wait(FAULT_FOR_S)
            retried.wait(60)  # full until a write has met it (the call's last write at the latest)
            filler.unlink()

        with noticed() as retried:
            thread = threading.Thread(target=fault, args=(retried,), daemon=True)
            thread.start()
            try:
                result = run(engine, tmp_path, url)
            finally:
                done.set()
                thread.join()
        assert filled.is_set() and retried.is_set()  # a write really met the full disk, and was retried
        detail = read_back(url, result.fake_call.uuid)
    check_row(result, detail, "records DB disk full 3 s mid-call", fault_row)


def test_records_database_read_only_for_seconds_mid_call(
    engine: Engine, tmp_path: Path, fault_row: RecordRow
) -> None:
    """SQLite refuses every write ("attempt to write a readonly database") 2 s into the call, until 3 s after
    a write met it: as a remount read-only or a permissions change does (here ``PRAGMA query_only`` on each
    connection the records engine checks out, which runs without mount rights)."""
    db = tmp_path / "calls.db"
    url = f"sqlite+aiosqlite:///{db}"
    with noticed() as retried, sqlite_fault(db, FAULT_FOR_S, after=FAULT_AFTER_S,
                                            on=lambda cur: cur.execute("PRAGMA query_only = 1"),
                                            off=lambda cur: cur.execute("PRAGMA query_only = 0")) as hit:
        result = run(engine, tmp_path, url)
    assert hit.is_set() and retried.is_set()  # a write really met the read-only database, and was retried
    check_row(result, read_back(url, result.fake_call.uuid), "records DB read-only 3 s mid-call", fault_row)


def check_row(result: SimulationResult, detail: CallDetail, fault: str, fault_row: RecordRow,
              outcome: str = "call went on; all turns written after") -> None:
    answered = [t for t in result.session.turns if t.caller and t.agent_full]
    assert len(answered) == 2  # the caller noticed nothing
    assert len(detail.turns) == len(result.session.turns)  # every turn landed once it was back, once each
    assert detail.call.status == "completed" and not detail.call.failed
    silence = agent_silence(result)
    fault_row(fault, outcome, longest_silence_s=silence,
              record=f"{detail.call.status}, {len(detail.turns)}/{len(result.session.turns)} turns")
    assert silence <= 2.0


@pytest.fixture(scope="module")
def postgres() -> Iterator[PgServer]:
    pytest.importorskip("asyncpg", reason="asyncpg is not installed (pip install asyncpg)")
    try:
        with pg_server() as server:
            yield server
    except PgUnavailable as exc:
        pytest.skip(str(exc))


def test_records_database_gone_for_seconds_mid_call(
    engine: Engine, tmp_path: Path, postgres: PgServer, fault_row: RecordRow
) -> None:
    stopped = threading.Event()
    done = threading.Event()

    def outage(retried: threading.Event) -> None:
        if done.wait(FAULT_AFTER_S):
            return
        postgres.stop("fast")  # every connection is cut; new ones are refused until it is back
        stopped.set()
        done.wait(FAULT_FOR_S)
        retried.wait(60)  # down until a write has met it (the call's last write at the latest)
        postgres.start()

    with noticed() as retried:
        thread = threading.Thread(target=outage, args=(retried,), daemon=True)
        thread.start()
        try:
            result = run(engine, tmp_path, postgres.url)
        finally:
            done.set()
            thread.join()
    assert stopped.is_set() and retried.is_set()  # a write really met the outage, and was retried
    check_row(result, read_back(postgres.url, result.fake_call.uuid), "records DB (PostgreSQL) gone 3 s mid-call", fault_row)


def test_records_database_gone_until_after_the_call(
    engine: Engine, tmp_path: Path, postgres: PgServer, fault_row: RecordRow, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL stops 2 s into the call and is still down when parley closes its store: the writes still
    queued (the turns, the outcome) are spilled to the state folder, and the next start writes them."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    spill = spill_folder(postgres.url)
    assert spill.is_relative_to(tmp_path)
    done = threading.Event()

    def outage() -> None:
        if not done.wait(FAULT_AFTER_S):
            postgres.stop("fast")

    thread = threading.Thread(target=outage, daemon=True)
    thread.start()
    try:
        result = run(engine, tmp_path, postgres.url)
    finally:
        done.set()
        thread.join()
    spilled = list(spill.glob("*.jsonl"))
    assert len(spilled) == 1  # the writes that could not land are on local disk
    postgres.start()

    async def next_start() -> CallDetail:
        async with RecordStore.open(postgres.url, spill_dir=spill) as store:  # as parley serve opens it
            return await call_record(store, result.fake_call.uuid)

    detail = asyncio.run(next_start())
    assert not spill.exists() or not list(spill.iterdir())  # written, so gone
    check_row(result, detail, "records DB (PostgreSQL) gone past the call end", fault_row,
              "call went on; spilled, written at next start")
