"""Billing units the live APIs use (issue 11): gpt-4o-mini-tts bills tokens, not characters."""

from __future__ import annotations

from decimal import Decimal

from parley.observe.cost import PriceTable, usage_lines
from parley.providers.base import Usage


def test_a_token_billed_tts_is_priced_by_its_tokens() -> None:
    prices = PriceTable.load()
    usage = Usage("openai", "gpt-4o-mini-tts", "tts", characters=1000, input_tokens=250, output_tokens=10_000)
    lines = usage_lines([usage], prices)
    assert [(line.item, line.quantity, line.usd) for line in lines] == [
        ("openai gpt-4o-mini-tts TTS input", Decimal(250), Decimal("0.000150")),
        ("openai gpt-4o-mini-tts TTS output", Decimal(10_000), Decimal("0.120000")),
    ]
    assert not any(line.warning for line in lines)


def test_a_tts_usage_with_characters_only_falls_back_to_the_character_estimate() -> None:
    lines = usage_lines([Usage("openai", "gpt-4o-mini-tts", "tts", characters=2000)], PriceTable.load())
    assert [(line.item, line.usd) for line in lines] == [("openai gpt-4o-mini-tts TTS", Decimal("0.030000"))]


def test_a_tts_price_without_the_reported_unit_warns() -> None:
    table = PriceTable.from_mapping({"version": 1, "providers": {"acme": {"tts": {
        "*": {"per_1m_output_tokens": 10, "source": "s", "as_of": "undated"}}}}})
    [line] = usage_lines([Usage("acme", "v1", "tts", characters=500)], table)
    assert line.usd == 0 and line.warning is not None and "per_1k_characters" in line.warning


def test_character_billed_tts_is_unchanged() -> None:
    [line] = usage_lines([Usage("elevenlabs", "eleven_flash_v2_5", "tts", characters=1000)], PriceTable.load())
    assert (line.item, line.usd) == ("elevenlabs eleven_flash_v2_5 TTS", Decimal("0.050000"))
