"""Engine.aclose: at shutdown every provider closes what it holds across calls, once, bounded."""

from __future__ import annotations

import asyncio

import pytest

from parley.agent import engine as engine_module
from parley.agent.engine import Engine
from parley.config import ConversationSettings
from parley.providers.errors import ProviderConnectionError
from parley.turns.policy import TurnPolicy


class Holder:
    """A provider that holds something across calls (a socket pool); how its close goes is scripted."""

    def __init__(self, name: str, *, fails: bool = False, hangs: bool = False) -> None:
        self.name, self.fails, self.hangs, self.closed = name, fails, hangs, 0

    async def aclose(self) -> None:
        self.closed += 1
        if self.hangs:
            await asyncio.sleep(3600)
        if self.fails:
            raise ProviderConnectionError("reset during close", provider=self.name)


def engine(stt: Holder, llm: Holder, tts: Holder, emergency: Holder | None) -> Engine:
    return Engine(stt=stt, llm=llm, tts=tts, policy=TurnPolicy(), conversation=ConversationSettings(),  # type: ignore[arg-type]
                  vad_factory=lambda rate: None, emergency_tts=emergency)  # type: ignore[arg-type, return-value]


async def test_every_provider_is_closed_once_even_when_one_fails_or_hangs(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(engine_module, "CLOSE_TIMEOUT_S", 0.05)
    stt, llm, voice = Holder("deepgram", fails=True), Holder("openai", hangs=True), Holder("hibari")
    await engine(stt, llm, voice, emergency=voice).aclose()  # the local voice is also the emergency voice
    assert (stt.closed, llm.closed, voice.closed) == (1, 1, 1)
    assert "closing deepgram failed: reset during close" in caplog.text
    assert "closing openai failed: no answer within" in caplog.text  # the hung close was given up, and the rest still closed
