"""Metrics exposition, /health, and the small HTTP server (parser unit tests and real sockets)."""

from __future__ import annotations

import asyncio
import json
import math
import re
from dataclasses import dataclass, field

import pytest

from parley.freeswitch.bridge import BridgeStats
from parley.freeswitch.esl_client import EslStats
from parley.observe import timings as tm
from parley.observe.http import HttpError, HttpServer, Request, Response, parse_request_head, render_response
from parley.observe.metrics import (
    COST_BUCKETS_USD,
    LATENCY_BUCKETS_MS,
    Metrics,
    format_value,
    normalize_cause,
)
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


def value_of(families: dict[str, Family], sample: str, **labels: str) -> float:
    family = families[re.sub(r"_(bucket|sum|count)$", "", sample)] if sample not in families else families[sample]
    found = [v for n, lab, v in family.samples if n == sample and lab == labels]
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
    assert les == [format_value(b) for b in LATENCY_BUCKETS_MS] + ["+Inf"]


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


# ---- the HTTP server ------------------------------------------------------------------------------------------


def test_parse_request_head() -> None:
    req = parse_request_head(b"GET /calls/a%20b?page=2&page=3&x HTTP/1.1\r\nHost: h\r\nX-Y:  z \r\n\r\n")
    assert req == Request("GET", "/calls/a b", {"page": "2", "x": ""}, {"host": "h", "x-y": "z"})
    bad = {
        b"\r\n\r\n": 400,
        b"GET /\r\n\r\n": 400,
        b"GET / HTTP/2.0\r\n\r\n": 505,
        b"get / HTTP/1.1\r\n\r\n": 400,
        b"GET http://x/ HTTP/1.1\r\n\r\n": 400,
        b"GET / HTTP/1.1\r\nno colon\r\n\r\n": 400,
        b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n": 400,
        "GET /é HTTP/1.1\r\n\r\n".encode(): 400,
    }
    for head, status in bad.items():
        with pytest.raises(HttpError) as info:
            parse_request_head(head)
        assert info.value.status == status, head


def test_render_response_and_header_injection() -> None:
    out = render_response(Response.text("hi"), head_only=False)
    assert out.startswith(b"HTTP/1.1 200 OK\r\n") and out.endswith(b"\r\n\r\nhi")
    assert b"Content-Length: 2\r\n" in out and b"Connection: close\r\n" in out
    assert render_response(Response.text("hi"), head_only=True).endswith(b"\r\n\r\n")
    with pytest.raises(ValueError):
        render_response(Response(headers=(("X", "a\r\nSet-Cookie: x"),)))


async def request(port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split(" ")[1]), headers, body


async def get(port: int, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    return await request(port, f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())


async def test_server_serves_metrics_health_404_405_and_errors() -> None:
    m = Metrics()
    esl = FakeEsl()
    m.watch(esl=esl, providers={"stt": Named("whisper")})  # type: ignore[dict-item]

    async def boom(_req: Request) -> Response:
        raise RuntimeError("secret detail")

    async with HttpServer("127.0.0.1", 0, read_timeout_s=0.5, max_head_bytes=1024) as server:
        m.install(server)
        server.route("/boom", boom)
        port = server.port
        status, headers, body = await get(port, "/metrics")
        assert status == 200 and headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
        parse_exposition(body.decode())
        status, headers, body = await get(port, "/health")
        assert status == 200 and headers["content-type"] == "application/json"
        assert json.loads(body)["status"] == "ok"
        esl.connected = False
        status, _, body = await get(port, "/health")
        assert status == 503 and json.loads(body) == {
            "status": "degraded", "esl_connected": False,
            "providers": {"stt": [{"name": "whisper", "status": "ok", "errors": 0}], "llm": [], "tts": []},
            "active_calls": 0,
        }
        assert (await get(port, "/nope"))[0] == 404
        assert (await get(port, "/metrics/extra"))[0] == 404
        status, headers, _ = await get(port, "/metrics", "POST")
        assert status == 405 and headers["allow"] == "GET, HEAD"
        status, headers, body = await get(port, "/metrics", "HEAD")
        assert status == 200 and body == b"" and int(headers["content-length"]) > 0
        status, _, body = await get(port, "/boom")
        assert status == 500 and b"secret" not in body
        assert (await request(port, b"BLAH\r\n\r\n"))[0] == 400
        assert (await request(port, b"GET / HTTP/1.1\r\nX: " + b"a" * 4096 + b"\r\n\r\n"))[0] == 431
        assert (await request(port, b"GET / HTTP/1.1\r\n"))[0] == 408  # the head never completes
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)  # a port probe: connect, close
        writer.close()
        assert (await get(port, "/metrics"))[0] == 200  # still serving
    with pytest.raises(RuntimeError):
        _ = server.port


async def test_prefix_routes_longest_first() -> None:
    server = HttpServer()

    def answer(text: str):  # type: ignore[no-untyped-def]
        async def handler(_req: Request) -> Response:
            return Response.text(text)
        return handler

    server.route("/calls/", answer("call"), prefix=True)
    server.route("/calls/x/", answer("deeper"), prefix=True)
    server.route("/", answer("root"))
    assert (await server.handle(Request("GET", "/calls/1"))).body == b"call"
    assert (await server.handle(Request("GET", "/calls/x/1"))).body == b"deeper"
    assert (await server.handle(Request("GET", "/"))).body == b"root"
    assert (await server.handle(Request("GET", "/other"))).status == 404
    with pytest.raises(ValueError):
        server.route("nope", answer("x"))


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
