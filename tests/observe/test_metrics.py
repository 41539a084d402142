"""Metrics exposition (prometheus_client, read back by a strict parser of the text format) and /health."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from dataclasses import dataclass, field

import httpx
import pytest

from parley.freeswitch.bridge import BridgeStats
from parley.freeswitch.esl_client import EslStats
from parley.observe import timings as tm
from parley.observe.http import HttpServer
from parley.observe.metrics import COST_BUCKETS_USD, LATENCY_BUCKETS_MS, Metrics, normalize_cause
from parley.observe.records import WriterStats
from parley.providers.fallback import FallbackLLM, FallbackSTT

# ---- a strict reader of the text exposition format (0.0.4) --------------------------------------------------

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\\\|\\"|\\n)*"'
VALUE = r"(?:[+-]?Inf|NaN|[+-]?(?:\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?))"
SAMPLE = re.compile(rf"^(?P<name>{NAME})(?:\{{(?P<labels>{LABEL}(?:,{LABEL})*)?\}})? (?P<value>{VALUE})$")
HELP = re.compile(rf"^# HELP (?P<name>{NAME}) (?:[^\\\n]|\\\\|\\n)*$")
TYPE = re.compile(rf"^# TYPE (?P<name>{NAME}) (?P<kind>counter|gauge|histogram|summary|untyped)$")
LABEL_PAIR = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n"}.get(m.group(1), m.group(1)), value)


@dataclass
class Family:
    kind: str
    samples: list[tuple[str, dict[str, str], float]] = field(default_factory=list)


def parse_exposition(text: str) -> dict[str, Family]:
    """Every line must be a valid HELP, TYPE or sample line; samples must follow their family's TYPE."""
    assert text.endswith("\n"), "the exposition ends with a line feed"
    families: dict[str, Family] = {}
    current: str | None = None
    for n, line in enumerate(text.splitlines(), 1):
        if line.startswith("# HELP "):
            assert HELP.match(line), f"line {n}: bad HELP {line!r}"
            continue
        if line.startswith("# TYPE "):
            m = TYPE.match(line)
            assert m, f"line {n}: bad TYPE {line!r}"
            assert m["name"] not in families, f"line {n}: {m['name']} typed twice"
            current = m["name"]
            families[current] = Family(m["kind"])
            continue
        m = SAMPLE.match(line)
        assert m, f"line {n}: not a valid sample line: {line!r}"
        assert current is not None, f"line {n}: sample before any TYPE"
        fam = families[current]
        name = m["name"]
        allowed = {current} if fam.kind != "histogram" else {f"{current}_bucket", f"{current}_sum", f"{current}_count"}
        assert name in allowed, f"line {n}: sample {name} inside family {current}"
        labels = {k: unescape(v) for k, v in LABEL_PAIR.findall(m["labels"] or "")}
        value = float(m["value"].replace("Inf", "inf"))
        fam.samples.append((name, labels, value))
    for name, fam in families.items():
        if fam.kind == "counter":
            assert name.endswith("_total"), f"counter {name} should end in _total"
        if fam.kind == "histogram":
            check_histogram(name, fam)
    return families


def check_histogram(name: str, fam: Family) -> None:
    series: dict[tuple[tuple[str, str], ...], dict[str, list[tuple[dict[str, str], float]]]] = {}
    for sample, labels, value in fam.samples:
        key = tuple(sorted((k, v) for k, v in labels.items() if k != "le"))
        series.setdefault(key, {}).setdefault(sample.rsplit("_", 1)[1], []).append((labels, value))
    for key, parts in series.items():
        assert set(parts) == {"bucket", "sum", "count"}, f"{name}{key}: has {sorted(parts)}"
        les = [float(labels["le"].replace("Inf", "inf")) for labels, _ in parts["bucket"]]
        assert les == sorted(les) and len(set(les)) == len(les), f"{name}{key}: le not ascending: {les}"
        assert les[-1] == math.inf, f"{name}{key}: the last bucket is le=+Inf"
        counts = [v for _, v in parts["bucket"]]
        assert counts == sorted(counts), f"{name}{key}: buckets are cumulative"
        assert parts["count"][0][1] == counts[-1], f"{name}{key}: _count equals the +Inf bucket"


def _le(labels: dict[str, str]) -> dict[str, object]:
    """``le`` compared as a number: prometheus_client writes ``le="1000.0"``, as Prometheus 3 normalises it."""
    return {k: float(v.replace("Inf", "inf")) if k == "le" else v for k, v in labels.items()}


