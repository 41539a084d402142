"""Streaming chat completions from any OpenAI-compatible server (OpenAI, vLLM, Ollama, llama.cpp, ...).

Owns: the Chat Completions wire format over HTTP + Server-Sent Events, spoken with ``httpx`` (no SDK):
mapping :class:`Message` / :class:`ToolSpec` to the request body, decoding the SSE stream into
:class:`TextDelta`, :class:`ToolCall` and :class:`Usage`, and translating every transport and vendor
failure into :mod:`parley.providers.errors` at this edge. Must not know about calls, turns or audio.

Sans-I/O cores, testable with plain strings and dicts: :class:`SSEDecoder` (lines in, event data out)
and :class:`ChatStreamAssembler` (chunk objects in, events out; concatenates tool-call argument
fragments by ``index`` and parses them when the choice finishes, so parallel calls work). The assembler
tolerates the compatible servers' deviations: tool deltas without ``index``, whole calls in one delta,
empty ids, a tool turn ending with ``finish_reason: "stop"``, usage absent / null / repeated / under
``x_groq`` (the last one wins), integer or string error codes.

Request: ``stream: true`` and ``stream_options: {"include_usage": true}``; the usage chunk then comes
last (``choices: []``). ``base_url`` includes the version prefix (``https://api.openai.com/v1``,
``http://localhost:11434/v1``). ``max_tokens`` goes out as ``max_completion_tokens`` for models named like
OpenAI's reasoning families (o1/o3/o4, gpt-5 and later), which refuse ``max_tokens`` with a 400
``unsupported_parameter``, and as ``max_tokens`` otherwise (what compatible servers accept); a model that
refuses ``max_tokens`` anyway gets the request once more with the other field, remembered for the next ones
(``max_tokens_field="auto"``, the default; name a field to pin it). The default model is
:data:`DEFAULT_MODEL`: gpt-4o-mini shuts down on 2027-01-14 and OpenAI names gpt-6-luna as its replacement.

Failures: 401/403 -> :class:`ProviderAuthError`; 429 and 5xx -> retryable :class:`ProviderError`
(``insufficient_quota`` is not retryable); timeouts -> :class:`ProviderTimeout`; refused or dropped
connections, and a stream that ends before it finished -> :class:`ProviderConnectionError` (retryable,
but text may already have been emitted); undecodable SSE or JSON, or a non-SSE 200 ->
:class:`ProviderProtocolError`; an in-band ``error`` event -> :class:`ProviderError`. A failed stream
yields ``Usage(failed=True)`` (tokens as far as known) and then raises.

Cancellation: closing the iterator (``aclose()``) or cancelling the task iterating it closes the HTTP
response at once; nothing more is yielded. The usage chunk only comes at the very end, so a cancelled
request usually has no token counts: the request's ``on_cancel`` (the ``stream()`` argument, or the call's
sink when the request runs in the stream ``open()`` gave the call) receives ``Usage(cancelled=True)`` with
the counts the stream did report, else zeros, although the vendor may bill what it generated. Requests of
one call share nothing but the HTTP client, so the per-call stream is :class:`LLMRequests`' (one request
each).

The API key is sent only in the ``Authorization`` header; it is never logged, never part of ``repr``,
and redacted from error messages.
"""

from __future__ import annotations

import functools
import json
import logging
import re
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal, TypeAlias

import httpx

from parley import wire_json
from parley.providers.base import (
    Lifecycle,
    LLMEvent,
    LLMRequests,
    Message,
    TextDelta,
    ToolCall,
    ToolSpec,
    Usage,
    UsageSink,
    Verdict,
)
from parley.providers.errors import (
    ProviderConnectionError,
    ProviderError,
    ProviderProtocolError,
    error_for_status,
    redact,
)
from parley.providers.http_session import (
    HttpSession,
    SSEDecoder,
    decode_event,
    metered,
    require_event_stream,
    sse_data,
)
from parley.providers.model_list import openai_verdict

