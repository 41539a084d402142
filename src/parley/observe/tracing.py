"""OpenTelemetry traces: one span per call, one per caller turn, one per turn stage; exported by OTLP/HTTP.

Owns: the span names and attributes, what is kept out of them (caller and agent text, caller names and
numbers unless ``observe.log_caller_text``), turning a finished turn's monotonic stage timestamps into spans
after the fact, and the SDK objects: our own ``TracerProvider`` (the process-global one is never touched),
a batch processor and the OTLP/HTTP protobuf exporter to ``<observe.otlp_endpoint>/v1/traces``.
Must not know how a call is run or which vendors exist: it reads a finished :class:`TurnRecord`, the call's
info, and an outcome the composition root hands in.

Optional twice over: without an endpoint, or without the ``otel`` extra, :meth:`CallTracer.open` returns a
tracer whose every method returns at once, and opentelemetry is never imported. Tracing never raises into
the call path: the first failure is logged with its traceback, later ones at debug level.

Spans (all ``parley.*`` attributes; ``freeswitch.uuid`` for the channel)::

    call                      SERVER   call created -> hangup; hangup cause/by, status, providers, turns
      turn <n>                         caller speech end -> last agent audio; barge_in event
        endpoint | stt_final | llm_first_token | tts_first_audio | playback_start
                                       previous recorded stage -> this stage (parley_turn_stage_duration_ms)
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TypeAlias

from parley.config import ObserveSettings
from parley.observe import timings as tm
from parley.observe.metrics import LATENCY_STAGES
from parley.observe.redact import redact_number

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer

    from parley.agent.session import TurnRecord
    from parley.freeswitch.call import CallInfo

log = logging.getLogger("parley.tracing")

TRACES_PATH = "/v1/traces"
INSTALL_HINT = "pip install 'parley[otel]'"
Attr: TypeAlias = str | bool | int | float | Sequence[str]


class CallLike(Protocol):
    """What a trace reads of a live call (:class:`parley.freeswitch.call.Call` has it)."""

    @property
    def uuid(self) -> str: ...
    @property
    def info(self) -> CallInfo: ...
    @property
    def created_at(self) -> float: ...
    @property
    def ended_at(self) -> float | None: ...


@dataclass(frozen=True, slots=True)
class CallOutcome:
    hangup_cause: str | None
    hangup_by: str  # "agent" | "caller"
    failed: bool = False  # the providers failed and the caller got the apology
    turns: int = 0
    barge_ins: int = 0
    events: Sequence[tuple[float, str, Mapping[str, str]]] = ()  # (monotonic t, kind, detail), e.g. fallback
    cost_usd: float | None = None


# ---- what the spans say (pure: monotonic seconds in, plans out) ---------------------------------------


@dataclass(frozen=True, slots=True)
class SpanEvent:
    name: str
    t: float  # monotonic seconds
    attributes: Mapping[str, Attr]


@dataclass(frozen=True, slots=True)
class SpanPlan:
    name: str
    start: float  # monotonic seconds
    end: float
    attributes: Mapping[str, Attr]
    events: tuple[SpanEvent, ...] = ()
    children: tuple[SpanPlan, ...] = ()


def traces_url(endpoint: str) -> str:
    """The OTLP/HTTP traces URL for a base endpoint (OTEL_EXPORTER_OTLP_ENDPOINT semantics: append the path)."""
    base = endpoint.strip().rstrip("/")
    return base if base.endswith(TRACES_PATH) else base + TRACES_PATH


def stage_plans(timings: tm.TurnTimings) -> tuple[SpanPlan, ...]:
    """One span per latency stage, from the previous recorded stage to this one (``stage_ms()``)."""
    out: list[SpanPlan] = []
    since = timings.ms()
    provider_s = timings.provider_s
    prev: float | None = None
    for stage in tm.TURN_STAGES:
        t = timings.marks.get(stage)
        if t is None:
            continue
        if prev is not None and stage in LATENCY_STAGES:
            attrs: dict[str, Attr] = {"parley.stage": stage}
            if stage in since:
                attrs["parley.stage.since_speech_end_ms"] = since[stage]
            if stage in provider_s:
                attrs["parley.stage.provider_ms"] = round(provider_s[stage] * 1000.0, 1)
            out.append(SpanPlan(stage, prev, max(prev, t), attrs))
        prev = t if prev is None else max(prev, t)
    return tuple(out)


def turn_plan(turn: TurnRecord, *, caller_text: bool, now: float) -> SpanPlan:
    """``turn <n>``: the caller's speech end (else the first stage) to the last agent audio heard."""
    timings = turn.timings
    times = list(timings.marks.values())
    if turn.agent_audio_end is not None:
        times.append(turn.agent_audio_end)
    events: tuple[SpanEvent, ...] = ()
    if turn.barge is not None:
        b = turn.barge
        times += [t for t in (b.break_written, b.playback_stopped) if t is not None]
        detail = {f"parley.barge_in.{k}": v for k, v in b.as_dict().items() if v is not None}
        events = (SpanEvent("barge_in", b.detected, detail),)
    start = timings.marks.get(tm.SPEECH_END, min(times, default=now))
    end = max([start, *times])
    attrs: dict[str, Attr] = {
        "parley.turn.index": turn.index,
        "parley.turn.barge_in": turn.barge_in,
        "parley.turn.caller_chars": len(turn.caller),
        "parley.turn.agent_chars": len(turn.agent),
        "parley.turn.agent_full_chars": len(turn.agent_full),
    }
    if turn.endpoint_reason:
        attrs["parley.turn.endpoint_reason"] = turn.endpoint_reason
    if timings.voice_to_voice_ms is not None:
        attrs["parley.turn.voice_to_voice_ms"] = timings.voice_to_voice_ms
    if (overhead := timings.overhead_ms()) is not None:
        attrs["parley.turn.overhead_ms"] = overhead
    if turn.tool_calls:
        attrs["parley.turn.tool_calls"] = [c.name for c in turn.tool_calls]  # names only: arguments are caller data
    if caller_text:
        attrs["parley.turn.caller_text"] = turn.caller
        attrs["parley.turn.agent_text"] = turn.agent
    return SpanPlan(f"turn {turn.index}", start, end, attrs, events, stage_plans(timings))