def value_of(families: dict[str, Family], sample: str, **labels: str) -> float:
    family = families[re.sub(r"_(bucket|sum|count)$", "", sample)] if sample not in families else families[sample]
    found = [v for n, lab, v in family.samples if n == sample and _le(lab) == _le(labels)]
    assert len(found) == 1, f"{sample}{labels}: {len(found)} samples"
    return found[0]


def timings(**ms: float) -> tm.TurnTimings:
    t = tm.TurnTimings()
    t.mark(tm.SPEECH_END, 100.0)
    for stage, at in ms.items():
        t.mark(stage, 100.0 + at / 1000.0)
    return t


FULL = {tm.ENDPOINT: 420, tm.STT_FINAL: 510, tm.LLM_FIRST_TOKEN: 830, tm.FIRST_CHUNK: 900,
        tm.TTS_FIRST_AUDIO: 1080, tm.PLAYBACK_COMMAND: 1095, tm.PLAYBACK_START: 1115, tm.FIRST_AUDIBLE: 1130}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class FakeEsl:
    stats: EslStats = field(default_factory=EslStats)
    connected: bool = True


@dataclass
class FakeBridge:
    stats: BridgeStats = field(default_factory=BridgeStats)


@dataclass
class FakeRecords:
    stats: WriterStats = field(default_factory=WriterStats)
    queued: int = 0


@dataclass
class Named:
    name: str


# ---- exposition -------------------------------------------------------------------------------------------


def test_an_empty_registry_is_valid_exposition() -> None:
    families = parse_exposition(Metrics().render())
    assert families["parley_turn_latency_ms"].kind == "histogram"
    assert value_of(families, "parley_active_calls") == 0
    assert value_of(families, "parley_barge_ins_total") == 0


def test_turn_latencies_land_in_the_right_buckets() -> None:
    m = Metrics()
    m.observe_turn(timings(**FULL))
    m.observe_turn(timings(**{**FULL, tm.PLAYBACK_START: 2585, tm.FIRST_AUDIBLE: 2600}))
    m.observe_turn(timings(**{tm.ENDPOINT: 300}))  # a turn that never got a reply: only its endpoint
    f = parse_exposition(m.render())
    v2v = {"stage": "voice_to_voice"}
    assert value_of(f, "parley_turn_latency_ms_bucket", **v2v, le="1000") == 0
    assert value_of(f, "parley_turn_latency_ms_bucket", **v2v, le="1250") == 1
    assert value_of(f, "parley_turn_latency_ms_bucket", **v2v, le="3000") == 2
    assert value_of(f, "parley_turn_latency_ms_count", **v2v) == 2
    assert value_of(f, "parley_turn_latency_ms_sum", **v2v) == pytest.approx(1130 + 2600)
    assert value_of(f, "parley_turn_latency_ms_count", stage="endpoint") == 3
    assert value_of(f, "parley_turn_latency_ms_bucket", stage="endpoint", le="300") == 1
    assert value_of(f, "parley_turn_latency_ms_count", stage="playback_start") == 2
    assert {lab["stage"] for n, lab, _ in f["parley_turn_latency_ms"].samples} == {
        "endpoint", "stt_final", "llm_first_token", "tts_first_audio", "playback_start", "first_audible",
        "voice_to_voice"}
    # durations: the LLM's time to first token is its own series
    assert value_of(f, "parley_turn_stage_duration_ms_sum", stage="llm_first_token") == pytest.approx(2 * 320)
    assert value_of(f, "parley_turns_total") == 3
    les = [lab["le"] for n, lab, _ in f["parley_turn_latency_ms"].samples
           if n.endswith("_bucket") and lab["stage"] == "voice_to_voice"]
    assert [float(le.replace("Inf", "inf")) for le in les] == [*LATENCY_BUCKETS_MS, math.inf]


def test_calls_barge_ins_causes_and_cost() -> None:
    m = Metrics()
    for _ in range(3):
        m.call_started()
    m.barge_in()
    m.barge_in()
    m.call_ended("NORMAL_CLEARING", 0.0123)
    m.call_ended("normal clearing", None)  # normalised to the same label; no cost recorded
    f = parse_exposition(m.render())
    assert value_of(f, "parley_active_calls") == 1
    assert value_of(f, "parley_calls_started_total") == 3
    assert value_of(f, "parley_calls_ended_total", cause="NORMAL_CLEARING") == 2
    assert value_of(f, "parley_barge_ins_total") == 2
    assert value_of(f, "parley_call_cost_usd_count") == 1
    assert value_of(f, "parley_call_cost_usd_bucket", le="0.01") == 0
    assert value_of(f, "parley_call_cost_usd_bucket", le="0.02") == 1
    assert len([s for s in f["parley_call_cost_usd"].samples if s[0].endswith("_bucket")]) == len(COST_BUCKETS_USD) + 1
    m.call_ended(None)
    m.call_ended(None)  # more ends than starts never makes the gauge negative
    f = parse_exposition(m.render())
    assert value_of(f, "parley_active_calls") == 0
    assert value_of(f, "parley_calls_ended_total", cause="UNKNOWN") == 2


