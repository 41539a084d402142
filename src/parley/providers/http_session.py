"""The shell of a streaming HTTP provider (OpenAI-compatible chat, Anthropic, OpenAI speech).

Owns what their requests share, written once: one keep-alive ``httpx.AsyncClient`` per provider object,
created on first use and shared by every call (so later requests skip the TCP/TLS handshake), the request
timeouts, and closing the client if (and only if) the provider created it (an injected client belongs to
whoever injected it); the streamed POST (:meth:`HttpSession.post`: a non-200 becomes the vendor's error,
httpx's exceptions become :mod:`parley.providers.errors` ones, with the key redacted); the data of each
Server-Sent Event (:class:`SSEDecoder`, sans-I/O, and :func:`sse_data` over a response; :func:`decode_event`
for its bounded JSON); and the usage of every request, finished, failed or cancelled
(:func:`metered`). Must not know any vendor's body, events or error shapes: each module passes those in.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from typing import TypeVar

import httpx

from parley import wire_json
from parley.providers.base import Usage
from parley.providers.errors import (
    ProviderConnectionError,
    ProviderError,
    ProviderProtocolError,
    ProviderTimeout,
    redact,
)

__all__ = ["HttpSession", "SSEDecoder", "decode_event", "metered", "require_event_stream", "sse_data",
           "transport_error"]

E = TypeVar("E")
StatusError = Callable[[httpx.Response, bytes], BaseException]  # a non-200 and its body -> what to raise


class HttpSession:
    def __init__(self, *, timeout_s: float, connect_timeout_s: float, client: httpx.AsyncClient | None = None) -> None:
        self.timeout = httpx.Timeout(timeout_s, connect=min(connect_timeout_s, timeout_s))
        self._client = client
        self._owns = client is None

    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient()
        return self._client

    async def aclose(self) -> None:
        """Close the client this session created (an injected client belongs to its owner)."""
        if self._owns and self._client is not None:
            await self._client.aclose()
            self._client = None

    @contextlib.asynccontextmanager
    async def post(self, url: str, body: Mapping[str, object], headers: Mapping[str, str], *, provider: str,
                   status_error: StatusError, redact: Callable[[str], str]) -> AsyncIterator[httpx.Response]:
        """POST ``body`` as JSON and hand over the 200 response to stream from. A non-200 raises what
        ``status_error`` makes of it; an httpx failure, also while the body is read, a provider error."""
        try:
            async with self.client().stream("POST", url, content=json.dumps(body).encode(), headers=dict(headers),
                                            timeout=self.timeout) as response:
                if response.status_code != 200:
                    raise status_error(response, await response.aread())
                yield response
        except httpx.HTTPError as exc:
            raise transport_error(exc, provider, redact) from exc


class SSEDecoder:
    """Server-Sent Events decoding, one line (without its line ending) at a time.

    Joins the ``data:`` lines of one event with ``\\n`` and returns the data when the blank line ending
    the event arrives; ignores ``:`` comments and the ``event`` / ``id`` / ``retry`` fields.
    """

    __slots__ = ("_data",)

    def __init__(self) -> None:
        self._data: list[str] = []

    def line(self, line: str) -> str | None:
        if not line:
            return self.end()
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        if name == "data":
            self._data.append(value[1:] if value.startswith(" ") else value)
        return None

    def end(self) -> str | None:
        """The event in progress, if any (call at end of body: the last blank line may be missing)."""
        if not self._data:
            return None
        data = "\n".join(self._data)
        self._data = []
        return data


def decode_event(data: str, provider: str, secrets: Sequence[str | None] = ()) -> object:
    """The JSON value of one SSE event's data (depth and number sizes bounded by :mod:`parley.wire_json`)."""
    try:
        return wire_json.loads(data)
    except wire_json.WireJsonError as exc:
        raise ProviderProtocolError(
            f"{provider}: stream event is not JSON ({exc}): {redact(data[:120], secrets)!r}", provider=provider
        ) from None


def transport_error(exc: httpx.HTTPError, provider: str, redact: Callable[[str], str]) -> ProviderError:
    if isinstance(exc, httpx.TimeoutException):
        return ProviderTimeout(f"{provider}: timed out ({type(exc).__name__})", provider=provider)
    detail = redact(str(exc)) or type(exc).__name__
    if isinstance(exc, httpx.NetworkError | httpx.RemoteProtocolError):
        return ProviderConnectionError(f"{provider}: connection failed: {detail}", provider=provider)
    return ProviderError(f"{provider}: {detail}", provider=provider)


def require_event_stream(response: httpx.Response, provider: str) -> None:
    content_type = response.headers.get("content-type", "")
    if not content_type.startswith("text/event-stream"):
        raise ProviderProtocolError(
            f"{provider}: expected text/event-stream, got {content_type or 'no content type'!r}", provider=provider
        )


async def sse_data(response: httpx.Response) -> AsyncIterator[str]:
    """The data of each Server-Sent Event of the body (the last one also without its closing blank line)."""
    decoder = SSEDecoder()
    async for line in response.aiter_lines():
        if (data := decoder.line(line)) is not None:
            yield data
    if (data := decoder.end()) is not None:
        yield data


async def metered(events: AsyncGenerator[E, None], usage: Callable[..., Usage],
                  on_cancel: Callable[[Usage], None] | None) -> AsyncGenerator[E | Usage, None]:
    """``events``, then ``usage()``; on a provider error ``usage(failed=True)`` before it is raised; when the
    consumer stops early (a barge-in), ``usage(cancelled=True)`` to ``on_cancel`` (the request still bills)."""
    ended = False
    try:
        async with contextlib.aclosing(events):
            async for event in events:
                yield event
        ended = True
    except ProviderError:
        ended = True
        yield usage(failed=True)
        raise
    finally:
        if not ended and on_cancel is not None:
            on_cancel(usage(cancelled=True))
    yield usage()
