"""Whole simulated calls on a speech-to-speech model (the OpenAI Realtime fake) through the fake FreeSWITCH:
the greeting, a barge-in whose truncation matches what FreeSWITCH says the caller heard, a tool call that
ends the call; and a model that drops mid-call, where the caller hears an apology in the local voice and
the pipeline takes the rest of the call. The figures print (never asserted as timings)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from parley.agent.realtime import RealtimeSession
from parley.agent.realtime_engine import RealtimeEngine
from parley.app import build_engine
from parley.compose import Providers
from parley.config import settings_from_mapping
from parley.observe import timings as tm
from parley.sim.caller_voice import caller_voice
from parley.sim.simulate import SimulationResult, load_scenario, run_scenario
from testkit.fakes.gemini_live import FakeGeminiLive, LiveReply
from testkit.fakes.openai_realtime import FakeOpenAIRealtime, RealtimeFaults, Reply

pytest.importorskip("faster_whisper")

KEY = "sk-test-realtime-0123"
FIRST_AUDIO_S = 0.3  # the fake model's delay from response.created to its first audio
LONG = "We are open from eight in the morning until six in the evening, Monday to Friday, and on Saturdays " \
       "from nine until one; on Sundays and public holidays we are closed, but you can leave a message."
SCENARIO = """
name: realtime-barge-in
timeout_s: 60
steps:
  - wait_agent: true
  - say: "What are your opening hours?"
  - say: "Sorry, where are you located?"
    barge_in_at_ms: 1200
  - wait_agent: true
  - say: "Thanks, bye."
  - wait_agent: true
  - silence_s: 3
"""
FALLBACK = """
name: realtime-drop
timeout_s: 60
steps:
  - wait_agent: true
  - say: "Hi, I would like to book a cleaning."
  - wait_agent: true
  - say: "Tuesday, please."
  - wait_agent: true
  - silence_s: 2
