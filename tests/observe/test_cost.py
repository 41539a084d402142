"""The cost ledger: the article's "Cost Reality" figures reproduced from the shipped price table, failed
and cancelled requests billed, unknown prices reported (not guessed), precise price-table errors, and a
report over recorded calls."""

from __future__ import annotations

import argparse
import io
import json
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from parley.errors import ConfigError
from parley.observe.cost import CallCost, HostingShare, PriceTable, call_cost, cost_lines, pricer
from parley.observe.cost_cli import (
    CallProfile,
    CallUsage,
    Estimate,
    RecordedCall,
    add_estimate_arguments,
    add_report_arguments,
    cost_estimate,
    cost_report,
    estimate,
    parse_since,
    profile_from_args,
    summarize_calls,
)
from parley.providers.base import Usage

D = Decimal
SHIPPED = Path(__file__).parents[2] / "src" / "parley" / "observe" / "pricing.yaml"


@pytest.fixture(scope="module")
def prices() -> PriceTable:
    return PriceTable.load()


@pytest.fixture(scope="module")
def est(prices: PriceTable) -> Estimate:
    return estimate(CallProfile(), prices)


def cents(x: Decimal) -> Decimal:
    return x.quantize(D("0.01"), rounding=ROUND_HALF_UP)


def amounts(cost: CallCost) -> dict[str, tuple[Decimal, Decimal]]:
    return {line.item: (line.usd, line.usd_high) for line in cost.lines}


def stack(est: Estimate, key: str) -> CallCost:
    return next(s.cost for s in est.stacks if s.stack.key == key)


# ---- the article, line by line ----------------------------------------------------------------------


def test_profile_defaults_are_the_articles_call() -> None:
    p = CallProfile()
    assert (p.minutes, p.turns, p.tts_characters) == (5.0, 10, 1500)
    assert p.llm_input_tokens() == 10 * 1000 + 100 * 45 == 14_500  # prompt every turn + growing history
    assert p.llm_output_tokens() == 375  # 1,500 characters / 4


def test_stack_a_reproduces_the_article(est: Estimate) -> None:
    a = stack(est, "A")
    assert amounts(a) == {
        "deepgram nova-3 STT": (D("0.0385"), D("0.0385")),  # 5 min x $0.0077: "~$0.04"
        "openai gpt-4o-mini input": (D("0.002175"), D("0.002175")),  # 14,500 x $0.15/1M
        "openai gpt-4o-mini output": (D("0.000225"), D("0.000225")),  # 375 x $0.60/1M
        "elevenlabs eleven_flash_v2_5 TTS": (D("0.075"), D("0.09")),  # 1.5K x $0.05 ($0.06 higher tiers): "~$0.08"
    }
    lines = {line.item: line for line in a.lines}
    assert cents(lines["deepgram nova-3 STT"].usd) == D("0.04")
    assert cents(lines["elevenlabs eleven_flash_v2_5 TTS"].usd) == D("0.08")
    llm = lines["openai gpt-4o-mini input"].usd + lines["openai gpt-4o-mini output"].usd
    assert llm == D("0.0024") and D("0.002") <= llm <= D("0.005")  # "~$0.002-$0.005"
    assert (a.total, a.total_high) == (D("0.1159"), D("0.1309"))
    assert cents(a.total) == D("0.12") and a.total_high <= D("0.15")  # "~$0.12-$0.15"
    assert (a.per_minute, a.per_minute_high) == (D("0.02318"), D("0.02618"))
    assert not a.warnings


def test_stack_b_reproduces_the_article(est: Estimate) -> None:
    b = stack(est, "B")
    lines = amounts(b)
    assert lines["deepgram nova-3 STT"] == (D("0.0385"), D("0.0385"))
    assert lines["deepgram aura-2-thalia-en TTS"] == (D("0.045"), D("0.045"))  # 1.5K x $0.030
    assert D("0.02") <= lines["deepgram aura-2-thalia-en TTS"][0] <= D("0.05")  # "lower-cost TTS ~$0.02-$0.05"
    assert b.total == b.total_high == D("0.0859")
    assert D("0.06") <= b.total <= D("0.10")  # "~$0.06-$0.10"
    assert b.per_minute == D("0.01718")


