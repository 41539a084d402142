"""The cost report's period and its per-hour and per-kind sums (what the dashboard's Costs page shows)."""

from __future__ import annotations

import argparse
import io
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from parley.errors import ConfigError
from parley.observe.cost import PriceTable
from parley.observe.cost_cli import add_report_arguments
from parley.observe.cost_report import CallUsage, cost_report, parse_age, parse_since, summarize_calls
from parley.providers.base import Usage

D = Decimal
NOW = datetime(2026, 11, 2, 12, 30, tzinfo=UTC)
LOCAL = [Usage("whisper-local", "tiny.en", "stt", audio_seconds=60)]


@pytest.fixture(scope="module")
def prices() -> PriceTable:
    return PriceTable.load()


def test_since_takes_an_age_back_from_now() -> None:
    assert parse_since("24h", NOW) == NOW - timedelta(hours=24)
    assert parse_since("7d", NOW) == datetime(2026, 10, 26, 12, 30, tzinfo=UTC)
    assert parse_since(" 90m ", NOW) == datetime(2026, 11, 2, 11, 0, tzinfo=UTC)
    assert parse_since("2w", NOW) == NOW - timedelta(weeks=2)
    assert parse_since("1.5h", NOW) == NOW - timedelta(minutes=90)
    assert parse_since("2026-11-02", NOW) == datetime(2026, 11, 2, tzinfo=UTC)  # dates are unchanged
    assert parse_age("2026-11-02") is None and parse_age("7 days") is None
    with pytest.raises(ConfigError, match=r"got '7y' \(or an age back from now: 90m, 24h, 7d, 2w\)"):
        parse_since("7y", NOW)
    with pytest.raises(ConfigError, match="reaches back too far"):
        parse_since("99999999999d", NOW)
    parser = argparse.ArgumentParser()
    add_report_arguments(parser)
    since = parser.parse_args(["--since", "7d"]).since
    assert timedelta(days=7) <= datetime.now(UTC) - since < timedelta(days=7, minutes=1)


def test_hours_and_kinds_add_up_to_the_total(prices: PriceTable) -> None:
    commercial = [Usage("deepgram", "nova-3", "stt", audio_seconds=120),
                  Usage("openai", "gpt-4o-mini", "llm", input_tokens=2000, output_tokens=100, requests=2),
                  Usage("elevenlabs", "eleven_flash_v2_5", "tts", characters=400, requests=2),
                  Usage("elevenlabs", "eleven_flash_v2_5", "tts", characters=50, cancelled=True)]
    calls = [CallUsage(datetime(2026, 11, 2, 9, 10, tzinfo=UTC), 120, "inbound", commercial),
             CallUsage(datetime(2026, 11, 2, 9, 40, tzinfo=UTC), 360, "inbound", LOCAL),
             CallUsage(datetime(2026, 11, 2, 11, 5, tzinfo=UTC), 60, "outbound", LOCAL, failed=True)]
    r = summarize_calls(calls, prices=prices, since=parse_since("6h", NOW), until=NOW,
                        hosting=prices.hosting_share("gpu_box", 0))
    assert [b.key[0] for b in r.hours] == ["2026-11-02T09:00:00+00:00", "2026-11-02T11:00:00+00:00"]
    nine, eleven = r.hours
    assert (nine.calls, nine.minutes, nine.hosting_usd, nine.hosting_per_call) == (2, 8, D("0.20"), D("0.10"))
    assert (eleven.calls, eleven.failed_calls, eleven.hosting_usd) == (1, 1, D("0.20"))
    assert sum((b.usd for b in r.hours), D(0)) == r.total == sum((b.usd for b in r.days), D(0))
    kinds = {b.key[0]: b for b in r.kinds}
    assert list(kinds) == ["stt", "llm", "tts", "carrier", "hosting"]
    assert sum((b.usd for b in r.kinds), D(0)) == r.total
    assert sum((b.usd_high for b in r.kinds), D(0)) == r.total_high
    assert kinds["stt"].usd == D("0.0154")  # 2 min of nova-3; whisper is free
    assert kinds["tts"].usd == D("0.0225") and kinds["tts"].failed_usd == D("0.0025")  # 50 cancelled characters
    assert kinds["carrier"].usd == D("0.045") and kinds["carrier"].failed_usd == D("0.005")  # the failed call's minute
    assert kinds["hosting"].usd == D("0.40")
    # 06:30 to 12:30 spans seven clock hours (06 .. 12); two had calls
    assert (r.idle_hours, r.idle_hosting_usd) == (5, D("1.00"))

    out = io.StringIO()
    cost_report(calls, prices=prices, out=out, since=parse_since("6h", NOW), until=NOW,
                hosting=prices.hosting_share("gpu_box", 0), as_json=True)
    data = json.loads(out.getvalue())
    assert data["kinds"]["hosting"] == {"usd": 0.4, "usd_high": 0.4, "failed_usd": 0.2}
    assert data["kinds"]["llm"]["usd"] == pytest.approx(float(kinds["llm"].usd))
    assert data["hours"][0] == {"hour": "2026-11-02T09:00:00+00:00", "calls": 2, "failed_calls": 0, "minutes": 8.0,
                                "usd": float(nine.usd), "usd_high": float(nine.usd_high), "failed_usd": 0.0025,
                                "hosting_usd": 0.2, "hosting_per_call_usd": 0.1}
    assert data["days"][0]["hosting_usd"] == 0.4


def test_without_hosting_the_hosting_kind_is_zero(prices: PriceTable) -> None:
    r = summarize_calls([CallUsage(NOW, 60, "internal", LOCAL)], prices=prices)
    assert [(b.key[0], b.usd) for b in r.kinds] == [(k, D(0)) for k in ("stt", "llm", "tts", "carrier", "hosting")]
    assert r.hours[0].hosting_usd == 0 and r.idle_hours == 0
