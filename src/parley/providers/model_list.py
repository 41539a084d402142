"""Is a configured model still served? The vendors' model lists, read for ``parley providers check``.

Owns: fetching a model list (OpenAI and OpenAI-compatible ``GET {base}/models``; Anthropic
``GET /v1/models``), parsing it into :class:`ModelList`, and the verdict on one configured model
(:func:`verdict`): retiring (a ``shutdown_date`` in the list, or a retirement parley knows of), unknown (not
in the list), or fine. Must not know settings, calls or which provider is configured where.

Sources (read with the search tool, 2026-12-05): OpenAI's list answers ``{"object": "list", "data":
[{"id", "object", "created", "owned_by"}]}`` (developers.openai.com/api/reference/cli/resources/models/
methods/list); an optional, nullable ``shutdown_date`` (YYYY-MM-DD) per model is in the reference as
mirrored by w3cschool.cn (2026-11-10) and was matched against the deprecations page for 90 models by a
dev.to write-up (2026-10-27). Because that field may be missing, :data:`KNOWN_SHUTDOWNS` keeps the
retirements OpenAI's own guide states: ``tts-1``, ``tts-1-hd`` and ``gpt-4o-mini-tts`` on 2027-01-06
(developers.openai.com/api/docs/guides/text-to-speech; replacement ``gpt-realtime-2.1-mini``). Others
(``gpt-4o-mini`` on 2027-01-14 per the dev.to write-up) are flagged when the list carries their date.
A dated snapshot (``tts-1-2025-...``) inherits its family's date.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import httpx

from parley import wire_json
from parley.providers.base import Verdict
from parley.providers.errors import ProviderConnectionError, ProviderTimeout, error_for_status, redact

__all__ = ["KNOWN_SHUTDOWNS", "ModelList", "Verdict", "anthropic_verdict", "fetch_models", "http_base",
           "openai_verdict", "verdict"]

KNOWN_SHUTDOWNS: Mapping[str, str] = {
    "tts-1": "2027-01-06",
    "tts-1-hd": "2027-01-06",
    "gpt-4o-mini-tts": "2027-01-06",
}


@dataclass(frozen=True, slots=True)
class ModelList:
    """Model id -> its announced shutdown date (None: none announced)."""

    models: Mapping[str, str | None]

    @classmethod
    def parse(cls, body: bytes) -> ModelList:
        """OpenAI's and Anthropic's list shape (``data: [{"id": ...}]``); anything else is empty."""
        try:
            parsed = wire_json.loads(body.decode("utf-8", "replace"))
        except wire_json.WireJsonError:
            return cls({})
        data = parsed.get("data") if isinstance(parsed, dict) else None
        models: dict[str, str | None] = {}
        for item in data if isinstance(data, list) else ():
            if isinstance(item, dict) and isinstance(item.get("id"), str):
                date = item.get("shutdown_date")
                models[item["id"]] = date if isinstance(date, str) and date else None
        return cls(models)


def _known_shutdown(model: str) -> str | None:
    for family, date in KNOWN_SHUTDOWNS.items():
        if model == family or model.startswith(family + "-20"):
            return date
    return None


def verdict(model: str, listing: ModelList | None) -> Verdict:
    """The listed shutdown date wins; then a known one; a model absent from a non-empty list is unknown."""
    listed = listing.models if listing is not None else {}
    date = listed.get(model) or _known_shutdown(model)
    if date:
        return Verdict("deprecated model", f"{model} shuts down on {date}: move to a current model")
    if listed and model not in listed and not any(m.startswith(model + "-") for m in listed):  # aliases
        return Verdict("unknown model", f"{model} is not in the vendor's model list")
    return Verdict("ok")


async def fetch_models(url: str, headers: Mapping[str, str], *, provider: str, secrets: list[str],
                       timeout_s: float = 5.0, transport: httpx.AsyncBaseTransport | None = None) -> ModelList:
    """GET a model list: free, and it needs a valid key (401/403 -> :class:`ProviderAuthError`)."""
    try:
        async with httpx.AsyncClient(timeout=timeout_s, transport=transport) as client:
            response = await client.get(url, headers=dict(headers))
    except httpx.TimeoutException as exc:
        raise ProviderTimeout(f"{provider}: {url} timed out", provider=provider) from exc
    except httpx.HTTPError as exc:
        raise ProviderConnectionError(f"{provider}: cannot reach {url}: {type(exc).__name__}",
                                      provider=provider) from exc
    if response.status_code >= 400:
        raise error_for_status(response.status_code, redact(response.text[:200], secrets), provider=provider)
    return ModelList.parse(response.content)


async def openai_verdict(base_url: str, api_key: str | None, model: str, *, provider: str,
                         transport: httpx.AsyncBaseTransport | None = None) -> Verdict:
    """``GET {base_url}/models`` (free; needs a valid key, or none for a local compatible server) and judge
    ``model`` by it."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    listing = await fetch_models(base_url.rstrip("/") + "/models", headers, provider=provider,
                                 secrets=[api_key or ""], transport=transport)
    return verdict(model, listing)


async def anthropic_verdict(base_url: str, api_key: str, model: str, *, provider: str,
                            transport: httpx.AsyncBaseTransport | None = None) -> Verdict:
    """``GET {base_url}/v1/models`` with ``x-api-key`` (free) and judge ``model`` by it."""
    headers = {"x-api-key": api_key, "anthropic-version": "2023-06-01"}
    listing = await fetch_models(base_url.rstrip("/") + "/v1/models?limit=1000", headers, provider=provider,
                                 secrets=[api_key], transport=transport)
    return verdict(model, listing)


def http_base(ws_url: str) -> str:
    """``wss://host/v1/realtime`` -> ``https://host/v1`` (where a Realtime endpoint's model list lives)."""
    url = ws_url.split("?", 1)[0].rstrip("/")
    url = "https://" + url.removeprefix("wss://") if url.startswith("wss://") else url
    url = "http://" + url.removeprefix("ws://") if url.startswith("ws://") else url
    return url.removesuffix("/realtime")
