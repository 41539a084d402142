"""The composition root's provider half: provider names in the settings -> provider objects and chains.

Owns: which module implements which name, their options (``providers:`` in the config file), API keys
(from environment variables only, never logged), loading local models once per process, and wrapping a
capability with more than one provider in a fallback chain. This is the only module that imports
provider modules, lazily, so a missing optional extra fails at start-up with an install hint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from parley.config import Settings
from parley.errors import ConfigError, ParleyError
from parley.providers.base import LLMProvider, STTProvider, TTSProvider
from parley.providers.errors import ProviderAuthError, ProviderConnectionError, ProviderTimeout
from parley.providers.fallback import FallbackLLM, FallbackSTT, FallbackTTS, SwitchHook
from parley.providers.realtime_base import RealtimeProvider

if TYPE_CHECKING:
    from parley.providers.live_check import LiveResult
    from parley.providers.model_list import Verdict

log = logging.getLogger("parley.compose")

STT_NAMES = ("whisper", "deepgram", "assemblyai")
LLM_NAMES = ("rules", "openai", "anthropic")
TTS_NAMES = ("hibari", "piper", "espeak", "deepgram", "elevenlabs", "cartesia", "openai", "openai-realtime")
LOCAL = frozenset({"whisper", "rules", "hibari", "piper", "espeak"})
KEY_ENV = {
    "deepgram": "DEEPGRAM_API_KEY",
    "assemblyai": "ASSEMBLYAI_API_KEY",
    "openai": "OPENAI_API_KEY",
    "openai-realtime": "OPENAI_API_KEY",
    "anthropic": "ANTHROPIC_API_KEY",
    "elevenlabs": "ELEVENLABS_API_KEY",
    "cartesia": "CARTESIA_API_KEY",
    "gemini": "GEMINI_API_KEY",
}
REALTIME_NAMES = ("openai", "gemini")  # providers.realtime.provider: the speech-to-speech models


class Providers:
    """Builds providers from settings; local models are loaded once and shared by every call."""

    def __init__(
        self,
        settings: Settings,
        env: Mapping[str, str] | None = None,
        *,
        on_switch: SwitchHook | None = None,
    ) -> None:
        self.settings = settings
        self.env = os.environ if env is None else env
        self.on_switch = on_switch  # an extra observer: the call hears of a switch through its streams
        self._models: dict[str, Any] = {}
        conv = settings.conversation
        chains = (("stt", conv.stt, STT_NAMES), ("llm", conv.llm, LLM_NAMES), ("tts", conv.tts, TTS_NAMES))
        for kind, names, known in chains:
            if not names:
                raise ConfigError(f"conversation.{kind}: name at least one provider ({', '.join(known)})")
            for name in names:
                if name not in known:
                    raise ConfigError(f"conversation.{kind}: unknown provider {name!r}; known: {', '.join(known)}")

    # ---- options and keys ----------------------------------------------------------------------------

    def options(self, vendor: str) -> dict[str, Any]:
        return dict(self.settings.providers.get(vendor, {}))

    def key(self, vendor: str) -> str:
        env_name = str(self.options(vendor).get("api_key_env") or KEY_ENV[vendor])
        value = self.env.get(env_name, "")
        if not value:
            raise ConfigError(f"{vendor} is configured but {env_name} is not set (API keys come from the environment)")
        return value

    def _model(self, name: str, load: Callable[[], Any]) -> Any:
        if name not in self._models:
            self._models[name] = load()
        return self._models[name]

    # ---- chains --------------------------------------------------------------------------------------

    def stt(self) -> STTProvider:
        """A chain, also of one cloud recognizer: the result deadline applies to it too, and its stall ends in
        the apology instead of silence. A lone local recognizer is used as it is: it has no connection to
        hang, and on a loaded box its late answer beats hanging up with an apology."""
        conv = self.settings.conversation
        items = [self.one_stt(n) for n in conv.stt]
        if len(items) == 1 and conv.stt[0] in LOCAL:
            return items[0]
        return FallbackSTT(items, on_switch=self.on_switch, final_timeout_s=conv.stt_final_timeout_s or None)

    def llm(self) -> LLMProvider:
        """Always a chain (of one, too): the first-token deadline applies to a lone cloud provider as well (not
        to a local brain)."""
        conv = self.settings.conversation
        items = [self.one_llm(n) for n in conv.llm]
        return FallbackLLM(items, on_switch=self.on_switch, first_output_s=conv.llm_first_token_timeout_s or None,
                           patient=[i for i, n in enumerate(conv.llm) if n in LOCAL])

    def tts(self) -> TTSProvider:
        """Always a chain; the first-audio deadline applies to the cloud voices, not to a local one (its late
        sentence on a loaded box beats an apology in the same voice)."""
        conv = self.settings.conversation
        items = [self.one_tts(n) for n in conv.tts]
        return FallbackTTS(items, on_switch=self.on_switch, first_output_s=conv.tts_first_audio_timeout_s or None,
                           patient=[i for i, n in enumerate(conv.tts) if n in LOCAL])

    def local_voice(self) -> TTSProvider:
        """The voice that apologises when everything else failed: the configured local one, else hibari."""
        local = [n for n in self.settings.conversation.tts if n in LOCAL]
        return self.one_tts(local[0] if local else "hibari")

    def realtime(self) -> RealtimeProvider | None:
        """The speech-to-speech model when ``conversation.engine`` is realtime (``providers.realtime``)."""
        if self.settings.conversation.engine != "realtime":
            return None
        o = self.options("realtime")
        name = str(o.get("provider", "openai"))
        if name not in REALTIME_NAMES:
            raise ConfigError(f"providers.realtime.provider: unknown {name!r}; known: {', '.join(REALTIME_NAMES)}")
        key_env = str(o.get("api_key_env") or KEY_ENV[name])
        key = self.env.get(key_env, "")
        if not key:
            raise ConfigError(f"realtime {name} is configured but {key_env} is not set (keys come from the env)")
        if name == "openai":
            from parley.providers.openai_realtime import OpenAIRealtime

            return OpenAIRealtime(key, **_pick(o, model="model", voice="voice", url="url",
                                               vad_silence_ms="vad_silence_ms", transcribe_model="transcribe_model"))
        from parley.providers.gemini_live import GeminiLive

        return GeminiLive(key, **_pick(o, model="model", voice="voice", url="url"))

    def realtime_turns(self) -> Literal["server", "parley"]:
        """Who ends the caller's turns on a realtime call: the model's VAD (server) or parley's turn machine."""
        value = self.options("realtime").get("turn_detection", "server")
        if value not in ("server", "parley"):
            raise ConfigError(f"providers.realtime.turn_detection: {value!r} is not one of ['server', 'parley']")
        return "parley" if value == "parley" else "server"

    # ---- single providers ----------------------------------------------------------------------------

    def one_stt(self, name: str) -> STTProvider:
        o = self.options(name)
        if name == "whisper":
            from parley.providers.whisper_stt import WhisperModelPool, WhisperSTT

            pool = self._model("whisper", lambda: WhisperModelPool.load(cpu_threads=int(o.get("threads", 1))))
            return WhisperSTT(pool)
        if name == "deepgram":
            from parley.providers.deepgram_stt import DeepgramSTT

            return DeepgramSTT(self.key(name), **_pick(o, stt_model="model", language="language", url="url",
                                                      endpointing_ms="endpointing_ms",
                                                      utterance_end_ms="utterance_end_ms"))
        from parley.providers.assemblyai_stt import AssemblyAISTT

        return AssemblyAISTT(self.key(name), **_pick(o, url="url"))

    def one_llm(self, name: str) -> LLMProvider:
        o = self.options(name)
        if name == "rules":
            from parley.providers.rules_llm import RulesDialogue

            path = self.settings.conversation.rules_file
            return RulesDialogue.from_path(path) if path else RulesDialogue.builtin("receptionist")
        if name == "openai":
            from parley.providers.openai_llm import DEFAULT_MODEL as OPENAI_DEFAULT_MODEL
            from parley.providers.openai_llm import OpenAICompatLLM

            base = str(o.get("base_url", "https://api.openai.com/v1"))
            key_env = str(o.get("api_key_env") or KEY_ENV["openai"])
            key = self.env.get(key_env) or None  # local OpenAI-compatible servers (Ollama, vLLM) need no key
            if key is None and "api.openai.com" in base:
                raise ConfigError(f"openai is configured but {key_env} is not set")
            return OpenAICompatLLM(base, key, str(o.get("model", OPENAI_DEFAULT_MODEL)),
                                   **_pick(o, temperature="temperature", max_tokens="max_tokens"))
        from parley.providers.anthropic_llm import AnthropicLLM

        return AnthropicLLM(self.key(name), str(o.get("model", "claude-haiku-4-5")),
                            **_pick(o, base_url="base_url", max_tokens="max_tokens"))

    def one_tts(self, name: str) -> TTSProvider:
        o = self.options(name)
        if name == "hibari":
            from parley.providers.hibari_tts import HibariModel, HibariTTS

            model = self._model("hibari", lambda: HibariModel.load(threads=int(o.get("threads", 1))))
            return HibariTTS(model)
        if name == "piper":
            from parley.providers.piper_tts import PiperModel, PiperTTS

            model = self._model("piper", lambda: PiperModel.load(threads=int(o.get("threads", 1))))
            return PiperTTS(model)
        if name == "espeak":
            from parley.providers.espeak_tts import EspeakTTS

            return EspeakTTS(**_pick(o, voice="voice", rate_wpm="rate_wpm"))
        if name == "deepgram":
            from parley.providers.deepgram_tts import DeepgramTTS

            opts = _pick(o, tts_model="model", speak_url="url", sample_rate="sample_rate")
            return DeepgramTTS(self.key(name), **opts)
        if name == "elevenlabs":
            from parley.providers.elevenlabs_tts import ElevenLabsTTS

            return ElevenLabsTTS(self.key(name), str(o.get("voice_id", "")) or _need(name, "voice_id"),
                                 **_pick(o, model="model", url_base="url_base", sample_rate="sample_rate"))
        if name == "cartesia":
            from parley.providers.cartesia_tts import CartesiaTTS

            return CartesiaTTS(self.key(name), str(o.get("voice_id", "")) or _need(name, "voice_id"),
                               **_pick(o, model="model", url="url", sample_rate="sample_rate"))
        if name == "openai-realtime":  # the successor of /v1/audio/speech: TTS on the Realtime client
            from parley.providers.openai_realtime_tts import OpenAIRealtimeTTS

            return OpenAIRealtimeTTS(self.key(name),
                                     **_pick(o, model="model", voice="voice", url="url", instructions="instructions"))
        from parley.providers.openai_tts import OpenAITTS

        return OpenAITTS(self.key("openai"), **_pick(o, tts_model="model", voice="voice", base_url="base_url"))


