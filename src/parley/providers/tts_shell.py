"""The shell around one request of a WebSocket TTS vendor that multiplexes contexts on pooled sockets.

Owns what ElevenLabs and Cartesia requests share, written once: a context id per request, a socket from the
:class:`~parley.providers.ws_pool.SocketPool`, one retry on a fresh socket when the vendor module says the
failure allows it (a pooled socket that went stale while idle) and nothing was heard yet, whole samples out
of audio that may split a sample across messages (:class:`PcmAssembler`), and the end of every request:
finished (release the socket, usage), failed (discard the socket, ``Usage(failed=True)``, raise) or stopped
early by the consumer at a barge-in (the vendor's goodbye message, e.g. a cancel, then the socket back to
the pool, ``Usage(cancelled=True)`` to the request's ``on_cancel`` sink: in a call, the sink the call's
stream was opened with). The lifecycle over the pool (prewarm, check, aclose,
``async with``) is :class:`PooledVoice`.

Must not know any vendor's messages: each vendor module passes its attempt (send the request on a socket,
yield PCM bytes until its context is done), which failures may be retried, and what to send when a request
is abandoned. Deepgram's speak socket is not pooled this way (one request per socket, Flush-capped) and
keeps its own shell.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Self

from parley.audio.pcm import from_bytes
from parley.providers.base import AudioChunk, Lifecycle, TTSEvent, Usage, UsageSink, Verdict
from parley.providers.errors import ProviderError
from parley.providers.ws_pool import PooledSocket, SocketPool

__all__ = ["PcmAssembler", "PooledVoice", "WsRequest", "pooled_synthesis"]

log = logging.getLogger("parley.providers.tts_shell")


class PcmAssembler:
    """s16le bytes in arbitrary chunks in, whole samples out (an odd byte waits for the next chunk)."""

    __slots__ = ("_carry",)

    def __init__(self) -> None:
        self._carry = b""

    def feed(self, data: bytes) -> bytes:
        data = self._carry + data
        cut = len(data) - len(data) % 2
        self._carry = data[cut:]
        return data[:cut]

    @property
    def leftover(self) -> int:
        return len(self._carry)


@dataclass(slots=True)
class WsRequest:
    """One request's progress, shared by the shell and the vendor's attempt."""

    text: str
    ctx: str
    sock: PooledSocket | None = None
    sent: int = 0  # messages of this attempt that went out (the vendor module counts them)
    billed: bool = False  # the vendor has the text: its characters are billed from here on
    produced: bool = False  # audio went to the consumer: no retry after this


Attempt = Callable[[PooledSocket, WsRequest], AsyncIterator[bytes]]
UsageOf = Callable[..., Usage]  # (characters, *, cancelled=False, failed=False) -> Usage


async def pooled_synthesis(
    pool: SocketPool,
    text: str,
    *,
    sample_rate: int,
    attempt: Attempt,
    retry: Callable[[ProviderError, WsRequest], bool],
    goodbye: Callable[[WsRequest], Mapping[str, object] | None],
    usage: UsageOf,
    on_cancel: UsageSink | None,
) -> AsyncGenerator[TTSEvent, None]:
    """Audio for ``text`` through ``attempt`` on a pooled socket, then one :class:`Usage` (see the module)."""
    if not text.strip():
        yield usage(0)
        return
    req = WsRequest(text, f"parley-{uuid.uuid4().hex}")
    finished = False
    failure: ProviderError | None = None
    pcm = PcmAssembler()
    try:
        for tries in range(2):
            req.sock = sock = await pool.checkout()
            req.sent, req.billed = 0, False
            try:
                async for data in attempt(sock, req):
                    if whole := pcm.feed(data):
                        yield AudioChunk(from_bytes(whole), sample_rate, text=None if req.produced else text)
                        req.produced = True
                break
            except ProviderError as exc:
                if tries or req.produced or not retry(exc, req):
                    raise
                log.info("%s: %s; retrying once on a fresh socket", pool.provider, exc)
                await pool.discard(sock)
                req.sock = None
        finished = True
    except ProviderError as exc:
        failure = exc
    finally:
        if not finished and failure is None:  # barge-in: the consumer stopped early
            await pool.abandon(req.sock, goodbye(req))
            if on_cancel is not None:
                on_cancel(usage(len(text) if req.billed else 0, cancelled=True))
    if failure is not None:
        if req.sock is not None:
            await pool.discard(req.sock)
        yield usage(len(text) if req.billed else 0, failed=True)
        raise failure
    if req.sock is not None:
        await pool.release(req.sock)
    yield usage(len(text))


class PooledVoice(Lifecycle):
    """The lifecycle of a TTS provider over a :class:`SocketPool` held as ``self._pool``."""

    _pool: SocketPool

    @property
    def connections_opened(self) -> int:
        return self._pool.opened

    async def prewarm(self) -> None:
        """Open a socket now so the next synthesize() pays no handshake."""
        await self._pool.prewarm()

    async def check(self) -> Verdict | None:
        """Open the vendor socket: authenticates without synthesizing (nothing billed)."""
        await self._pool.prewarm()
        return None

    async def aclose(self) -> None:
        """Close the pooled sockets (sockets in use close or return to the pool when their request ends)."""
        await self._pool.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
