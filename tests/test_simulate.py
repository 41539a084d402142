"""Whole simulated calls on the local default stack (whisper tiny.en, rules brain, hibari) through the fake
FreeSWITCH over real sockets: the shipped scenarios, asserted on transcript, memory, timings and cleanup."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import itertools

from parley.agent.engine import Engine
from parley.config import Settings
from parley.errors import ConfigError
from parley.observe import timings as tm
from parley.observe.metrics import Metrics
from parley.providers.base import AudioChunk, LLMRequests
from parley.sim.caller_voice import caller_voice
from parley.sim.scripted_caller import Pause
from parley.sim.simulate import SimulationResult, load_scenario, run_scenario, shipped_scenarios

pytest.importorskip("faster_whisper")
pytest.importorskip("hibari")


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    from parley.app import build_engine

    yield build_engine(Settings())


def simulate(
    engine: Engine, name: str, tmp: Path, records_url: str | None = None, metrics: Metrics | None = None
) -> SimulationResult:
    path = next(p for p in shipped_scenarios() if p.stem == name)
    scenario = load_scenario(path)
    voice = caller_voice(scenario.caller_voice, engine.tts)
    return asyncio.run(run_scenario(scenario, engine, voice, tmp, records_url=records_url, metrics=metrics))


@pytest.fixture(scope="module")
def booking_metrics() -> Metrics:
    return Metrics()


@pytest.fixture(scope="module")
def records_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('records') / 'calls.db'}"


@pytest.fixture(scope="module")
def booking(
    engine: Engine, tmp_path_factory: pytest.TempPathFactory, records_url: str, booking_metrics: Metrics
) -> SimulationResult:
    return simulate(engine, "booking", tmp_path_factory.mktemp("spool"), records_url, booking_metrics)


@pytest.fixture(scope="module")
def barge(engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> SimulationResult:
    return simulate(engine, "barge-in", tmp_path_factory.mktemp("spool"))


def test_booking_conversation_books_and_hangs_up(booking: SimulationResult) -> None:
    s = booking.session
    assert s.greeting is not None and "Riverside Dental" in s.greeting.turn.agent_full
    said = " | ".join(t.agent_full for t in s.turns)
    heard_by_agent = " | ".join(t.caller.lower() for t in s.turns)
    assert "book" in heard_by_agent and "tuesday" in heard_by_agent
    assert "booked for Tuesday at 3 PM" in said
    assert any(c.name == "hangup" for t in s.turns for c in t.tool_calls)
    assert booking.fake_call.hungup
    assert booking.spool_left == 0


def test_every_answered_turn_has_every_stage_timed(booking: SimulationResult) -> None:
    answered = [t for t in booking.session.turns if t.agent_full and not t.barge_in]
    assert len(answered) >= 4
    for turn in answered:
        ms = turn.timings.ms()
        for stage in tm.TURN_STAGES:
            assert stage in ms, (turn.index, stage, ms)
        # the reply's own stages happen in order, and nothing is queued before the turn ended; a reply made
        # speculatively at a pause (turn.speculative) has its LLM/TTS stages before the endpoint
        reply = [ms[s] for s in (tm.LLM_FIRST_TOKEN, tm.FIRST_CHUNK, tm.TTS_FIRST_AUDIO, tm.PLAYBACK_COMMAND)]
        assert reply == sorted(reply), (turn.index, ms)
        heard = [ms[s] for s in (tm.SPEECH_END, tm.ENDPOINT, tm.PLAYBACK_COMMAND, tm.PLAYBACK_START,
                                 tm.FIRST_AUDIBLE)]
        assert heard == sorted(heard), (turn.index, ms)
        if not turn.speculative:
            stages = [ms[s] for s in tm.TURN_STAGES]
            assert stages == sorted(stages), (turn.index, ms)  # the stages happened in order
        assert turn.timings.voice_to_voice_ms is not None and turn.timings.voice_to_voice_ms > 0
        assert turn.timings.overhead_ms() is not None


def test_usage_is_reported_for_every_provider(booking: SimulationResult) -> None:
    kinds = {u.kind for u in booking.session.usage}
    assert kinds == {"stt", "llm", "tts"}
    stt_seconds = sum(u.audio_seconds for u in booking.session.usage if u.kind == "stt")
    assert stt_seconds > 3.0
    assert sum(u.characters for u in booking.session.usage if u.kind == "tts") > 100


def test_result_json_shape(booking: SimulationResult) -> None:
    d = booking.as_dict()
    assert {"p50", "p95"} <= set(d["voice_to_voice_ms"])  # type: ignore[call-overload]
    for turn in d["turns"]:  # type: ignore[attr-defined]
        assert {"caller", "agent", "barge_in", "timings_ms", "voice_to_voice_ms", "ear"} <= set(turn)
    assert {"parley_voice_to_voice_ms", "playback_start_ms", "cut_ins", "talk_over_ms", "agreement",
            "caller_turns"} <= set(d)


def test_every_caller_turn_is_measured_at_the_ear_after_playback_started(booking: SimulationResult) -> None:
    """The ear block: one scripted turn per session turn, answered audibly after PLAYBACK_START (the ear
    cannot hear a file before FreeSWITCH starts it), no cut-ins on the plain booking call."""
    d = booking.as_dict()
    caller_turns = d["caller_turns"]
    assert isinstance(caller_turns, list) and len(caller_turns) == 5  # the script's five say steps
    assert d["cut_ins"] == 0 and d["split_turns"] == 0 and d["dropped_turns"] == 0
    answered = [(rec, row) for rec, row in zip(booking.session.turns, d["turns"], strict=True)  # type: ignore[call-overload]
                if isinstance(row["ear"], dict) and row["ear"]["answered_here"]]
    assert [row["ear"]["caller_turn"] for _, row in answered] == [0, 1, 2, 3, 4]
    for rec, row in answered:
        ear = row["ear"]
        assert ear["first_audible_ms"] is not None and ear["first_audible_ms"] > 0, ear
        assert ear["speech_end_s"] > ear["speech_start_s"] > 0
        heard_at = booking.origin + ear["first_audible_s"]
        assert heard_at >= rec.timings.marks[tm.PLAYBACK_START] - 0.005, (ear, rec.timings.ms())
        assert not ear["cut_in"] and ear["talk_over_ms"] == 0.0
    ear_v2v = d["voice_to_voice_ms"]
    assert isinstance(ear_v2v, dict) and ear_v2v["n"] == 5 and ear_v2v["p50"] > 0


def test_a_scripted_barge_in_has_a_silent_at_the_ear_figure(barge: SimulationResult) -> None:
    d = barge.as_dict()
    callers = d["caller_turns"]
    assert isinstance(callers, list)
    (scripted,) = [c for c in callers if c["barge_in"]]
    assert scripted["onset_to_silent_ms"] is not None and 0 < scripted["onset_to_silent_ms"] < 2000
    assert scripted["talk_over_ms"] > 0  # the caller talked over the agent until it stopped
    (row,) = [t for t in d["turns"] if t["barge_in"]]  # type: ignore[attr-defined]
    block = row["ear_barge_in"]
    assert block is not None and block["scripted"] and block["caller_turn"] == scripted["caller_turn"]
    assert block["onset_to_silent_ms"] == scripted["onset_to_silent_ms"]
    assert d["barge_in_silent_at_ear_ms"] == [scripted["onset_to_silent_ms"]]


def test_parley_voice_to_voice_agrees_with_the_ear_within_30_ms(booking: SimulationResult) -> None:
    """Two measurements of the same moments agree: parley's (its audio-refined speech end, PLAYBACK_START plus
    the silence queued) and the ear's (the rendered audio against the script). Not a speed figure."""
    d = booking.as_dict()
    agreement = d["agreement"]
    assert isinstance(agreement, dict) and len(agreement["per_turn_ms"]) == 5
    assert agreement["max_ms"] <= 30.0, [t["ear"] for t in d["turns"]]  # type: ignore[attr-defined]


