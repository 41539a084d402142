"""``parley bench turns``: the real VAD and end-of-turn stack over the phone-audio turn corpus.

Owns: replaying every corpus item (:mod:`parley.bench.turn_corpus`) through FrameVad (Silero ONNX behind
the webrtcvad gate, the synchronous per-call ``process`` path) once, then through one pure
:class:`~parley.turns.machine.TurnMachine` per endpointing configuration, frame by frame in *simulated*
time: smart-turn v3.2 answers a ``ScoreTurn`` after a fixed modelled latency, whisper tiny.en's
speculative transcript of the turn so far answers a ``UserPaused`` as a ``TranscriptHint`` after another,
and a modelled agent takes the turn at ``EndOfTurn`` and becomes audible ``reply_ms`` after it is released
(``EndOfTurn.release_t``, at once unless a short turn is held) (unless the
turn is revoked first). Same corpus and models -> the same figures on every run. Scoring
(:func:`score_item`, :func:`summarize`, :func:`vad_lags`) is pure and works on the recorded actions.
Prints one row per configuration; never judges. Must not know how the session wires the machine.

Cut-in: an ``EndOfTurn`` before the caller's true turn end that was not revoked by ``TurnResumed`` (the
turn is split and the agent answers a fragment). It is counted over the turns with a 300-1000 ms internal
pause. Decision delay: true turn end -> the last ``EndOfTurn``'s release (when its reply may be heard), over
all caller turns.
"""

from __future__ import annotations

import heapq
import itertools
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TextIO

import numpy as np

from parley.audio.phone import PHONE_RATE
from parley.audio.resample import resample
from parley.bench import write_json
from parley.bench.turn_corpus import CorpusItem
from parley.observe.timings import percentiles
from parley.turns.events import (
    AgentDone,
    AgentSpeaking,
    AgentTurnTaken,
    BargeIn,
    EndOfTurn,
    ScoreTurn,
    Tick,
    TranscriptHint,
    TurnAction,
    TurnEvent,
    TurnResumed,
    TurnScore,
    UserPaused,
    UserSpeechStarted,
    VadFrame,
)
from parley.turns.machine import TurnMachine
from parley.turns.policy import TurnPolicy

FRAME_S = 0.02
SMART_TURN_PREROLL_S = 0.5  # audio before the onset given to smart-turn (as pipecat and the session do)
STT_PREROLL_S = 0.3
PAUSE_RANGE_S = (0.29, 1.01)  # "turns with 300-1000 ms internal pauses" (10 ms truth resolution)
CALLER_KINDS = ("turn", "complete", "short")

OLD_DEFAULT = TurnPolicy(resume_min_speech_ms=120.0, vad_offset_lag_ms=0.0, lexical_hints=False,
                         adaptive_wait=False, revoke_window_ms=0.0, short_turn_hold_ms=0.0)


def configurations() -> dict[str, TurnPolicy]:
    """The endpointing configurations compared side by side (names are what the table prints)."""
    new = TurnPolicy()
    return {
        "old default": OLD_DEFAULT,
        "new default": new,
        "new, no short hold": replace(new, short_turn_hold_ms=0.0),
        "new, no revoke": replace(new, revoke_window_ms=0.0),
        "smart-turn only": replace(new, lexical_hints=False, adaptive_wait=False, revoke_window_ms=0.0),
        "silence 700 ms": replace(OLD_DEFAULT, smart_turn=False, silence_ms=700.0),
    }


@dataclass(frozen=True, slots=True)
class Timing:
    """Modelled latencies (ms), so the simulation does not depend on how busy the machine is."""

    score_ms: float = 50.0  # ScoreTurn -> TurnScore (smart-turn ~50 ms with OPENBLAS_NUM_THREADS=1)
    stt_ms: float = 150.0  # UserPaused -> TranscriptHint (tiny.en, 10 s window, ~110-150 ms per turn)
    # EndOfTurn (or its release) -> first audible agent sample: 40 ms measured with speculative replies and
    # trimmed TTS (parley bench latency: endpoint p50 305 ms -> first audible 345 ms)
    reply_ms: float = 40.0
    reply_len_ms: float = 2000.0  # how long a modelled reply plays


