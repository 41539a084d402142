"""Fault rows: the caller hangs up at an awkward moment, and the records database is locked mid-call.

Each row is a whole simulated call on the local stack (real sockets, the fake FreeSWITCH, whisper, the
rules brain, hibari) with its record read back from a real SQLite file: the record must say what happened
(who hung up, the words said so far, what the caller heard of the agent) and nothing already recorded may
be lost.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from parley.agent.engine import Engine
from parley.app import build_engine
from parley.config import Settings
from parley.observe.records import CallDetail, RecordStore
from parley.sim.caller_voice import caller_voice
from parley.sim.simulate import SimulationResult, load_scenario, run_scenario

RecordRow = Callable[..., None]  # the fault_row fixture of tests/faults/conftest.py

BOOK = "Hi, I would like to book a cleaning."


@pytest.fixture(scope="module")
def engine() -> Engine:
    return build_engine(Settings())


def run(engine: Engine, tmp: Path, steps: str, *, during: Callable[[Path], None] | None = None
        ) -> tuple[SimulationResult, CallDetail]:
    scenario_file = tmp / "s.yaml"
    scenario_file.write_text("name: call-end-fault\ntimeout_s: 40\nsteps:\n" + steps)
    db = tmp / "calls.db"
    url = f"sqlite+aiosqlite:///{db}"
    if during is not None:
        during(db)
    result = asyncio.run(run_scenario(load_scenario(scenario_file), engine, caller_voice("hibari-low", engine.tts),
                                      tmp / "spool", records_url=url))

    async def read() -> CallDetail:
        async with RecordStore.open(url) as store:
            [summary] = await store.list_calls()
            detail = await store.get_call(summary.id)
            assert detail is not None
            return detail

    return result, asyncio.run(read())


def test_caller_hangs_up_mid_sentence(engine: Engine, tmp_path: Path, fault_row: RecordRow) -> None:
    _result, detail = run(engine, tmp_path, f"  - wait_agent: true\n  - say: '{BOOK}'\n    say_ms: 1300\n"
                                           "  - hangup: true\n")
    call = detail.call
    assert call.hangup_by == "caller" and not call.failed
    said = " ".join(t.caller_text for t in detail.turns).lower()
    assert "like" in said or "book" in said, said  # the words said before the hangup are on the record
    fault_row("caller hangs up mid-sentence", "their words so far recorded",
              record=f"{call.status}, {call.outcome}, {len(detail.turns)} turn(s)")


def test_caller_hangs_up_mid_reply(engine: Engine, tmp_path: Path, fault_row: RecordRow) -> None:
    _result, detail = run(engine, tmp_path, f"  - wait_agent: true\n  - say: '{BOOK}'\n  - pause_ms: 1500\n"
                                           "  - hangup: true\n")
    call = detail.call
    assert call.hangup_by == "caller" and not call.failed
    [turn] = [t for t in detail.turns if "cleaning" in t.caller_text.lower()]
    assert turn.agent_full and turn.agent_text != turn.agent_full  # the reply, and only the heard part of it
    assert turn.agent_full.startswith(turn.agent_text)
    fault_row("caller hangs up mid-reply", "the heard part recorded as heard",
              record=f"{call.status}, {call.outcome}, heard {len(turn.agent_text)}/{len(turn.agent_full)} chars")


def test_caller_hangs_up_during_the_goodbye_before_the_hangup_tool(
    engine: Engine, tmp_path: Path, fault_row: RecordRow
) -> None:
    result, detail = run(engine, tmp_path, "  - wait_agent: true\n  - say: 'No, that is all, thank you, goodbye.'\n"
                                           "  - pause_ms: 1000\n  - hangup: true\n")
    call = detail.call
    assert call.hangup_by == "caller" and not call.failed  # the caller was first; the tool found the call gone
    assert not any(b"uuid_kill" in c for c in result.commands)
    fault_row("caller hangs up mid-tool (during the goodbye)", "no hangup sent to a gone call",
              record=f"{call.status}, {call.outcome}")


def test_records_database_locked_for_seconds_mid_call(engine: Engine, tmp_path: Path, fault_row: RecordRow) -> None:
    """Another process holds the SQLite write lock for 3 s while the caller talks: the call goes on, and once
    the lock is released every turn lands (the writer queues and retries; nothing is lost)."""
    released = threading.Event()
    held = threading.Event()  # the lock really was taken while the call ran

    def lock_soon(db: Path) -> None:
        def hold() -> None:
            while not db.exists():  # the store creates it when parley starts
                if released.wait(0.05):
                    return
            conn = sqlite3.connect(db, timeout=10)
            try:
                released.wait(2.0)  # the greeting and the first turn are under way
                conn.execute("BEGIN EXCLUSIVE")
                held.set()
                released.wait(3.0)
                conn.rollback()
            finally:
                conn.close()

        threading.Thread(target=hold, daemon=True).start()

    try:
        result, detail = run(engine, tmp_path, f"  - wait_agent: true\n  - say: '{BOOK}'\n  - wait_agent: true\n"
                                               "  - say: 'Tuesday, please.'\n  - wait_agent: true\n  - hangup: true\n",
                             during=lock_soon)
    finally:
        released.set()
    assert held.is_set()
    answered = [t for t in result.session.turns if t.caller and t.agent_full]
    assert len(answered) == 2  # the caller noticed nothing
    assert len(detail.turns) == len(result.session.turns)  # every turn landed once the lock was gone
    fault_row("records DB locked 3 s mid-call", "call went on; all turns written after",
              record=f"{detail.call.status}, {len(detail.turns)}/{len(result.session.turns)} turns")