def test_stack_c_is_the_hosting_share(est: Estimate) -> None:
    c = stack(est, "C")
    by_kind = {line.kind: line for line in c.lines}
    assert all(by_kind[k].usd == 0 for k in ("stt", "llm", "tts"))  # local engines: no per-unit price
    assert by_kind["hosting"].usd == D("0.08")  # $0.20 x 24 h / 300 call-min x 5 min
    assert c.total == D("0.08") and c.per_minute == D("0.016")
    assert not c.warnings


def test_carrier_minutes(est: Estimate, prices: PriceTable) -> None:
    a = next(s for s in est.stacks if s.stack.key == "A")
    assert (a.carrier.usd, a.carrier.usd_high) == (D("0.025"), D("0.075"))  # "5-minute call ~$0.025-$0.075"
    assert a.with_carrier() == (D("0.1409"), D("0.2059"))
    toll_free = estimate(CallProfile(direction="toll_free_inbound"), prices).stacks[0].carrier
    assert (toll_free.usd, toll_free.usd_high) == (D("0.075"), D("0.125"))  # $0.015-$0.025/min
    mine = estimate(CallProfile(carrier_usd_per_minute=0.008), prices).stacks[0]
    assert mine.carrier.usd == mine.carrier.usd_high == D("0.04")  # "$0.04 in carrier usage"


def test_managed_stacks_span_the_articles_summary(est: Estimate) -> None:
    """ "roughly $0.06-$0.15 for a 5-minute call before carrier costs, or $0.09-$0.22 with PSTN included" """
    a, b = (next(s for s in est.stacks if s.stack.key == k) for k in "AB")
    assert D("0.06") <= b.cost.total and a.cost.total_high <= D("0.15")
    assert D("0.09") <= b.with_carrier()[0] and a.with_carrier()[1] <= D("0.22")


def test_self_hosting_utilization_table(est: Estimate) -> None:
    rows = {label: (per_minute, per_call, article) for label, _, per_minute, per_call, article in est.self_hosting}
    assert len(rows) == 3
    full, low, high = (rows[k] for k in (
        "100% utilized (60 call-min every hour)", "300 call-minutes/day (box runs 24/7)",
        "1,000 call-minutes/day (box runs 24/7)"))
    assert full[0] == D("0.003333") and full[2] == "~$0.003/min"  # 0.20 / 60
    assert low[0] == D("0.016") and low[2] == "~$0.016/min"  # 0.20 x 24 / 300
    assert high[0] == D("0.0048") and high[2] == "~$0.005/min"  # 0.20 x 24 / 1,000
    assert (full[1], low[1], high[1]) == (D("0.016667"), D("0.08"), D("0.024"))  # per 5-minute call
    b_per_minute = stack(est, "B").per_minute
    assert b_per_minute is not None and high[0] < b_per_minute / 2 * D("1.2")  # "roughly half" of stack B


def test_own_volume_adds_a_row(prices: PriceTable) -> None:
    e = estimate(CallProfile(call_minutes_per_day=2400, gpu_hourly_usd=0.5), prices)
    assert e.self_hosting[-1][0] == "2,400 call-minutes/day (yours)"
    assert e.self_hosting[-1][2] == D("0.005")  # 0.50 x 24 / 2,400
    assert stack(e, "C").total == D("0.025")


# ---- hosting model ----------------------------------------------------------------------------------