@dataclass(frozen=True, slots=True)
class VadFrameResult:
    t: float
    speech: bool
    prob: float


class Oracle:
    """The models' answers, cached by (item, audio span): smart-turn P(complete) and whisper's transcript."""

    def __init__(self, score: Callable[[np.ndarray, int], float] | None,
                 transcribe: Callable[[np.ndarray], str] | None) -> None:
        self._score, self._transcribe = score, transcribe
        self._scores: dict[tuple[str, int, int], float] = {}
        self._texts: dict[tuple[str, int, int], str] = {}

    @staticmethod
    def _span(item: CorpusItem, start: float, end: float) -> tuple[int, int]:
        a = max(0, round(start * PHONE_RATE))
        return a, max(a, min(item.audio.size, round(end * PHONE_RATE)))

    def score(self, item: CorpusItem, start: float, end: float) -> float:
        if self._score is None:
            return 0.0
        a, b = self._span(item, start, end)
        key = (item.spec.id, a, b)
        if key not in self._scores:
            self._scores[key] = float(self._score(item.audio[a:b], PHONE_RATE))
        return self._scores[key]

    def transcript(self, item: CorpusItem, start: float, end: float) -> str | None:
        if self._transcribe is None:
            return None
        a, b = self._span(item, start, end)
        key = (item.spec.id, a, b)
        if key not in self._texts:
            self._texts[key] = self._transcribe(resample(item.audio[a:b], PHONE_RATE, 16000))
        return self._texts[key]


def vad_track(item: CorpusItem, process: Callable[[np.ndarray], tuple[bool, float]]) -> list[VadFrameResult]:
    n = PHONE_RATE // 50
    out = []
    for i in range(0, item.audio.size - n + 1, n):
        speech, prob = process(item.audio[i : i + n])
        out.append(VadFrameResult(round((i + n) / PHONE_RATE, 6), speech, prob))
    return out


@dataclass(slots=True)
class ItemRun:
    actions: list[TurnAction] = field(default_factory=list)
    audible: list[float] = field(default_factory=list)  # times modelled agent audio became audible


def simulate(item: CorpusItem, track: Sequence[VadFrameResult], policy: TurnPolicy, oracle: Oracle,
             timing: Timing = Timing()) -> ItemRun:
    """One item through one machine in simulated time; returns every action and when the agent was heard."""
    machine = TurnMachine(policy)
    run = ItemRun()
    queue: list[tuple[float, int, int, TurnEvent]] = []  # (time, seq, reply id or -1, event)
    seq = itertools.count()
    state = {"reply": 0, "onset": 0.0}

    def later(t: float, event: TurnEvent, reply: int = -1) -> None:
        heapq.heappush(queue, (t, next(seq), reply, event))

    def act(actions: list[TurnAction]) -> None:
        for a in actions:
            run.actions.append(a)
            match a:
                case UserSpeechStarted(onset_t=onset):
                    state["onset"] = onset
                case TurnResumed(turn_onset_t=onset):
                    state["onset"] = onset
                    state["reply"] += 1  # the not-yet-audible reply is cancelled silently
                case BargeIn(t=t):
                    state["reply"] += 1
                    later(t, AgentDone(t))
                case ScoreTurn(t=t, pause_id=pid):
                    p = oracle.score(item, state["onset"] - SMART_TURN_PREROLL_S, t)
                    later(t + timing.score_ms / 1000, TurnScore(t + timing.score_ms / 1000, pid, p))
                case UserPaused(t=t, pause_id=pid) if policy.lexical_hints:
                    text = oracle.transcript(item, state["onset"] - STT_PREROLL_S, t)
                    if text is not None:
                        th = t + timing.stt_ms / 1000
                        later(th, TranscriptHint(th, pid, text))
                case EndOfTurn(t=t, release_t=release):
                    state["reply"] += 1
                    r = int(state["reply"])
                    later(t, AgentTurnTaken(t), r)
                    heard = (release if release is not None else t) + timing.reply_ms / 1000
                    later(heard, AgentSpeaking(heard), r)
                    later(heard + timing.reply_len_ms / 1000, AgentDone(heard + timing.reply_len_ms / 1000), r)
                case _:
                    pass

    def deliver(until: float) -> None:
        while queue and queue[0][0] <= until + 1e-9:
            t, _, reply, event = heapq.heappop(queue)
            if reply >= 0 and reply != state["reply"]:
                continue  # belongs to a cancelled reply
            if isinstance(event, AgentSpeaking):
                run.audible.append(t)
            act(machine.feed(event))

    if item.spec.agent_floor:
        machine.feed(AgentTurnTaken(0.0))
        machine.feed(AgentSpeaking(0.0))
        run.audible.append(0.0)
    for f in track:
        deliver(f.t - FRAME_S)
        act(machine.feed(VadFrame(f.t, f.speech, f.prob)))
        deliver(f.t)
    end = track[-1].t if track else 0.0
    deliver(end)
    act(machine.feed(Tick(end)))
    return run


