"""``parley providers check`` with and without ``--live`` against the loopback fakes (fake keys, fake URLs):
retiring and unknown models flagged from the model list, the Realtime TTS checked without billing, and the
live path (a 2 s utterance through STT, a one-sentence LLM reply, a one-sentence TTS, a realtime greeting)
exercised end to end offline. A counting clock stands in for time: nothing here measures real time."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from parley.compose import Providers, check_providers, live_check
from parley.config import settings_from_mapping
from testkit.fakes.deepgram import FakeDeepgram
from testkit.fakes.openai_chat import FakeOpenAI, dialogue
from testkit.fakes.openai_realtime import FakeOpenAIRealtime

KEY = "sk-test-check-0123"
ENV = {"DEEPGRAM_API_KEY": "dg-test-key", "OPENAI_API_KEY": KEY}


def counter() -> Callable[[], float]:
    ticks = itertools.count()
    return lambda: next(ticks) * 0.01


def http_base(ws_url: str) -> str:
    return ws_url.replace("ws://", "http://").removesuffix("/realtime")


async def test_check_flags_a_retiring_tts_model_and_an_unknown_one_and_passes_the_successor() -> None:
    async with FakeOpenAIRealtime(KEY) as rt:
        out = {}
        for name, options, tts in (
            ("retiring", {"openai": {"base_url": http_base(rt.url), "tts_model": "tts-1"}}, "openai"),
            ("typo", {"openai": {"base_url": http_base(rt.url), "tts_model": "gpt-4o-mini-ttz"}}, "openai"),
            ("successor", {"openai-realtime": {"url": rt.url}}, "openai-realtime"),
            ("successor, wrong model", {"openai-realtime": {"url": rt.url, "model": "gpt-realtime-9"}},
             "openai-realtime"),
        ):
            settings = settings_from_mapping({"conversation": {"stt": ["whisper"], "llm": ["rules"], "tts": [tts]},
                                              "providers": options}, env={})
            results = await check_providers(Providers(settings, env=ENV))
            (result,) = [r for r in results if r.capability == "tts"]
            out[name] = (result.status, result.detail)
        assert len(rt.connections) == 2  # the Realtime TTS opened a session (auth) and spoke nothing
        assert not rt.received("response.create")
    assert out["retiring"] == ("deprecated model", "tts-1 shuts down on 2027-01-06: move to a current model")
    assert out["typo"][0] == "unknown model"
    assert out["successor"] == ("ok", "")
    assert out["successor, wrong model"][0] == "unknown model"


async def test_check_flags_an_llm_model_the_list_dates() -> None:
    async with FakeOpenAIRealtime(KEY) as rt:  # its list dates gpt-4o-mini 2027-01-14
        settings = settings_from_mapping({"conversation": {"stt": ["whisper"], "llm": ["openai"], "tts": ["espeak"]},
                                          "providers": {"openai": {"base_url": http_base(rt.url),
                                                                   "model": "gpt-4o-mini"}}}, env={})
        results = await check_providers(Providers(settings, env=ENV))
    (llm,) = [r for r in results if r.capability == "llm"]
    assert (llm.status, llm.detail) == ("deprecated model", "gpt-4o-mini shuts down on 2027-01-14: move to a current model")


async def test_live_check_runs_one_request_per_configured_vendor_offline() -> None:
    async with (FakeDeepgram(ENV["DEEPGRAM_API_KEY"], transcripts=["can you hear me"]) as dg,
                FakeOpenAI(script=dialogue(["Yes, I can hear you."])) as oa,
                FakeOpenAIRealtime(KEY, ms_per_char=5.0, chunk_interval_s=0.0) as rt):
        settings = settings_from_mapping({
            "conversation": {"stt": ["deepgram"], "llm": ["openai", "rules"], "tts": ["openai-realtime"]},
            "providers": {"deepgram": {"url": dg.listen_url}, "openai": {"base_url": oa.base_url},
                          "openai-realtime": {"url": rt.url}},
        }, env={})
        results = await live_check(Providers(settings, env=ENV), now=counter(), pace=False, timeout_s=10)
    by = {(r.capability, r.provider): r for r in results}
    stt, llm, tts = by["stt", "deepgram"], by["llm", "openai"], by["tts", "openai-realtime"]
    assert (stt.status, stt.detail) == ("ok", "can you hear me")
    assert (llm.status, llm.detail) == ("ok", "Yes, I can hear you.")
    assert tts.status == "ok" and tts.detail.endswith("s of audio for 40 characters")
    assert all(r.first_ms > 0 and r.total_ms >= r.first_ms for r in (stt, llm, tts))
    assert by["llm", "rules"].status == "skipped"
    (create,) = rt.received("response.create")
    assert isinstance(create["response"], dict) and create["response"]["conversation"] == "none"


async def test_live_check_reports_a_refused_key_and_the_realtime_engine() -> None:
    async with FakeOpenAIRealtime(KEY, ms_per_char=5.0, chunk_interval_s=0.0) as rt:
        settings = settings_from_mapping({
            "conversation": {"engine": "realtime", "stt": ["whisper"], "llm": ["rules"], "tts": ["openai-realtime"]},
            "providers": {"openai-realtime": {"url": rt.url, "api_key_env": "WRONG_KEY"},
                          "realtime": {"provider": "openai", "url": rt.url}},
        }, env={})
        results = await live_check(Providers(settings, env={**ENV, "WRONG_KEY": "sk-wrong-0123"}), now=counter(),
                                   pace=False, timeout_s=10)
    by = {(r.capability, r.provider): r for r in results}
    assert by["tts", "openai-realtime"].status == "failed"
    assert "sk-wrong-0123" not in by["tts", "openai-realtime"].detail
    assert by["realtime", "openai"].status == "ok"


async def test_cli_providers_check_live_prints_time_to_first_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from parley.cli import main

    async with (FakeDeepgram(ENV["DEEPGRAM_API_KEY"], transcripts=["can you hear me"]) as dg,
                FakeOpenAI(script=dialogue(["Yes."])) as oa,
                FakeOpenAIRealtime(KEY, ms_per_char=5.0, chunk_interval_s=0.0) as rt):
        config = tmp_path / "parley.yaml"
        config.write_text(json.dumps({
            "conversation": {"stt": ["deepgram"], "llm": ["openai", "rules"], "tts": ["openai-realtime"]},
            "providers": {"deepgram": {"url": dg.listen_url}, "openai": {"base_url": oa.base_url},
                          "openai-realtime": {"url": rt.url}},
        }))
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        monkeypatch.setenv("DEEPGRAM_API_KEY", ENV["DEEPGRAM_API_KEY"])
        # the CLI runs its own event loop (and paces the utterance at real time); the fakes serve on this one
        code = await asyncio.to_thread(main, ["--config", str(config), "providers", "check", "--live"])
    out = capsys.readouterr().out
    assert "live: one short real request each" in out
    rows = {tuple(line.split()[:3]) for line in out.split("live: one short real request each")[1].splitlines()
            if line.strip()}
    assert {("stt", "deepgram", "ok"), ("llm", "openai", "ok"), ("tts", "openai-realtime", "ok"),
            ("llm", "rules", "skipped")} <= rows
    assert code == 0