def call_attributes(
    call: CallLike,
    *,
    caller_text: bool,
    call_id: str | None = None,
    providers: Mapping[str, Sequence[str]] | None = None,
    outcome: CallOutcome | None = None,
) -> dict[str, Attr]:
    info = call.info
    attrs: dict[str, Attr] = {"freeswitch.uuid": call.uuid}
    number = info.caller_number if caller_text else redact_number(info.caller_number)
    optional: dict[str, str | int | float | None] = {
        "parley.call.id": call_id,
        "parley.caller.number": number,
        "parley.caller.name": info.caller_name if caller_text else None,
        "parley.destination": info.destination,
        "parley.direction": info.direction,
        "parley.codec": info.codec,
        "parley.codec_rate": info.codec_rate if info.codec else None,
    }
    if outcome is not None:
        optional |= {
            "parley.hangup.cause": outcome.hangup_cause,
            "parley.hangup.by": outcome.hangup_by,
            "parley.status": "failed" if outcome.failed else "completed",
            "parley.turns": outcome.turns,
            "parley.barge_ins": outcome.barge_ins,
            "parley.cost_usd": outcome.cost_usd,
        }
        attrs["parley.failed"] = outcome.failed
    attrs |= {k: v for k, v in optional.items() if v is not None and v != ""}
    for capability, names in (providers or {}).items():
        attrs[f"parley.providers.{capability}"] = list(names)
    return attrs


def call_events(events: Sequence[tuple[float, str, Mapping[str, str]]]) -> tuple[SpanEvent, ...]:
    """Fallback switches and provider errors recorded during the call, as events of the call span."""
    return tuple(SpanEvent(kind, t, {f"parley.{k}": str(v) for k, v in detail.items()}) for t, kind, detail in events)


# ---- the shell: our own provider, spans created with explicit timestamps --------------------------------


@dataclass(slots=True)
class _Otel:
    provider: TracerProvider
    tracer: Tracer


def _otel_backend(settings: ObserveSettings, *, export_timeout_s: float) -> _Otel | None:
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        log.warning("observe.otlp_endpoint is set but OpenTelemetry is not installed (%s); tracing is off. "
                    "Install it with: %s", exc, INSTALL_HINT)
        return None
    from importlib.metadata import PackageNotFoundError, version

    try:
        parley_version = version("parley")
    except PackageNotFoundError:
        parley_version = "unknown"
    resource = Resource.create({"service.name": settings.service_name, "service.version": parley_version})
    provider = TracerProvider(resource=resource)
    url = traces_url(settings.otlp_endpoint)
    exporter = OTLPSpanExporter(endpoint=url, headers=dict(settings.otlp_headers), timeout=export_timeout_s)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    log.info("tracing: OTLP/HTTP spans to %s as service %s", url, settings.service_name)
    return _Otel(provider, provider.get_tracer("parley", parley_version))


