"""Errors raised by provider adapters (STT, LLM, TTS), under the one :class:`~parley.errors.ParleyError` tree.

Owns: the classes adapters translate vendor and transport failures into, and the HTTP-status policy that
decides which failures are worth retrying. Must not know any vendor or client library: adapters catch
their library's exceptions and raise these ``from`` them.

::

    ParleyError
    └── ProviderError                 a provider request failed (``provider``, ``status``, ``code``)
        ├── ProviderAuthError         401 / 403: bad or missing credentials        (not retryable)
        ├── ProviderTimeout           connect / read / first-token deadline passed  (retryable)
        ├── ProviderConnectionError   refused, reset, or dropped mid-stream         (retryable)
        └── ProviderProtocolError     a response we cannot parse (bad SSE / JSON)   (not retryable)

Plain :class:`ProviderError` covers vendor-reported failures: 429 and 5xx are retryable, other 4xx are
not, and a 429 whose code says the quota is exhausted (``insufficient_quota``) is not.

Error messages never contain credentials: adapters pass the secrets they hold to :func:`redact`.
"""

from __future__ import annotations

from collections.abc import Iterable

from parley.errors import ParleyError

__all__ = [
    "ProviderAuthError",
    "ProviderConnectionError",
    "ProviderError",
    "ProviderProtocolError",
    "ProviderTimeout",
    "error_for_status",
    "redact",
]

_RETRYABLE_STATUSES = frozenset({408, 409, 425, 429})
_NOT_RETRYABLE_CODES = frozenset({"insufficient_quota", "billing_hard_limit_reached"})


class ProviderError(ParleyError):
    """A request to an STT, LLM or TTS provider failed."""

    def __init__(
        self,
        message: str,
        *,
        provider: str = "",
        status: int | None = None,
        code: str | None = None,
        retryable: bool | None = None,
    ) -> None:
        super().__init__(message, retryable=retryable)
        self.provider = provider
        self.status = status
        self.code = code


class ProviderAuthError(ProviderError):
    """The provider rejected our credentials (HTTP 401 / 403, or an in-band auth error)."""


class ProviderTimeout(ProviderError):
    """Connecting, sending, or waiting for the next streamed piece took longer than allowed."""

    retryable = True


class ProviderConnectionError(ProviderError):
    """The connection could not be made, or broke before the response was complete."""

    retryable = True


class ProviderProtocolError(ProviderError):
    """The provider sent something that breaks its own documented wire format."""


def error_for_status(status: int, message: str, *, provider: str, code: str | None = None) -> ProviderError:
    """The error for an HTTP error status (with the vendor's message and error code, if any)."""
    text = f"{provider}: HTTP {status}: {message}" if message else f"{provider}: HTTP {status}"
    if status in (401, 403):
        return ProviderAuthError(text, provider=provider, status=status, code=code)
    retryable = (status in _RETRYABLE_STATUSES or status >= 500) and code not in _NOT_RETRYABLE_CODES
    return ProviderError(text, provider=provider, status=status, code=code, retryable=retryable)


def redact(text: str, secrets: Iterable[str | None]) -> str:
    """``text`` with every non-trivial secret replaced by ``***``."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return text
