"""Capacity (freeswitch.audio_stream.max_calls): a new call counts from the moment its stream is let in, so a
burst of streams arriving before any agent starts cannot pass the cap. The whole path (the refusal on the
wire, the fallback, the record, /ready) is tests/test_drain.py::test_at_max_calls_..."""

from __future__ import annotations

import pytest

from parley.config import AudioStreamSettings, EslSettings, FreeSwitchSettings
from parley.freeswitch import bridge as bridge_module
from parley.freeswitch.bridge import Bridge
from parley.freeswitch.esl_nodes import EslNodes


async def _never(call: object) -> None:
    raise AssertionError("no agent runs in these tests")


def bridge(max_calls: int) -> Bridge:
    fs = FreeSwitchSettings(esl=EslSettings(password="not-used-no-socket-is-opened"),
                            audio_stream=AudioStreamSettings(max_calls=max_calls))
    return Bridge(fs, EslNodes.from_settings(fs.esl_nodes()), _never)


def test_a_burst_before_any_agent_starts_stops_at_the_cap() -> None:
    b = bridge(2)
    assert b.has_room("call-a") and b.has_room("call-b")  # let in; their agents have not started yet
    assert b.full and not b.has_room("call-c")
    assert not b.has_room(None)  # a stream that does not name its call counts the same


def test_a_call_let_in_whose_agent_never_starts_stops_counting(monkeypatch: pytest.MonkeyPatch) -> None:
    b = bridge(1)
    assert b.has_room("refused-later")  # e.g. its first message turned out bad: no agent will start
    assert not b.has_room("next")
    monkeypatch.setattr(bridge_module, "ADMITTED_S", -1.0)  # its admission has expired
    assert not b.full and b.has_room("next")


def test_no_cap_by_default() -> None:
    b = bridge(0)
    assert all(b.has_room(f"call-{i}") for i in range(1000)) and not b.full
