"""Operational metrics on ``prometheus_client`` (``/metrics``) and a health report (``/health``).

Owns: the metric names, their labels, help texts and buckets, the hooks the call path calls
(:meth:`Metrics.observe_turn`, :meth:`Metrics.barge_in`, ...), the provider error counts (a fallback chain's
polled at scrape time), what is watched at scrape time (the bridge, the ESL client, the stream server, the
call-record writer: read by :class:`~parley.observe.metrics_live.LiveCollector`), and the two routes. Must
not know how a call is run or which vendors exist: it sees stats objects through small Protocols, and a
fallback chain as anything with ``health.names`` and ``stats.failures`` (:class:`ProviderChainLike`), never
the providers package.

One :class:`~prometheus_client.CollectorRegistry` per :class:`Metrics`, so per process, never the library's
global one. With ``parley serve --workers N`` each worker is its own process with its own registry on its
own port (``observe.port + i``), and the scrape config lists every port (or Kubernetes scrapes each pod):
Prometheus adds the workers up in the query (``sum(rate(parley_turns_total[1m]))``). Chosen over
prometheus_client's multiprocess mode, which shares counters through mmap files in a directory that must be
wiped between runs, and whose scraping process cannot read another worker's live values (``set_function``
gauges such as ``parley_active_calls`` are not supported there, and every live counter here is read from
the worker's own objects at scrape time); it would also hide which worker is unhealthy, where per-worker
ports keep ``/health`` and ``/ready`` per worker, as a drain needs.

The exposition is text format 0.0.4 without the ``_created`` series (one more series per counter, unused
by our dashboards); ``le`` values are written as prometheus_client writes them (``le="1000.0"``, as
Prometheus 3 normalises them anyway). Rendering costs ~2 ms of CPU for a busy worker's registry (~28 kB;
the hand-written writer took ~0.5 ms), once per scrape, off the per-frame path (figures in
:mod:`parley.observe.http`). Every hook is O(1), never blocks and never raises into the call path. Label
values that come from outside (hangup causes) are normalised and capped (``max_label_values``) so a
misbehaving peer cannot grow the series without bound; the rest overflows into ``OTHER``.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from parley.observe import timings as tm
from parley.observe.http import HttpServer, respond
from parley.observe.metrics_live import (
    BridgeLike,
    EslLike,
    EslNodesLike,
    LiveCollector,
    RecordsLike,
    StreamServerLike,
)

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
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
HealthStatus = Literal["ok", "degraded"]


# ---- what is read at scrape time --------------------------------------------------------------------------


class ProviderLike(Protocol):
    @property
    def name(self) -> str: ...


class ChainNamesLike(Protocol):
    @property
    def names(self) -> Sequence[str]: ...


class ChainStatsLike(Protocol):
    @property
    def failures(self) -> Mapping[str, int]: ...


@runtime_checkable
class ProviderChainLike(Protocol):
    """A fallback chain as seen from here: its providers' names in order, and its failures per name."""

    @property
    def health(self) -> ChainNamesLike: ...
    @property
    def stats(self) -> ChainStatsLike: ...


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
        self._scraped = asyncio.Event()  # set by each /metrics answer (final_scrape waits for one)
        self.registry = r = CollectorRegistry()
        self.turn_latency = Histogram("parley_turn_latency_ms", "Time from the caller's speech end to each stage of a "
                                      "turn (ms); stage=voice_to_voice is speech end to the first audible agent "
                                      "sample.", ["stage"], buckets=LATENCY_BUCKETS_MS, registry=r)
        self.stage_duration = Histogram("parley_turn_stage_duration_ms", "Duration of each stage of a turn, from the "
                                        "previous recorded stage (ms): llm_first_token is the LLM's time to first "
                                        "token.", ["stage"], buckets=LATENCY_BUCKETS_MS, registry=r)
        self.turns = Counter("parley_turns_total", "Caller turns completed (answered, interrupted or failed).",
                             registry=r)
        self.barge_ins = Counter("parley_barge_ins_total", "Replies the caller interrupted.", registry=r)
        self.calls_started = Counter("parley_calls_started_total", "Calls the agent took.", registry=r)
        self.calls_ended = Counter("parley_calls_ended_total", "Calls ended, by FreeSWITCH hangup cause.", ["cause"],
                                   registry=r)
        self.active = Gauge("parley_active_calls", "Calls in progress.", registry=r)
        self.active.set_function(lambda: self._active_calls)
        self.call_cost = Histogram("parley_call_cost_usd", "Cost of one call in USD (providers and carrier).",
                                   buckets=COST_BUCKETS_USD, registry=r)
        self.fallbacks = Counter("parley_provider_fallbacks_total", "Switches from a failed provider to the next "
                                 "one.", ["capability", "from", "to"], registry=r)
        r.register(LiveCollector(self))
        self._causes: set[str] = set()
        self._fallback_labels: set[tuple[str, str, str]] = set()
        self._active_calls = 0
        self._providers: dict[tuple[str, str], _ProviderState] = {}  # (capability, provider name)
        self._chains: dict[str, tuple[str, ...]] = {}  # capability -> provider names
        self._chain_stats: dict[str, ChainStatsLike] = {}  # capability -> the chain's live stats
        self.bridge: BridgeLike | None = None
        self.streams: StreamServerLike | None = None
        self.esl: EslLike | None = None
        self.records: RecordsLike | None = None

    # ---- hooks (the call path) ----

    def observe_turn(self, timings: tm.TurnTimings) -> None:
        """A finished turn: each recorded stage's latency from speech end, and each stage's duration."""
        self.turns.inc()
        ms = timings.ms()
        for stage in LATENCY_STAGES:
            if stage in ms:
                self.turn_latency.labels(stage).observe(max(0.0, ms[stage]))
        v2v = timings.voice_to_voice_ms
        if v2v is not None:
            self.turn_latency.labels(VOICE_TO_VOICE).observe(max(0.0, v2v))
        for stage, duration in timings.stage_ms().items():
            self.stage_duration.labels(stage).observe(max(0.0, duration))

    def barge_in(self) -> None:
        self.barge_ins.inc()

    def call_started(self) -> None:
        self._active_calls += 1
        self.calls_started.inc()

    def call_ended(self, cause: str | None, cost_usd: float | None = None) -> None:
        self._active_calls = max(0, self._active_calls - 1)
        label = normalize_cause(cause)
        if label not in self._causes:
            if len(self._causes) < self._max_label_values:
                self._causes.add(label)
            else:
                label = "OTHER"
        self.calls_ended.labels(label).inc()
        if cost_usd is not None and math.isfinite(cost_usd) and cost_usd >= 0:
            self.call_cost.observe(cost_usd)

    def fallback(self, capability: str, from_: str, to: str) -> None:
        labels = (capability, from_, to)
        if labels in self._fallback_labels or len(self._fallback_labels) < self._max_label_values:
            self._fallback_labels.add(labels)
            self.fallbacks.labels(*labels).inc()

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
        self.bridge = bridge or self.bridge
        self.streams = streams or self.streams
        self.esl = esl or self.esl
        self.records = records or self.records
        for capability, provider in (providers or {}).items():
            if isinstance(provider, ProviderChainLike):
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
        """All metrics in the Prometheus text exposition format (0.0.4)."""
        return generate_latest(_WithoutCreated(self.registry)).decode("utf-8")

    def provider_errors(self) -> Iterable[tuple[str, str, int]]:
        """(capability, provider, failed requests so far), chains polled now."""
        self._poll_chains()
        return [(c, n, s.errors) for (c, n), s in self._providers.items()]

    def health(self) -> HealthReport:
        """``degraded`` when ESL is down or some capability has no provider that has not failed recently.

        Once the ESL link has failed at least once, ``providers["esl"]`` says what is wrong: its state
        (connecting, connected, down, refused), for how long, the last error, the failed connect attempts
        since it was last up and the reconnections so far (a link that never failed adds nothing)."""
        self._poll_chains()
        now = self._clock()
        providers: dict[str, list[dict[str, object]]] = {}
        degraded = self.esl is None or not self.esl.connected
        if isinstance(self.esl, EslNodesLike) and len(nodes := self.esl.health()) > 1:
            # several FreeSWITCH nodes: each on its own line, always (which one is down is the question)
            providers["esl"] = [{"name": name, **info} for name, info in nodes.items()]
        elif self.esl is not None:
            st = self.esl.stats
            if st.last_error is not None or st.attempts:
                providers["esl"] = [{
                    "name": "freeswitch",
                    "status": "ok" if self.esl.connected else "failing",
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
            items: list[dict[str, object]] = []
            for name in self._chains.get(capability, ()):
                state = self._providers[(capability, name)]
                failing = state.last_error_at is not None and now - state.last_error_at < self._cooldown_s
                items.append({"name": name, "status": "failing" if failing else "ok", "errors": state.errors})
            if items and all(i["status"] == "failing" for i in items):
                degraded = True
            providers[capability] = items
        return HealthReport(
            status="degraded" if degraded else "ok",
            esl_connected=self.esl is not None and self.esl.connected,
            providers=providers,
            active_calls=self._active_calls,
        )

    # ---- HTTP ----

    def install(self, server: HttpServer) -> None:
        """Serve ``/metrics`` and ``/health`` on ``server``."""
        server.route("/metrics", self.metrics_endpoint)
        server.route("/health", self.health_endpoint)

    async def metrics_endpoint(self, request: web.Request) -> web.Response:
        body = self.render()
        self._scraped.set()
        return respond(body, content_type=CONTENT_TYPE)

    async def final_scrape(self, timeout_s: float) -> bool:
        """Wait for the next scrape of ``/metrics`` (the counters as they are now), at most ``timeout_s``.
        True when one came: a process going away calls this after its last call so its end is not lost."""
        self._scraped.clear()
        try:
            async with asyncio.timeout(timeout_s):
                await self._scraped.wait()
        except TimeoutError:
            return False
        return True

    async def health_endpoint(self, request: web.Request) -> web.Response:
        report = self.health()
        return respond(json.dumps(report.as_dict(), indent=2) + "\n", report.http_status, "application/json")


class _WithoutCreated(Collector):
    """The registry's families less their ``_created`` samples (text format 0.0.4 has no use for them)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterable[Metric]:
        for family in self.registry.collect():
            family.samples = [s for s in family.samples if not s.name.endswith("_created")]
            yield family
