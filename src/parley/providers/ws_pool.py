"""Vendor WebSockets kept open between requests, for the TTS vendors that multiplex contexts on a socket.

Owns: the idle pool (checkout, release, discard, prewarm, close), one request per socket at a time, and the
socket-level send/receive with parley's error mapping (a read timeout, a close code). What makes a socket
unfit for reuse (ElevenLabs: too many contexts still unfinished) and what a request says when it is
abandoned (a vendor's cancel or close-context message) stay with each vendor module. Used by the ElevenLabs
and Cartesia clients; Deepgram's speak socket has its own rules (flush rate limits) and its own pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable, Mapping

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from parley.providers.errors import ProviderError, ProviderTimeout


class PooledSocket:
    """One open vendor connection, held by at most one request at a time."""

    __slots__ = ("pending", "pooled", "ws")

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.pending: set[str] = set()  # contexts opened here whose end has not been read yet (if tracked)
        self.pooled = False  # came from the pool: may have gone stale while idle

    @property
    def open(self) -> bool:
        return self.ws.state is State.OPEN


class SocketPool:
    def __init__(
        self,
        connect: Callable[[], Awaitable[ClientConnection]],
        *,
        provider: str,
        closed_error: Callable[[ConnectionClosed], ProviderError],
        read_timeout_s: float,
        max_idle: int = 4,
        reusable: Callable[[PooledSocket], bool] = lambda sock: True,
    ) -> None:
        self._connect = connect
        self.provider = provider
        self._closed_error = closed_error
        self.read_timeout_s = read_timeout_s
        self.max_idle = max_idle
        self._reusable = reusable
        self.opened = 0  # connections made, for tests and stats
        self._idle: list[PooledSocket] = []

    async def connect(self) -> PooledSocket:
        ws = await self._connect()
        self.opened += 1
        return PooledSocket(ws)

    async def prewarm(self) -> None:
        """Open a socket now so the next request pays no handshake."""
        await self.release(await self.connect())

    async def checkout(self) -> PooledSocket:
        while self._idle:
            sock = self._idle.pop()
            if sock.open and self._reusable(sock):
                return sock
            await self.discard(sock)  # closed by the server while idle (inactivity timeout)
        return await self.connect()

    async def release(self, sock: PooledSocket) -> None:
        if sock.open and self._reusable(sock) and len(self._idle) < self.max_idle:
            sock.pooled = True
            self._idle.append(sock)
        else:
            await self.discard(sock)

    async def abandon(self, sock: PooledSocket | None, goodbye: Mapping[str, object] | None) -> None:
        """A request stopped early: send the vendor's cancel message (if any), then pool the socket."""
        if sock is None:
            return
        if goodbye is not None and sock.open:
            try:
                async with asyncio.timeout(1.0):
                    await sock.ws.send(json.dumps(goodbye))
            except (TimeoutError, ConnectionClosed):
                await self.discard(sock)
                return
        await self.release(sock)

    @staticmethod
    async def discard(sock: PooledSocket) -> None:
        with contextlib.suppress(ConnectionClosed, OSError, TimeoutError):
            await sock.ws.close()

    async def aclose(self) -> None:
        """Close the idle sockets (sockets in use close or return to the pool when their request ends)."""
        idle, self._idle = self._idle, []
        for sock in idle:
            await self.discard(sock)

    async def send(self, sock: PooledSocket, message: Mapping[str, object]) -> None:
        try:
            await sock.ws.send(json.dumps(message))
        except ConnectionClosed as exc:
            raise self._closed_error(exc) from exc

    async def recv(self, sock: PooledSocket) -> str | bytes:
        try:
            async with asyncio.timeout(self.read_timeout_s):
                return await sock.ws.recv()
        except TimeoutError as exc:
            raise ProviderTimeout(
                f"{self.provider}: no audio for {self.read_timeout_s:g} s", provider=self.provider, code="read_timeout"
            ) from exc
        except ConnectionClosed as exc:
            raise self._closed_error(exc) from exc
