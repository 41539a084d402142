"""Streaming replies from Anthropic's Messages API (``POST /v1/messages``, SSE), spoken with ``httpx``.

Owns: mapping parley :class:`Message` / :class:`ToolSpec` to the Messages request (system messages ->
top-level ``system``; assistant tool calls -> ``tool_use`` blocks; tool results -> a ``user`` turn of
``tool_result`` blocks; consecutive turns of one role merged, empty text left out, and a placeholder user
turn before a leading assistant turn such as the greeting), decoding the event stream into
:class:`TextDelta`, :class:`ToolCall` and :class:`Usage`, and translating transport and vendor failures
into :mod:`parley.providers.errors` at this edge. Must not know about calls, turns or audio.

Sans-I/O core: :class:`MessageStreamAssembler` (event objects in, events out). ``tool_use`` input arrives
as ``input_json_delta`` fragments per block index; they are joined and parsed at ``content_block_stop``
(no fragments: the block's initial ``input``). Usage: ``input_tokens`` from ``message_start``,
``output_tokens`` from the last ``message_delta`` (counts are cumulative: the last one wins). The SSE line
decoding is :class:`parley.providers.openai_llm.SSEDecoder` (the event name is also in the data's ``type``).

Failures: HTTP 401/403 -> :class:`ProviderAuthError`; 429, 500, 529 (``overloaded_error``) -> retryable
:class:`ProviderError`, other 4xx not (``x-should-retry`` overrides); an in-stream ``error`` event is
mapped by its type the same way (``overloaded_error`` retryable, ``authentication_error`` ->
:class:`ProviderAuthError`, ``invalid_request_error`` not retryable); timeouts -> :class:`ProviderTimeout`;
refused or dropped connections and a body that ends before ``message_stop`` ->
:class:`ProviderConnectionError`; undecodable SSE / JSON or a non-SSE 200 -> :class:`ProviderProtocolError`.
A failed stream yields ``Usage(failed=True)`` (tokens as far as known) and then raises.

Cancellation: closing the iterator or cancelling its task closes the HTTP response at once (the API has no
cancel endpoint); the request's ``on_cancel`` (the ``stream()`` argument, or the call's sink when the
request runs in the stream ``open()`` gave the call; :class:`LLMRequests`, one HTTP request each) receives
``Usage(cancelled=True)`` with the token counts seen so far (``message_start`` gives the input tokens early,
so they are usually known). The key is sent only in the ``x-api-key`` header, never logged, never in
``repr``, and redacted from error messages.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from types import TracebackType

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
    ProviderAuthError,
    ProviderConnectionError,
    ProviderError,
    ProviderProtocolError,
    error_for_status,
    redact,
)
from parley.providers.http_session import HttpSession, decode_event, metered, require_event_stream, sse_data
from parley.providers.model_list import anthropic_verdict

__all__ = ["AnthropicLLM", "MessageStreamAssembler", "request_body", "wire_messages"]

PROVIDER = "anthropic"
OPENING_USER_TURN = "(The call has connected.)"  # before a leading assistant turn: the API wants user first
log = logging.getLogger("parley.providers.anthropic")

# the HTTP status each documented error type comes with (billing/timeout: not confirmed by the docs)
_STATUS_OF_TYPE = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


def _obj(value: object) -> Mapping[str, object]:
    return value if isinstance(value, dict) else {}


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def error_for_type(kind: str, message: str, *, status: int | None = None) -> ProviderError:
    """The error for a documented Anthropic error type (``status``: the HTTP status, if it came with one)."""
    if status is not None:
        return error_for_status(status, message, provider=PROVIDER, code=kind or None)
    text = f"{PROVIDER}: error in stream: {kind}: {message}"
    equivalent = _STATUS_OF_TYPE.get(kind, 500 if kind else 400)
    if equivalent in (401, 403):
        return ProviderAuthError(text, provider=PROVIDER, code=kind)
    retryable = equivalent in (408, 429) or equivalent >= 500
    return ProviderError(text, provider=PROVIDER, code=kind or None, retryable=retryable)


# ---- request ------------------------------------------------------------------------------------------------


def _blocks(message: Message) -> list[dict[str, object]]:
    if message.role == "tool":
        if not message.tool_call_id:
            raise ProviderError("a tool message needs the tool_call_id it answers", retryable=False)
        return [{"type": "tool_result", "tool_use_id": message.tool_call_id, "content": message.content}]
    blocks: list[dict[str, object]] = [{"type": "text", "text": message.content}] if message.content else []
    if message.role == "assistant":
        blocks += [
            {"type": "tool_use", "id": c.id, "name": c.name, "input": dict(c.arguments)} for c in message.tool_calls
        ]
    return blocks


def wire_messages(messages: Sequence[Message]) -> tuple[str | None, list[dict[str, object]]]:
    """The top-level ``system`` text and the Messages-API ``messages`` for parley's conversation."""
    system = [m.content for m in messages if m.role == "system" and m.content]
    turns: list[tuple[str, list[dict[str, object]]]] = []
    for message in messages:
        if message.role == "system":
            continue
        role = "assistant" if message.role == "assistant" else "user"
        blocks = _blocks(message)
        if not blocks:
            continue
        if turns and turns[-1][0] == role:
            turns[-1][1].extend(blocks)
        else:
            turns.append((role, blocks))
    if turns and turns[0][0] == "assistant":
        turns.insert(0, ("user", [{"type": "text", "text": OPENING_USER_TURN}]))
    wire: list[dict[str, object]] = []
    for role, blocks in turns:
        plain = len(blocks) == 1 and blocks[0]["type"] == "text"
        wire.append({"role": role, "content": blocks[0]["text"] if plain else blocks})
    return ("\n\n".join(system) or None), wire


