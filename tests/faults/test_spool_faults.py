"""Fault rows: the spool parley writes WAV chunks to is full or read-only.

Found on a real FreeSWITCH: dead air (no greeting, or a greeting cut after 3 chunks), no apology, an
unretrieved ``OSError``, and a record saying ``completed``. Now the write fails as a ``SpoolError``, the
caller hears an apology that needs no spool (a FreeSWITCH-side recording when configured, else a tone), the
call ends, and the record says it failed. The disk faults are injected where parley writes (the process
runs as root here, so a read-only directory would not refuse it); the errors are the kernel's own.
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from silence import agent_silence  # tests/faults/silence.py (pytest puts tests/faults on sys.path)

from parley.agent.engine import Engine
from parley.app import build_engine
from parley.audio.wav import write_wav_atomic
from parley.config import Settings
from parley.freeswitch import playback
from parley.observe.records import RecordStore
from parley.sim.caller_voice import caller_voice
from parley.sim.simulate import SimulationResult, load_scenario, run_scenario

RecordRow = Callable[..., None]  # the fault_row fixture of tests/faults/conftest.py

SCENARIO = """
name: spool-fault
steps:
  - wait_agent: true
  - say: "Hi, I would like to book a cleaning."
  - wait_agent: true
  - silence_s: 4
"""


@pytest.fixture(scope="module")
def engine() -> Engine:
    return build_engine(Settings())


@pytest.fixture
def failing_spool(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """After ``fail[0]`` chunks were written, every write fails with ``fail[1]`` (an errno)."""
    state = [0, errno.ENOSPC]
    written = [0]

    def write(path: Path, data: np.ndarray, rate: int, *, mode: int = 0o640) -> None:  # type: ignore[type-arg]
        if written[0] >= state[0]:
            raise OSError(state[1], __import__("os").strerror(state[1]), str(path))
        written[0] += 1
        write_wav_atomic(path, data, rate, mode=mode)

    monkeypatch.setattr(playback, "write_wav_atomic", write)
    yield state


def run(engine: Engine, tmp: Path, *, apology_file: str = "") -> tuple[SimulationResult, object]:
    scenario_file = tmp / "s.yaml"
    scenario_file.write_text(SCENARIO)
    conv = replace(engine.conversation, apology_fs_file=apology_file)
    url = f"sqlite+aiosqlite:///{tmp / 'calls.db'}"
    result = asyncio.run(run_scenario(load_scenario(scenario_file), replace(engine, conversation=conv),
                                      caller_voice("hibari-low", engine.tts), tmp / "spool", records_url=url))

    async def read() -> object:
        async with RecordStore.open(url) as store:
            [summary] = await store.list_calls()
            return await store.get_call(summary.id)

    return result, asyncio.run(read())


@pytest.mark.parametrize(("fault", "errno_", "after"), [
    ("spool full from the start", errno.ENOSPC, 0),
    ("spool full mid-greeting (after 1 chunk)", errno.ENOSPC, 1),
    ("spool read-only", errno.EROFS, 0),
])
def test_a_broken_spool_gets_the_caller_a_tone_not_silence(
    engine: Engine, tmp_path: Path, failing_spool: list[int], fault_row: RecordRow, fault: str, errno_: int, after: int
) -> None:
    failing_spool[0], failing_spool[1] = after, errno_
    result, detail = run(engine, tmp_path)
    tones = [p for p in result.fake_call.playbacks if "tone_stream://" in p.path]
    assert tones and tones[0].started_at is not None  # the caller heard the beeps
    assert result.fake_call.hungup and result.session.hung_up_by_agent
    assert result.session.failed
    assert any(kind == "spool_failed" for _t, kind, _d in result.session.events)
    call = detail.call  # type: ignore[attr-defined]
    assert call.status == "failed" and call.failed and call.hangup_by == "agent"
    assert any(e.kind == "spool_failed" for e in detail.events)  # type: ignore[attr-defined]
    silence = agent_silence(result)
    fault_row(fault, "tone, then the agent hung up", longest_silence_s=silence,
              record=f"{call.status}, {call.hangup_cause}")
    assert silence <= 2.0


def test_a_broken_spool_plays_the_operators_apology_recording(
    engine: Engine, tmp_path: Path, failing_spool: list[int], fault_row: RecordRow
) -> None:
    recording = tmp_path / "freeswitch-sounds" / "parley-apology.wav"
    recording.parent.mkdir()
    write_wav_atomic(recording, (3000 * np.sin(np.arange(8000) / 8000 * 2 * np.pi * 300)).astype(np.int16), 8000)
    failing_spool[0] = 0
    result, detail = run(engine, tmp_path, apology_file=str(recording))
    played = [p for p in result.fake_call.playbacks if p.path.endswith("parley-apology.wav")]
    assert played and played[0].started_at is not None and played[0].status == "done"
    assert recording.exists()  # FreeSWITCH's own file: parley never removes it
    call = detail.call  # type: ignore[attr-defined]
    assert call.status == "failed"
    silence = agent_silence(result)
    fault_row("spool full, apology recording configured", "the recording, then hangup",
              longest_silence_s=silence, record=f"{call.status}, {call.hangup_cause}")
    assert silence <= 2.0