__all__ = [
    "DEFAULT_MODEL",
    "ChatStreamAssembler",
    "OpenAICompatLLM",
    "SSEDecoder",
    "decode_event",
    "request_body",
    "wire_message",
]

log = logging.getLogger("parley.providers.openai_llm")

DEFAULT_MODEL = "gpt-6-luna"  # OpenAI's named replacement of gpt-4o-mini (shut down 2027-01-14)
REASONING_MODEL = re.compile(r"(o\d|gpt-([5-9]|\d\d))")  # refuse max_tokens; want max_completion_tokens
MaxTokensField: TypeAlias = Literal["auto", "max_tokens", "max_completion_tokens"]


def _obj(value: object) -> Mapping[str, object]:
    return value if isinstance(value, dict) else {}


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


@dataclass(slots=True)
class _PartialCall:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


class ChatStreamAssembler:
    """Chat-completion chunk objects in, :class:`TextDelta` / :class:`ToolCall` events out."""

    __slots__ = ("_by_index", "_calls", "finish_reason", "input_tokens", "output_tokens", "provider", "saw_usage")

    def __init__(self, provider: str) -> None:
        self.provider = provider
        self._calls: list[_PartialCall] = []
        self._by_index: dict[int, _PartialCall] = {}
        self.finish_reason: str | None = None
        self.saw_usage = False
        self.input_tokens = 0
        self.output_tokens = 0

    def feed(self, chunk: object) -> list[TextDelta | ToolCall]:
        if not isinstance(chunk, dict):
            raise ProviderProtocolError(f"{self.provider}: stream chunk is not a JSON object", provider=self.provider)
        if chunk.get("error") is not None:
            raise self._in_band_error(chunk["error"])
        usage = chunk.get("usage") or _obj(chunk.get("x_groq")).get("usage")
        if isinstance(usage, dict):
            self.saw_usage = True
            self.input_tokens = _int(usage.get("prompt_tokens"))
            self.output_tokens = _int(usage.get("completion_tokens"))
        choices = chunk.get("choices") or []
        if not isinstance(choices, list):
            raise ProviderProtocolError(f"{self.provider}: 'choices' is not a list", provider=self.provider)
        events: list[TextDelta | ToolCall] = []
        for choice in map(_obj, choices):
            if _int(choice.get("index")) != 0:
                continue
            delta = _obj(choice.get("delta"))
            content = delta.get("content")
            if isinstance(content, str) and content:
                events.append(TextDelta(content))
            fragments = delta.get("tool_calls") or []
            for fragment in fragments if isinstance(fragments, list) else []:
                self._add_fragment(_obj(fragment))
            reason = choice.get("finish_reason")
            if isinstance(reason, str) and reason:
                self.finish_reason = reason
                events.extend(self.take_tool_calls())
        return events

    def take_tool_calls(self) -> list[ToolCall]:
        """The tool calls accumulated so far, parsed (at a finish chunk, or when the stream ends)."""
        calls = [self._parse(n, partial) for n, partial in enumerate(self._calls)]
        self._calls = []
        self._by_index = {}
        return calls

    def _add_fragment(self, fragment: Mapping[str, object]) -> None:
        function = _obj(fragment.get("function"))
        call_id, name, arguments = fragment.get("id"), function.get("name"), function.get("arguments")
        index = fragment.get("index")
        if isinstance(index, int) and index in self._by_index:
            partial = self._by_index[index]
        elif isinstance(index, int) or call_id or name or not self._calls:
            partial = _PartialCall()
            self._calls.append(partial)
            if isinstance(index, int):
                self._by_index[index] = partial
        else:
            partial = self._calls[-1]  # no index, no id, no name: a continuation of the last call
        if isinstance(call_id, str) and call_id:
            partial.id = call_id
        if isinstance(name, str) and name:
            partial.name = name
        if isinstance(arguments, str):
            partial.arguments.append(arguments)
        elif isinstance(arguments, dict):
            partial.arguments.append(json.dumps(arguments))

    def _parse(self, n: int, partial: _PartialCall) -> ToolCall:
        if not partial.name:
            raise ProviderProtocolError(f"{self.provider}: tool call without a function name", provider=self.provider)
        text = "".join(partial.arguments).strip()
        try:
            arguments = wire_json.loads(text) if text else {}
        except wire_json.WireJsonError as exc:
            raise ProviderProtocolError(
                f"{self.provider}: arguments of tool call {partial.name!r} are not valid JSON: {exc}",
                provider=self.provider,
            ) from exc
        if not isinstance(arguments, dict):
            raise ProviderProtocolError(
                f"{self.provider}: arguments of tool call {partial.name!r} are not a JSON object",
                provider=self.provider,
            )
        return ToolCall(id=partial.id or f"call_{n}", name=partial.name, arguments=arguments)

    def _in_band_error(self, error: object) -> ProviderError:
        details = _obj(error)
        message = str(details.get("message") or error)
        code = details.get("code")
        if isinstance(code, int) and not isinstance(code, bool):
            return error_for_status(code, message, provider=self.provider)
        kind = str(details.get("type") or "")
        retryable = code in ("server_error", "rate_limit_exceeded") or kind == "server_error"
        text = f"{self.provider}: error in stream: {message}"
        return ProviderError(text, provider=self.provider, code=str(code) if code else None, retryable=retryable)