def _pick(options: Mapping[str, Any], **names: str) -> dict[str, Any]:
    """Options present in the config, renamed to constructor arguments."""
    return {arg: options[key] for key, arg in names.items() if key in options}


def _need(vendor: str, option: str) -> str:
    raise ConfigError(f"providers.{vendor}.{option} is required")


# ---- `parley providers check` --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CheckResult:
    capability: str
    provider: str
    status: str  # ok | not configured | authentication failed | unreachable | error | deprecated model | unknown model
    detail: str = ""
    ms: float = 0.0


async def check_providers(made: Providers) -> list[CheckResult]:
    """Is each configured provider reachable and authenticated, and is its model still served? Costs nothing
    billable where avoidable (model lists, opened sockets), and flags a model the vendor retires or does not
    list."""
    conv = made.settings.conversation
    results: list[CheckResult] = []
    for capability, names in (("stt", conv.stt), ("llm", conv.llm), ("tts", conv.tts)):
        for name in dict.fromkeys(names):
            t0 = time.perf_counter()
            status, detail = await _outcome(_check_one(made, capability, name))
            results.append(CheckResult(capability, name, status, detail, round((time.perf_counter() - t0) * 1000, 1)))
    if conv.engine == "realtime":
        results.append(await _check_realtime(made))
    return results