def test_hosting_share_model() -> None:
    box = HostingShare(D("0.20"), D(60), "gpu_box")
    assert box.share(5) == D("0.20") * 5 / 60
    # the calls of one hour together pay exactly the hour
    calls = [D(5), D(10), D("2.5")]
    hour = HostingShare(D("0.20"), sum(calls, D(0)))
    assert sum(hour.share(m) for m in calls) == D("0.20")
    # a lone call pays the whole hour, never more
    assert HostingShare(D("0.20"), D(0)).share(3) == D("0.20")
    assert HostingShare(D("0.20"), D(1)).share(3) == D("0.20")
    # concurrency: 120 call-minutes in an hour halve the price of a minute
    assert HostingShare(D("0.20"), D(120)).per_minute() == D("0.20") / 120
    assert HostingShare.from_daily_volume(0.2, 1000).call_minutes_in_that_hour == D(1000) / 24
    assert HostingShare(D("0.20"), D(0)).share(0) == 0


# ---- billing rules ----------------------------------------------------------------------------------


def test_failed_and_cancelled_requests_are_billed(prices: PriceTable) -> None:
    usages = [
        Usage("deepgram", "nova-3", "stt", audio_seconds=28.0, failed=True),  # dropped at 28 s: still paid
        Usage("openai", "gpt-4o-mini", "llm", input_tokens=1000, output_tokens=20),
        Usage("openai", "gpt-4o-mini", "llm", input_tokens=1200, output_tokens=0, cancelled=True),  # barge-in
        Usage("elevenlabs", "eleven_flash_v2_5", "tts", characters=80, cancelled=True),
        Usage("elevenlabs", "eleven_flash_v2_5", "tts", characters=0, failed=True),  # shown, costs nothing
    ]
    cost = call_cost(usages, call_minutes=0.5, direction="inbound", prices=prices, hosting=None)
    by_item = {line.item: line for line in cost.lines}
    assert list(by_item) == [
        "deepgram nova-3 STT (failed)",
        "openai gpt-4o-mini input", "openai gpt-4o-mini output", "openai gpt-4o-mini input (cancelled)",
        "elevenlabs eleven_flash_v2_5 TTS (cancelled)", "elevenlabs eleven_flash_v2_5 TTS (failed)",
        "carrier inbound",
    ]
    failed_stt = by_item["deepgram nova-3 STT (failed)"]
    assert failed_stt.status == "failed" and failed_stt.quantity == D("0.466667")
    assert failed_stt.usd == D("0.003593")  # 28/60 min x $0.0077
    assert by_item["openai gpt-4o-mini input (cancelled)"].usd == D("0.00018")
    assert by_item["elevenlabs eleven_flash_v2_5 TTS (cancelled)"].usd == D("0.004")
    assert by_item["elevenlabs eleven_flash_v2_5 TTS (failed)"].usd == 0
    assert cost.usd_with_status("failed", "cancelled") == D("0.003593") + D("0.00018") + D("0.004")
    assert cost.total == sum(line.usd for line in cost.lines)


def test_usage_is_summed_per_provider_model_kind(prices: PriceTable) -> None:
    turns = [Usage("openai", "gpt-4o-mini", "llm", input_tokens=1000 + 100 * i, output_tokens=38) for i in range(10)]
    lines = cost_lines(turns, call_minutes=5, direction=None, prices=prices, hosting=None)
    assert [(line.item, line.quantity, line.requests) for line in lines] == [
        ("openai gpt-4o-mini input", D(14_500), 10), ("openai gpt-4o-mini output", D(380), 10)]


def test_unknown_prices_are_warnings_not_crashes(prices: PriceTable) -> None:
    usages = [
        Usage("acme-voice", "v1", "tts", characters=1500),
        Usage("openai", "gpt-9-ultra", "llm", input_tokens=10, output_tokens=5),  # no `*` for openai on purpose
    ]
    cost = call_cost(usages, call_minutes=5, direction="satellite", prices=prices, hosting=None)
    assert cost.total == 0
    assert all(line.warning for line in cost.lines)
    assert cost.warnings == (  # lines in stt, llm, tts order
        "no price for openai 'gpt-9-ultra' (llm) in pricing.yaml (shipped): counted as $0; "
        "add it under providers.openai.llm",
        "no price for acme-voice 'v1' (tts) in pricing.yaml (shipped): counted as $0; "
        "add it under providers.acme-voice.tts",
        "no carrier price for direction 'satellite' (known: inbound, internal, outbound, toll_free_inbound): "
        "counted as $0",
    )
    assert [line.quantity for line in cost.lines] == [10, 5, 1500, D(5)]


