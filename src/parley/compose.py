"""The composition root's provider half: provider names in the settings -> provider objects and chains.

Owns: which module implements which name, their options (``providers:`` in the config file), API keys
(from environment variables only, never logged), loading local models once per process, and wrapping a
capability with more than one provider in a fallback chain. This is the only module that imports
provider modules, lazily, so a missing optional extra fails at start-up with an install hint.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from parley.config import Settings
from parley.errors import ConfigError, ParleyError
from parley.observe import usage
from parley.providers.base import LLMProvider, STTProvider, TTSProvider
from parley.providers.errors import ProviderAuthError, ProviderConnectionError, ProviderTimeout
from parley.providers.fallback import FallbackLLM, FallbackSTT, FallbackTTS, SwitchHook
from parley.providers.realtime_base import RealtimeConfig, RealtimeProvider

log = logging.getLogger("parley.compose")

STT_NAMES = ("whisper", "deepgram", "assemblyai")
LLM_NAMES = ("rules", "openai", "anthropic")
TTS_NAMES = ("hibari", "piper", "espeak", "deepgram", "elevenlabs", "cartesia", "openai")
LOCAL = frozenset({"whisper", "rules", "hibari", "piper", "espeak"})
KEY_ENV = {
    "deepgram": "DEEPGRAM_API_KEY",
    "assemblyai": "ASSEMBLYAI_API_KEY",
    "openai": "OPENAI_API_KEY",
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
        self.on_switch = on_switch or _record_switch
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
        items = [self.one_stt(n) for n in self.settings.conversation.stt]
        return items[0] if len(items) == 1 else FallbackSTT(items, on_switch=self.on_switch)

    def llm(self) -> LLMProvider:
        """Always a chain (of one, too): the first-token deadline applies to a lone provider as well."""
        conv = self.settings.conversation
        items = [self.one_llm(n) for n in conv.llm]
        return FallbackLLM(items, on_switch=self.on_switch, first_output_s=conv.llm_first_token_timeout_s or None)

    def tts(self) -> TTSProvider:
        conv = self.settings.conversation
        items = [self.one_tts(n) for n in conv.tts]
        return FallbackTTS(items, on_switch=self.on_switch, first_output_s=conv.tts_first_audio_timeout_s or None)

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
            from parley.providers.openai_llm import OpenAICompatLLM

            base = str(o.get("base_url", "https://api.openai.com/v1"))
            key_env = str(o.get("api_key_env") or KEY_ENV["openai"])
            key = self.env.get(key_env) or None  # local OpenAI-compatible servers (Ollama, vLLM) need no key
            if key is None and "api.openai.com" in base:
                raise ConfigError(f"openai is configured but {key_env} is not set")
            return OpenAICompatLLM(base, key, str(o.get("model", "gpt-4o-mini")), on_cancel=usage.report,
                                   **_pick(o, temperature="temperature", max_tokens="max_tokens"))
        from parley.providers.anthropic_llm import AnthropicLLM

        return AnthropicLLM(self.key(name), str(o.get("model", "claude-haiku-4-5")), on_cancel=usage.report,
                            **_pick(o, base_url="base_url", max_tokens="max_tokens"))

    def one_tts(self, name: str) -> TTSProvider:
        o = self.options(name)
        if name == "hibari":
            from parley.providers.hibari_tts import HibariModel, HibariTTS

            model = self._model("hibari", lambda: HibariModel.load(threads=int(o.get("threads", 1))))
            return HibariTTS(model, on_cancel=usage.report)
        if name == "piper":
            from parley.providers.piper_tts import PiperModel, PiperTTS

            model = self._model("piper", lambda: PiperModel.load(threads=int(o.get("threads", 1))))
            return PiperTTS(model, on_cancel=usage.report)
        if name == "espeak":
            from parley.providers.espeak_tts import EspeakTTS

            return EspeakTTS(on_cancel=usage.report, **_pick(o, voice="voice", rate_wpm="rate_wpm"))
        if name == "deepgram":
            from parley.providers.deepgram_tts import DeepgramTTS

            opts = _pick(o, tts_model="model", speak_url="url", sample_rate="sample_rate")
            return DeepgramTTS(self.key(name), on_cancel=usage.report, **opts)
        if name == "elevenlabs":
            from parley.providers.elevenlabs_tts import ElevenLabsTTS

            return ElevenLabsTTS(self.key(name), str(o.get("voice_id", "")) or _need(name, "voice_id"),
                                 on_cancel=usage.report,
                                 **_pick(o, model="model", url_base="url_base", sample_rate="sample_rate"))
        if name == "cartesia":
            from parley.providers.cartesia_tts import CartesiaTTS

            return CartesiaTTS(self.key(name), str(o.get("voice_id", "")) or _need(name, "voice_id"),
                               on_cancel=usage.report, **_pick(o, model="model", url="url", sample_rate="sample_rate"))
        from parley.providers.openai_tts import OpenAITTS

        return OpenAITTS(self.key("openai"), on_cancel=usage.report,
                         **_pick(o, tts_model="model", voice="voice", base_url="base_url"))


def _record_switch(capability: str, old: str, new: str, error: BaseException) -> None:
    """Default switch hook: the switch becomes an event of the call it happened in."""
    usage.event("fallback", {"capability": capability, "from": old, "to": new, "error": str(error)[:300]})


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
    status: str  # ok | not configured | authentication failed | unreachable | error
    detail: str = ""
    ms: float = 0.0


async def check_providers(made: Providers) -> list[CheckResult]:
    """Is each configured provider reachable and authenticated? Costs nothing billable where avoidable."""
    conv = made.settings.conversation
    results: list[CheckResult] = []
    for capability, names in (("stt", conv.stt), ("llm", conv.llm), ("tts", conv.tts)):
        for name in dict.fromkeys(names):
            t0 = time.perf_counter()
            try:
                await _check_one(made, capability, name)
                status, detail = "ok", ""
            except ConfigError as exc:
                status, detail = "not configured", str(exc)
            except ProviderAuthError as exc:
                status, detail = "authentication failed", str(exc)
            except (ProviderConnectionError, ProviderTimeout) as exc:
                status, detail = "unreachable", str(exc)
            except ParleyError as exc:
                status, detail = "error", str(exc)
            results.append(CheckResult(capability, name, status, detail, round((time.perf_counter() - t0) * 1000, 1)))
    if conv.engine == "realtime":
        results.append(await _check_realtime(made))
    return results


async def _check_realtime(made: Providers) -> CheckResult:
    """Open a realtime session and close it: authenticates and configures, and bills nothing (no response)."""
    name = str(made.options("realtime").get("provider", "openai"))
    t0 = time.perf_counter()
    try:
        provider = made.realtime()
        assert provider is not None
        stream = await provider.open(RealtimeConfig("parley providers check"))
        await stream.close()
        status, detail = "ok", ""
    except ConfigError as exc:
        status, detail = "not configured", str(exc)
    except ProviderAuthError as exc:
        status, detail = "authentication failed", str(exc)
    except (ProviderConnectionError, ProviderTimeout) as exc:
        status, detail = "unreachable", str(exc)
    except ParleyError as exc:
        status, detail = "error", str(exc)
    return CheckResult("realtime", name, status, detail, round((time.perf_counter() - t0) * 1000, 1))


async def _check_one(made: Providers, capability: str, name: str) -> None:
    if capability == "stt":
        stream = await made.one_stt(name).open(sample_rate=8000)
        await stream.close()
    elif capability == "llm":
        if name == "rules":
            made.one_llm(name)
            return
        await _check_models_endpoint(made, name)
    else:
        tts = made.one_tts(name)
        prewarm = getattr(tts, "prewarm", None)
        if prewarm is not None:  # opens the vendor's socket: authenticates without synthesizing
            await prewarm()
            close = getattr(tts, "aclose", None)
            if close is not None:
                await close()
            return
        gen = tts.synthesize("OK.")
        async with contextlib.aclosing(gen):
            async for _ in gen:
                pass


async def _check_models_endpoint(made: Providers, name: str) -> None:
    """GET the vendor's model list: free, and it needs a valid key."""
    import httpx

    from parley.providers.errors import error_for_status

    o = made.options(name)
    if name == "openai":
        base = str(o.get("base_url", "https://api.openai.com/v1")).rstrip("/")
        key = made.env.get(str(o.get("api_key_env") or KEY_ENV["openai"]))
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        if not key and "api.openai.com" in base:
            made.key("openai")  # raises the not-configured error
        url = f"{base}/models"
    else:
        base = str(o.get("base_url", "https://api.anthropic.com")).rstrip("/")
        headers = {"x-api-key": made.key("anthropic"), "anthropic-version": "2023-06-01"}
        url = f"{base}/v1/models"
    try:
        async with httpx.AsyncClient(timeout=5.0) as client:
            response = await client.get(url, headers=headers)
    except httpx.TimeoutException as exc:
        raise ProviderTimeout(f"{name}: {url} timed out", provider=name) from exc
    except httpx.HTTPError as exc:
        raise ProviderConnectionError(f"{name}: cannot reach {url}: {type(exc).__name__}", provider=name) from exc
    if response.status_code >= 400:
        raise error_for_status(response.status_code, response.text[:200], provider=name)