async def _outcome(check: Awaitable[Verdict | None]) -> tuple[str, str]:
    try:
        found = await check
    except ConfigError as exc:
        return "not configured", str(exc)
    except ProviderAuthError as exc:
        return "authentication failed", str(exc)
    except (ProviderConnectionError, ProviderTimeout) as exc:
        return "unreachable", str(exc)
    except ParleyError as exc:
        return "error", str(exc)
    return (found.status, found.detail) if found is not None else ("ok", "")


async def _check_realtime(made: Providers) -> CheckResult:
    """Open a realtime session and close it: authenticates and configures, and bills nothing (no response)."""
    name = str(made.options("realtime").get("provider", "openai"))
    t0 = time.perf_counter()

    async def check() -> Verdict | None:
        provider = made.realtime()
        assert provider is not None
        return await provider.check()

    status, detail = await _outcome(check())
    return CheckResult("realtime", name, status, detail, round((time.perf_counter() - t0) * 1000, 1))


async def _check_one(made: Providers, capability: str, name: str) -> Verdict | None:
    """The provider's own check (each knows what proves it works without billing), then close what it opened."""
    provider: STTProvider | LLMProvider | TTSProvider
    if capability == "stt":
        provider = made.one_stt(name)
    elif capability == "llm":
        provider = made.one_llm(name)
    else:
        provider = made.one_tts(name)
    try:
        return await provider.check()
    finally:
        with contextlib.suppress(ParleyError):
            await provider.aclose()


