"""Live checks against the real vendors: ``pytest -m live`` with the vendor's key in the environment.

Each test runs the same probe as ``parley providers check --live`` for one vendor and capability (a 2 s
utterance through STT, a one-sentence LLM reply, a one-sentence TTS, a realtime greeting) and prints the
time to first result. Without ``-m live`` every test here is skipped, also when keys are set (they bill);
with it, a test whose key (or voice id) is missing is skipped. Nothing here runs in the default suite.
"""

from __future__ import annotations

import os

import pytest

from parley.compose import Providers, live_check
from parley.config import settings_from_mapping

pytestmark = pytest.mark.live

# (capability, provider, the env vars it needs, options taken from env vars)
CASES = [
    ("stt", "deepgram", ("DEEPGRAM_API_KEY",), {}),
    ("stt", "assemblyai", ("ASSEMBLYAI_API_KEY",), {}),
    ("llm", "openai", ("OPENAI_API_KEY",), {"model": "PARLEY_LIVE_OPENAI_MODEL"}),
    ("llm", "anthropic", ("ANTHROPIC_API_KEY",), {}),
    ("tts", "openai-realtime", ("OPENAI_API_KEY",), {}),
    ("tts", "openai", ("OPENAI_API_KEY",), {}),  # /v1/audio/speech: until 2027-01-06
    ("tts", "deepgram", ("DEEPGRAM_API_KEY",), {}),
    ("tts", "elevenlabs", ("ELEVENLABS_API_KEY", "ELEVENLABS_VOICE_ID"), {"voice_id": "ELEVENLABS_VOICE_ID"}),
    ("tts", "cartesia", ("CARTESIA_API_KEY", "CARTESIA_VOICE_ID"), {"voice_id": "CARTESIA_VOICE_ID"}),
    ("realtime", "openai", ("OPENAI_API_KEY",), {}),
    ("realtime", "gemini", ("GEMINI_API_KEY",), {}),
]
LOCAL = {"stt": "whisper", "llm": "rules", "tts": "espeak"}


@pytest.fixture(autouse=True)
def _only_when_asked(request: pytest.FixtureRequest) -> None:
    if "live" not in (request.config.option.markexpr or ""):
        pytest.skip("live vendor checks run only with -m live (they bill a fraction of a cent)")


@pytest.mark.parametrize(("capability", "provider", "needs", "from_env"), CASES,
                         ids=[f"{c}-{p}" for c, p, _, _ in CASES])
async def test_live(capability: str, provider: str, needs: tuple[str, ...], from_env: dict[str, str]) -> None:
    missing = [name for name in needs if not os.environ.get(name)]
    if missing:
        pytest.skip(f"set {', '.join(missing)} to run this live check")
    chain = dict(LOCAL)
    options: dict[str, dict[str, object]] = {}
    conversation: dict[str, object] = {}
    if capability == "realtime":
        conversation["engine"] = "realtime"
        options["realtime"] = {"provider": provider}
    else:
        chain[capability] = provider
        options[provider] = {key: os.environ[env] for key, env in from_env.items() if os.environ.get(env)}
    conversation.update({kind: [name] for kind, name in chain.items()})
    settings = settings_from_mapping({"conversation": conversation, "providers": options}, env={})
    results = await live_check(Providers(settings), pace=True)
    (result,) = [r for r in results if r.capability == capability]
    print(f"\n{capability} {provider}: {result.status}, first result {result.first_ms:.0f} ms, "
          f"total {result.total_ms:.0f} ms: {result.detail}")
    assert result.status == "ok", result.detail