def request_body(
    model: str,
    messages: Sequence[Message],
    tools: Sequence[ToolSpec] = (),
    *,
    max_tokens: int,
    temperature: float | None = None,
) -> dict[str, object]:
    system, wire = wire_messages(messages)
    body: dict[str, object] = {"model": model, "max_tokens": max_tokens, "messages": wire, "stream": True}
    if system:
        body["system"] = system
    if tools:
        body["tools"] = [
            {"name": t.name, "description": t.description, "input_schema": dict(t.parameters)} for t in tools
        ]
    if temperature is not None:
        body["temperature"] = temperature
    return body


# ---- response -----------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _ToolBlock:
    id: str
    name: str
    initial: Mapping[str, object]
    fragments: list[str] = field(default_factory=list)


class MessageStreamAssembler:
    """Messages-API stream events in, :class:`TextDelta` / :class:`ToolCall` out."""

    __slots__ = ("_tools", "done", "input_tokens", "output_tokens", "stop_reason")

    def __init__(self) -> None:
        self._tools: dict[int, _ToolBlock] = {}
        self.input_tokens = 0
        self.output_tokens = 0
        self.stop_reason: str | None = None
        self.done = False

    def feed(self, event: object) -> list[TextDelta | ToolCall]:
        if not isinstance(event, dict):
            raise ProviderProtocolError(f"{PROVIDER}: stream event is not a JSON object", provider=PROVIDER)
        index = _int(event.get("index"))
        match event.get("type"):
            case "message_start":
                self._usage(_obj(_obj(event.get("message")).get("usage")))
            case "content_block_start":
                block = _obj(event.get("content_block"))
                if block.get("type") == "tool_use" and index is not None:
                    self._tools[index] = _ToolBlock(
                        str(block.get("id") or ""), str(block.get("name") or ""), _obj(block.get("input"))
                    )
            case "content_block_delta":
                delta = _obj(event.get("delta"))
                kind = delta.get("type")
                if kind == "text_delta" and isinstance(delta.get("text"), str) and delta["text"]:
                    return [TextDelta(str(delta["text"]))]
                if kind == "input_json_delta" and index in self._tools:
                    self._tools[index].fragments.append(str(delta.get("partial_json") or ""))
            case "content_block_stop":
                if index is not None and index in self._tools:
                    return [self._parse(self._tools.pop(index))]
            case "message_delta":
                self._usage(_obj(event.get("usage")))
                reason = _obj(event.get("delta")).get("stop_reason")
                if isinstance(reason, str):
                    self.stop_reason = reason
            case "message_stop":
                self.done = True
            case "error":
                error = _obj(event.get("error"))
                raise error_for_type(str(error.get("type") or ""), str(error.get("message") or event))
            case _:
                pass  # ping, and event types added later
        return []

    def _usage(self, usage: Mapping[str, object]) -> None:
        if (n := _int(usage.get("input_tokens"))) is not None:
            self.input_tokens = n
        if (n := _int(usage.get("output_tokens"))) is not None:
            self.output_tokens = n

    @staticmethod
    def _parse(block: _ToolBlock) -> ToolCall:
        if not block.name:
            raise ProviderProtocolError(f"{PROVIDER}: tool_use block without a name", provider=PROVIDER)
        text = "".join(block.fragments).strip()
        try:
            arguments: object = wire_json.loads(text) if text else dict(block.initial)
        except wire_json.WireJsonError as exc:
            raise ProviderProtocolError(
                f"{PROVIDER}: input of tool_use {block.name!r} is not valid JSON: {exc}", provider=PROVIDER
            ) from exc
        if not isinstance(arguments, dict):
            raise ProviderProtocolError(
                f"{PROVIDER}: input of tool_use {block.name!r} is not a JSON object", provider=PROVIDER
            )
        return ToolCall(id=block.id or f"toolu_{block.name}", name=block.name, arguments=arguments)