def test_hangup_causes_are_bounded_and_label_values_escaped() -> None:
    m = Metrics(max_label_values=3)
    for cause in ("A", "B", "C", "D", "E"):
        m.call_ended(cause)
    m.fallback("tts", 'we"ird\\name\n', "espeak")
    f = parse_exposition(m.render())
    causes = {lab["cause"]: v for _, lab, v in f["parley_calls_ended_total"].samples}
    assert causes == {"A": 1, "B": 1, "C": 1, "OTHER": 2}
    assert value_of(f, "parley_provider_fallbacks_total", capability="tts", **{"from": 'we"ird\\name\n'},
                    to="espeak") == 1
    assert normalize_cause(" user busy ") == "USER_BUSY"
    assert normalize_cause("x" * 200) == "X" * 48


def test_provider_errors_from_hooks_and_from_fallback_chains() -> None:
    clock = Clock()
    m = Metrics(clock=clock)
    stt = FallbackSTT([Named("deepgram"), Named("whisper")], clock=clock)  # type: ignore[list-item]
    stt.stats.failures["deepgram"] = 4  # before watch(): history, not news
    m.watch(providers={"stt": stt, "llm": Named("openai"), "tts": Named("openai")})  # type: ignore[dict-item]
    m.provider_error("openai", "llm")
    m.provider_error("deepgram")  # the chain counts its own failures: ignored
    m.provider_error("stt")  # AllProvidersFailed names the capability: ignored too
    m.provider_error("elevenlabs", "tts")  # not watched (e.g. the emergency voice): counted all the same
    stt.stats.failures["deepgram"] = 6
    m.fallback("stt", "deepgram", "whisper")
    f = parse_exposition(m.render())
    assert value_of(f, "parley_provider_errors_total", capability="stt", provider="deepgram") == 6
    assert value_of(f, "parley_provider_errors_total", capability="stt", provider="whisper") == 0
    assert value_of(f, "parley_provider_errors_total", capability="llm", provider="openai") == 1
    assert value_of(f, "parley_provider_errors_total", capability="tts", provider="openai") == 0  # same name, other kind
    assert value_of(f, "parley_provider_errors_total", capability="tts", provider="elevenlabs") == 1
    assert len(f["parley_provider_errors_total"].samples) == 5
    assert value_of(f, "parley_provider_fallbacks_total", capability="stt", **{"from": "deepgram"}, to="whisper") == 1


def test_live_stats_are_read_at_scrape_time() -> None:
    m = Metrics()
    bridge, esl, records = FakeBridge(), FakeEsl(), FakeRecords()
    m.watch(bridge=bridge, esl=esl, records=records)
    f = parse_exposition(m.render())
    assert value_of(f, "parley_dropped_frames_total") == 0
    assert value_of(f, "parley_esl_connected") == 1
    bridge.stats.dropped_frames = 17
    esl.stats.reconnects = 2
    esl.connected = False
    records.stats.dropped = 5
    records.queued = 9
    f = parse_exposition(m.render())
    assert value_of(f, "parley_dropped_frames_total") == 17
    assert value_of(f, "parley_esl_reconnects_total") == 2
    assert value_of(f, "parley_esl_connected") == 0
    assert value_of(f, "parley_records_dropped_total") == 5
    assert value_of(f, "parley_records_queued") == 9


# ---- /health ----------------------------------------------------------------------------------------------