# ------------------------------------------------------------------------------------------------ scoring


@dataclass(frozen=True, slots=True)
class ItemScore:
    id: str
    kind: str
    paused: bool  # has a 300-1000 ms internal pause
    premature: int = 0  # EndOfTurn before the true turn end
    revoked: int = 0  # ... of which revoked by TurnResumed
    heard_early: bool = False  # modelled agent audio became audible before the true turn end
    delay_ms: float | None = None  # true turn end -> final EndOfTurn
    reason: str | None = None
    barge_ins: int = 0
    barge_latency_ms: float | None = None  # caller onset -> BargeIn (barge items)
    false_turns: int = 0  # UserSpeechStarted on a burst item


def score_item(item: CorpusItem, run: ItemRun) -> ItemScore:
    spec = item.spec
    paused = any(PAUSE_RANGE_S[0] <= b - a <= PAUSE_RANGE_S[1] for a, b in item.internal_pauses)
    barges = [a for a in run.actions if isinstance(a, BargeIn)]
    if spec.kind == "burst":
        starts = sum(isinstance(a, UserSpeechStarted) for a in run.actions)
        return ItemScore(spec.id, spec.kind, False, barge_ins=len(barges), false_turns=starts)
    start, end = item.turn_start or 0.0, item.turn_end or 0.0
    if spec.kind == "barge":
        lat = 1000 * (barges[0].t - start) if barges else None
        return ItemScore(spec.id, spec.kind, paused, barge_ins=len(barges), barge_latency_ms=lat)
    premature = revoked = 0
    final: EndOfTurn | None = None
    for i, a in enumerate(run.actions):
        if not isinstance(a, EndOfTurn):
            continue
        if a.t < end:
            premature += 1
            nxt = next((b for b in run.actions[i + 1 :]
                        if isinstance(b, TurnResumed | UserSpeechStarted | BargeIn | EndOfTurn)), None)
            revoked += isinstance(nxt, TurnResumed)
        else:
            final = final or a
    return ItemScore(
        spec.id, spec.kind, paused, premature, revoked,
        heard_early=any(t < end for t in run.audible),
        # until the reply may be heard (a short turn's hold counts: the caller waits through it)
        delay_ms=None if final is None else round(1000 * ((final.release_t or final.t) - end), 1),
        reason=None if final is None else final.reason,
        barge_ins=len(barges),
    )


