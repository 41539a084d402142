"""The session carries out only tool calls that pass the operator's allowlist (prompt injection included).

Runs the session's tool step against a fake CallPort (no sockets): what matters is which call-control
commands would reach FreeSWITCH.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Sequence

import pytest

from parley.agent.engine import Engine
from parley.agent.session import CallSession, TurnRecord
from parley.audio.pcm import Int16Array
from parley.config import ConversationSettings
from parley.freeswitch.audio_stream import AudioFrame
from parley.freeswitch.call import CallEvent
from parley.providers.base import (
    Lifecycle,
    LLMEvent,
    LLMRequests,
    Message,
    ToolCall,
    ToolSpec,
    TTSEvent,
    TTSRequests,
    UsageSink,
)
from parley.turns.policy import TurnPolicy


class _Nothing(Lifecycle, LLMRequests, TTSRequests):
    name = "none"
    sample_rate = 8000

    async def stream(
        self, messages: Sequence[Message], tools: Sequence[ToolSpec] = (), *, on_cancel: UsageSink | None = None
    ) -> AsyncGenerator[LLMEvent, None]:
        raise AssertionError("not used")
        yield  # pragma: no cover

    async def synthesize(self, text: str, *, on_cancel: UsageSink | None = None) -> AsyncGenerator[TTSEvent, None]:
        raise AssertionError("not used")
        yield  # pragma: no cover


class FakeCall:
    """A CallPort that records call control instead of sending ESL."""

    uuid = "11111111-2222-3333-4444-555555555555"
    stream_rate = 8000
    playback = None

    def __init__(self) -> None:
        self.events: asyncio.Queue[CallEvent] = asyncio.Queue()
        self.control: list[tuple[str, ...]] = []

    async def frames(self) -> AsyncIterator[AudioFrame]:
        return
        yield  # pragma: no cover

    async def hangup(self, cause: str = "NORMAL_CLEARING") -> None:
        self.control.append(("hangup", cause))

    async def transfer(self, destination: str, *, dialplan: str = "XML", context: str | None = None) -> None:
        self.control.append(("transfer", destination, dialplan, context or ""))


class _Vad:
    def process(self, samples: Int16Array) -> object:
        raise AssertionError("not used")

    async def aprocess(self, samples: Int16Array) -> object:
        raise AssertionError("not used")


def session(conv: ConversationSettings) -> tuple[CallSession, FakeCall]:
    nothing = _Nothing()
    engine = Engine(
        stt=None, llm=nothing, tts=nothing, policy=TurnPolicy(), conversation=conv,  # type: ignore[arg-type]
        vad_factory=lambda rate: _Vad(),  # type: ignore[arg-type,return-value]
    )
    call = FakeCall()
    return CallSession(call, engine), call  # type: ignore[arg-type]


TARGETS = ConversationSettings(transfer_targets={"front_desk": "1000", "billing": {"extension": "1001", "context": "staff"}})  # type: ignore[dict-item]

INJECTED = [
    "011 44 7700 900123",
    "011447700900123",
    "sip:x@attacker.example",
    "sofia/gateway/carrier/011447700900123",
    "front_desk inline",
    "1000",  # an extension, but not a name the operator offered
    "ｆront_desk",  # a look-alike
    "",
    "x" * 5000,
]


@pytest.mark.parametrize("destination", INJECTED)
async def test_a_transfer_to_anything_but_an_offered_name_is_refused(destination: str) -> None:
    s, call = session(TARGETS)
    await s._run_tools(TurnRecord(1), (ToolCall("t1", "transfer", {"destination": destination}),), False)
    assert call.control == []
    assert s.conversation.messages[-1].role == "tool" and s.conversation.messages[-1].content.startswith("refused")
    assert any(kind == "tool_refused" for _t, kind, _d in s.events)


async def test_an_offered_name_goes_to_the_operators_extension_through_the_dialplan() -> None:
    s, call = session(TARGETS)
    await s._run_tools(TurnRecord(1), (ToolCall("t1", "transfer", {"destination": "billing"}),), False)
    assert call.control == [("transfer", "1001", "XML", "staff")]


async def test_no_transfer_tool_without_targets_even_if_the_brain_calls_one() -> None:
    s, call = session(ConversationSettings())
    await s._run_tools(TurnRecord(1), (ToolCall("t1", "transfer", {"destination": "front_desk"}),), False)
    assert call.control == []


async def test_hangup_is_carried_out() -> None:
    s, call = session(ConversationSettings())
    await s._run_tools(TurnRecord(1), (ToolCall("t1", "hangup", {}),), False)
    assert call.control == [("hangup", "NORMAL_CLEARING")] and s.hung_up_by_agent
