"""Operational metrics in the Prometheus text format (``/metrics``) and a health report (``/health``).

Owns: the metric names, their labels and buckets, the hooks the call path calls (:meth:`Metrics.observe_turn`,
:meth:`Metrics.barge_in`, ...), reading live counters of the bridge, the ESL client, the fallback chains
and the call-record writer at scrape time, and rendering both endpoints. Must not know how a call is run
or which vendors exist: it sees stats objects through small Protocols and provider chains by their names.

The text exposition (format 0.0.4) is written here rather than with ``prometheus_client``: it is a few
dozen lines, and it keeps metrics state owned by one object (no process-global registry).

Every hook is O(1), never blocks and never raises into the call path. Label values that come from outside
(hangup causes) are normalised and capped (``max_label_values``) so a misbehaving peer cannot grow the
series without bound; the rest overflows into ``OTHER``.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol

from parley.observe import timings as tm
from parley.observe.http import HttpServer, Request, Response
from parley.providers.fallback import FallbackLLM, FallbackStats, FallbackSTT, FallbackTTS

if TYPE_CHECKING:
    from parley.freeswitch.audio_stream import ServerStats
    from parley.freeswitch.bridge import BridgeStats
    from parley.freeswitch.esl_client import EslStats
    from parley.observe.records import WriterStats

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Phone latency: a good turn is under ~800 ms voice-to-voice, above ~2 s callers talk over the agent.
LATENCY_BUCKETS_MS: tuple[float, ...] = (
    50, 100, 150, 200, 300, 400, 500, 600, 700, 800, 1000, 1250, 1500, 2000, 3000, 5000, 10000,
)
COST_BUCKETS_USD: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
# Stages reported as "ms after the caller stopped speaking"; voice_to_voice is first_audible's twin (the ear)
# under its own name so a dashboard query need not know the stage list.
LATENCY_STAGES: tuple[str, ...] = (
    tm.ENDPOINT, tm.STT_FINAL, tm.LLM_FIRST_TOKEN, tm.TTS_FIRST_AUDIO, tm.PLAYBACK_START, tm.FIRST_AUDIBLE,
)
VOICE_TO_VOICE = "voice_to_voice"
CAPABILITIES: tuple[str, ...] = ("stt", "llm", "tts")
Labels = tuple[tuple[str, str], ...]
HealthStatus = Literal["ok", "degraded"]


# ---- what is read at scrape time --------------------------------------------------------------------------


class BridgeLike(Protocol):
    @property
    def stats(self) -> BridgeStats: ...


class StreamServerLike(Protocol):
    """The mod_audio_stream server: its totals move with every frame (live, not when a stream ends)."""

    @property
    def stats(self) -> ServerStats: ...


class EslLike(Protocol):
    @property
    def stats(self) -> EslStats: ...
    @property
    def connected(self) -> bool: ...


class RecordsLike(Protocol):
    @property
    def stats(self) -> WriterStats: ...
    @property
    def queued(self) -> int: ...


class ProviderLike(Protocol):
    @property
    def name(self) -> str: ...


# ---- the exposition format --------------------------------------------------------------------------------


def format_value(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape_label(v)}"' for k, v in labels) + "}"


@dataclass(slots=True)
class _Family:
    """One metric name: its help, its type and its samples per label set."""

    name: str
    help: str
    kind: Literal["counter", "gauge", "histogram"]
    values: dict[Labels, float] = field(default_factory=dict)
    buckets: tuple[float, ...] = ()
    counts: dict[Labels, list[int]] = field(default_factory=dict)  # per bucket, not cumulative (+Inf last)
    sums: dict[Labels, float] = field(default_factory=dict)

    def inc(self, labels: Labels = (), by: float = 1.0) -> None:
        self.values[labels] = self.values.get(labels, 0.0) + by

    def set(self, value: float, labels: Labels = ()) -> None:
        self.values[labels] = value

    def observe(self, value: float, labels: Labels = ()) -> None:
        counts = self.counts.setdefault(labels, [0] * (len(self.buckets) + 1))
        i = next((i for i, le in enumerate(self.buckets) if value <= le), len(self.buckets))
        counts[i] += 1
        self.sums[labels] = self.sums.get(labels, 0.0) + value

    def render(self, out: list[str]) -> None:
        out.append(f"# HELP {self.name} {self.help.replace(chr(92), chr(92) * 2).replace(chr(10), chr(92) + 'n')}")
        out.append(f"# TYPE {self.name} {self.kind}")
        if self.kind != "histogram":
            for labels, value in sorted(self.values.items()):
                out.append(f"{self.name}{_labels(labels)} {format_value(value)}")
            return
        for labels, counts in sorted(self.counts.items()):
            total = 0
            for le, n in zip((*self.buckets, math.inf), counts, strict=True):
                total += n
                out.append(f"{self.name}_bucket{_labels((*labels, ('le', format_value(le))))} {total}")
            out.append(f"{self.name}_sum{_labels(labels)} {format_value(self.sums[labels])}")
            out.append(f"{self.name}_count{_labels(labels)} {total}")


_CAUSE = re.compile(r"[^A-Z0-9_]")


def normalize_cause(cause: str | None) -> str:
    """A hangup cause as a bounded label value: ``NORMAL_CLEARING``; ``UNKNOWN`` when there is none."""
    text = _CAUSE.sub("_", (cause or "").strip().upper())[:48]
    return text or "UNKNOWN"


@dataclass(slots=True)
class _ProviderState:
    errors: int = 0  # seen so far (chain stats or the provider_error hook)
    last_error_at: float | None = None


@dataclass(frozen=True, slots=True)
class HealthReport:
    status: HealthStatus
    esl_connected: bool
    providers: Mapping[str, Sequence[Mapping[str, object]]]
    active_calls: int

    @property
    def http_status(self) -> int:
        return 200 if self.status == "ok" else 503

    def as_dict(self) -> dict[str, object]:
        return {
            "status": self.status,
            "esl_connected": self.esl_connected,
            "providers": {k: list(v) for k, v in self.providers.items()},
            "active_calls": self.active_calls,
        }


# ---- the metrics ------------------------------------------------------------------------------------------


class Metrics:
    """parley's metrics. The call path calls the hooks; ``watch()`` adds what is read at scrape time."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        provider_cooldown_s: float = 30.0,
        max_label_values: int = 64,
    ) -> None:
        self._clock = clock
        self._cooldown_s = provider_cooldown_s
        self._max_label_values = max_label_values
        f = _Family
        self.turn_latency = f("parley_turn_latency_ms", "Time from the caller's speech end to each stage of a turn "
                              "(ms); stage=voice_to_voice is speech end to the first audible agent sample.",
                              "histogram", buckets=LATENCY_BUCKETS_MS)
        self.stage_duration = f("parley_turn_stage_duration_ms", "Duration of each stage of a turn, from the previous "
                                "recorded stage (ms): llm_first_token is the LLM's time to first token.", "histogram",
                                buckets=LATENCY_BUCKETS_MS)
        self.turns = f("parley_turns_total", "Caller turns completed (answered, interrupted or failed).", "counter")
        self.barge_ins = f("parley_barge_ins_total", "Replies the caller interrupted.", "counter")
        self.calls_started = f("parley_calls_started_total", "Calls the agent took.", "counter")
        self.calls_ended = f("parley_calls_ended_total", "Calls ended, by FreeSWITCH hangup cause.", "counter")
        self.active = f("parley_active_calls", "Calls in progress.", "gauge")
        self.call_cost = f("parley_call_cost_usd", "Cost of one call in USD (providers and carrier).", "histogram",
                           buckets=COST_BUCKETS_USD)
        self.fallbacks = f("parley_provider_fallbacks_total", "Switches from a failed provider to the next one.",
                           "counter")
        for unlabelled in (self.turns, self.barge_ins, self.calls_started, self.active):
            unlabelled.set(0)  # present from the first scrape, so rate() sees the first increase
        self.call_cost.counts[()] = [0] * (len(COST_BUCKETS_USD) + 1)
        self.call_cost.sums[()] = 0.0
        self._active_calls = 0
        self._providers: dict[tuple[str, str], _ProviderState] = {}  # (capability, provider name)
        self._chains: dict[str, tuple[str, ...]] = {}  # capability -> provider names
        self._chain_stats: dict[str, FallbackStats] = {}  # capability -> the chain's live stats
        self._bridge: BridgeLike | None = None
        self._streams: StreamServerLike | None = None
        self._esl: EslLike | None = None
        self._records: RecordsLike | None = None

    # ---- hooks (the call path) ----

    def observe_turn(self, timings: tm.TurnTimings) -> None:
        """A finished turn: each recorded stage's latency from speech end, and each stage's duration."""
        self.turns.inc()
        ms = timings.ms()
        for stage in LATENCY_STAGES:
            if stage in ms:
                self.turn_latency.observe(max(0.0, ms[stage]), (("stage", stage),))
        v2v = timings.voice_to_voice_ms
        if v2v is not None:
            self.turn_latency.observe(max(0.0, v2v), (("stage", VOICE_TO_VOICE),))
        for stage, duration in timings.stage_ms().items():
            self.stage_duration.observe(max(0.0, duration), (("stage", stage),))

    def barge_in(self) -> None:
        self.barge_ins.inc()

    def call_started(self) -> None:
        self._active_calls += 1
        self.calls_started.inc()

    def call_ended(self, cause: str | None, cost_usd: float | None = None) -> None:
        self._active_calls = max(0, self._active_calls - 1)
        self.calls_ended.inc((("cause", self._bounded(self.calls_ended, "cause", normalize_cause(cause))),))
        if cost_usd is not None and math.isfinite(cost_usd) and cost_usd >= 0:
            self.call_cost.observe(cost_usd)

    def fallback(self, capability: str, from_: str, to: str) -> None:
        labels = (("capability", capability), ("from", from_), ("to", to))
        if labels in self.fallbacks.values or len(self.fallbacks.values) < self._max_label_values:
            self.fallbacks.inc(labels)

    def provider_error(self, provider: str, capability: str = "") -> None:
        """A provider request failed (``ProviderError.provider``). ``capability`` may be left out for a
        watched provider. Ignored where a watched fallback chain counts its own failures, and for a chain's
        ``AllProvidersFailed`` (whose provider is the capability), so calling it for every error is safe."""
        if provider in CAPABILITIES:
            return
        capability = capability or next((c for c, names in self._chains.items() if provider in names), "")
        if capability in self._chain_stats:
            return
        key = (capability, provider)
        state = self._providers.get(key)
        if state is None:
            if len(self._providers) >= self._max_label_values:
                return
            state = self._providers[key] = _ProviderState()
        state.errors += 1
        state.last_error_at = self._clock()

    # ---- live sources ----

    def watch(
        self,
        *,
        bridge: BridgeLike | None = None,
        esl: EslLike | None = None,
        providers: Mapping[str, ProviderLike] | None = None,
        records: RecordsLike | None = None,
        streams: StreamServerLike | None = None,
    ) -> None:
        """Read these at scrape time: bridge and ESL counters, provider chains (``{"stt": engine.stt, ...}``;
        a fallback chain's failures count as provider errors), the call-record writer's counters, and the
        mod_audio_stream server's running frame totals (dropped frames count as they drop)."""
        self._bridge = bridge or self._bridge
        self._streams = streams or self._streams
        self._esl = esl or self._esl
        self._records = records or self._records
        for capability, provider in (providers or {}).items():
            if isinstance(provider, FallbackSTT | FallbackLLM | FallbackTTS):
                names = tuple(provider.health.names)
                self._chain_stats[capability] = provider.stats
            else:
                names = (provider.name,)
            self._chains[capability] = names
            for name in names:
                state = self._providers.setdefault((capability, name), _ProviderState())
                if capability in self._chain_stats:  # failures before watch() are history, not news
                    state.errors = self._chain_stats[capability].failures.get(name, 0)

    def _poll_chains(self) -> None:
        now = self._clock()
        for capability, stats in self._chain_stats.items():
            for name in self._chains[capability]:
                state = self._providers[(capability, name)]
                seen = stats.failures.get(name, 0)
                if seen > state.errors:
                    state.last_error_at = now  # new failures since the last look
                state.errors = seen

    # ---- output ----

    @property
    def active_calls(self) -> int:
        return self._active_calls

    def render(self) -> str:
        """All metrics in the Prometheus text exposition format."""
        self._poll_chains()
        self.active.set(self._active_calls)
        out: list[str] = []
        for family in (self.turn_latency, self.stage_duration, self.turns, self.barge_ins, self.calls_started,
                       self.calls_ended, self.active, self.call_cost, self.fallbacks):
            family.render(out)
        errors = _Family("parley_provider_errors_total", "Failed provider requests, by provider.", "counter")
        for (capability, name), state in self._providers.items():
            errors.set(state.errors, (("capability", capability), ("provider", name)))
        errors.render(out)
        for family in self._live():
            family.render(out)
        return "\n".join(out) + "\n"

    def _live(self) -> list[_Family]:
        families: list[_Family] = []

        def one(name: str, help_: str, kind: Literal["counter", "gauge"], value: float) -> None:
            family = _Family(name, help_, kind)
            family.set(value)
            families.append(family)

        if self._streams is not None:
            st = self._streams.stats
            one("parley_dropped_frames_total", "Inbound audio frames dropped (a call's queue was full), counted as "
                "they drop.", "counter", st.dropped)
            one("parley_audio_frames_total", "Inbound audio frames received from mod_audio_stream.", "counter",
                st.frames)
            one("parley_garbage_frames_total", "WebSocket frames that were not audio or valid JSON.", "counter",
                st.garbage_binary + st.garbage_text)
            refused = _Family("parley_streams_refused_total", "mod_audio_stream upgrades refused before the WebSocket "
                              "opened, by reason (bad_token, draining, not_found, bad_uuid, bad_format).", "counter")
            for reason, n in sorted(st.rejected.items()):  # a fixed set of keys, never a peer's text
                refused.set(n, (("reason", reason),))
            families.append(refused)
        if self._bridge is not None:
            s = self._bridge.stats
            if self._streams is None:
                one("parley_dropped_frames_total", "Inbound audio frames dropped (queue full), counted when a "
                    "stream ends.", "counter", s.dropped_frames)
            one("parley_stream_errors_total", "mod_audio_stream connections that failed.", "counter", s.stream_errors)
            one("parley_streams_rejected_total", "mod_audio_stream connections refused.", "counter",
                s.streams_rejected)
            one("parley_agent_errors_total", "Calls whose agent raised an unexpected error.", "counter", s.agent_errors)
            one("parley_stream_restarts_total", "mod_audio_stream restarts of a live call's lost stream.", "counter",
                s.stream_restarts)
            one("parley_streams_replaced_total", "Second streams that took over a call from the first.", "counter",
                s.streams_replaced)
            one("parley_streams_stalled_total", "Streams that went silent with their connection open.", "counter",
                s.streams_stalled)
            one("parley_media_given_up_total", "Calls whose media could not be restored (apology, then fallback "
                "or hangup).", "counter", s.media_given_up)
        if self._esl is not None:
            one("parley_esl_connected", "1 while the ESL connection to FreeSWITCH is up.", "gauge",
                1 if self._esl.connected else 0)
            one("parley_esl_reconnects_total", "ESL reconnections after a lost connection.", "counter",
                self._esl.stats.reconnects)
        if self._records is not None:
            w = self._records.stats
            one("parley_records_written_total", "Call-record rows committed.", "counter", w.written)
            one("parley_records_dropped_total", "Call-record rows dropped (queue full or shutdown).", "counter",
                w.dropped)
            one("parley_records_rejected_total", "Call-record rows the database refused.", "counter", w.rejected)
            one("parley_records_queued", "Call-record writes waiting for the database.", "gauge",
                self._records.queued)
        return families

    def health(self) -> HealthReport:
        """``degraded`` when ESL is down or some capability has no provider that has not failed recently.

        Once the ESL link has failed at least once, ``providers["esl"]`` says what is wrong: its state
        (connecting, connected, down, refused), for how long, the last error, the failed connect attempts
        since it was last up and the reconnections so far (a link that never failed adds nothing)."""
        self._poll_chains()
        now = self._clock()
        providers: dict[str, list[dict[str, object]]] = {}
        degraded = self._esl is None or not self._esl.connected
        if self._esl is not None:
            st = self._esl.stats
            if st.last_error is not None or st.attempts:
                providers["esl"] = [{
                    "name": "freeswitch",
                    "status": "ok" if self._esl.connected else "failing",
                    "state": st.state,
                    "for_s": None if st.state_since is None else round(max(0.0, now - st.state_since), 1),
                    "last_error": st.last_error,
                    "last_error_s_ago": (
                        None if st.last_error_at is None else round(max(0.0, now - st.last_error_at), 1)
                    ),
                    "failed_attempts": st.attempts,
                    "reconnects": st.reconnects,
                }]
        for capability in CAPABILITIES:
            names = self._chains.get(capability, ())
            items: list[dict[str, object]] = []
            for name in names:
                state = self._providers[(capability, name)]
                failing = state.last_error_at is not None and now - state.last_error_at < self._cooldown_s
                items.append({"name": name, "status": "failing" if failing else "ok", "errors": state.errors})
            if items and all(i["status"] == "failing" for i in items):
                degraded = True
            providers[capability] = items
        return HealthReport(
            status="degraded" if degraded else "ok",
            esl_connected=self._esl is not None and self._esl.connected,
            providers=providers,
            active_calls=self._active_calls,
        )

    def _bounded(self, family: _Family, label: str, value: str) -> str:
        known = {v for labels in family.values for k, v in labels if k == label}
        return value if value in known or len(known) < self._max_label_values else "OTHER"

    # ---- HTTP ----

    def install(self, server: HttpServer) -> None:
        """Serve ``/metrics`` and ``/health`` on ``server``."""
        server.route("/metrics", self.metrics_endpoint)
        server.route("/health", self.health_endpoint)

    async def metrics_endpoint(self, request: Request) -> Response:
        return Response.text(self.render(), content_type=CONTENT_TYPE)

    async def health_endpoint(self, request: Request) -> Response:
        report = self.health()
        body = json.dumps(report.as_dict(), indent=2) + "\n"
        return Response.text(body, report.http_status, "application/json")
