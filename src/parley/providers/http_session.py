"""The HTTP client of a streaming HTTP provider (OpenAI-compatible chat, Anthropic, OpenAI speech).

Owns: one keep-alive ``httpx.AsyncClient`` per provider object, created on first use and shared by every
call (so later requests skip the TCP/TLS handshake), the request timeouts, and closing the client if (and
only if) the provider created it: an injected client belongs to whoever injected it.
"""

from __future__ import annotations

import httpx


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