def test_a_say_list_is_one_turn_with_its_designed_pauses(tmp_path: Path) -> None:
    scenario_file = tmp_path / "s.yaml"
    scenario_file.write_text("name: p\nsteps:\n  - say: ['My name is', {pause_ms: 600}, 'Sarah Johnson']\n"
                             "  - say: plain text\n")
    steps = load_scenario(scenario_file).steps
    assert steps[0].say_pieces() == ("My name is", Pause(600.0), "Sarah Johnson")
    assert steps[1].say_pieces() == ("plain text",)
    for bad in ("[{pause_ms: 300}]", "[]", "['a', {pause: 3}]", "['a', {pause_ms: x}]", "{a: 1}"):
        scenario_file.write_text(f"name: p\nsteps:\n  - say: {bad}\n")
        with pytest.raises(ConfigError, match=r"steps\[0\]"):
            load_scenario(scenario_file)
    hesitant = load_scenario(next(p for p in shipped_scenarios() if p.stem == "hesitant"))
    pauses = [p.ms for s in hesitant.steps for p in s.say_pieces() if isinstance(p, Pause)]
    assert pauses and min(pauses) >= 400 and max(pauses) <= 700


class ToneVoice:
    """A TTS that says every text as 300 ms of silence, a 500 ms tone and 400 ms of silence (at 16 kHz)."""

    name = "tone"
    sample_rate = 16000

    async def synthesize(self, text: str):  # type: ignore[no-untyped-def]
        import numpy as np

        t = np.arange(8000) / 16000
        tone = (8000 * np.sin(2 * np.pi * 300 * t)).astype(np.int16)
        yield AudioChunk(np.concatenate([np.zeros(4800, np.int16), tone, np.zeros(6400, np.int16)]), 16000, text)


