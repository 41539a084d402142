"""OpenTelemetry spans per call, per turn and per turn stage, received by a real OTLP/HTTP collector.

The collector is an ``http.server`` on a real 127.0.0.1 port that decodes each POST /v1/traces body as an
``ExportTraceServiceRequest`` and answers with an ``ExportTraceServiceResponse`` (or a configured error).
Whole calls run through the fake FreeSWITCH with the local stack, as ``parley simulate`` runs them."""

from __future__ import annotations

import asyncio
import gzip
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

pytest.importorskip("opentelemetry.sdk")
pytest.importorskip("opentelemetry.exporter.otlp.proto.http")

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from parley.agent.engine import Engine
from parley.agent.session import TurnRecord
from parley.config import ObserveSettings, Settings
from parley.freeswitch.call import CallInfo
from parley.observe import timings as tm
from parley.observe.metrics import LATENCY_STAGES
from parley.observe.tracing import CallOutcome, CallTracer, traces_url
from parley.sim.echo_call import free_port
from parley.sim.simulate import SimulationResult, load_scenario, run_scenario

CALLER_NUMBER = "+15550001111"  # the fake FreeSWITCH's default caller

# ---- a real OTLP/HTTP receiver ----------------------------------------------------------------------------


class OtlpReceiver:
    """POST /v1/traces on 127.0.0.1: protobuf in, ExportTraceServiceResponse (or ``status``) out."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.bodies: list[bytes] = []
        self.requests: list[ExportTraceServiceRequest] = []
        self.headers: list[dict[str, str]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                receiver.headers.append({k.lower(): v for k, v in self.headers.items()})
                if self.path != "/v1/traces":
                    self._reply(404, b"")
                    return
                receiver.bodies.append(body)
                if receiver.status != 200:
                    self._reply(receiver.status, b"collector unavailable")
                    return
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                receiver.requests.append(request)
                self._reply(200, ExportTraceServiceResponse().SerializeToString())

            def _reply(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> OtlpReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def spans(self) -> list[tuple[dict[str, object], Span]]:
        """Every span received, with its resource's attributes."""
        return [
            (attributes(rs.resource.attributes), span)
            for request in self.requests
            for rs in request.resource_spans
            for ss in rs.scope_spans
            for span in ss.spans
        ]


def value(v: AnyValue) -> object:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [value(x) for x in v.array_value.values]
    return getattr(v, kind) if kind else None


def attributes(kvs: Iterator[KeyValue] | object) -> dict[str, object]:
    return {kv.key: value(kv.value) for kv in kvs}  # type: ignore[attr-defined]


def ms(span: Span) -> float:
    return (span.end_time_unix_nano - span.start_time_unix_nano) / 1e6


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as r:
        yield r


# ---- without whole calls ----------------------------------------------------------------------------------


def test_traces_url_appends_the_signal_path_to_the_base_endpoint() -> None:
    assert traces_url("http://collector:4318") == "http://collector:4318/v1/traces"
    assert traces_url("http://collector:4318/") == "http://collector:4318/v1/traces"
    assert traces_url("https://otlp.example/otel/") == "https://otlp.example/otel/v1/traces"
    assert traces_url("http://collector:4318/v1/traces") == "http://collector:4318/v1/traces"


def run_python(code: str, **env: str) -> str:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60,
                         env={**os.environ, **env}, check=True)
    return out.stdout.strip()


NOOP_CALL = """
    import asyncio, sys
    import parley.app
    from parley.agent.session import TurnRecord
    from parley.config import ObserveSettings
    from parley.freeswitch.call import CallInfo
    from parley.observe.tracing import CallOutcome, CallTracer

    class Call:
        uuid = "u-1"
        info = CallInfo("u-1", caller_number="+15550001111")
        created_at = 1.0
        ended_at = 2.0

    tracer = CallTracer.open(ObserveSettings(otlp_endpoint=ENDPOINT))
    trace = tracer.start_call(Call(), providers={"stt": ["whisper"]})
    trace.turn(TurnRecord(index=1, caller="hello"))
    trace.end(CallOutcome(hangup_cause="NORMAL_CLEARING", hangup_by="caller", turns=1))
    asyncio.run(tracer.aclose())
    print(tracer.enabled, [m for m, mod in sys.modules.items() if m.split(".")[0] == "opentelemetry" and mod])
"""