def test_model_matching(prices: PriceTable) -> None:
    assert prices.lookup("deepgram", "stt", "nova-3-general") is not None
    assert prices.lookup("deepgram", "stt", "nova-3").key == "providers.deepgram.stt.nova-3*"  # type: ignore[union-attr]
    assert prices.lookup("deepgram", "stt", "nova-2").key == "providers.deepgram.stt.*"  # type: ignore[union-attr]
    assert prices.lookup("deepgram", "tts", "aura-asteria-en") is None  # Aura-1: not in the table
    assert prices.lookup("openai", "llm", "GPT-4o-mini-2024-07-18") is not None  # dated, any case
    assert prices.lookup("openai", "tts", "tts-1-hd").rates[0].low == D("0.030")  # type: ignore[union-attr]
    assert prices.lookup("openai", "tts", "tts-1").rates[0].low == D("0.015")  # type: ignore[union-attr]
    for provider, kind in [("espeak-ng", "tts"), ("piper-local", "tts"), ("espeak", "tts"), ("piper", "tts"),
                           ("whisper-local", "stt"), ("hibari-local", "tts"), ("rules", "llm"), ("ollama", "llm")]:
        entry = prices.lookup(provider, kind, "anything")
        assert entry is not None and all(r.low == r.high == 0 for r in entry.rates), provider
    for provider, kind in [("deepgram", "stt"), ("assemblyai", "stt"), ("openai", "llm"), ("anthropic", "llm"),
                           ("elevenlabs", "tts"), ("cartesia", "tts"), ("deepgram", "tts"), ("openai", "tts")]:
        assert prices.models[(provider, kind)], (provider, kind)


def test_exact_name_beats_patterns() -> None:
    def entry(usd: float) -> dict[str, Any]:
        return {"per_audio_minute": usd, "source": "test", "as_of": "undated"}

    table = PriceTable.from_mapping({"version": 1, "providers": {"v": {"stt": {
        "*": entry(1), "m*": entry(2), "model-*": entry(3), "model-x": entry(4)}}}})
    assert [table.lookup("v", "stt", m).rates[0].low for m in ("model-x", "model-y", "mo", "z")] == [  # type: ignore[union-attr]
        4, 3, 2, 1]


def test_money_is_exact_over_many_calls(prices: PriceTable) -> None:
    one = call_cost([Usage("deepgram", "nova-3", "stt", audio_seconds=300)], call_minutes=5, direction=None,
                    prices=prices, hosting=None)
    assert sum((one.total for _ in range(1000)), D(0)) == D("38.5")
    assert sum(0.0077 * 5 for _ in range(1000)) != 38.5  # 38.499999999999645


# ---- the price table --------------------------------------------------------------------------------


def test_shipped_table_cites_every_price(prices: PriceTable) -> None:
    assert "verify against current vendor pricing" in prices.note
    data = yaml.safe_load(SHIPPED.read_text(encoding="utf-8"))
    entries = [e for kinds in data["providers"].values() for models in kinds.values() for e in models.values()]
    entries += [*data["carrier"].values(), *data["hosting"].values(), *data["bundled"].values()]
    assert entries and all(e["source"] and e["as_of"] for e in entries)
    article = [e for e in entries if e["source"].startswith("article")]
    assert len(article) >= 10 and all(e["as_of"] == "undated" for e in article)  # the article carries no date
    assert prices.hosting["gpu_box"].rates[0].low == D("0.20")
    assert prices.bundled["deepgram_voice_agent"].rates[0].low == D("0.08")