def test_say_list_pieces_are_joined_at_their_audible_edges() -> None:
    from parley.audio.trim import audible_windows
    from parley.sim.scripted_caller import ScriptedCaller

    voice: object = ToneVoice()
    caller = ScriptedCaller(None, voice)  # type: ignore[arg-type]
    audio = asyncio.run(caller.render(("one", Pause(600.0), "two")))
    flags = audible_windows(audio, 8000)
    loud = [i for i, f in enumerate(flags) if f]
    gaps = [(b - a - 1) * 5 for a, b in itertools.pairwise(loud) if b - a > 1]
    assert gaps == [600]  # exactly the designed pause between the audible parts
    assert loud[0] * 5 == 300  # the first piece keeps its own leading silence
    assert audio.size == (300 + 500 + 600 + 500 + 400) * 8  # and the last its trailing silence


def test_barge_in_cuts_the_reply_to_what_was_heard(barge: SimulationResult) -> None:
    s = barge.session
    interrupted = [t for t in s.turns if t.barge_in]
    assert interrupted, [t.as_dict() for t in s.turns]
    turn = interrupted[0]
    assert turn.agent_full.startswith("We're open")
    assert len(turn.agent) < len(turn.agent_full)
    assert turn.agent_full.startswith(turn.agent)
    # memory holds what the caller heard, not what the brain said
    assistant = [m.content for m in s.conversation.messages if m.role == "assistant"]
    assert turn.agent in assistant and turn.agent_full not in assistant
    assert turn.barge is not None
    b = turn.barge.as_dict()
    policy = s.engine.policy
    # speech onset -> uuid_break written: the minimum barge-in speech plus a frame or two of processing
    assert b["onset_to_break_ms"] is not None
    assert policy.barge_in_min_speech_ms <= b["onset_to_break_ms"] < policy.barge_in_min_speech_ms + 200
    assert f"api uuid_break {barge.fake_call.uuid} all\n\n".encode() in barge.commands
    # the caller's interruption was answered: the address
    assert any("Riverside" in t.agent_full or "Street" in t.agent_full or "located" in t.agent_full
               for t in s.turns[s.turns.index(turn) + 1 :])


def test_silent_caller_gets_an_idle_prompt_then_goodbye(engine: Engine, tmp_path: Path) -> None:
    result = simulate(engine, "silent-caller", tmp_path)
    said = [t.agent_full for t in result.session.turns]
    assert said[:2] == [engine.conversation.idle_prompt, engine.conversation.goodbye]
    assert result.fake_call.hungup
    assert result.spool_left == 0


def test_dtmf_reaches_the_conversation_as_input(engine: Engine, tmp_path: Path) -> None:
    scenario_file = tmp_path / "dtmf.yaml"
    scenario_file.write_text(
        "name: dtmf\ndescription: the caller presses 3 then # for opening hours\ntimeout_s: 40\n"
        "steps:\n  - wait_agent: true\n  - dtmf: '3#'\n  - wait_agent: true\n  - hangup: true\n"
    )
    scenario = load_scenario(scenario_file)
    result = asyncio.run(run_scenario(scenario, engine, caller_voice("hibari-low", engine.tts), tmp_path / "spool"))
    turns = result.session.turns
    assert turns and turns[0].caller == "[DTMF 3#]"  # '#' ends the input at once
    assert turns[0].agent_full.startswith("We're open")
    assert turns[0].timings.voice_to_voice_ms is not None