def test_without_an_endpoint_tracing_is_a_no_op_and_opentelemetry_is_never_imported() -> None:
    assert run_python(NOOP_CALL.replace("ENDPOINT", "''"), PARLEY_OTLP_ENDPOINT="") == "False []"


def test_with_an_endpoint_but_without_the_extra_tracing_is_off_with_an_install_hint() -> None:
    code = "import sys\nsys.modules['opentelemetry'] = None\n" + textwrap.dedent(NOOP_CALL)
    out = subprocess.run([sys.executable, "-c", code.replace("ENDPOINT", "'http://127.0.0.1:9'")],
                         capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "False []"
    assert "pip install 'parley[otel]'" in out.stderr


@dataclass
class StandInCall:
    uuid: str = "7f1c5b9e-0000-4000-8000-000000000001"
    info: CallInfo = field(default_factory=lambda: CallInfo("7f1c5b9e-0000-4000-8000-000000000001",
                                                            caller_number=CALLER_NUMBER, destination="1000",
                                                            codec="PCMU", codec_rate=8000))
    created_at: float = 0.0
    ended_at: float | None = None


def test_barge_in_fallbacks_and_failure_become_events_and_status(receiver: OtlpReceiver) -> None:
    now = time.monotonic()
    call = StandInCall(created_at=now - 10.0, ended_at=now - 1.0)
    turn = TurnRecord(index=1, caller="my card number is 4111", agent="We're", agent_full="We're open nine to five.",
                      barge_in=True, endpoint_reason="silence")
    t0 = now - 8.0
    for stage, dt in ((tm.SPEECH_END, 0.0), (tm.ENDPOINT, 0.5), (tm.STT_FINAL, 0.62), (tm.LLM_FIRST_TOKEN, 0.9),
                      (tm.FIRST_CHUNK, 1.0), (tm.TTS_FIRST_AUDIO, 1.2), (tm.PLAYBACK_COMMAND, 1.21),
                      (tm.PLAYBACK_START, 1.3), (tm.FIRST_AUDIBLE, 1.315)):
        turn.timings.mark(stage, t0 + dt)
    turn.barge = tm.BargeInTimings(t0 + 2.0, t0 + 2.25, t0 + 2.26, t0 + 2.3, 700.0)
    fallback = {"capability": "llm", "from": "openai", "to": "rules", "error": "HTTP 503"}

    async def go() -> None:
        tracer = CallTracer.open(ObserveSettings(otlp_endpoint=receiver.url, service_name="parley-unit"))
        trace = tracer.start_call(call, providers={"llm": ["openai", "rules"]}, call_id="c-1")
        trace.turn(turn)
        trace.end(CallOutcome("TEMPORARY_FAILURE", "agent", failed=True, turns=1, barge_ins=1,
                              events=[(t0 + 0.95, "fallback", fallback)]))
        await tracer.aclose()

    asyncio.run(go())
    spans = {s.name: (res, s) for res, s in receiver.spans()}
    assert set(spans) == {"call", "turn 1", *LATENCY_STAGES}
    res, call_span = spans["call"]
    assert res["service.name"] == "parley-unit"
    a = attributes(call_span.attributes)
    assert a["parley.caller.number"] == "**********11" and a["parley.destination"] == "1000"
    assert a["parley.providers.llm"] == ["openai", "rules"] and a["parley.call.id"] == "c-1"
    assert (a["parley.status"], a["parley.failed"], a["parley.hangup.by"]) == ("failed", True, "agent")
    assert call_span.status.code == Status.STATUS_CODE_ERROR
    assert ms(call_span) == pytest.approx(9000.0, abs=1.0)
    [ev] = call_span.events
    assert ev.name == "fallback" and attributes(ev.attributes)["parley.to"] == "rules"
    assert (ev.time_unix_nano - call_span.start_time_unix_nano) / 1e6 == pytest.approx(2950.0, abs=1.0)
    turn_span = spans["turn 1"][1]
    assert ms(turn_span) == pytest.approx(2300.0, abs=1.0)  # speech end -> the break stopped the audio
    [barge] = turn_span.events
    assert barge.name == "barge_in"
    assert attributes(barge.attributes)["parley.barge_in.onset_to_detect_ms"] == 250.0
    assert "4111" not in repr([attributes(s.attributes) for _, s in receiver.spans()])
    assert ms(spans["tts_first_audio"][1]) == pytest.approx(200.0, abs=1.0)  # from first_chunk, as stage_ms()


def test_tracing_failures_are_logged_once_and_never_raise(receiver: OtlpReceiver,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    class BrokenCall:
        uuid = "u-broken"
        ended_at = None

        def __init__(self, created_at: float) -> None:
            self.created_at = created_at

        @property
        def info(self) -> CallInfo:
            raise RuntimeError("no info")

    async def go() -> None:
        tracer = CallTracer.open(ObserveSettings(otlp_endpoint=receiver.url))
        for _ in range(3):
            trace = tracer.start_call(BrokenCall(created_at=time.monotonic()))
            trace.turn(TurnRecord(index=1))
            trace.end(CallOutcome(None, "caller"))
        await tracer.aclose()

    asyncio.run(go())
    assert len([r for r in caplog.records if r.levelname == "ERROR" and r.name == "parley.tracing"]) == 1


# ---- whole simulated calls --------------------------------------------------------------------------------

# Short on purpose (~8 s): a one-word greeting, the caller says goodbye, the agent answers and hangs up.
SCENARIO = """name: trace
timeout_s: 40
conversation: {greeting: "Hello."}
steps:
  - wait_agent: true
  - say: "Goodbye."
  - wait_agent: true
"""


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    pytest.importorskip("faster_whisper")
    pytest.importorskip("hibari")
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    from parley.app import build_engine

    yield build_engine(Settings())


def simulate(engine: Engine, tmp: Path, script: str, observe: ObserveSettings) -> SimulationResult:
    from parley.sim.caller_voice import caller_voice

    path = tmp / "scenario.yaml"
    path.write_text(script)

    async def go() -> SimulationResult:
        tracer = CallTracer.open(observe, export_timeout_s=2.0)
        try:
            return await run_scenario(load_scenario(path), engine, caller_voice("hibari-low", engine.tts),
                                      tmp / "spool", tracer=tracer)
        finally:
            await tracer.aclose()

    return asyncio.run(go())


@pytest.fixture(scope="module")
def traced(engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SimulationResult, OtlpReceiver]]:
    with OtlpReceiver() as r:
        observe = ObserveSettings(otlp_endpoint=r.url + "/", otlp_headers={"x-collector-key": "k3y"})
        yield simulate(engine, tmp_path_factory.mktemp("traced"), SCENARIO, observe), r


def test_a_call_is_one_server_span_with_its_outcome(traced: tuple[SimulationResult, OtlpReceiver]) -> None:
    result, r = traced
    assert {h.get("x-collector-key") for h in r.headers} == {"k3y"}
    assert {h.get("content-type") for h in r.headers} == {"application/x-protobuf"}
    calls = [(res, s) for res, s in r.spans() if s.name == "call"]
    assert len(calls) == 1
    res, span = calls[0]
    assert res["service.name"] == "parley"
    assert span.kind == Span.SPAN_KIND_SERVER and not span.parent_span_id
    a = attributes(span.attributes)
    assert a["freeswitch.uuid"] == result.fake_call.uuid
    assert a["parley.caller.number"] == "**********11"
    assert a["parley.turns"] == len(result.session.turns) >= 1
    assert a["parley.status"] == "completed" and a["parley.failed"] is False
    assert a["parley.hangup.by"] == "agent" and a["parley.hangup.cause"] == "NORMAL_CLEARING"
    assert a["parley.providers.stt"] == [result.session.engine.stt.name]
    assert span.status.code != Status.STATUS_CODE_ERROR


def test_each_turn_is_a_child_span_with_a_span_per_stage(traced: tuple[SimulationResult, OtlpReceiver]) -> None:
    result, r = traced
    spans = [s for _, s in r.spans()]
    [call] = [s for s in spans if s.name == "call"]
    turns = {s.name: s for s in spans if s.parent_span_id == call.span_id}
    assert set(turns) == {f"turn {t.index}" for t in result.session.turns}
    answered = [t for t in result.session.turns if t.caller and t.agent_full]
    assert answered
    for turn in answered:
        span = turns[f"turn {turn.index}"]
        assert span.trace_id == call.trace_id
        a = attributes(span.attributes)
        assert a["parley.turn.voice_to_voice_ms"] == turn.timings.voice_to_voice_ms
        assert a["parley.turn.caller_chars"] == len(turn.caller) and a["parley.turn.barge_in"] is False
        stages = {s.name: s for s in spans if s.parent_span_id == span.span_id}
        expected = {k: v for k, v in turn.timings.stage_ms().items() if k in LATENCY_STAGES}
        assert set(stages) == set(expected) == set(LATENCY_STAGES)
        for stage, duration in expected.items():
            assert ms(stages[stage]) == pytest.approx(duration, abs=1.0), stage
            assert stages[stage].trace_id == call.trace_id
        assert stages[tm.ENDPOINT].start_time_unix_nano == span.start_time_unix_nano  # the caller's speech end
        assert ms(span) >= turn.timings.voice_to_voice_ms  # on to the end of the agent's audio
        assert span.start_time_unix_nano >= call.start_time_unix_nano
        assert span.end_time_unix_nano <= call.end_time_unix_nano


def test_no_caller_text_or_number_leaves_by_default(traced: tuple[SimulationResult, OtlpReceiver]) -> None:
    result, r = traced
    assert r.bodies
    raw = b"".join(r.bodies)
    for turn in result.session.turns:
        for text in (turn.caller, turn.agent):
            if len(text) > 4:
                assert text.encode() not in raw, text
    assert CALLER_NUMBER[1:].encode() not in raw
    assert not any("text" in k for _, s in r.spans() for k in attributes(s.attributes))


def test_caller_text_is_traced_when_asked(engine: Engine, tmp_path: Path) -> None:
    with OtlpReceiver() as r:
        result = simulate(engine, tmp_path, SCENARIO, ObserveSettings(otlp_endpoint=r.url, log_caller_text=True))
    spans = {s.name: s for _, s in r.spans()}
    assert attributes(spans["call"].attributes)["parley.caller.number"] == CALLER_NUMBER
    turn = next(t for t in result.session.turns if t.caller)
    a = attributes(spans[f"turn {turn.index}"].attributes)
    assert a["parley.turn.caller_text"] == turn.caller and a["parley.turn.agent_text"] == turn.agent


@pytest.mark.parametrize("collector", ["http-500", "down"])
def test_a_failing_collector_never_hurts_the_call(engine: Engine, tmp_path: Path, collector: str) -> None:
    with OtlpReceiver(status=500) as r:
        url = r.url if collector == "http-500" else f"http://127.0.0.1:{free_port()}"
        result = simulate(engine, tmp_path, SCENARIO, ObserveSettings(otlp_endpoint=url))
    turns = result.session.turns
    assert turns and turns[0].agent_full.startswith("Thanks for calling")
    assert turns[0].timings.voice_to_voice_ms is not None
    assert not result.session.failed
    assert result.fake_call.hungup and result.spool_left == 0
    assert bool(r.bodies) == (collector == "http-500")  # the spans were sent, and refused