def _pct(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p90": None}
    ps = percentiles(values, (50.0, 90.0))
    return {"p50": ps["p50"], "p90": ps["p90"]}


def summarize(scores: Sequence[ItemScore]) -> dict[str, object]:
    paused = [s for s in scores if s.kind in CALLER_KINDS and s.paused]
    caller = [s for s in scores if s.kind in CALLER_KINDS]
    barge = [s for s in scores if s.kind == "barge"]
    bursts = [s for s in scores if s.kind == "burst"]
    cut = [s for s in paused if s.premature > s.revoked]
    delays = [s.delay_ms for s in caller if s.delay_ms is not None]
    return {
        "paused_turns": len(paused),
        "cut_in_turns": len(cut),
        "cut_in_rate": len(cut) / len(paused) if paused else None,
        "premature_eot_rate": sum(s.premature > 0 for s in paused) / len(paused) if paused else None,
        "revoked": sum(s.revoked for s in caller),
        "heard_early_rate": sum(s.heard_early for s in paused) / len(paused) if paused else None,
        "caller_turns": len(caller),
        "no_decision": sum(s.delay_ms is None for s in caller),
        "delay_ms": _pct(delays),
        "barge_items": len(barge),
        "missed_barge_ins": sum(s.barge_ins == 0 for s in barge),
        "barge_latency_ms": _pct([s.barge_latency_ms for s in barge if s.barge_latency_ms is not None]),
        "burst_items": len(bursts),
        "false_barge_ins": sum(s.barge_ins for s in bursts),
        "cut_in_items": [s.id for s in cut],
    }


def vad_lags(item: CorpusItem, track: Sequence[VadFrameResult]) -> tuple[list[float], list[float]]:
    """VAD onset and offset lags (ms) against the true segments that border >= 250 ms of true silence."""
    runs: list[list[float]] = []
    prev = False
    for f in track:
        if f.speech and prev:
            runs[-1][1] = f.t
        elif f.speech:
            runs.append([f.t - FRAME_S, f.t])
        prev = f.speech
    onsets, offsets = [], []
    segs = list(item.segments)
    for k, (s, e) in enumerate(segs):
        quiet_before = k == 0 or s - segs[k - 1][1] >= 0.25
        next_start = segs[k + 1][0] if k + 1 < len(segs) else float("inf")
        if quiet_before and (r := next((r for r in runs if r[1] > s - 0.1 and r[0] < e), None)):
            onsets.append(round(1000 * (r[0] - s), 1))
        if next_start - e >= 0.25:
            covering = [r for r in runs if r[0] < e and r[1] > s]
            if covering and covering[-1][1] < next_start:
                offsets.append(round(1000 * (covering[-1][1] - e), 1))
    return onsets, offsets


# ----------------------------------------------------------------------------------------------- command


def run_bench(items: Sequence[CorpusItem], tracks: Sequence[Sequence[VadFrameResult]], oracle: Oracle,
              configs: dict[str, TurnPolicy], timing: Timing = Timing()) -> dict[str, object]:
    onsets: list[float] = []
    offsets: list[float] = []
    for item, track in zip(items, tracks, strict=True):
        on, off = vad_lags(item, track)
        onsets += on
        offsets += off
    results: dict[str, object] = {}
    per_item: dict[str, list[dict[str, object]]] = {}
    for name, policy in configs.items():
        scores = [score_item(it, simulate(it, tr, policy, oracle, timing))
                  for it, tr in zip(items, tracks, strict=True)]
        results[name] = summarize(scores)
        per_item[name] = [{f: getattr(s, f) for f in s.__slots__} for s in scores]
    return {
        "items": len(items),
        "timing_ms": {f: getattr(timing, f) for f in ("score_ms", "stt_ms", "reply_ms", "reply_len_ms")},
        "vad": {"onset_lag_ms": _pct(onsets), "offset_lag_ms": _pct(offsets), "n_onsets": len(onsets),
                "n_offsets": len(offsets)},
        "configs": results,
        "per_item": per_item,
    }


def _fmt(v: object, pct: bool = False) -> str:
    if v is None:
        return "-"
    if pct and isinstance(v, float):
        return f"{100 * v:.1f}%"
    return f"{v:.0f}" if isinstance(v, float) else str(v)


def print_report(report: dict[str, object], out: TextIO = sys.stdout) -> None:
    vad = report["vad"]
    timing = report["timing_ms"]
    assert isinstance(vad, dict) and isinstance(timing, dict)
    print(f"parley bench turns: {report['items']} items; modelled smart-turn {timing['score_ms']:.0f} ms, "
          f"STT hint {timing['stt_ms']:.0f} ms, end of turn -> audible reply {timing['reply_ms']:.0f} ms", file=out)
    on, off = vad["onset_lag_ms"], vad["offset_lag_ms"]
    print(f"VAD (Silero 8 kHz + webrtcvad gate): onset lag p50 {_fmt(on['p50'])} / p90 {_fmt(on['p90'])} ms "
          f"(n={vad['n_onsets']}), offset lag p50 {_fmt(off['p50'])} / p90 {_fmt(off['p90'])} ms "
          f"(n={vad['n_offsets']})", file=out)
    head = (f"{'configuration':<17} {'cut-ins':>12} {'premature':>9} {'revoked':>7} {'heard early':>11} "
            f"{'delay p50':>9} {'p90':>6} {'no end':>6} {'missed barge':>12} {'false barge':>11}")
    print(head, file=out)
    configs = report["configs"]
    assert isinstance(configs, dict)
    for name, r in configs.items():
        cut = f"{r['cut_in_turns']}/{r['paused_turns']} {_fmt(r['cut_in_rate'], True)}"
        print(f"{name:<17} {cut:>12} {_fmt(r['premature_eot_rate'], True):>9} {r['revoked']:>7} "
              f"{_fmt(r['heard_early_rate'], True):>11} {_fmt(r['delay_ms']['p50']):>9} "
              f"{_fmt(r['delay_ms']['p90']):>6} {r['no_decision']:>6} "
              f"{r['missed_barge_ins']:>5}/{r['barge_items']:<6} {r['false_barge_ins']:>5}/{r['burst_items']:<5}",
              file=out)
    print("cut-ins: turns with a 300-1000 ms internal pause that got an unrevoked EndOfTurn before their end; "
          "delay: true turn end -> final EndOfTurn, all caller turns (ms)", file=out)


def run_turns_command(json_path: str | None, *, limit: int | None = None, only: Sequence[str] | None = None,
                      timing: Timing = Timing(), use_stt: bool = True, cache: str | None = None,
                      verbose: bool = False) -> int:
    from parley.bench.turn_corpus import corpus_specs, load_corpus
    from parley.turns.smart_turn import SmartTurnModel
    from parley.turns.vad import FrameVad, SileroModel

    specs = corpus_specs()
    if only:
        specs = [s for s in specs if s.id in set(only)]
    if limit is not None:
        specs = specs[:limit]
    log = (lambda m: print(m, file=sys.stderr)) if verbose else (lambda _m: None)
    items = load_corpus(specs, cache_root=Path(cache) if cache else None, log=log)
    silero = SileroModel.load()
    tracks = []
    for item in items:
        vad = FrameVad.create(silero, PHONE_RATE, batched=False)  # a fresh call: new Silero state

        def process(frame: np.ndarray, vad: FrameVad = vad) -> tuple[bool, float]:
            r = vad.process(frame)
            return r.speech, r.prob

        tracks.append(vad_track(item, process))
    smart = SmartTurnModel.load()
    transcribe: Callable[[np.ndarray], str] | None = None
    pool = None
    if use_stt:
        from parley.providers.whisper_stt import WhisperModelPool

        pool = WhisperModelPool.load(cpu_threads=1)

        def transcribe_fn(audio16k: np.ndarray, pool: WhisperModelPool = pool) -> str:
            return pool.decode_blocking(audio16k).text

        transcribe = transcribe_fn
    try:
        report = run_bench(items, tracks, Oracle(smart.predict, transcribe), configurations(), timing)
    finally:
        if pool is not None:
            pool.close()
    print_report(report)
    if json_path:
        write_json(Path(json_path), report)
    return 0