class BrokenBrain(LLMRequests):
    """An LLM provider whose every request fails (as a cloud LLM behind a dead network would)."""

    name = "broken"

    async def stream(self, messages, tools=(), *, on_cancel=None):  # type: ignore[no-untyped-def]
        from parley.providers.errors import ProviderConnectionError

        raise ProviderConnectionError("connection refused", provider="broken")
        yield  # pragma: no cover


def test_when_the_brain_fails_the_caller_hears_an_apology_not_silence(engine: Engine, tmp_path: Path) -> None:
    from dataclasses import replace

    scenario_file = tmp_path / "s.yaml"
    scenario_file.write_text("name: broken\ntimeout_s: 40\nsteps:\n  - wait_agent: true\n"
                             "  - say: 'What are your opening hours?'\n  - wait_agent: true\n  - silence_s: 5\n")
    broken = replace(engine, llm=BrokenBrain())
    result = asyncio.run(run_scenario(load_scenario(scenario_file), broken, caller_voice("hibari-low", engine.tts),
                                      tmp_path / "spool"))
    assert result.session.failed
    assert result.session.call.hangup_cause == "TEMPORARY_FAILURE"
    assert result.session.turns[-1].agent == engine.conversation.apology
    assert result.fake_call.playbacks[-1].status == "done"  # the apology played to the end before the hangup
    assert result.spool_left == 0


def test_the_call_is_in_the_records_with_turns_usage_and_cost(booking: SimulationResult, records_url: str) -> None:
    from parley.observe.records import RecordStore

    async def read() -> tuple[object, object]:
        async with RecordStore.open(records_url) as store:
            calls = await store.list_calls(limit=5)
            detail = await store.get_call(calls[0].id)
            return calls, detail

    calls, detail = asyncio.run(read())
    summary = calls[0]  # type: ignore[index]
    assert summary.turns == len(booking.session.turns)
    assert summary.status == "completed" and summary.cost_usd is not None and summary.cost_usd > 0
    assert summary.median_voice_to_voice_ms is not None
    assert detail is not None
    assert [t.caller_text for t in detail.turns] == [t.caller for t in booking.session.turns]  # type: ignore[attr-defined]
    assert {u.usage.kind for u in detail.usage} == {"stt", "llm", "tts"}  # type: ignore[attr-defined]


def test_a_caller_who_hangs_up_mid_reply_still_leaves_that_turn_in_the_records(
    engine: Engine, tmp_path: Path
) -> None:
    """The reply is cancelled by the hangup; the turn is recorded as it stands: what the caller said, what
    the agent had said so far, and only the heard part as heard."""
    from parley.observe.records import RecordStore

    url = f"sqlite+aiosqlite:///{tmp_path / 'calls.db'}"
    scenario_file = tmp_path / "s.yaml"
    scenario_file.write_text("name: hangs-up\ntimeout_s: 40\nsteps:\n  - wait_agent: true\n"
                             "  - say: 'What are your opening hours?'\n"
                             "  - pause_ms: 2500\n    hangup: true\n")  # mid-answer: the answer is ~6 s long
    result = asyncio.run(run_scenario(load_scenario(scenario_file), engine, caller_voice("hibari-low", engine.tts),
                                      tmp_path / "spool", records_url=url))
    assert result.fake_call.hungup and not result.session.hung_up_by_agent
    turn = result.session.turns[-1]
    assert "hours" in turn.caller.lower()
    assert turn.agent_full.startswith("We're open")
    assert turn.agent and len(turn.agent) < len(turn.agent_full)  # cut at what was played before the hangup

    async def read() -> list[tuple[str, str, str]]:
        async with RecordStore.open(url) as store:
            (summary,) = await store.list_calls(limit=5)
            detail = await store.get_call(summary.id)
            assert detail is not None
            return [(t.caller_text, t.agent_text, t.agent_full) for t in detail.turns]

    assert asyncio.run(read()) == [(turn.caller, turn.agent, turn.agent_full)]


