"""The shipped receptionist scenarios on the local default stack (whisper tiny.en, rules brain, hibari)
through the fake FreeSWITCH: rescheduling, cancelling, a billing message and a transfer to a person, asserted
on what the agent said and the ESL commands it sent. Slow (real models): one call per scenario."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from parley.agent.engine import Engine
from parley.config import Settings
from parley.sim.caller_voice import caller_voice
from parley.sim.simulate import SimulationResult, load_scenario, run_scenario, shipped_scenarios

pytest.importorskip("faster_whisper")
pytest.importorskip("hibari")


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    from parley.app import build_engine

    yield build_engine(Settings())


def simulate(engine: Engine, name: str, tmp: Path) -> SimulationResult:
    scenario = load_scenario(next(p for p in shipped_scenarios() if p.stem == name))
    return asyncio.run(run_scenario(scenario, engine, caller_voice(scenario.caller_voice, engine.tts), tmp))


def said(result: SimulationResult) -> str:
    return " | ".join(t.agent_full for t in result.session.turns)


def transfers(result: SimulationResult) -> list[str]:
    return [c.decode(errors="replace").strip() for c in result.commands if b"uuid_transfer" in c]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("rescheduling", "Your appointment is moved from Tuesday to Thursday at 2 PM."),
        ("cancelling", "Okay, Sarah Miller, I've cancelled your Wednesday appointment."),
        (
            "billing-message",
            "I've passed your message to our billing team, and they'll call you back at 5 5 5 1 2 3 4 5 6 7.",
        ),
    ],
)
def test_a_task_is_done_and_the_call_ends_with_a_goodbye(
    engine: Engine, tmp_path: Path, name: str, expected: str
) -> None:
    result = simulate(engine, name, tmp_path)
    assert expected in said(result)
    assert result.session.turns[-1].agent_full == "Thanks for calling Riverside Dental. Have a great day!"
    assert result.fake_call.hangup_cause == "NORMAL_CLEARING"
    assert transfers(result) == []


def test_a_person_is_a_transfer_to_the_operators_front_desk_extension(engine: Engine, tmp_path: Path) -> None:
    result = simulate(engine, "person", tmp_path)
    assert "put you through to the front desk" in said(result)
    uuid = result.fake_call.uuid
    assert transfers(result) == [f"api uuid_transfer {uuid} 1000 XML public"]