# ---- `parley providers check --live` ---------------------------------------------------------------------


async def live_check(made: Providers, *, now: Callable[[], float] = time.perf_counter, pace: bool = True,
                     timeout_s: float = 15.0) -> list[LiveResult]:
    """One short real (billed, a fraction of a cent) request per configured cloud provider, timed.

    Local providers (whisper, rules, hibari, piper, espeak) are listed as skipped: they need no key."""
    from parley.providers import live_check as probe

    conv = made.settings.conversation
    results: list[LiveResult] = []
    for capability, names in (("stt", conv.stt), ("llm", conv.llm), ("tts", conv.tts)):
        for name in dict.fromkeys(names):
            if name in LOCAL:
                results.append(probe.LiveResult(capability, name, "skipped", detail="local provider"))
                continue
            try:
                if capability == "stt":
                    results.append(await probe.live_stt(made.one_stt(name), now=now, pace=pace, timeout_s=timeout_s))
                elif capability == "llm":
                    results.append(await probe.live_llm(made.one_llm(name), now=now, timeout_s=timeout_s))
                else:
                    tts = made.one_tts(name)
                    try:
                        results.append(await probe.live_tts(tts, now=now, timeout_s=timeout_s))
                    finally:
                        with contextlib.suppress(ParleyError):
                            await tts.aclose()
            except ConfigError as exc:
                results.append(probe.LiveResult(capability, name, "not configured", detail=str(exc)))
    if conv.engine == "realtime":
        name = str(made.options("realtime").get("provider", "openai"))
        try:
            realtime = made.realtime()
            assert realtime is not None
            found = await probe.live_realtime(realtime, now=now, timeout_s=timeout_s)
            results.append(dataclasses.replace(found, provider=name))  # the configured name, as in the check
        except ConfigError as exc:
            results.append(probe.LiveResult("realtime", name, "not configured", detail=str(exc)))
    return results
