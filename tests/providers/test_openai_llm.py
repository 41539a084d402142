"""The OpenAI-compatible chat client against an in-process HTTP/1.1 server speaking the documented SSE stream:
text, tool-call fragments, parallel calls, usage, vendor variants, HTTP errors, bad JSON, stalls, drops and
cancellation."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator

import httpx
import pytest

from parley.providers.base import LLMEvent, LLMProvider, Message, TextDelta, ToolCall, ToolSpec, Usage
from parley.providers.errors import (
    ProviderAuthError,
    ProviderConnectionError,
    ProviderError,
    ProviderProtocolError,
    ProviderTimeout,
)
from parley.providers.openai_llm import (
    DEFAULT_MODEL,
    ChatStreamAssembler,
    OpenAICompatLLM,
    SSEDecoder,
    wire_message,
)
from testkit.fakes.openai_chat import (
    FIRST,
    USAGE,
    Connection,
    FakeOpenAI,
    Script,
    chunk,
    reasoning_rules,
    streaming,
)

API_KEY = "sk-test-0123456789abcdef"


def llm(server: FakeOpenAI, **kwargs: object) -> OpenAICompatLLM:
    return OpenAICompatLLM(server.base_url, API_KEY, "gpt-4o-mini", **kwargs)  # type: ignore[arg-type]


async def collect(stream: AsyncIterator[LLMEvent]) -> list[LLMEvent]:
    return [event async for event in stream]


async def collect_until_error(stream: AsyncIterator[LLMEvent]) -> tuple[list[LLMEvent], ProviderError]:
    events: list[LLMEvent] = []
    with pytest.raises(ProviderError) as info:
        async for event in stream:
            events.append(event)
    return events, info.value


MESSAGES = [
    Message("system", "You are a receptionist."),
    Message("user", "Put me through to the front desk."),
    Message("assistant", "", tool_calls=(ToolCall("call_1", "lookup", {"q": "desk"}),)),
    Message("tool", '{"open": true}', tool_call_id="call_1"),
    Message("user", "Thanks", name="caller"),
]
TOOLS = [
    ToolSpec(
        "transfer",
        "Transfer the caller",
        {"type": "object", "properties": {"destination": {"type": "string"}}, "required": ["destination"]},
    )
]


# ---- happy paths ------------------------------------------------------------------------------------------


async def test_streams_text_and_usage_and_sends_the_documented_request() -> None:
    script = streaming(FIRST, chunk({"content": "Hel"}), chunk({"content": "lo there."}), chunk({}, "stop"), USAGE)
    async with FakeOpenAI(script) as server:
        async with llm(server, temperature=0.2, max_tokens=120) as provider:
            assert isinstance(provider, LLMProvider)
            events = await collect(provider.stream(MESSAGES, TOOLS))
    assert events == [
        TextDelta("Hel"),
        TextDelta("lo there."),
        Usage(provider="openai", model="gpt-4o-mini", kind="llm", input_tokens=12, output_tokens=17),
    ]
    [request] = server.requests
    assert (request.method, request.path) == ("POST", "/v1/chat/completions")
    assert request.headers["authorization"] == f"Bearer {API_KEY}"
    assert request.headers["content-type"] == "application/json"
    assert request.body == {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "You are a receptionist."},
            {"role": "user", "content": "Put me through to the front desk."},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": '{"q": "desk"}'}}
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": '{"open": true}'},
            {"role": "user", "content": "Thanks", "name": "caller"},
        ],
        "stream": True,
        "stream_options": {"include_usage": True},
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "transfer",
                    "description": "Transfer the caller",
                    "parameters": {
                        "type": "object",
                        "properties": {"destination": {"type": "string"}},
                        "required": ["destination"],
                    },
                },
            }
        ],
        "temperature": 0.2,
        "max_tokens": 120,
    }


async def test_no_key_no_authorization_header_and_optional_fields_omitted() -> None:
    async with FakeOpenAI(streaming(FIRST, chunk({"content": "ok"}), chunk({}, "stop"))) as server:
        provider = OpenAICompatLLM(
            server.base_url + "/",
            None,
            "llama3.2",
            name="ollama",
            extra_headers={"X-Trace": "t1"},
            max_tokens=50,
            max_tokens_field="max_completion_tokens",
        )
        events = await collect(provider.stream([Message("user", "hi")]))
        await provider.aclose()
    [request] = server.requests
    assert "authorization" not in request.headers
    assert request.headers["x-trace"] == "t1"
    assert request.path == "/v1/chat/completions"
    assert "tools" not in request.body and "temperature" not in request.body
    assert request.body["max_completion_tokens"] == 50
    assert events == [TextDelta("ok"), Usage(provider="ollama", model="llama3.2", kind="llm")]


async def test_tool_call_split_across_chunks() -> None:
    script = streaming(
        FIRST,
        chunk({"content": "Transferring you now."}),
        chunk(
            {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "call_abc",
                        "type": "function",
                        "function": {"name": "transfer", "arguments": ""},
                    }
                ]
            }
        ),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"desti'}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'nation": "front'}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '_desk"}'}}]}),
        chunk({}, "tool_calls"),
        USAGE,
    )
    async with FakeOpenAI(script) as server, llm(server) as provider:
        events = await collect(provider.stream(MESSAGES, TOOLS))
    assert events[:2] == [
        TextDelta("Transferring you now."),
        ToolCall("call_abc", "transfer", {"destination": "front_desk"}),
    ]
    assert isinstance(events[2], Usage) and events[2].output_tokens == 17


async def test_two_parallel_tool_calls_interleaved() -> None:
    script = streaming(
        FIRST,
        chunk(
            {
                "tool_calls": [
                    {"index": 0, "id": "call_a", "type": "function", "function": {"name": "lookup", "arguments": ""}},
                    {"index": 1, "id": "call_b", "type": "function", "function": {"name": "transfer", "arguments": ""}},
                ]
            }
        ),
        chunk({"tool_calls": [{"index": 1, "function": {"arguments": '{"destination":'}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"q": "hours"}'}}]}),
        chunk({"tool_calls": [{"index": 1, "function": {"arguments": ' "billing"}'}}]}),
        chunk({}, "tool_calls"),
        USAGE,
    )
    async with FakeOpenAI(script) as server, llm(server) as provider:
        events = await collect(provider.stream(MESSAGES, TOOLS))
    assert events[:2] == [
        ToolCall("call_a", "lookup", {"q": "hours"}),
        ToolCall("call_b", "transfer", {"destination": "billing"}),
    ]


async def test_compatible_server_variants() -> None:
    """Ollama: whole tool call in one chunk, no usage key; Gemini: no index, empty id, 'stop' finish;
    Groq: usage under x_groq; comments, multi-line data and an unknown field."""
    gemini_call = {"id": "", "type": "function", "function": {"name": "hangup", "arguments": "{}"}}
    whole = {"index": 0, "id": "call_x", "type": "function", "function": {"name": "lookup", "arguments": '{"a": 1}'}}

    async def script(conn: Connection) -> None:
        await conn.head()
        await conn.chunk(b": keep-alive\n\n")
        await conn.event({"choices": [{"index": 0, "delta": {"content": "Hi", "reasoning": "hmm"}}], "new_field": 1})
        await conn.chunk(
            b'data: {"choices": [{"index": 0,\ndata: "delta": {"tool_calls": [' + json.dumps(whole).encode()
        )
        await conn.chunk(b"]}}]}\n\n")
        await conn.event({"choices": [{"index": 0, "delta": {"tool_calls": [gemini_call]}, "finish_reason": "stop"}]})
        await conn.event({"choices": [], "x_groq": {"usage": {"prompt_tokens": 3, "completion_tokens": 4}}})
        await conn.chunk(b"data: [DONE]")  # no final blank line
        await conn.end()

    async with FakeOpenAI(script) as server, llm(server) as provider:
        events = await collect(provider.stream(MESSAGES))
    assert events == [
        TextDelta("Hi"),
        ToolCall("call_x", "lookup", {"a": 1}),
        ToolCall("call_1", "hangup", {}),
        Usage(provider="openai", model="gpt-4o-mini", kind="llm", input_tokens=3, output_tokens=4),
    ]


# ---- failures ---------------------------------------------------------------------------------------------


def status(code: int, body: object) -> Script:
    async def script(conn: Connection) -> None:
        await conn.json_response(code, body)

    return script


@pytest.mark.parametrize(
    ("code", "body", "error_type", "retryable", "fragment"),
    [
        (
            401,
            {
                "error": {
                    "message": f"Incorrect API key provided: {API_KEY}.",
                    "type": "invalid_request_error",
                    "param": None,
                    "code": "invalid_api_key",
                }
            },
            ProviderAuthError,
            False,
            "Incorrect API key",
        ),
        (
            403,
            {"error": {"message": "Country not supported", "code": "unsupported_country"}},
            ProviderAuthError,
            False,
            "Country not supported",
        ),
        (
            429,
            {"error": {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}},
            ProviderError,
            True,
            "Rate limit",
        ),
        (
            429,
            {"error": {"message": "You exceeded your current quota", "code": "insufficient_quota"}},
            ProviderError,
            False,
            "quota",
        ),
        (500, {"error": {"message": "The server had an error", "type": "server_error"}}, ProviderError, True, "server"),
        (503, "upstream overloaded", ProviderError, True, "upstream overloaded"),
        (
            400,
            {"error": {"message": "Invalid model", "code": "model_not_found"}},
            ProviderError,
            False,
            "Invalid model",
        ),
    ],
)
async def test_http_errors_are_mapped(
    code: int, body: object, error_type: type[ProviderError], retryable: bool, fragment: str
) -> None:
    async with FakeOpenAI(status(code, body)) as server, llm(server) as provider:
        events, error = await collect_until_error(provider.stream(MESSAGES))
    assert type(error) is error_type
    assert error.retryable is retryable
    assert error.status == code
    assert fragment in str(error)
    assert API_KEY not in str(error)
    assert events == [Usage(provider="openai", model="gpt-4o-mini", kind="llm", failed=True)]


async def test_malformed_json_is_a_protocol_error() -> None:
    script = streaming(FIRST, chunk({"content": "Hi"}), '{"choices": [ {"index": 0, "delta": ')
    async with FakeOpenAI(script) as server, llm(server) as provider:
        events, error = await collect_until_error(provider.stream(MESSAGES))
    assert type(error) is ProviderProtocolError and not error.retryable
    assert "not JSON" in str(error)
    assert events == [TextDelta("Hi"), Usage(provider="openai", model="gpt-4o-mini", kind="llm", failed=True)]


@pytest.mark.parametrize(
    ("events", "fragment"),
    [
        ([["not", "an", "object"]], "not a JSON object"),
        ([{"choices": {"index": 0}}], "'choices' is not a list"),
        (
            [
                chunk({"tool_calls": [{"index": 0, "id": "c", "function": {"name": "t", "arguments": "{oops"}}]}),
                chunk({}, "tool_calls"),
            ],
            "arguments of tool call 't' are not valid JSON",
        ),
        (
            [
                chunk({"tool_calls": [{"index": 0, "id": "c", "function": {"name": "t", "arguments": "[1]"}}]}),
                chunk({}, "tool_calls"),
            ],
            "not a JSON object",
        ),
        (
            [
                chunk({"tool_calls": [{"index": 0, "id": "c", "function": {"arguments": "{}"}}]}),
                chunk({}, "tool_calls"),
            ],
            "without a function name",
        ),
    ],
)
async def test_bad_chunks_are_protocol_errors(events: list[object], fragment: str) -> None:
    async with FakeOpenAI(streaming(*events)) as server, llm(server) as provider:
        _, error = await collect_until_error(provider.stream(MESSAGES))
    assert type(error) is ProviderProtocolError and not error.retryable
    assert fragment in str(error)


async def test_a_200_that_is_not_an_event_stream_is_a_protocol_error() -> None:
    async with FakeOpenAI(status(200, {"choices": []})) as server, llm(server) as provider:
        _, error = await collect_until_error(provider.stream(MESSAGES))
    assert type(error) is ProviderProtocolError
    assert "expected text/event-stream" in str(error)


@pytest.mark.parametrize(
    ("error", "retryable", "status"),
    [
        ({"message": "bad tool parser output", "type": "BadRequestError", "code": 400, "param": None}, False, 400),
        ({"message": "The server had an error while processing", "type": "server_error", "code": None}, True, None),
    ],
)
async def test_in_band_error_event(error: dict[str, object], retryable: bool, status: int | None) -> None:
    async with FakeOpenAI(streaming(FIRST, chunk({"content": "Hi"}), {"error": error})) as server:
        async with llm(server) as provider:
            events, raised = await collect_until_error(provider.stream(MESSAGES))
    assert type(raised) is ProviderError
    assert (raised.retryable, raised.status) == (retryable, status)
    assert str(error["message"]) in str(raised)
    assert events[0] == TextDelta("Hi")


async def test_stall_times_out() -> None:
    async def script(conn: Connection) -> None:
        await conn.head()
        await conn.event(chunk({"content": "Let me"}))
        await asyncio.sleep(30)

    async with FakeOpenAI(script) as server, llm(server, timeout_s=0.2) as provider:
        events, error = await collect_until_error(provider.stream(MESSAGES))
    assert type(error) is ProviderTimeout and error.retryable
    assert events == [TextDelta("Let me"), Usage(provider="openai", model="gpt-4o-mini", kind="llm", failed=True)]


async def test_drop_mid_stream_is_a_connection_error() -> None:
    async def script(conn: Connection) -> None:
        await conn.head()
        await conn.event(chunk({"content": "Your appointment"}))
        conn.writer.transport.abort()

    async with FakeOpenAI(script) as server, llm(server) as provider:
        events, error = await collect_until_error(provider.stream(MESSAGES))
    assert type(error) is ProviderConnectionError and error.retryable
    assert events[0] == TextDelta("Your appointment")


async def test_body_ending_without_finish_is_a_connection_error() -> None:
    async with FakeOpenAI(streaming(FIRST, chunk({"content": "Your"}), done=False)) as server:
        async with llm(server) as provider:
            _, error = await collect_until_error(provider.stream(MESSAGES))
    assert type(error) is ProviderConnectionError
    assert "ended before the reply finished" in str(error)


async def test_connection_refused() -> None:
    async with FakeOpenAI(streaming()) as server:
        url = server.base_url
    provider = OpenAICompatLLM(url, API_KEY, "m", timeout_s=2)
    _, error = await collect_until_error(provider.stream(MESSAGES))
    await provider.aclose()
    assert type(error) is ProviderConnectionError and error.retryable


# ---- cancellation, secrets, lifecycle -----------------------------------------------------------------


async def test_a_barge_in_closes_the_response_and_its_usage_reaches_the_calls_sink() -> None:
    sink: list[Usage] = []
    server: FakeOpenAI

    async def script(conn: Connection) -> None:
        await conn.head()
        await conn.event(chunk({"content": "One"}))
        await server.wait_for_disconnect(conn)

    async with FakeOpenAI(script) as server, llm(server) as provider:
        call = await provider.open(sink.append)
        stream = call.stream(MESSAGES)
        assert await anext(stream) == TextDelta("One")
        assert sink == []
        await stream.aclose()  # the barge-in: the generator can yield nothing more
        await asyncio.wait_for(server.disconnected.wait(), 2)
        with pytest.raises(StopAsyncIteration):
            await anext(stream)
        await call.close()
    assert sink == [Usage(provider="openai", model="gpt-4o-mini", kind="llm", cancelled=True)]


async def test_a_finished_request_of_the_call_reports_its_usage_in_the_stream_not_the_sink() -> None:
    sink: list[Usage] = []
    async with FakeOpenAI(streaming(FIRST, chunk({"content": "Hi"}), chunk({}, "stop"), USAGE)) as server:
        async with llm(server) as provider:
            call = await provider.open(sink.append)
            events = await collect(call.stream(MESSAGES))
    assert events[-1] == Usage(provider="openai", model="gpt-4o-mini", kind="llm", input_tokens=12, output_tokens=17)
    assert sink == []


async def test_cancelling_the_consumer_task_closes_the_response_and_reports_to_the_requests_on_cancel() -> None:
    cancelled: list[Usage] = []
    server: FakeOpenAI
    got_first = asyncio.Event()

    async def script(conn: Connection) -> None:
        await conn.head()
        await conn.event(
            {
                "choices": [{"index": 0, "delta": {"content": "One"}}],
                "usage": {"prompt_tokens": 9, "completion_tokens": 1},
            }
        )
        await server.wait_for_disconnect(conn)

    async def consume(provider: OpenAICompatLLM) -> None:
        async for _ in provider.stream(MESSAGES, on_cancel=cancelled.append):
            got_first.set()

    async with FakeOpenAI(script) as server, llm(server) as provider:
        task = asyncio.create_task(consume(provider))
        await asyncio.wait_for(got_first.wait(), 2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(server.disconnected.wait(), 2)
    assert cancelled == [
        Usage(provider="openai", model="gpt-4o-mini", kind="llm", input_tokens=9, output_tokens=1, cancelled=True)
    ]


async def test_the_key_is_never_logged_or_shown(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with FakeOpenAI(streaming(FIRST, chunk({}, "stop"))) as server, llm(server) as provider:
        await collect(provider.stream(MESSAGES))
        assert API_KEY not in repr(provider)
    assert caplog.records, "expected a debug record of the request"
    assert all(API_KEY not in record.getMessage() for record in caplog.records)


async def test_injected_client_is_used_and_left_open() -> None:
    async with FakeOpenAI(streaming(FIRST, chunk({"content": "a"}), chunk({}, "stop"))) as server:
        async with httpx.AsyncClient() as client:
            provider = OpenAICompatLLM(server.base_url, API_KEY, "m", http_client=client)
            await collect(provider.stream(MESSAGES))
            await provider.aclose()
            assert not client.is_closed


# ---- the sans-I/O parts -----------------------------------------------------------------------------------


def test_sse_decoder_lines() -> None:
    decoder = SSEDecoder()
    lines = [": comment", "event: ignored", "id: 7", 'data: {"a":', "data:1}", "", "", "retry: 10", "data: [DONE]"]
    out = [decoder.line(line) for line in lines]
    assert out == [None, None, None, None, None, '{"a":\n1}', None, None, None]
    assert decoder.end() == "[DONE]"
    assert decoder.end() is None


def test_assembler_appends_index_less_continuations_to_the_last_call() -> None:
    assembler = ChatStreamAssembler("gemini")
    assembler.feed(
        {"choices": [{"delta": {"tool_calls": [{"id": "c1", "function": {"name": "a", "arguments": "{"}}]}}]}
    )
    assembler.feed({"choices": [{"delta": {"tool_calls": [{"function": {"arguments": "}"}}]}}]})
    assembler.feed({"choices": [{"index": 1, "delta": {"content": "second choice is ignored"}}]})
    assert assembler.take_tool_calls() == [ToolCall("c1", "a", {})]


def test_tool_message_needs_its_call_id() -> None:
    with pytest.raises(ProviderError, match="tool_call_id"):
        wire_message(Message("tool", "{}"))


# ---- reasoning models (max_completion_tokens) ----------------------------------------------------------------


async def test_a_reasoning_model_gets_max_completion_tokens() -> None:
    """gpt-6-luna (the named successor of gpt-4o-mini) reasons and refuses max_tokens with a 400."""
    script = reasoning_rules(streaming(FIRST, chunk({"content": "ok"}), chunk({}, "stop")))
    async with FakeOpenAI(script) as server:
        async with OpenAICompatLLM(server.base_url, API_KEY, "gpt-6-luna", max_tokens=80) as provider:
            events = await collect(provider.stream([Message("user", "hi")]))
    assert events[0] == TextDelta("ok")
    [request] = server.requests
    assert request.body["max_completion_tokens"] == 80 and "max_tokens" not in request.body


async def test_an_unknown_model_refusing_max_tokens_is_retried_once_with_the_other_field() -> None:
    script = reasoning_rules(streaming(FIRST, chunk({"content": "ok"}), chunk({}, "stop")), models=re.compile(""))
    async with FakeOpenAI(script) as server:
        async with OpenAICompatLLM(server.base_url, API_KEY, "acme-thinker", max_tokens=80) as provider:
            first = await collect(provider.stream([Message("user", "hi")]))
            second = await collect(provider.stream([Message("user", "again")]))
    assert first[0] == TextDelta("ok") and second[0] == TextDelta("ok")
    fields = [("max_tokens" in r.body, "max_completion_tokens" in r.body) for r in server.requests]
    assert fields == [(True, False), (False, True), (False, True)]  # the switch is remembered


async def test_the_default_model_is_current() -> None:
    assert DEFAULT_MODEL == "gpt-6-luna"
    provider = OpenAICompatLLM("http://127.0.0.1:9/v1", None)
    assert provider.model == DEFAULT_MODEL