def test_health_ok_then_degraded_when_esl_drops_or_a_capability_has_no_working_provider() -> None:
    clock = Clock()
    m = Metrics(clock=clock, provider_cooldown_s=30.0)
    esl = FakeEsl()
    llm = FallbackLLM([Named("openai"), Named("rules")], clock=clock)  # type: ignore[list-item]
    m.watch(esl=esl, providers={"stt": Named("whisper"), "llm": llm, "tts": Named("hibari")})  # type: ignore[dict-item]
    m.call_started()
    report = m.health()
    assert (report.status, report.http_status) == ("ok", 200)
    assert report.as_dict() == {
        "status": "ok",
        "esl_connected": True,
        "providers": {
            "stt": [{"name": "whisper", "status": "ok", "errors": 0}],
            "llm": [{"name": "openai", "status": "ok", "errors": 0}, {"name": "rules", "status": "ok", "errors": 0}],
            "tts": [{"name": "hibari", "status": "ok", "errors": 0}],
        },
        "active_calls": 1,
    }
    llm.stats.failures["openai"] = 1  # one provider of the chain failed: the other still answers
    assert m.health().status == "ok"
    assert m.health().providers["llm"][0] == {"name": "openai", "status": "failing", "errors": 1}
    llm.stats.failures["rules"] = 1  # both failed: no LLM
    assert (m.health().status, m.health().http_status) == ("degraded", 503)
    clock.now += 31  # cooled down
    assert m.health().status == "ok"
    m.provider_error("hibari")  # the only TTS failed (its capability found by name)
    assert m.health().status == "degraded"
    clock.now += 31
    assert m.health().status == "ok"
    esl.connected = False
    report = m.health()
    assert (report.status, report.esl_connected, report.http_status) == ("degraded", False, 503)


# ---- /metrics and /health over HTTP ---------------------------------------------------------------------------


async def test_server_serves_metrics_and_health() -> None:
    m = Metrics()
    esl = FakeEsl()
    m.watch(esl=esl, providers={"stt": Named("whisper")})  # type: ignore[dict-item]
    server = HttpServer("127.0.0.1", 0)
    m.install(server)
    async with server, httpx.AsyncClient(base_url=server.url) as http:
        r = await http.get("/metrics")
        assert r.status_code == 200 and r.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
        families = parse_exposition(r.text)
        assert value_of(families, "parley_esl_connected") == 1
        assert not [name for name in families if name.endswith("_created")]
        r = await http.get("/health")
        assert r.status_code == 200 and r.headers["content-type"] == "application/json"
        assert r.json()["status"] == "ok"
        esl.connected = False
        r = await http.get("/health")
        assert r.status_code == 503 and r.json() == {
            "status": "degraded", "esl_connected": False,
            "providers": {"stt": [{"name": "whisper", "status": "ok", "errors": 0}], "llm": [], "tts": []},
            "active_calls": 0,
        }
        assert (await http.get("/metrics/extra")).status_code == 404
        r = await http.post("/metrics")
        assert r.status_code == 405 and r.headers["allow"] == "GET, HEAD"
        r = await http.head("/metrics")
        assert r.status_code == 200 and r.content == b""


def test_fallback_chains_are_watched_by_shape_and_metrics_does_not_import_providers() -> None:
    """Anything with ``health.names`` and ``stats.failures`` is a chain (issue 11: observe must not import
    parley.providers); the real chains satisfy it (the tests above watch FallbackSTT/FallbackLLM)."""

    @dataclass
    class Names:
        names: list[str]

    @dataclass
    class Failures:
        failures: dict[str, int]

    @dataclass
    class Chain:
        health: Names
        stats: Failures
        name: str = "chain"

    chain = Chain(Names(["a", "b"]), Failures({"b": 2}))
    m = Metrics()
    m.watch(providers={"tts": chain})
    chain.stats.failures["a"] = 1
    f = parse_exposition(m.render())
    assert value_of(f, "parley_provider_errors_total", capability="tts", provider="a") == 1
    assert value_of(f, "parley_provider_errors_total", capability="tts", provider="b") == 2
    code = ("import sys, parley.observe.metrics, parley.observe.http, parley.observe.readiness; "
            "print(sorted(m for m in sys.modules if m.startswith('parley.providers')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_dropped_frames_count_live_from_the_stream_server_not_at_stream_end() -> None:
    from parley.freeswitch.audio_stream import ServerStats

    class FakeStreams:
        def __init__(self) -> None:
            self.stats = ServerStats()

    m = Metrics()
    bridge, streams = FakeBridge(), FakeStreams()
    m.watch(bridge=bridge, streams=streams)
    streams.stats.frames, streams.stats.dropped = 5000, 12  # a call still streaming, its queue overflowing
    streams.stats.garbage_binary, streams.stats.garbage_text = 2, 1
    f = parse_exposition(m.render())
    assert value_of(f, "parley_dropped_frames_total") == 12
    assert value_of(f, "parley_audio_frames_total") == 5000
    assert value_of(f, "parley_garbage_frames_total") == 3
    bridge.stats.dropped_frames = 12  # the same frames, added up by the bridge when the stream ends
    assert value_of(parse_exposition(m.render()), "parley_dropped_frames_total") == 12  # not counted twice