def test_the_call_feeds_the_metrics_stages_turns_and_its_recorded_cost(
    booking: SimulationResult, booking_metrics: Metrics, records_url: str
) -> None:
    import re

    from parley.observe.records import RecordStore

    async def cost() -> float | None:
        async with RecordStore.open(records_url) as store:
            return (await store.list_calls(limit=5))[0].cost_usd  # the booking call: the only one in this db

    text = booking_metrics.render()

    def sample(line_start: str) -> float:
        (value,) = [float(m) for m in re.findall(rf"^{re.escape(line_start)} (\S+)$", text, re.M)]
        return value

    answered = [t for t in booking.session.turns if t.timings.voice_to_voice_ms is not None]
    assert sample('parley_turn_latency_ms_count{stage="voice_to_voice"}') == len(answered)
    assert sample('parley_calls_ended_total{cause="NORMAL_CLEARING"}') == 1
    assert sample("parley_active_calls") == 0
    assert sample("parley_call_cost_usd_count") == 1
    recorded = asyncio.run(cost())
    assert recorded is not None and recorded > 0
    assert sample("parley_call_cost_usd_sum") == pytest.approx(recorded)


def test_a_caller_who_hangs_up_mid_sentence_leaves_what_they_said_in_the_records(
    engine: Engine, tmp_path: Path
) -> None:
    """No endpoint ever comes: the session finalizes STT at teardown and records the words so far."""
    from parley.observe.records import RecordStore

    url = f"sqlite+aiosqlite:///{tmp_path / 'calls.db'}"
    scenario_file = tmp_path / "s.yaml"
    scenario_file.write_text("name: cut-off\ntimeout_s: 40\nsteps:\n  - wait_agent: true\n"
                             "  - say: 'I would like to book a cleaning for next Tuesday morning, please.'\n"
                             "    say_ms: 1800\n    hangup: true\n")
    result = asyncio.run(run_scenario(load_scenario(scenario_file), engine, caller_voice("hibari-low", engine.tts),
                                      tmp_path / "spool", records_url=url))
    turns = [(t.caller, t.endpoint_reason, t.agent_full) for t in result.session.turns]
    (turn,) = [t for t in result.session.turns if t.endpoint_reason == "hangup"] or [None]
    assert turn is not None, turns
    assert turn.agent == "" and turn.agent_full == "", turns
    assert "book" in turn.caller.lower() and "please" not in turn.caller.lower(), turns  # the words before the cut

    async def read() -> list[tuple[str, str]]:
        async with RecordStore.open(url) as store:
            (summary,) = await store.list_calls(limit=5)
            detail = await store.get_call(summary.id)
            assert detail is not None and detail.call.status == "completed"
            return [(t.caller_text, t.endpoint_reason) for t in detail.turns]

    assert (turn.caller, "hangup") in asyncio.run(read())


def test_a_superseded_reply_is_stopped_before_the_newer_one_plays(engine: Engine, tmp_path: Path) -> None:
    """A key press while the agent answers: the answer is broken (uuid_break) before the reply to the key is
    queued, so nothing of the old reply is heard once the new one starts (it used to play to its end)."""
    scenario_file = tmp_path / "s.yaml"
    scenario_file.write_text(
        "name: supersede\nsteps:\n  - wait_agent: true\n  - say: 'Hi, I would like to book a cleaning.'\n"
        "  - pause_ms: 900\n  - dtmf: '1#'\n  - wait_agent: true\n  - hangup: true\n"
    )
    result = asyncio.run(run_scenario(load_scenario(scenario_file), engine,
                                      caller_voice("hibari-low", engine.tts), tmp_path / "spool"))

    def utterance(path: str) -> str:
        return path.split("parley_utterance=", 1)[1].split(",", 1)[0]

    plays = [p for p in result.fake_call.playbacks if "parley_utterance=" in p.path]
    order = list(dict.fromkeys(utterance(p.path) for p in plays))
    assert len(order) >= 3  # greeting, the answer, the reply to the key
    answer, newer = order[1], order[2]
    newer_start = min(p.started_at for p in plays if utterance(p.path) == newer and p.started_at is not None)
    for p in plays:
        if utterance(p.path) == answer and p.started_at is not None:
            assert p.stopped_at is not None and p.stopped_at <= newer_start + 1e-3  # silent before the newer
    breaks = [i for i, c in enumerate(result.commands) if b"uuid_break" in c]
    first_newer = next(i for i, c in enumerate(result.commands) if newer.encode() in c)
    assert breaks and breaks[0] < first_newer  # the break left before the newer reply was queued
    answered = next(t for t in result.session.turns if t.caller.startswith("Hi"))
    assert answered.agent and len(answered.agent) < len(answered.agent_full)  # recorded as heard: cut short
