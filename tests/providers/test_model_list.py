"""Model lists: parsing the vendor shape, the verdict on a configured model, and the fetch against the
Realtime fake's ``GET /v1/models`` (shutdown dates, a wrong key)."""

from __future__ import annotations

import pytest

from parley.providers.errors import ProviderAuthError
from parley.providers.model_list import ModelList, fetch_models, verdict
from testkit.fakes.openai_realtime import FakeOpenAIRealtime

KEY = "sk-test-models-0123"


def test_parse_reads_ids_and_shutdown_dates_and_tolerates_junk() -> None:
    body = (b'{"object": "list", "data": [{"id": "tts-1", "shutdown_date": "2027-01-06"}, {"id": "gpt-5.1"},'
            b' {"id": 3}, "x"]}')
    assert ModelList.parse(body).models == {"tts-1": "2027-01-06", "gpt-5.1": None}
    assert ModelList.parse(b"<html>").models == {}
    assert ModelList.parse(b'{"data": 1}').models == {}


@pytest.mark.parametrize(
    ("model", "listing", "status"),
    [
        ("gpt-realtime-2.1-mini", {"gpt-realtime-2.1-mini": None}, "ok"),
        ("gpt-4o-mini", {"gpt-4o-mini": "2027-01-14"}, "deprecated model"),  # the list's date
        ("tts-1", {"tts-1": None}, "deprecated model"),  # the known date when the list has none
        ("gpt-4o-mini-tts-2025-03-20", {}, "deprecated model"),  # a snapshot of a retiring family
        ("gpt-4o-mini", None, "ok"),  # no list, no known date
        ("gpt-7-typo", {"gpt-5.1": None}, "unknown model"),
        ("claude-haiku-4-5", {"claude-haiku-4-5-20251001": None}, "ok"),  # an alias of a listed snapshot
    ],
)
def test_verdict(model: str, listing: dict[str, str | None] | None, status: str) -> None:
    found = verdict(model, ModelList(listing) if listing is not None else None)
    assert found.status == status
    if status != "ok":
        assert model in found.detail


async def test_fetch_from_the_fake_lists_the_announced_dates() -> None:
    async with FakeOpenAIRealtime(KEY) as fake:
        base = fake.url.replace("ws://", "http://").removesuffix("/realtime")
        listing = await fetch_models(f"{base}/models", {"Authorization": f"Bearer {KEY}"}, provider="openai",
                                     secrets=[KEY])
        with pytest.raises(ProviderAuthError) as info:
            await fetch_models(f"{base}/models", {"Authorization": "Bearer sk-wrong-key"}, provider="openai",
                               secrets=["sk-wrong-key"])
    assert listing.models["tts-1"] == "2027-01-06" and listing.models["gpt-realtime-2.1-mini"] is None
    assert "sk-wrong-key" not in str(info.value)
    assert fake.model_requests == 2
