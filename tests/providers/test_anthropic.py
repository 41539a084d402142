"""Anthropic Messages streaming client against the loopback fake (real HTTP/1.1 on 127.0.0.1): text and
tool_use assembly, the request mapping, HTTP and in-stream errors, malformed data, stalls, drops,
cancellation with usage, keep-alive, and a fallback chain switching away from an overloaded Anthropic."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Sequence

import httpx
import pytest

from parley.providers.anthropic_llm import OPENING_USER_TURN, AnthropicLLM, MessageStreamAssembler, wire_messages
from parley.providers.base import (
    Lifecycle,
    LLMEvent,
    LLMProvider,
    LLMRequests,
    Message,
    TextDelta,
    ToolCall,
    ToolSpec,
    Usage,
    UsageSink,
)
from parley.providers.errors import (
    ProviderAuthError,
    ProviderConnectionError,
    ProviderError,
    ProviderProtocolError,
    ProviderTimeout,
)
from parley.providers.fallback import FallbackLLM
from testkit.fakes.anthropic import AnthropicReply, FakeAnthropic, error_reply, reply, text, tool_use

KEY = "sk-ant-test-0123456789abcdef"
MODEL = "claude-haiku-4-5"

MESSAGES = [
    Message("system", "You are a receptionist."),
    Message("assistant", "Hello, Parley Dental, how can I help?"),
    Message("user", "What's the weather in Paris, and put me through to billing."),
    Message(
        "assistant",
        "Let me check.",
        tool_calls=(ToolCall("toolu_1", "get_weather", {"city": "Paris"}), ToolCall("toolu_2", "transfer", {})),
    ),
    Message("tool", '{"temp_c": 21}', tool_call_id="toolu_1"),
    Message("tool", "ok", tool_call_id="toolu_2"),
    Message("user", "Thanks."),
    Message("assistant", ""),  # a reply cut to nothing by a barge-in
]
TOOLS = [
    ToolSpec(
        "get_weather",
        "Weather for a city",
        {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    ),
    ToolSpec("transfer", "Transfer the caller"),
]


def llm(fake: FakeAnthropic, **kwargs: object) -> AnthropicLLM:
    return AnthropicLLM(KEY, MODEL, base_url=fake.base_url, **kwargs)  # type: ignore[arg-type]


async def collect(stream: AsyncIterator[LLMEvent]) -> list[LLMEvent]:
    return [event async for event in stream]


async def collect_until_error(stream: AsyncIterator[LLMEvent]) -> tuple[list[LLMEvent], ProviderError]:
    events: list[LLMEvent] = []
    with pytest.raises(ProviderError) as info:
        async for event in stream:
            events.append(event)
    return events, info.value


def usage(input_tokens: int = 0, output_tokens: int = 0, **flags: bool) -> Usage:
    return Usage(PROVIDER_NAME, MODEL, "llm", input_tokens=input_tokens, output_tokens=output_tokens, **flags)


PROVIDER_NAME = "anthropic"


# ---- happy paths ------------------------------------------------------------------------------------------


async def test_streams_text_and_usage_and_sends_the_documented_request() -> None:
    script = [reply(text("Hi", " there."), input_tokens=42, output_tokens=7)]
    async with FakeAnthropic(KEY, script) as fake, llm(fake, temperature=0.3, max_tokens=200) as provider:
        assert isinstance(provider, LLMProvider)
        events = await collect(provider.stream(MESSAGES, TOOLS))
    assert events == [TextDelta("Hi"), TextDelta(" there."), usage(42, 7)]
    [request] = fake.requests
    assert (request.method, request.path) == ("POST", "/v1/messages")
    assert request.headers["x-api-key"] == KEY
    assert request.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in request.headers
    assert fake.body() == {
        "model": MODEL,
        "max_tokens": 200,
        "stream": True,
        "temperature": 0.3,
        "system": "You are a receptionist.",
        "messages": [
            {"role": "user", "content": OPENING_USER_TURN},
            {"role": "assistant", "content": "Hello, Parley Dental, how can I help?"},
            {"role": "user", "content": "What's the weather in Paris, and put me through to billing."},
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "Let me check."},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
                    {"type": "tool_use", "id": "toolu_2", "name": "transfer", "input": {}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": '{"temp_c": 21}'},
                    {"type": "tool_result", "tool_use_id": "toolu_2", "content": "ok"},
                    {"type": "text", "text": "Thanks."},
                ],
            },
        ],
        "tools": [
            {
                "name": "get_weather",
                "description": "Weather for a city",
                "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
            },
            {
                "name": "transfer",
                "description": "Transfer the caller",
                "input_schema": {"type": "object", "properties": {}},
            },
        ],
    }


async def test_two_tool_calls_are_assembled_from_json_fragments() -> None:
    script = [
        reply(
            text("Checking."),
            tool_use("toolu_01A", "get_weather", '{"city": "Par', 'is", "unit"', ': "c"}'),
            tool_use("toolu_01B", "transfer"),  # no fragments but "": input is {}
            input_tokens=30,
            output_tokens=55,
        )
    ]
    async with FakeAnthropic(KEY, script) as fake, llm(fake) as provider:
        events = await collect(provider.stream([Message("user", "weather?")], TOOLS))
    assert events == [
        TextDelta("Checking."),
        ToolCall("toolu_01A", "get_weather", {"city": "Paris", "unit": "c"}),
        ToolCall("toolu_01B", "transfer", {}),
        usage(30, 55),
    ]
    assert "system" not in fake.body() and "temperature" not in fake.body()


async def test_keep_alive_one_connection_for_two_requests() -> None:
    async with FakeAnthropic(KEY) as fake, llm(fake) as provider:
        await collect(provider.stream([Message("user", "one")]))
        await collect(provider.stream([Message("user", "two")]))
    assert [r.connection for r in fake.requests] == [1, 1]


async def test_injected_client_is_used_and_left_open() -> None:
    async with FakeAnthropic(KEY) as fake, httpx.AsyncClient() as client:
        provider = AnthropicLLM(KEY, MODEL, base_url=fake.base_url + "/", http_client=client)
        assert [e for e in await collect(provider.stream([Message("user", "x")])) if isinstance(e, TextDelta)]
        await provider.aclose()
        assert not client.is_closed


# ---- failures ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("script", "error_type", "retryable", "status"),
    [
        (error_reply(401, "authentication_error", "invalid x-api-key"), ProviderAuthError, False, 401),
        (error_reply(403, "permission_error", "not allowed"), ProviderAuthError, False, 403),
        (error_reply(429, "rate_limit_error", "slow down", retry_after="3"), ProviderError, True, 429),
        (error_reply(500, "api_error", "internal"), ProviderError, True, 500),
        (error_reply(529, "overloaded_error", "Overloaded"), ProviderError, True, 529),
        (error_reply(400, "invalid_request_error", "bad"), ProviderError, False, 400),
        (error_reply(500, "api_error", "do not", x_should_retry="false"), ProviderError, False, 500),
    ],
)
async def test_http_errors_are_mapped(
    script: AnthropicReply, error_type: type[ProviderError], retryable: bool, status: int
) -> None:
    async with FakeAnthropic(KEY, [script]) as fake, llm(fake) as provider:
        events, error = await collect_until_error(provider.stream(MESSAGES))
    assert type(error) is error_type
    assert (error.retryable, error.status, error.code) == (retryable, status, script.error_type)
    assert script.error_message in str(error)
    assert events == [usage(failed=True)]


async def test_wrong_key_is_refused_by_the_fake_and_never_shown(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with FakeAnthropic("sk-ant-the-real-one") as fake, llm(fake) as provider:
        _, error = await collect_until_error(provider.stream(MESSAGES))
        assert KEY not in repr(provider)
    assert type(error) is ProviderAuthError and "invalid x-api-key" in str(error)
    assert all(KEY not in r.getMessage() for r in caplog.records)


async def test_the_fake_checks_the_request_like_the_api() -> None:
    async with FakeAnthropic(KEY) as fake, llm(fake, version="2020-01-01") as provider:
        _, error = await collect_until_error(provider.stream(MESSAGES))
    assert error.status == 400 and "anthropic-version" in str(error)
    async with FakeAnthropic(KEY) as fake, llm(fake) as provider:
        orphan = [Message("user", "hi"), Message("tool", "42", tool_call_id="toolu_x")]
        _, error = await collect_until_error(provider.stream(orphan))
    assert error.status == 400 and "tool_result" in str(error) and not error.retryable


@pytest.mark.parametrize(
    ("kind", "error_type", "retryable"),
    [
        ("overloaded_error", ProviderError, True),
        ("api_error", ProviderError, True),
        ("authentication_error", ProviderAuthError, False),
        ("invalid_request_error", ProviderError, False),
    ],
)
async def test_in_stream_error_events(kind: str, error_type: type[ProviderError], retryable: bool) -> None:
    async with FakeAnthropic(KEY, [reply(text("Sure,"), error=kind, input_tokens=12)]) as fake, llm(fake) as provider:
        events, error = await collect_until_error(provider.stream(MESSAGES))
    assert type(error) is error_type and error.retryable is retryable
    assert error.code == kind and error.status is None
    assert events == [TextDelta("Sure,"), usage(12, 1, failed=True)]


async def test_malformed_data_is_a_protocol_error() -> None:
    broken = AnthropicReply((*reply(text("Hi")).events[:4], '{"type": "content_block_delta", "index": 0, "delta": {'))
    async with FakeAnthropic(KEY, [broken]) as fake, llm(fake) as provider:
        events, error = await collect_until_error(provider.stream(MESSAGES))
    assert type(error) is ProviderProtocolError and "not JSON" in str(error)
    assert events[0] == TextDelta("Hi")


async def test_bad_tool_json_is_a_protocol_error() -> None:
    async with FakeAnthropic(KEY, [reply(tool_use("toolu_1", "get_weather", '{"city": '))]) as fake:
        async with llm(fake) as provider:
            _, error = await collect_until_error(provider.stream(MESSAGES))
    assert type(error) is ProviderProtocolError and "not valid JSON" in str(error)


async def test_stall_times_out_and_the_server_sees_the_close() -> None:
    async with FakeAnthropic(KEY, [reply(text("Let me"), stop_after=4, then="hold")]) as fake:
        async with llm(fake, timeout_s=0.2) as provider:
            events, error = await collect_until_error(provider.stream(MESSAGES))
            await asyncio.wait_for(fake.disconnected.wait(), 2)
    assert type(error) is ProviderTimeout and error.retryable
    assert events == [TextDelta("Let me"), usage(25, 1, failed=True)]


async def test_drop_mid_stream_is_a_connection_error() -> None:
    async with FakeAnthropic(KEY, [reply(text("Your appointment"), stop_after=4, then="drop")]) as fake:
        async with llm(fake) as provider:
            events, error = await collect_until_error(provider.stream(MESSAGES))
    assert type(error) is ProviderConnectionError and error.retryable
    assert events[0] == TextDelta("Your appointment")


async def test_body_ending_before_message_stop_is_a_connection_error() -> None:
    async with FakeAnthropic(KEY, [reply(text("Your"), stop_after=5)]) as fake, llm(fake) as provider:
        _, error = await collect_until_error(provider.stream(MESSAGES))
    assert type(error) is ProviderConnectionError and "before message_stop" in str(error)


async def test_a_200_that_is_not_an_event_stream_is_a_protocol_error() -> None:
    async with FakeAnthropic(KEY, [AnthropicReply(headers={"Content-Type": "application/json"})]) as fake:
        async with llm(fake) as provider:
            _, error = await collect_until_error(provider.stream(MESSAGES))
    assert type(error) is ProviderProtocolError and "expected text/event-stream" in str(error)


async def test_connection_refused() -> None:
    async with FakeAnthropic(KEY) as fake:
        url = fake.base_url
    provider = AnthropicLLM(KEY, MODEL, base_url=url)
    _, error = await collect_until_error(provider.stream(MESSAGES))
    await provider.aclose()
    assert type(error) is ProviderConnectionError


# ---- cancellation -------------------------------------------------------------------------------------------


async def test_a_barge_in_closes_the_response_and_its_usage_reaches_the_calls_sink() -> None:
    sink: list[Usage] = []
    async with FakeAnthropic(KEY, [reply(text("One", " two"), input_tokens=77, stop_after=4, then="hold")]) as fake:
        async with llm(fake) as provider:
            call = await provider.open(sink.append)
            stream = call.stream(MESSAGES)
            assert await anext(stream) == TextDelta("One")
            assert sink == []
            await stream.aclose()  # the barge-in: the generator can yield nothing more
            await asyncio.wait_for(fake.disconnected.wait(), 2)
            await call.close()
    assert sink == [usage(77, 1, cancelled=True)]


async def test_a_finished_request_of_the_call_reports_its_usage_in_the_stream_not_the_sink() -> None:
    sink: list[Usage] = []
    async with FakeAnthropic(KEY, [reply(text("Hi"), input_tokens=5)]) as fake, llm(fake) as provider:
        call = await provider.open(sink.append)
        events = await collect(call.stream(MESSAGES))
    assert events == [TextDelta("Hi"), usage(5, 1)]
    assert sink == []


async def test_cancelling_the_consumer_task_closes_the_response_and_reports_to_the_requests_on_cancel() -> None:
    cancelled: list[Usage] = []
    got_first = asyncio.Event()

    async def consume(provider: AnthropicLLM) -> None:
        async for _ in provider.stream(MESSAGES, on_cancel=cancelled.append):
            got_first.set()

    async with FakeAnthropic(KEY, [reply(text("One"), input_tokens=9, stop_after=4, then="hold")]) as fake:
        async with llm(fake) as provider:
            task = asyncio.create_task(consume(provider))
            await asyncio.wait_for(got_first.wait(), 2)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await asyncio.wait_for(fake.disconnected.wait(), 2)
    assert cancelled == [usage(9, 1, cancelled=True)]


# ---- fallback -----------------------------------------------------------------------------------------------


class ScriptedLLM(Lifecycle, LLMRequests):
    name = "local"

    def __init__(self) -> None:
        self.calls = 0

    async def stream(
        self, messages: Sequence[Message], tools: Sequence[ToolSpec] = (), *, on_cancel: UsageSink | None = None
    ) -> AsyncGenerator[LLMEvent, None]:
        self.calls += 1
        yield TextDelta("One moment please.")
        yield Usage("local", "rules", "llm")


async def test_fallback_switches_from_an_overloaded_anthropic() -> None:
    switches: list[tuple[str, str, str]] = []
    local = ScriptedLLM()
    async with FakeAnthropic(KEY, [error_reply(529, "overloaded_error", "Overloaded")]) as fake, llm(fake) as cloud:
        chain = FallbackLLM([cloud, local], on_switch=lambda cap, a, b, _e: switches.append((cap, a, b)))
        events = await collect(chain.stream(MESSAGES))
        again = await collect(chain.stream(MESSAGES))  # in cooldown: straight to the local one
    assert [e for e in events if isinstance(e, TextDelta)] == [TextDelta("One moment please.")]
    assert usage(failed=True) in events  # the failed attempt still reports its usage
    assert switches == [("llm", "anthropic", "local")]
    assert chain.stats.switches == 1 and chain.stats.failures == {"anthropic": 1}
    assert len(fake.requests) == 1 and local.calls == 2 and again[-1] == Usage("local", "rules", "llm")


# ---- the sans-I/O parts -----------------------------------------------------------------------------------


def test_assembler_ignores_unknown_events_and_blocks_and_keeps_the_last_usage() -> None:
    a = MessageStreamAssembler()
    feed = [
        {"type": "message_start", "message": {"usage": {"input_tokens": 5, "output_tokens": 1}}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "hmm"}},
        {"type": "content_block_stop", "index": 0},
        {"type": "brand_new_event", "x": 1},
        {
            "type": "content_block_start",
            "index": 1,
            "content_block": {"type": "tool_use", "id": "t", "name": "n", "input": {"a": 1}},
        },
        {"type": "content_block_stop", "index": 1},
        {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 3}},
        {"type": "message_delta", "delta": {}, "usage": {"output_tokens": 9}},
        {"type": "message_stop"},
    ]
    out = [e for ev in feed for e in a.feed(ev)]
    assert out == [ToolCall("t", "n", {"a": 1})]
    assert (a.input_tokens, a.output_tokens, a.stop_reason, a.done) == (5, 9, "tool_use", True)


def test_wire_messages_merges_and_skips() -> None:
    system, wire = wire_messages(
        [
            Message("system", "a"),
            Message("user", "x"),
            Message("user", "y"),
            Message("system", "b"),
            Message("assistant", ""),
        ]
    )
    assert system == "a\n\nb"
    assert wire == [{"role": "user", "content": [{"type": "text", "text": "x"}, {"type": "text", "text": "y"}]}]
    with pytest.raises(ProviderError, match="tool_call_id"):
        wire_messages([Message("tool", "{}")])
