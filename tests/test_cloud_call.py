"""A whole simulated call on a cloud stack (Deepgram + OpenAI-compatible + ElevenLabs), every vendor a
loopback fake speaking its documented protocol, chosen purely by configuration; and the same call with
providers failing mid-call, where the fallback chains switch to the local stack."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from parley.app import build_engine
from parley.compose import Providers
from parley.config import settings_from_mapping
from parley.sim.caller_voice import caller_voice
from parley.sim.simulate import SimulationResult, load_scenario, run_scenario
from testkit.fakes.deepgram import FakeDeepgram, Faults
from testkit.fakes.elevenlabs import FakeElevenLabs
from testkit.fakes.openai_chat import FakeOpenAI, dialogue

pytest.importorskip("faster_whisper")

ENV = {"DEEPGRAM_API_KEY": "dg-test-key", "OPENAI_API_KEY": "sk-test-0123", "ELEVENLABS_API_KEY": "xi-test-key-0123456789"}
REPLIES = [
    "Sure, I can book a cleaning for you. What day works best?",
    ("Great, you're booked for Tuesday. Goodbye!", "hangup"),
]
SCENARIO = """
name: cloud-booking
timeout_s: 60
steps:
  - wait_agent: true
  - say: "Hi, I would like to book a cleaning."
  - wait_agent: true
  - say: "Tuesday, please."
  - wait_agent: true
  - silence_s: 3
"""


async def run_cloud_call(tmp: Path, *, dg: FakeDeepgram, el: FakeElevenLabs) -> tuple[SimulationResult, list[str], FakeOpenAI]:
    switches: list[str] = []
    async with dg, el, FakeOpenAI(script=dialogue(REPLIES)) as oa:
        settings = settings_from_mapping(
            {
                "conversation": {
                    "stt": ["deepgram", "whisper"],
                    "llm": ["openai", "rules"],
                    "tts": ["elevenlabs", "hibari"],
                    "greeting": "Thanks for calling Riverside Dental.",
                },
                "providers": {
                    "deepgram": {"url": f"ws://127.0.0.1:{dg.port}/v1/listen"},
                    "openai": {"base_url": oa.base_url, "model": "gpt-4o-mini"},
                    "elevenlabs": {"voice_id": "voice-riley", "url_base": el.url_base},
                },
            },
            env={},
        )
        made = Providers(settings, env=ENV, on_switch=lambda cap, a, b, e: switches.append(f"{cap}:{a}->{b}"))
        engine = await asyncio.to_thread(build_engine, settings, providers=made)
        scenario_file = tmp / "s.yaml"
        scenario_file.write_text(SCENARIO)
        voice = caller_voice("hibari-low")
        result = await run_scenario(load_scenario(scenario_file), engine, voice, tmp / "spool")
    return result, switches, oa


def test_cloud_stack_by_configuration(tmp_path: Path) -> None:
    dg = FakeDeepgram(ENV["DEEPGRAM_API_KEY"], transcripts=["Hi, I would like to book a cleaning.", "Tuesday, please."])
    el = FakeElevenLabs(api_key=ENV["ELEVENLABS_API_KEY"])
    result, switches, oa = asyncio.run(run_cloud_call(tmp_path, dg=dg, el=el))
    turns = result.session.turns
    assert [t.caller for t in turns[:2]] == ["Hi, I would like to book a cleaning.", "Tuesday, please."]
    assert turns[0].agent_full == REPLIES[0]
    assert any(c.name == "hangup" for c in turns[1].tool_calls) and result.fake_call.hungup
    assert switches == []
    # the brain saw the conversation so far, as the caller heard it
    last = oa.requests[-1].body["messages"]
    assert [m["role"] for m in last][:4] == ["system", "assistant", "user", "assistant"]  # type: ignore[index]
    providers = {u.provider for u in result.session.usage}
    assert {"deepgram", "openai", "elevenlabs"} <= providers
    assert el.connections and dg.listen_sessions
    assert all(stage in turns[0].timings.ms() for stage in ("stt_final", "llm_first_token", "tts_first_audio",
                                                              "playback_start"))


def test_providers_fail_mid_call_and_the_local_stack_takes_over(tmp_path: Path) -> None:
    # Deepgram drops the socket during the second turn; ElevenLabs refuses the key from the start.
    dg = FakeDeepgram(ENV["DEEPGRAM_API_KEY"], transcripts=["Hi, I would like to book a cleaning.", "Tuesday, please."],
                      listen=Faults(drop_after_frames=150))  # ~20 frames into turn 2
    el = FakeElevenLabs(api_key="a-different-key-than-ours")
    result, switches, _ = asyncio.run(run_cloud_call(tmp_path, dg=dg, el=el))
    assert "tts:elevenlabs->hibari-local" in switches
    assert "stt:deepgram->whisper-local" in switches
    turns = result.session.turns
    assert "tuesday" in " ".join(t.caller.lower() for t in turns)  # heard by whisper after the switch
    assert any(c.name == "hangup" for t in turns for c in t.tool_calls)  # the call still completed
    assert not result.session.failed
    failed = [u for u in result.session.usage if u.failed]
    assert failed  # failed requests still leave their usage (cost) behind


def test_providers_check_reports_reachability_and_authentication() -> None:
    from parley.compose import check_providers
    from parley.sim.echo_call import free_port

    async def main() -> dict[str, str]:
        dg = FakeDeepgram(ENV["DEEPGRAM_API_KEY"])
        el = FakeElevenLabs(api_key="not-the-key-we-send")  # our key is refused
        async with dg, el, FakeOpenAI(script=dialogue(["hi"])) as oa:
            settings = settings_from_mapping(
                {
                    "conversation": {"stt": ["deepgram"], "llm": ["openai", "anthropic"], "tts": ["elevenlabs", "cartesia"]},
                    "providers": {
                        "deepgram": {"url": f"ws://127.0.0.1:{dg.port}/v1/listen"},
                        "openai": {"base_url": oa.base_url},
                        "elevenlabs": {"voice_id": "v", "url_base": el.url_base},
                        "cartesia": {"voice_id": "v", "url": f"ws://127.0.0.1:{free_port()}/tts/websocket"},
                    },
                },
                env={},
            )
            env = {**ENV, "CARTESIA_API_KEY": "ck-test"}  # no ANTHROPIC_API_KEY
            results = await check_providers(Providers(settings, env=env))
        return {r.provider: r.status for r in results}

    status = asyncio.run(main())
    assert status == {
        "deepgram": "ok",
        "openai": "ok",
        "anthropic": "not configured",
        "elevenlabs": "authentication failed",
        "cartesia": "unreachable",
    }
