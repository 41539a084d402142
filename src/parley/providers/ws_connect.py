"""Opening a vendor WebSocket the same way for every WebSocket provider.

Owns: websockets' client settings (no compression, bounded frames, parley's user agent), its log capped
at INFO (its DEBUG output prints the handshake headers, i.e. the API key), mapping connect failures into
parley's provider errors, and scrubbing the key from any error text. What a refused handshake or a close
code *means* stays with each vendor module (``handshake_error``, ``close_error``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from parley.providers.errors import ProviderConnectionError, ProviderError, ProviderTimeout, redact


class QuietWsLog(logging.LoggerAdapter[logging.Logger]):
    """websockets' own log, capped at INFO: its DEBUG output prints the handshake headers (the API key)."""

    def isEnabledFor(self, level: int) -> bool:
        return level >= logging.INFO and self.logger.isEnabledFor(level)


class Redactor:
    def __init__(self, secrets: Sequence[str]) -> None:
        self._secrets = [s for s in secrets if s]

    def text(self, text: str) -> str:
        return redact(text, self._secrets)

    def error(self, error: ProviderError) -> ProviderError:
        clean = self.text(str(error))
        if clean != str(error):
            error.args = (clean, *error.args[1:])
        return error


def closed_error(
    exc: ConnectionClosed, close_error: Callable[[int | None, str], ProviderError], redactor: Redactor
) -> ProviderError:
    frame = exc.rcvd
    return redactor.error(close_error(frame.code if frame else None, frame.reason if frame else ""))


async def open_ws(
    url: str,
    headers: Mapping[str, str],
    *,
    provider: str,
    connect_timeout_s: float,
    handshake_error: Callable[[int, bytes], ProviderError],
    redactor: Redactor,
    logger: logging.LoggerAdapter[logging.Logger],
    shown_url: str | None = None,
) -> ClientConnection:
    try:
        return await connect(
            url,
            additional_headers=dict(headers),
            open_timeout=connect_timeout_s,
            close_timeout=1.0,
            compression=None,
            max_size=8 * 2**20,
            user_agent_header="parley",
            logger=logger,
        )
    except InvalidStatus as exc:
        response = exc.response
        raise redactor.error(handshake_error(response.status_code, bytes(response.body or b""))) from exc
    except TimeoutError as exc:
        raise ProviderTimeout(f"{provider}: connect timed out", provider=provider) from exc
    except InvalidURI as exc:
        raise ProviderError(f"{provider}: bad URL {shown_url or url!r}", provider=provider) from exc
    except (OSError, InvalidHandshake) as exc:
        raise ProviderConnectionError(
            f"{provider}: could not connect: {redactor.text(str(exc)) or type(exc).__name__}", provider=provider
        ) from exc
