"""The ESL client's clear errors, driven by servers on real sockets that replay recorded FreeSWITCH bytes."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from parley.config import EslSettings
from parley.errors import ConfigError, EslAccessDenied, EslAuthError, EslConnectError
from parley.freeswitch.esl_client import EslClient

FIXTURES = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "freeswitch"


async def _replay_server(script: list[bytes]) -> AsyncIterator[int]:
    """Send script[0] on connect, then script[i] after each client command block."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(script[0])
        for chunk in script[1:]:
            try:
                await reader.readuntil(b"\n\n")
            except asyncio.IncompleteReadError:
                break
            writer.write(chunk)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


def _settings(port: int, password: str = "a-long-test-password-xyz") -> EslSettings:
    return EslSettings(host="127.0.0.1", port=port, password=password, connect_timeout_s=3)


async def test_wrong_password_is_a_clear_auth_error() -> None:
    data = (FIXTURES / "esl-handshake.esl-badauth.esl-in.bin").read_bytes()
    auth_request, rest = data[:28], data[28:]  # the recorded bytes, byte for byte
    async for port in _replay_server([auth_request, rest]):
        with pytest.raises(EslAuthError, match=r"rejected the ESL password \(-ERR invalid\)"):
            await EslClient(_settings(port)).start()


async def test_acl_rejection_is_a_clear_access_denied() -> None:
    async for port in _replay_server([b"Content-Type: text/rude-rejection\nContent-Length: 24\n\nAccess Denied, go away.\n"]):
        with pytest.raises(EslAccessDenied, match="refused this client by ACL"):
            await EslClient(_settings(port)).start()


async def test_connection_refused_is_a_clear_connect_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once the socket closes
    with pytest.raises(EslConnectError, match="is FreeSWITCH running"):
        await EslClient(_settings(port)).start()


@pytest.mark.parametrize("password", ["ClueCon", "cluecon", "", "1234"])
def test_default_or_empty_password_is_refused_before_connecting(password: str) -> None:
    with pytest.raises(ConfigError):
        EslClient(_settings(8021, password))
