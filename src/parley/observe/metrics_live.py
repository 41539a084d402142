"""What parley's metrics read at scrape time: the live counters of the mod_audio_stream server, the bridge,
the ESL client and the call-record writer, and the provider errors, as a ``prometheus_client`` collector.

Owns: the names, help texts and types of those live families, and the small Protocols through which it
sees their sources. Must not know the sources' classes (it reads ``stats`` objects) nor keep any count of
its own: every value is read when Prometheus scrapes, so nothing is counted twice or goes stale.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from parley.freeswitch.audio_stream import ServerStats
    from parley.freeswitch.bridge import BridgeStats
    from parley.freeswitch.esl_client import EslStats
    from parley.observe.records import WriterStats


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


@runtime_checkable
class EslNodesLike(Protocol):
    """Several FreeSWITCH nodes (``freeswitch/esl_nodes.py``): per node, what ``/health`` shows."""

    @property
    def stats(self) -> EslStats: ...
    @property
    def connected(self) -> bool: ...
    def health(self) -> Mapping[str, Mapping[str, object]]: ...


class RecordsLike(Protocol):
    @property
    def stats(self) -> WriterStats: ...
    @property
    def queued(self) -> int: ...


class Watched(Protocol):
    """What :class:`~parley.observe.metrics.Metrics` watches (each source may be missing)."""

    @property
    def bridge(self) -> BridgeLike | None: ...
    @property
    def streams(self) -> StreamServerLike | None: ...
    @property
    def esl(self) -> EslLike | None: ...
    @property
    def records(self) -> RecordsLike | None: ...
    def provider_errors(self) -> Iterable[tuple[str, str, int]]: ...


def _number(value: object) -> float:
    return float(value) if isinstance(value, int | float) else 0.0


class LiveCollector(Collector):
    """Provider errors (chains polled at scrape time) and the watched objects' live counters."""

    def __init__(self, metrics: Watched) -> None:
        self.m = metrics

    def collect(self) -> Iterable[Metric]:
        m = self.m
        errors = CounterMetricFamily("parley_provider_errors_total", "Failed provider requests, by provider.",
                                     labels=["capability", "provider"])
        for capability, name, n in m.provider_errors():
            errors.add_metric([capability, name], n)
        yield errors

        def counter(name: str, help_: str, value: float) -> CounterMetricFamily:
            return CounterMetricFamily(name, help_, value=value)

        if m.streams is not None:
            st = m.streams.stats
            yield counter("parley_dropped_frames_total", "Inbound audio frames dropped (a call's queue was full), "
                          "counted as they drop.", st.dropped)
            yield counter("parley_audio_frames_total", "Inbound audio frames received from mod_audio_stream.",
                          st.frames)
            yield counter("parley_garbage_frames_total", "WebSocket frames that were not audio or valid JSON.",
                          st.garbage_binary + st.garbage_text)
            refused = CounterMetricFamily("parley_streams_refused_total", "mod_audio_stream upgrades refused before "
                                          "the WebSocket opened, by reason (bad_token, draining, full, not_found, "
                                          "bad_uuid, bad_format).", labels=["reason"])
            for reason, n in sorted(st.rejected.items()):  # a fixed set of keys, never a peer's text
                refused.add_metric([reason], n)
            yield refused
        if m.bridge is not None:
            s = m.bridge.stats
            if m.streams is None:
                yield counter("parley_dropped_frames_total", "Inbound audio frames dropped (queue full), counted when "
                              "a stream ends.", s.dropped_frames)
            yield counter("parley_stream_errors_total", "mod_audio_stream connections that failed.", s.stream_errors)
            yield counter("parley_streams_rejected_total", "mod_audio_stream connections refused.", s.streams_rejected)
            yield counter("parley_agent_errors_total", "Calls whose agent raised an unexpected error.", s.agent_errors)
            yield counter("parley_stream_restarts_total", "mod_audio_stream restarts of a live call's lost stream.",
                          s.stream_restarts)
            yield counter("parley_streams_replaced_total", "Second streams that took over a call from the first.",
                          s.streams_replaced)
            yield counter("parley_streams_stalled_total", "Streams that went silent with their connection open.",
                          s.streams_stalled)
            yield counter("parley_media_given_up_total", "Calls whose media could not be restored (apology, then "
                          "fallback or hangup).", s.media_given_up)
        if m.esl is not None:
            yield GaugeMetricFamily("parley_esl_connected", "1 while the ESL connection to FreeSWITCH is up.",
                                    value=1 if m.esl.connected else 0)
            yield counter("parley_esl_reconnects_total", "ESL reconnections after a lost connection.",
                          m.esl.stats.reconnects)
            if isinstance(m.esl, EslNodesLike):  # per node: labels bounded by the configured nodes
                nodes = m.esl.health()
                up = GaugeMetricFamily("parley_esl_node_connected", "1 while the ESL connection to this "
                                       "FreeSWITCH node is up.", labels=["node"])
                again = CounterMetricFamily("parley_esl_node_reconnects_total", "ESL reconnections to this node "
                                            "after a lost connection.", labels=["node"])
                owned = GaugeMetricFamily("parley_esl_node_owned_calls", "Calls of this node this worker holds "
                                          "(--call-ownership stream: the calls its ESL filter lets through).",
                                          labels=["node"])
                for name, info in nodes.items():
                    up.add_metric([name], 1 if info.get("status") == "ok" else 0)
                    again.add_metric([name], _number(info.get("reconnects")))
                    if "owned_calls" in info:
                        owned.add_metric([name], _number(info["owned_calls"]))
                yield up
                yield again
                yield owned
        if m.records is not None:
            w = m.records.stats
            yield counter("parley_records_written_total", "Call-record rows committed.", w.written)
            yield counter("parley_records_dropped_total", "Call-record rows dropped (queue full or shutdown).",
                          w.dropped)
            yield counter("parley_records_rejected_total", "Call-record rows the database refused.", w.rejected)
            yield GaugeMetricFamily("parley_records_queued", "Call-record writes waiting for the database.",
                                    value=m.records.queued)