def _table() -> dict[str, Any]:
    return {
        "version": 1,
        "providers": {"deepgram": {"stt": {"nova-3": {"per_audio_minute": 0.0077, "source": "s", "as_of": "undated"}},
                                   "tts": {"aura-2*": {"per_1k_characters": [0.03, 0.04], "source": "s",
                                                       "as_of": "2025-01-02"}}}},
        "carrier": {"inbound": {"per_minute": [0.005, 0.015], "source": "s", "as_of": "undated"}},
        "hosting": {"gpu_box": {"per_hour": 0.2, "source": "s", "as_of": "undated"}},
    }


def _set(data: dict[str, Any], path: str, value: object) -> dict[str, Any]:
    *parents, last = path.split("/")
    node = data
    for key in parents:
        node = node[key]
    if value is _DELETE:
        del node[last]
    else:
        node[last] = value
    return data


_DELETE = object()
_NOVA = "providers/deepgram/stt/nova-3"


@pytest.mark.parametrize(("path", "value", "message"), [
    (f"{_NOVA}/source", _DELETE, "t.yaml: providers.deepgram.stt.nova-3: missing ['source']"),
    (f"{_NOVA}/per_minute", 1, "t.yaml: providers.deepgram.stt.nova-3: unknown key(s) ['per_minute']; expected "
                               "['as_of', 'per_audio_minute', 'source'] (optional ['note'])"),
    (f"{_NOVA}/per_audio_minute", -1, "t.yaml: providers.deepgram.stt.nova-3.per_audio_minute: a price must be a "
                                      "finite number >= 0, got -1"),
    (f"{_NOVA}/per_audio_minute", "cheap", "providers.deepgram.stt.nova-3.per_audio_minute: expected a number of "
                                           "USD, got 'cheap'"),
    (f"{_NOVA}/per_audio_minute", True, "per_audio_minute: expected a number of USD, got True"),
    (f"{_NOVA}/per_audio_minute", [0.06, 0.05], "providers.deepgram.stt.nova-3.per_audio_minute: low 0.06 is above "
                                                "high 0.05"),
    (f"{_NOVA}/per_audio_minute", [1, 2, 3], "per_audio_minute: a range is [low, high], got 3 values"),
    (f"{_NOVA}/per_audio_minute", [1, "x"], "providers.deepgram.stt.nova-3.per_audio_minute[1]: expected a number"),
    (f"{_NOVA}/as_of", "last week", "providers.deepgram.stt.nova-3.as_of: expected a date YYYY-MM-DD or "
                                    "'undated', got 'last week'"),
    (f"{_NOVA}/source", " ", "providers.deepgram.stt.nova-3.source: say where the price comes from"),
    ("providers/deepgram/asr", {}, "t.yaml: providers.deepgram.asr: unknown kind; expected one of "
                                   "['stt', 'llm', 'tts']"),
    ("providers/deepgram/tts/aura-2*", [], "t.yaml: providers.deepgram.tts.aura-2*: expected a mapping, got list"),
    ("hosting/gpu_box/per_hour", [0.1, 0.2], "t.yaml: hosting.gpu_box.per_hour: expected one number, got the range"),
    ("carrier/inbound/per_hour", 1, "t.yaml: carrier.inbound: unknown key(s) ['per_hour']"),
    ("version", 2, "t.yaml: version: this parley reads version 1, got 2"),
    ("currency", "EUR", "t.yaml: currency: only USD is supported, got 'EUR'"),
    ("prices", {}, "t.yaml: unknown key(s) ['prices']"),
    ("providers", _DELETE, "t.yaml: missing ['providers']"),
])
def test_price_table_errors_are_precise(path: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        PriceTable.from_mapping(_set(_table(), path, value), origin="t.yaml")
    assert message in str(err.value)


def test_price_table_files(tmp_path: Path) -> None:
    good = tmp_path / "mine.yaml"
    good.write_text(yaml.safe_dump(_table()) + "\n# a bare date is fine too\n", encoding="utf-8")
    table = PriceTable.load(good)
    assert table.origin == str(good) and table.lookup("deepgram", "tts", "aura-2-x").rates[0].high == D("0.04")  # type: ignore[union-attr]
    bare_date = good.read_text(encoding="utf-8").replace("as_of: '2025-01-02'", "as_of: 2025-01-02")
    assert "as_of: 2025-01-02" in bare_date
    good.write_text(bare_date, encoding="utf-8")
    assert PriceTable.load(good).lookup("deepgram", "tts", "aura-2").as_of == "2025-01-02"  # type: ignore[union-attr]
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nproviders: [\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"price table .*bad.yaml is not valid YAML"):
        PriceTable.load(bad)
    with pytest.raises(ConfigError, match=r"cannot read price table .*missing.yaml: No such file"):
        PriceTable.load(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match=r"mine.yaml: expected a mapping, got NoneType"):
        good.write_text("", encoding="utf-8")
        PriceTable.load(good)
    with pytest.raises(ConfigError, match=r"no hosting entry 'tpu' \(known: cpu_box, gpu_box\)"):
        PriceTable.load().hosting_share("tpu", 10)


# ---- cost estimate ----------------------------------------------------------------------------------


def test_estimate_json_shape(prices: PriceTable) -> None:
    out = io.StringIO()
    assert cost_estimate(CallProfile(), prices=prices, out=out, as_json=True) == 0
    data = json.loads(out.getvalue())
    assert set(data) >= {"stacks", "profile", "self_hosting"}
    assert set(data["stacks"]) == {"A", "B", "C"}
    for s in data["stacks"].values():
        assert isinstance(s["total_usd"], float) and isinstance(s["per_minute_usd"], float)
        for line in s["lines"]:
            assert {"item", "quantity", "unit", "unit_usd", "usd"} <= set(line)
            assert line["usd"] == pytest.approx(line["quantity"] * line["unit_usd"] / line["per"], abs=1e-6)
    assert data["stacks"]["A"]["total_usd"] == 0.1159 and data["stacks"]["B"]["total_usd"] == 0.0859
    assert data["stacks"]["C"]["per_minute_usd"] == 0.016
    assert data["stacks"]["A"]["with_carrier"] == {"total_usd_low": 0.1409, "total_usd_high": 0.2059,
                                                   "per_minute_usd_low": 0.02818, "per_minute_usd_high": 0.04118}
    assert [r["per_minute_usd"] for r in data["self_hosting"]] == [0.003333, 0.016, 0.0048]
    assert data["profile"]["llm_input_tokens"] == 14_500 and data["profile"]["assumptions"]
    assert data["bundled"][0]["per_call_usd"] == 0.4  # Deepgram Voice Agent $0.08/min


def test_estimate_text(prices: PriceTable) -> None:
    out = io.StringIO()
    cost_estimate(CallProfile(), prices=prices, out=out)
    text = out.getvalue()
    for expected in [
        "Stack A: Deepgram + GPT-4o mini + ElevenLabs Flash",
        "Stack B: Deepgram + GPT-4o mini + Deepgram Aura-2 (the series' choice)",
        "$0.0385  ~$0.04", "$0.0750-0.0900  ~$0.08", "$0.1159-0.1309  ~$0.12-$0.15", "$0.0859  ~$0.06-$0.10",
        "$0.0450  ~$0.02-$0.05", "$0.0250-0.0750  ~$0.025-$0.075",
        "$0.00333          $0.0167  ~$0.003/min", "$0.01600          $0.0800  ~$0.016/min",
        "$0.00480          $0.0240  ~$0.005/min", "verify against current vendor pricing",
    ]:
        assert expected in text, expected
    assert "warning" not in text


def test_profile_options(prices: PriceTable) -> None:
    parser = argparse.ArgumentParser()
    add_estimate_arguments(parser)
    assert profile_from_args(parser.parse_args([])) == CallProfile()
    ns = parser.parse_args(["--minutes", "3", "--turns", "6", "--tts-characters", "900", "--input-tokens", "4000",
                            "--output-tokens", "300", "--carrier-usd-per-min", "0.01", "--direction", "outbound"])
    e = estimate(profile_from_args(ns), prices)
    lines = amounts(stack(e, "A"))
    assert lines["deepgram nova-3 STT"][0] == D("0.0231")
    assert lines["openai gpt-4o-mini input"][0] == D("0.0006") and lines["openai gpt-4o-mini output"][0] == D("0.00018")
    assert lines["elevenlabs eleven_flash_v2_5 TTS"][0] == D("0.045")
    assert e.stacks[0].carrier.usd == D("0.03") and e.stacks[0].carrier.item == "carrier outbound"
    out = io.StringIO()
    cost_estimate(profile_from_args(ns), prices=prices, out=out)
    assert "~$0.04" not in out.getvalue() and "~$0.12-$0.15" not in out.getvalue()  # not the article's call
    with pytest.raises(ConfigError, match="--minutes must be above 0"):
        estimate(CallProfile(minutes=0), prices)
    with pytest.raises(ConfigError, match="--tts-characters must be >= 0"):
        estimate(CallProfile(tts_characters=-1), prices)


# ---- cost report ------------------------------------------------------------------------------------

DAY1 = datetime(2026, 11, 2, 9, 10, tzinfo=UTC)


def _calls() -> list[CallUsage]:
    ok = [Usage("deepgram", "nova-3", "stt", audio_seconds=300),
          Usage("openai", "gpt-4o-mini", "llm", input_tokens=14_500, output_tokens=375, requests=10),
          Usage("deepgram", "aura-2-thalia-en", "tts", characters=1500, requests=10)]
    return [
        CallUsage(DAY1, 300, "inbound", ok),
        CallUsage(DAY1 + timedelta(minutes=20), 300, "inbound",
                   [*ok, Usage("deepgram", "aura-2-thalia-en", "tts", characters=100, cancelled=True)]),
        CallUsage(DAY1 + timedelta(days=1), 60, "outbound",  # dropped: STT for 28 s, nothing else
                   [Usage("deepgram", "nova-3", "stt", audio_seconds=28, failed=True)], failed=True),
        CallUsage(DAY1 - timedelta(days=3), 300, "inbound", ok),  # before --since
    ]


def test_report_totals(prices: PriceTable) -> None:
    r = summarize_calls(_calls(), prices=prices, since=parse_since("2026-11-02"))
    assert (r.calls, r.failed_calls, r.call_minutes) == (3, 1, D(11))
    inbound = D("0.0859") + D("0.025")  # stack B + 5 min inbound at the low carrier rate
    failed = D("0.003593") + D("0.005")  # 28 s of STT + 1 min outbound
    assert r.total == 2 * inbound + D("0.003") + failed  # + 100 cancelled characters of Aura-2
    assert r.failed_calls_usd == failed and r.failed_requests_usd == D("0.003")
    assert [(b.key[0], b.calls, b.failed_calls, b.usd) for b in r.days] == [
        ("2026-11-02", 2, 0, 2 * inbound + D("0.003")), ("2026-11-03", 1, 1, failed)]
    items = {b.key[:3]: b for b in r.items}
    assert items[("stt", "deepgram", "nova-3")].usd == D("0.077") + D("0.003593")
    assert items[("stt", "deepgram", "nova-3")].failed_usd == D("0.003593")
    assert items[("tts", "deepgram", "aura-2-thalia-en")].usd == D("0.093")
    assert items[("carrier", "inbound", "")].quantity == 10
    assert not r.warnings and r.idle_hours == 0


def test_report_hosting_shares_busy_hours_and_shows_idle_ones(prices: PriceTable) -> None:
    local = [Usage("whisper-local", "tiny.en", "stt", audio_seconds=300)]
    calls = [CallUsage(datetime(2026, 11, 2, 9, 0), 300, None, local),  # naive: UTC
             CallUsage(datetime(2026, 11, 2, 9, 30, tzinfo=UTC), 600, None, local),
             CallUsage(datetime(2026, 11, 2, 11, 5, tzinfo=UTC), 120, None, local)]
    r = summarize_calls(calls, prices=prices, since=parse_since("2026-11-02T08:00"),
                        hosting=prices.hosting_share("gpu_box", 0))
    assert r.total == D("0.40")  # two busy hours, each paid exactly once by its calls
    assert r.idle_hours == 2 and r.idle_hosting_usd == D("0.40")  # 08:00 and 10:00
    hosting = next(b for b in r.items if b.key[0] == "hosting")
    assert hosting.usd == D("0.40") and hosting.quantity == 17


def test_report_text_and_json(prices: PriceTable) -> None:
    out = io.StringIO()
    assert cost_report(_calls(), prices=prices, out=out, since=parse_since("2026-11-02")) == 0
    text = out.getvalue()
    for expected in ["Cost of 3 recorded call(s) since 2026-11-02 00:00 UTC: 11.0 call-minutes",
                     "2026-11-02", "2026-11-03", "deepgram nova-3", "failed calls: 1 of 3, costing $0.0086",
                     "failed or cancelled requests in other calls: $0.0030"]:
        assert expected in text, expected
    out = io.StringIO()
    cost_report(_calls(), prices=prices, out=out, as_json=True)
    data = json.loads(out.getvalue())
    assert data["calls"] == 4 and data["failed_calls"] == 1
    assert data["total_usd"] == pytest.approx(3 * 0.1109 + 0.003 + 0.008593)
    assert data["per_minute_usd"] == pytest.approx(data["total_usd"] / 16, abs=1e-6)
    assert 0 < data["failed_calls_share"] < 0.05
    assert {"date", "calls", "usd"} <= set(data["days"][0]) and {"provider", "usd"} <= set(data["providers"][0])
    empty = io.StringIO()
    cost_report([], prices=prices, out=empty)
    assert "Cost of 0 recorded call(s)" in empty.getvalue()


def test_since_parsing() -> None:
    assert parse_since("2026-11-02") == datetime(2026, 11, 2, tzinfo=UTC)
    assert parse_since("2026-11-02T10:30") == datetime(2026, 11, 2, 10, 30, tzinfo=UTC)
    assert parse_since("2026-11-02T10:30+02:00") == datetime(2026, 11, 2, 8, 30, tzinfo=UTC)
    with pytest.raises(ConfigError, match=r"--since: expected an ISO date \(2026-11-01\) or date-time, got 'May'"):
        parse_since("May")
    parser = argparse.ArgumentParser()
    add_report_arguments(parser)
    assert parser.parse_args(["--since", "2026-11-02"]).since == datetime(2026, 11, 2, tzinfo=UTC)


def test_pricer_for_the_call_record_store(prices: PriceTable) -> None:
    price = pricer(prices)
    usages = [Usage("deepgram", "nova-3", "stt", audio_seconds=300),
              Usage("deepgram", "aura-2-thalia-en", "tts", characters=1500)]
    assert price(usages, 5.0, "inbound") == pytest.approx(0.0385 + 0.045 + 0.025)
    assert price(usages, 5.0, None) == pytest.approx(0.0835)
    assert pricer(prices, HostingShare.from_daily_volume(D("0.20"), 300))(usages, 5.0, None) == pytest.approx(0.1635)
    call: RecordedCall = CallUsage(DAY1, 300.0, "inbound", usages)  # the protocol a report reads
    assert summarize_calls([call], prices=prices).total == D("0.1085")