def wire_message(message: Message) -> dict[str, object]:
    """One :class:`Message` in the Chat Completions request shape."""
    if message.role == "tool":
        if not message.tool_call_id:
            raise ProviderError("a tool message needs the tool_call_id it answers", retryable=False)
        return {"role": "tool", "tool_call_id": message.tool_call_id, "content": message.content}
    out: dict[str, object] = {"role": message.role, "content": message.content}
    if message.role == "assistant" and message.tool_calls:
        out["content"] = message.content or None
        out["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": json.dumps(dict(call.arguments))},
            }
            for call in message.tool_calls
        ]
    if message.name:
        out["name"] = message.name
    return out


def request_body(
    model: str,
    messages: Sequence[Message],
    tools: Sequence[ToolSpec] = (),
    *,
    temperature: float | None = None,
    max_tokens: int | None = None,
    max_tokens_field: str = "max_tokens",
) -> dict[str, object]:
    """The JSON body of one streaming request."""
    body: dict[str, object] = {
        "model": model,
        "messages": [wire_message(m) for m in messages],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if tools:
        body["tools"] = [
            {
                "type": "function",
                "function": {"name": t.name, "description": t.description, "parameters": dict(t.parameters)},
            }
            for t in tools
        ]
    if temperature is not None:
        body["temperature"] = temperature
    if max_tokens is not None:
        body[max_tokens_field] = max_tokens
    return body


def _error_message(body: bytes) -> tuple[str, str | None]:
    """The vendor's error message and code from an error response body."""
    text = body.decode("utf-8", "replace").strip()
    try:
        parsed: object = wire_json.loads(text)
    except wire_json.WireJsonError:
        return text[:300], None
    error = _obj(parsed).get("error", _obj(parsed).get("detail"))
    if isinstance(error, str):
        return error[:300], None
    details = _obj(error)
    code = details.get("code")
    return str(details.get("message") or text)[:300], str(code) if code is not None else None


class _FieldRefused(Exception):
    """The model refused ``max_tokens`` (400 ``unsupported_parameter``): ask again with the other field."""


class OpenAICompatLLM(Lifecycle, LLMRequests):
    """An :class:`~parley.providers.base.LLMProvider` for an OpenAI-compatible ``/chat/completions``."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        model: str = DEFAULT_MODEL,
        *,
        name: str = "openai",
        timeout_s: float = 30.0,
        connect_timeout_s: float = 5.0,
        temperature: float | None = None,
        max_tokens: int | None = None,
        max_tokens_field: MaxTokensField = "auto",
        extra_headers: Mapping[str, str] | None = None,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        self.name = name
        self.model = model
        self.base_url = base_url.rstrip("/")
        self.url = self.base_url + "/chat/completions"
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.max_tokens_field: Literal["max_tokens", "max_completion_tokens"] = (
            ("max_completion_tokens" if REASONING_MODEL.match(model) else "max_tokens")
            if max_tokens_field == "auto" else max_tokens_field
        )
        self._field_fixed = max_tokens_field != "auto"
        self._api_key = api_key
        self._extra_headers = dict(extra_headers or {})
        self._http = HttpSession(timeout_s=timeout_s, connect_timeout_s=connect_timeout_s, client=http_client)

    def __repr__(self) -> str:
        return f"OpenAICompatLLM(name={self.name!r}, url={self.url!r}, model={self.model!r})"

    async def __aenter__(self) -> OpenAICompatLLM:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP client this provider created (an injected client belongs to its owner)."""
        await self._http.aclose()

    async def check(self) -> Verdict | None:
        """``GET /models`` (free; a local compatible server may need no key) and the configured model in it."""
        return await openai_verdict(self.base_url, self._api_key, self.model, provider=self.name)

    async def stream(
        self, messages: Sequence[Message], tools: Sequence[ToolSpec] = (), *, on_cancel: UsageSink | None = None
    ) -> AsyncGenerator[LLMEvent, None]:
        assembler = ChatStreamAssembler(self.name)
        usage = functools.partial(self._usage, assembler)
        async with aclosing(metered(self._events(messages, tools, assembler), usage, on_cancel)) as events:
            async for event in events:
                yield event

    def _usage(self, assembler: ChatStreamAssembler, *, failed: bool = False, cancelled: bool = False) -> Usage:
        return Usage(
            provider=self.name,
            model=self.model,
            kind="llm",
            input_tokens=assembler.input_tokens,
            output_tokens=assembler.output_tokens,
            failed=failed,
            cancelled=cancelled,
        )

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream", **self._extra_headers}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        return headers

    async def _events(
        self, messages: Sequence[Message], tools: Sequence[ToolSpec], assembler: ChatStreamAssembler
    ) -> AsyncGenerator[TextDelta | ToolCall, None]:
        for attempt in range(2):
            body = request_body(
                self.model,
                messages,
                tools,
                temperature=self.temperature,
                max_tokens=self.max_tokens,
                max_tokens_field=self.max_tokens_field,
            )
            log.debug(
                "%s: POST %s model=%s messages=%d tools=%d", self.name, self.url, self.model, len(messages), len(tools)
            )
            try:
                async with aclosing(self._post(body, assembler, retry_field=attempt == 0)) as events:
                    async for event in events:
                        yield event
                return
            except _FieldRefused:
                self.max_tokens_field = "max_completion_tokens"
                log.info("%s: %s refuses max_tokens; sending max_completion_tokens", self.name, self.model)

    async def _post(
        self, body: Mapping[str, object], assembler: ChatStreamAssembler, *, retry_field: bool
    ) -> AsyncGenerator[TextDelta | ToolCall, None]:
        def status_error(response: httpx.Response, content: bytes) -> BaseException:
            message, code = _error_message(content)
            if (retry_field and response.status_code == 400 and code == "unsupported_parameter"
                    and "max_tokens" in body and not self._field_fixed):
                return _FieldRefused()
            return error_for_status(response.status_code, self._redact(message), provider=self.name, code=code)

        async with self._http.post(self.url, body, self._headers(), provider=self.name, status_error=status_error,
                                   redact=self._redact) as response:
            require_event_stream(response, self.name)
            async for event in self._decode(response, assembler):
                yield event

    async def _decode(
        self, response: httpx.Response, assembler: ChatStreamAssembler
    ) -> AsyncIterator[TextDelta | ToolCall]:
        done = False
        async for data in sse_data(response):
            if data.strip() == "[DONE]":
                done = True
                break
            for event in assembler.feed(decode_event(data, self.name, [self._api_key])):
                yield event
        if not done and assembler.finish_reason is None:
            raise ProviderConnectionError(
                f"{self.name}: the stream ended before the reply finished", provider=self.name
            )
        for call in assembler.take_tool_calls():  # a server that never sent a finish chunk for them
            yield call

    def _redact(self, text: str) -> str:
        return redact(text, [self._api_key])