"""


async def realtime_call(tmp: Path, scenario: str, fake: FakeOpenAIRealtime | FakeGeminiLive,
                        turn_detection: str = "server") -> SimulationResult:
    """The call as `parley simulate` runs it, the engine built purely from configuration."""
    async with fake:
        provider = "openai" if isinstance(fake, FakeOpenAIRealtime) else "gemini"
        settings = settings_from_mapping({
            "conversation": {"engine": "realtime", "greeting": "Thanks for calling Riverside Dental."},
            "providers": {"realtime": {"provider": provider, "url": fake.url, "turn_detection": turn_detection}},
        }, env={})
        made = Providers(settings, env={"OPENAI_API_KEY": KEY, "GEMINI_API_KEY": KEY})
        engine = await asyncio.to_thread(build_engine, settings, providers=made)
        assert isinstance(engine, RealtimeEngine)
        path = tmp / "s.yaml"
        path.write_text(scenario)
        return await run_scenario(load_scenario(path), engine, caller_voice("hibari-low"), tmp / "spool")


def heard_by_freeswitch_ms(result: SimulationResult, item_id: str) -> float:
    """What the fake FreeSWITCH played of one model item (its playbacks' scheduled start -> stop)."""
    total = 0.0
    for p in result.fake_call.playbacks:
        if Path(p.path).name.startswith(item_id + "_") and p.started_at is not None:
            end = p.stopped_at if p.stopped_at is not None else p.started_at + (p.duration_s or 0.0)
            total += 1000.0 * (end - p.started_at)
    return total


def test_realtime_call_barge_in_truncates_at_what_was_heard(tmp_path: Path) -> None:
    fake = FakeOpenAIRealtime(KEY, faults=RealtimeFaults(first_audio_delay_s=FIRST_AUDIO_S),
                              transcripts=["What are your opening hours?", "Sorry, where are you located?",
                                           "Thanks, bye."],
                              replies=[LONG, "We are at 12 River Street.", Reply("Goodbye!", "hangup")])
    result = asyncio.run(realtime_call(tmp_path, SCENARIO, fake))
    session = result.session
    assert isinstance(session, RealtimeSession)
    turns = session.turns
    assert session.greeting is not None and session.greeting.turn.agent_full == "Thanks for calling Riverside Dental."
    assert [t.caller for t in turns[:3]] == ["What are your opening hours?", "Sorry, where are you located?",
                                              "Thanks, bye."]
    barged = turns[0]
    assert barged.barge_in and barged.barge is not None and barged.agent_full == LONG
    assert barged.agent and LONG.startswith(barged.agent) and len(barged.agent) < len(LONG)
    assert len(fake.truncations) == 1
    cut = fake.truncations[0]
    heard = heard_by_freeswitch_ms(result, str(cut["item_id"]))
    audio_end = float(cut["audio_end_ms"])  # type: ignore[arg-type]
    assert abs(audio_end - heard) <= 100.0, (audio_end, heard)
    assert any(c.name == "hangup" for c in turns[2].tool_calls) and result.fake_call.hungup
    assert {u.model for u in session.usage} >= {"gpt-realtime/audio", "gpt-realtime/text-cached"}
    # the figures (printed, not asserted): engine overhead on top of the model's first audio, barge-in, cut
    timed = [t.timings for t in [session.greeting.turn, *turns]
             if {tm.PLAYBACK_COMMAND, tm.TTS_FIRST_AUDIO} <= set(t.timings.marks)]
    after_first = [1000 * (m.marks[tm.PLAYBACK_COMMAND] - m.marks[tm.TTS_FIRST_AUDIO]) for m in timed]
    overhead = [a - 1000 * m.provider_s.get(tm.TTS_FIRST_AUDIO, 0.0) for a, m in zip(after_first, timed, strict=True)]
    report = result.as_dict()
    print(f"\nrealtime call (fake first audio {FIRST_AUDIO_S * 1000:.0f} ms, audio sent 5x real time):")
    print(f"  model first audio -> first playback command: {tm.percentiles(after_first)} ms (n={len(after_first)}), "
          "of which the rest is waiting for the first 200 ms chunk of model audio")
    print(f"  engine overhead (command - arrival of the audio it carries): {tm.percentiles(overhead)} ms")
    print(f"  voice-to-voice at the ear: {report['voice_to_voice_ms']}; parley's: {report['parley_voice_to_voice_ms']}")
    print(f"  barge-in onset -> silent at the ear: {report['barge_in_silent_at_ear_ms']} ms; "
          f"parley: {barged.barge.as_dict()}")
    print(f"  truncate audio_end_ms {audio_end:.0f} vs heard by FreeSWITCH {heard:.0f} ms "
          f"(off by {abs(audio_end - heard):.0f} ms)")


def test_model_drops_mid_call_and_the_pipeline_takes_over_after_an_apology(tmp_path: Path) -> None:
    fake = FakeOpenAIRealtime(KEY, faults=RealtimeFaults(drop_in_response=2),  # 1 is the greeting
                              transcripts=["Hi, I would like to book a cleaning."], replies=["Sure, which day?"])
    result = asyncio.run(realtime_call(tmp_path, FALLBACK, fake))
    session = result.session
    assert isinstance(session, RealtimeSession)
    switches = [d for _t, kind, d in session.events if kind == "fallback"]
    assert switches and switches[0]["capability"] == "conversation" and switches[0]["to"] == "pipeline"
    assert switches[0]["from"] == "openai-realtime"
    turns = session.turns
    later = [t for t in turns if t.index > 1]
    assert later and any(t.agent for t in later)  # the pipeline answered after the switch
    assert len({t.index for t in turns}) == len(turns)  # one numbering across both engines
    spoken = [p for p in result.fake_call.playbacks if p.started_at is not None]
    assert len(spoken) >= 3  # greeting, the apology in the local voice, the pipeline's reply: never silence
    assert not session.failed


def test_gemini_live_call_with_parleys_turn_machine(tmp_path: Path) -> None:
    fake = FakeGeminiLive(KEY, transcripts=["What are your opening hours?", "Sorry, where are you located?",
                                            "Thanks, bye."],
                          replies=[LONG, "We are at 12 River Street.", LiveReply("Goodbye!", "hangup")])
    result = asyncio.run(realtime_call(tmp_path, SCENARIO, fake, turn_detection="parley"))
    session = result.session
    assert isinstance(session, RealtimeSession)
    turns = session.turns
    barged = next(t for t in turns if t.barge_in)
    assert barged.barge is not None and barged.agent and len(barged.agent) < len(barged.agent_full)
    assert fake.notes and barged.agent in fake.notes[0]  # Gemini was told what the caller heard
    assert any(c.name == "hangup" for t in turns for c in t.tool_calls) and result.fake_call.hungup
    assert {u.provider for u in session.usage} == {"gemini-live"}
    report = result.as_dict()
    print(f"\ngemini live call (parley's turn machine): v2v at the ear {report['voice_to_voice_ms']}, "
          f"barge-in onset -> silent at the ear {report['barge_in_silent_at_ear_ms']} ms")


def test_providers_check_knows_both_realtime_models() -> None:
    from parley.compose import check_providers

    async def main() -> list[tuple[str, str, str]]:
        out = []
        async with FakeOpenAIRealtime(KEY) as oa, FakeGeminiLive("another-key-entirely") as gm:
            for provider, url in (("openai", oa.url), ("gemini", gm.url)):
                settings = settings_from_mapping({"conversation": {"engine": "realtime"},
                                                  "providers": {"realtime": {"provider": provider, "url": url}}},
                                                 env={})
                made = Providers(settings, env={"OPENAI_API_KEY": KEY, "GEMINI_API_KEY": KEY})
                out += [(r.capability, r.provider, r.status) for r in await check_providers(made)
                        if r.capability == "realtime"]
        return out

    assert asyncio.run(main()) == [("realtime", "openai", "ok"), ("realtime", "gemini", "authentication failed")]
