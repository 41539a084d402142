"""The HTTP side on aiohttp, over real sockets: routes and methods, the headers every response carries, bare
error bodies, and the limits (no bodies, a bounded head, slow clients closed, a bounded number of connections)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import httpx
import pytest
from aiohttp import web

from parley.observe.http import BASE_HEADERS, HttpServer, respond


async def raw(port: int, data: bytes) -> bytes:
    """Send ``data`` and read until the server closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


async def hello(request: web.Request) -> web.Response:
    return respond(f"hello {request.match_info.get('name', 'you')}")


async def boom(_request: web.Request) -> web.Response:
    raise RuntimeError("secret detail")


@pytest.fixture
async def server() -> AsyncIterator[HttpServer]:
    s = HttpServer("127.0.0.1", 0, read_timeout_s=0.5, max_field_bytes=1024, max_connections=2)
    s.route("/", hello)
    s.route("/hello/{name}", hello)
    s.route("/post", hello, methods=("POST",))
    s.route("/boom", boom)
    async with s:
        yield s


async def test_routes_methods_headers_and_bare_errors(server: HttpServer) -> None:
    async with httpx.AsyncClient(base_url=server.url) as http:
        r = await http.get("/")
        assert (r.status_code, r.text, r.headers["content-type"]) == (200, "hello you", "text/plain; charset=utf-8")
        for name, value in BASE_HEADERS:
            assert r.headers[name] == value
        assert r.headers["server"] == "parley"  # no version to fingerprint
        assert (await http.get("/hello/a%20b")).text == "hello a b"
        assert (await http.get("/hello/a/b")).status_code == 404
        r = await http.get("/nope")
        assert (r.status_code, r.text) == (404, "404 Not Found\n")
        assert r.headers["x-content-type-options"] == "nosniff"  # errors carry the headers too
        r = await http.get("/post")
        assert (r.status_code, r.headers["allow"]) == (405, "POST")
        assert (await http.post("/post")).status_code == 200
        r = await http.put("/")
        assert (r.status_code, r.headers["allow"]) == (405, "GET, HEAD")
        r = await http.head("/")
        assert r.status_code == 200 and r.content == b"" and r.headers["content-length"] == "9"
        r = await http.get("/boom")
        assert (r.status_code, r.text) == (500, "500 Internal Server Error\n")
    with pytest.raises(ValueError):
        server.route("nope", hello)


async def test_bodies_heads_and_slow_clients(server: HttpServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with httpx.AsyncClient(base_url=server.url) as http:
        r = await http.post("/post", content=b"x" * 10)
        assert r.status_code == 413 and r.headers["connection"] == "close"
    chunked = b"POST /post HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n"
    assert status_of(await raw(server.port, chunked)) == 413
    big = b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 4096 + b"\r\n\r\n"
    assert status_of(await raw(server.port, big)) in (400, 431)
    long_line = b"GET /" + b"a" * 4096 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    assert status_of(await raw(server.port, long_line)) in (400, 414)
    assert status_of(await raw(server.port, b"BLAH\r\n\r\n")) == 400
    # a head that never completes: the connection is closed (read_timeout_s after connecting), nothing served
    assert await raw(server.port, b"GET / HTTP/1.1\r\n") == b""
    _reader, writer = await asyncio.open_connection("127.0.0.1", server.port)  # a port probe: connect, close
    writer.close()
    async with httpx.AsyncClient(base_url=server.url) as http:
        assert (await http.get("/")).status_code == 200  # still serving
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]  # a scanner's junk is no error
    assert any("Error handling request" in r.getMessage() for r in caplog.records)  # at debug level


async def test_connections_beyond_the_limit_get_503(server: HttpServer) -> None:
    held = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(2)]  # the limit: 2
    try:
        while server.connections < 2:  # until the server has accepted them
            await asyncio.sleep(0.01)
        answer = await raw(server.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status_of(answer) == 503 and b"too many connections" in answer
    finally:
        for _reader, writer in held:
            writer.close()


async def test_routes_are_added_before_start_and_port_needs_a_start() -> None:
    s = HttpServer()
    with pytest.raises(RuntimeError):
        _ = s.port
    async with s:
        with pytest.raises(RuntimeError):
            s.route("/late", hello)