class CallTracer:
    """Starts a :class:`CallTrace` per call; :meth:`aclose` flushes what is queued and stops the exporter."""

    def __init__(self, settings: ObserveSettings, backend: _Otel | None = None) -> None:
        self.settings = settings
        self._otel = backend
        self._failures = 0

    @classmethod
    def open(cls, settings: ObserveSettings, *, export_timeout_s: float = 10.0) -> CallTracer:
        """A tracer for these settings: a no-op unless an endpoint is set and the ``otel`` extra installed."""
        if not settings.otlp_endpoint.strip():
            return cls(settings)
        try:
            return cls(settings, _otel_backend(settings, export_timeout_s=export_timeout_s))
        except Exception:  # a bad endpoint or header must not stop parley from taking calls
            log.exception("tracing: cannot set up the OTLP exporter; tracing is off")
            return cls(settings)

    @property
    def enabled(self) -> bool:
        return self._otel is not None

    def start_call(
        self, call: CallLike, *, providers: Mapping[str, Sequence[str]] | None = None, call_id: str | None = None
    ) -> CallTrace:
        trace = CallTrace(self, call)
        if self._otel is not None:
            try:
                trace.begin(self._otel, providers or {}, call_id)
            except Exception:
                self.failed("starting the call span")
        return trace

    def failed(self, what: str) -> None:
        """Log the first tracing failure in full, the rest quietly: a trace is never worth a call."""
        self._failures += 1
        if self._failures == 1:
            log.exception("tracing failed while %s; the call goes on (further failures are logged at debug)", what)
        else:
            log.debug("tracing failed while %s", what, exc_info=True)

    async def aclose(self) -> None:
        otel, self._otel = self._otel, None
        if otel is None:
            return
        try:
            await asyncio.to_thread(otel.provider.shutdown)  # exports what is queued (bounded by the timeout)
        except Exception:
            self.failed("flushing spans")


class CallTrace:
    """One call's spans. Every method returns at once and never raises."""

    def __init__(self, tracer: CallTracer, call: CallLike) -> None:
        self._tracer = tracer
        self._call = call
        self._otel: _Otel | None = None
        self._span: Span | None = None
        self._providers: Mapping[str, Sequence[str]] = {}
        self._call_id: str | None = None
        self._wall0 = time.time_ns()  # one (wall, monotonic) pair per call turns stage times into epoch ns
        self._mono0 = time.monotonic()

    def begin(self, otel: _Otel, providers: Mapping[str, Sequence[str]], call_id: str | None) -> None:
        from opentelemetry.trace import SpanKind

        self._otel, self._providers, self._call_id = otel, providers, call_id
        attrs = call_attributes(self._call, caller_text=self._caller_text, call_id=call_id, providers=providers)
        self._span = otel.tracer.start_span("call", kind=SpanKind.SERVER, attributes=attrs,
                                            start_time=self._ns(self._call.created_at))

    @property
    def _caller_text(self) -> bool:
        return self._tracer.settings.log_caller_text

    def _ns(self, t: float) -> int:
        return self._wall0 + round((t - self._mono0) * 1e9)

    def turn(self, turn: TurnRecord) -> None:
        """A finished turn (answered, interrupted or failed): its span and its stage spans, exported now."""
        if self._otel is None or self._span is None:
            return
        try:
            plan = turn_plan(turn, caller_text=self._caller_text, now=time.monotonic())
            self._emit(self._otel, plan, self._span)
        except Exception:
            self._tracer.failed(f"tracing turn {turn.index}")

    def _emit(self, otel: _Otel, plan: SpanPlan, parent: Span) -> None:
        from opentelemetry.trace import set_span_in_context

        span = otel.tracer.start_span(plan.name, context=set_span_in_context(parent), attributes=plan.attributes,
                                      start_time=self._ns(plan.start))
        for ev in plan.events:
            span.add_event(ev.name, ev.attributes, timestamp=self._ns(ev.t))
        for child in plan.children:
            self._emit(otel, child, span)
        span.end(end_time=self._ns(plan.end))

    def end(self, outcome: CallOutcome) -> None:
        """The call is over: its outcome, events and status on the call span, which ends at the hangup."""
        span, self._span = self._span, None
        if span is None:
            return
        try:
            from opentelemetry.trace import Status, StatusCode

            span.set_attributes(call_attributes(self._call, caller_text=self._caller_text, call_id=self._call_id,
                                                providers=self._providers, outcome=outcome))
            for ev in call_events(outcome.events):
                span.add_event(ev.name, ev.attributes, timestamp=self._ns(ev.t))
            if outcome.failed:
                span.set_status(Status(StatusCode.ERROR, "the providers failed; the caller heard the apology"))
            ended = self._call.ended_at
            span.end(end_time=self._ns(ended if ended is not None else time.monotonic()))
        except Exception:
            self._tracer.failed("ending the call span")
