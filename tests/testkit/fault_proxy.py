"""A toxiproxy-style TCP fault proxy for tests: sits between a client (parley) and a server (the fake
FreeSWITCH's ESL port) on 127.0.0.1 and breaks the link on command.

Owns: accepting client connections, dialling the upstream for each, forwarding bytes both ways, and the
faults: refuse new connections (the listener closes; a connect gets ECONNREFUSED), reset every live
connection (TCP RST via ``SO_LINGER`` 0 + abort), reset new connections once the client has sent N bytes
(a reset inside the ESL handshake), stall (stop forwarding, keep the sockets open), slow (a delay per
chunk), and inject garbage bytes towards the client (now on live connections, or first thing on new
ones). Must not know what protocol it carries. Must not be imported by production code.

Usage::

    async with FaultProxy("127.0.0.1", fs.esl_port) as proxy:
        settings = EslSettings(port=proxy.port, ...)
        ...
        proxy.reset_all()            # RST both sides of every connection
        proxy.refuse(True)           # new connects are refused until refuse(False)
        proxy.set_stall(True)        # nothing is forwarded (bytes wait) until set_stall(False)
        proxy.delay_s = 0.05         # every chunk waits 50 ms
        proxy.inject(b"garbage\\n\\n")  # to the client, on every live connection
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal

_CHUNK = 64 * 1024


@dataclass(slots=True)
class ProxyStats:
    accepted: int = 0
    resets: int = 0
    bytes_up: int = 0  # client -> server
    bytes_down: int = 0  # server -> client
    handshake_resets: int = 0


@dataclass(eq=False, slots=True)
class _Link:
    client_r: asyncio.StreamReader
    client_w: asyncio.StreamWriter
    server_r: asyncio.StreamReader | None = None
    server_w: asyncio.StreamWriter | None = None
    up: int = 0  # bytes the client sent on this link
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


def _rst(writer: asyncio.StreamWriter | None) -> None:
    """Close with a TCP RST, not a FIN."""
    if writer is None:
        return
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class FaultProxy:
    """See the module docstring."""

    def __init__(self, upstream_host: str, upstream_port: int, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.host = host
        self.port = port
        self.delay_s = 0.0
        self.reset_new_after_up_bytes: int | None = None  # reset new links once the client sent this many
        self.reset_new_count = 0  # ... for this many new links (then pass-through)
        self.greet_garbage: bytes | None = None  # sent to the client first, on new links
        self.stats = ProxyStats()
        self._links: set[_Link] = set()
        self._server: asyncio.Server | None = None
        self._reopening: asyncio.Task[None] | None = None
        self._flowing = {"up": asyncio.Event(), "down": asyncio.Event()}  # cleared: that direction stalls
        for ev in self._flowing.values():
            ev.set()

    async def start(self) -> None:
        await self._listen()

    async def close(self) -> None:
        if self._reopening is not None:
            await asyncio.gather(self._reopening, return_exceptions=True)
        if self._server is not None:
            self._server.close()
            self._server = None
        for link in list(self._links):
            self._close_link(link, reset=True)
        tasks = [t for link in list(self._links) for t in link.tasks]
        if tasks:
            await asyncio.wait(tasks, timeout=2)

    async def __aenter__(self) -> FaultProxy:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # ---- faults ----------------------------------------------------------------------------------------

    @property
    def connections(self) -> int:
        return len(self._links)

    def refuse(self, on: bool) -> None:
        """Close (True) or reopen (False, same port) the listener. Live connections are left alone."""
        if on:
            if self._server is not None:
                self._server.close()
                self._server = None
            return
        if self._server is not None or (self._reopening is not None and not self._reopening.done()):
            return
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        sock.listen(128)  # bound now: a connect from here on waits in the backlog, it is not refused
        sock.setblocking(False)
        self._reopening = asyncio.get_running_loop().create_task(self._serve(sock))

    def reset_all(self) -> None:
        """RST every live connection, both towards the client and towards the server."""
        for link in list(self._links):
            self._close_link(link, reset=True)
            self.stats.resets += 1

    def reset_handshakes(self, count: int, *, after_up_bytes: int = 1) -> None:
        """The next ``count`` new connections are reset once the client has sent ``after_up_bytes``."""
        self.reset_new_count = count
        self.reset_new_after_up_bytes = after_up_bytes

    def set_stall(self, on: bool, direction: Literal["up", "down", "both"] = "both") -> None:
        """Stop (True) or resume forwarding: ``up`` is client -> server, ``down`` server -> client. Sockets
        stay open and bytes wait in the proxy, as behind a hung peer or a black-holed route."""
        for name in ("up", "down") if direction == "both" else (direction,):
            if on:
                self._flowing[name].clear()
            else:
                self._flowing[name].set()

    def inject(self, data: bytes) -> None:
        """Write ``data`` to the client on every live connection, between whole forwarded chunks."""
        for link in list(self._links):
            if not link.client_w.is_closing():
                link.client_w.write(data)

    # ---- internals -------------------------------------------------------------------------------------

    async def _listen(self) -> None:
        server = await asyncio.start_server(self._on_client, self.host, self.port)
        self.port = server.sockets[0].getsockname()[1]
        self._server = server

    async def _serve(self, sock: socket.socket) -> None:
        self._server = await asyncio.start_server(self._on_client, sock=sock)

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stats.accepted += 1
        link = _Link(reader, writer)
        self._links.add(link)
        reset_after: int | None = None
        if self.reset_new_count > 0 and self.reset_new_after_up_bytes is not None:
            self.reset_new_count -= 1
            reset_after = self.reset_new_after_up_bytes
        try:
            try:
                link.server_r, link.server_w = await asyncio.open_connection(*self.upstream)
            except OSError:
                _rst(writer)  # upstream down: the client sees its connect die
                return
            if self.greet_garbage:
                writer.write(self.greet_garbage)
            down = asyncio.ensure_future(self._pump(link, link.server_r, writer, up=False, reset_after=None))
            upt = asyncio.ensure_future(self._pump(link, reader, link.server_w, up=True, reset_after=reset_after))
            link.tasks += [down, upt]
            await asyncio.wait({down, upt}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._close_link(link, reset=False)
            for t in link.tasks:
                if not t.done():
                    t.cancel()
            self._links.discard(link)

    async def _pump(
        self, link: _Link, src: asyncio.StreamReader, dst: asyncio.StreamWriter, *, up: bool, reset_after: int | None
    ) -> None:
        try:
            while True:
                data = await src.read(_CHUNK)
                if not data:
                    if dst.can_write_eof():
                        with contextlib.suppress(OSError):
                            dst.write_eof()
                    await asyncio.sleep(0.05)  # let the other side drain before the link closes
                    return
                if up:
                    link.up += len(data)
                    if reset_after is not None and link.up >= reset_after:
                        self.stats.handshake_resets += 1
                        self._close_link(link, reset=True)
                        return
                await self._flowing["up" if up else "down"].wait()
                if self.delay_s > 0:
                    await asyncio.sleep(self.delay_s)
                if dst.is_closing():
                    return
                dst.write(data)
                if up:
                    self.stats.bytes_up += len(data)
                else:
                    self.stats.bytes_down += len(data)
                await dst.drain()
        except (ConnectionError, OSError):
            self._close_link(link, reset=True)

    def _close_link(self, link: _Link, *, reset: bool) -> None:
        for w in (link.client_w, link.server_w):
            if w is None or w.transport.is_closing():
                continue
            if reset:
                _rst(w)
            else:
                w.close()
