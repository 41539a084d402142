"""The shared parts of the conversation engine: providers and models loaded once per process.

Owns: bundling what every call's :class:`~parley.agent.session.CallSession` uses (STT, brain, TTS,
the VAD factory, the end-of-turn model, the turn policy and the conversation settings). Built by the
composition root; never by a provider or a session. At shutdown, :meth:`Engine.aclose` closes what the
providers hold across calls (vendor sockets, HTTP connection pools), once each.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from parley.audio.pcm import Int16Array
from parley.config import ConversationSettings
from parley.errors import ParleyError
from parley.providers.base import LLMProvider, STTProvider, TTSProvider
from parley.turns.policy import TurnPolicy

log = logging.getLogger("parley.engine")

CLOSE_TIMEOUT_S = 5.0  # per provider: a vendor that does not answer its close handshake must not hold a stop


class VadResultLike(Protocol):
    @property
    def speech(self) -> bool: ...
    @property
    def prob(self) -> float: ...


class FrameVadLike(Protocol):
    def process(self, samples: Int16Array) -> VadResultLike: ...
    # the live path: model runs batched with the other calls on the event loop
    async def aprocess(self, samples: Int16Array) -> VadResultLike: ...


class TurnModelLike(Protocol):
    def predict(self, audio: Int16Array, sample_rate: int) -> float: ...


@dataclass(frozen=True, slots=True)
class Engine:
    stt: STTProvider
    llm: LLMProvider
    tts: TTSProvider
    policy: TurnPolicy
    conversation: ConversationSettings
    vad_factory: Callable[[int], FrameVadLike]
    smart_turn: TurnModelLike | None = None
    # the local voice that apologises when the configured providers have all failed
    emergency_tts: TTSProvider | None = None
    # start the reply at a pause from the speculative transcript, audible only if the turn ends as guessed
    speculate: bool = True

    def new_vad(self, sample_rate: int) -> FrameVadLike:
        return self.vad_factory(sample_rate)

    async def aclose(self) -> None:
        """Close every provider's cross-call resources (the calls are over); a failure is logged, not raised."""
        seen: set[int] = set()
        for provider in (self.stt, self.llm, self.tts, self.emergency_tts):
            if provider is None or id(provider) in seen:
                continue
            seen.add(id(provider))
            try:
                async with asyncio.timeout(CLOSE_TIMEOUT_S):
                    await provider.aclose()
            except TimeoutError:
                log.warning("closing %s failed: no answer within %.0f s", provider.name, CLOSE_TIMEOUT_S)
            except (ParleyError, OSError) as exc:
                log.warning("closing %s failed: %s", provider.name, exc)