def _error_details(body: bytes) -> tuple[str, str | None]:
    """The message and error type of an error response body."""
    text = body.decode("utf-8", "replace").strip()
    try:
        parsed: object = wire_json.loads(text)
    except wire_json.WireJsonError:
        return text[:300], None
    error = _obj(_obj(parsed).get("error"))
    kind = error.get("type")
    return str(error.get("message") or text)[:300], str(kind) if kind else None


# ---- the provider -----------------------------------------------------------------------------------------


class AnthropicLLM(Lifecycle, LLMRequests):
    """An :class:`~parley.providers.base.LLMProvider` for Anthropic's streaming Messages API."""

    name = PROVIDER

    def __init__(
        self,
        api_key: str,
        model: str,
        *,
        base_url: str = "https://api.anthropic.com",
        max_tokens: int = 300,
        temperature: float | None = None,
        timeout_s: float = 30.0,
        connect_timeout_s: float = 5.0,
        version: str = "2023-06-01",
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        self.model = model
        self.base_url = base_url.rstrip("/")
        self.url = self.base_url + "/v1/messages"
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.version = version
        self._api_key = api_key
        self._http = HttpSession(timeout_s=timeout_s, connect_timeout_s=connect_timeout_s, client=http_client)

    def __repr__(self) -> str:
        return f"AnthropicLLM(url={self.url!r}, model={self.model!r})"

    async def __aenter__(self) -> AnthropicLLM:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP client this provider created (an injected client belongs to its owner)."""
        await self._http.aclose()

    async def check(self) -> Verdict | None:
        """The model list (free, needs a valid key) and the configured model's place in it."""
        return await anthropic_verdict(self.base_url, self._api_key, self.model, provider=PROVIDER)

    async def stream(
        self, messages: Sequence[Message], tools: Sequence[ToolSpec] = (), *, on_cancel: UsageSink | None = None
    ) -> AsyncGenerator[LLMEvent, None]:
        assembler = MessageStreamAssembler()
        usage = functools.partial(self._usage, assembler)
        async with aclosing(metered(self._events(messages, tools, assembler), usage, on_cancel)) as events:
            async for event in events:
                yield event

    def _usage(self, assembler: MessageStreamAssembler, *, failed: bool = False, cancelled: bool = False) -> Usage:
        return Usage(
            provider=PROVIDER,
            model=self.model,
            kind="llm",
            input_tokens=assembler.input_tokens,
            output_tokens=assembler.output_tokens,
            failed=failed,
            cancelled=cancelled,
        )

    def _headers(self) -> dict[str, str]:
        return {
            "x-api-key": self._api_key,
            "anthropic-version": self.version,
            "content-type": "application/json",
            "accept": "text/event-stream",
        }

    async def _events(
        self, messages: Sequence[Message], tools: Sequence[ToolSpec], assembler: MessageStreamAssembler
    ) -> AsyncGenerator[TextDelta | ToolCall, None]:
        body = request_body(self.model, messages, tools, max_tokens=self.max_tokens, temperature=self.temperature)
        log.debug(
            "%s: POST %s model=%s messages=%d tools=%d", PROVIDER, self.url, self.model, len(messages), len(tools)
        )
        try:
            async with self._http.post(self.url, body, self._headers(), provider=PROVIDER,
                                       status_error=self._status_error, redact=self._redact) as response:
                require_event_stream(response, PROVIDER)
                async for event in self._decode(response, assembler):
                    yield event
        except ProviderError:
            if assembler.done:
                return  # the reply was complete; only the end of the body was lost
            raise

    def _status_error(self, response: httpx.Response, body: bytes) -> ProviderError:
        message, kind = _error_details(body)
        error = error_for_type(kind or "", self._redact(message), status=response.status_code)
        should_retry = response.headers.get("x-should-retry")
        if should_retry in ("true", "false") and not isinstance(error, ProviderAuthError):
            error.retryable = should_retry == "true"
        return error

    async def _decode(
        self, response: httpx.Response, assembler: MessageStreamAssembler
    ) -> AsyncIterator[TextDelta | ToolCall]:
        async for data in sse_data(response):  # read to the end of the body: the connection is reused
            if assembler.done:
                continue
            for event in assembler.feed(decode_event(data, PROVIDER, [self._api_key])):
                yield event
        if not assembler.done:
            raise ProviderConnectionError(f"{PROVIDER}: the stream ended before message_stop", provider=PROVIDER)

    def _redact(self, text: str) -> str:
        return redact(text, [self._api_key])
