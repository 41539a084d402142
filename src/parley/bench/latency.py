"""``parley bench latency``: the scripted scenarios on the local stack, N times, summarized per stage.

Owns: running scenarios through :func:`parley.sim.simulate.run_scenario` (the real bridge, session
and providers against the fake FreeSWITCH over real sockets), aggregating every caller turn's stage
offsets, voice-to-voice, engine overhead and barge-in timings into p50/p95 (:func:`latency_report`, a
pure function over the turns' ``as_dict()`` form), and printing them with the endpoint setting in force.
The headline is what the caller heard (:mod:`parley.sim.ear`): the caller's true speech end -> the
first audible agent sample in the rendered audio, p50/p90/p95 over every scripted caller turn, with the
cut-ins and talk-over; parley's own figures and PLAYBACK_START follow as stages.
It reports figures; it never judges them. Must not know how the timings are taken (that is the session
and :mod:`parley.observe.timings`).
"""

from __future__ import annotations

import asyncio
import math
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TextIO

from parley.config import Settings
from parley.errors import ConfigError
from parley.observe import timings as tm
from parley.observe.timings import percentiles
from parley.turns.policy import TurnPolicy

# The stages reported, as offsets (ms) after the caller's speech end (the VAD's last speech frame).
STAGES: tuple[str, ...] = (
    tm.ENDPOINT,
    tm.STT_FINAL,
    tm.LLM_FIRST_TOKEN,
    tm.FIRST_CHUNK,
    tm.TTS_FIRST_AUDIO,
    tm.PLAYBACK_COMMAND,
    tm.PLAYBACK_START,
    tm.FIRST_AUDIBLE,
)
BARGE_KEYS: tuple[tuple[str, str], ...] = (
    ("onset_to_detect", "onset_to_detect_ms"),
    ("onset_to_break", "onset_to_break_ms"),
    ("onset_to_stop", "onset_to_stop_ms"),
    ("onset_to_silent", "onset_to_silent_ms"),
    ("heard", "heard_ms"),
)
ENDPOINT_KEYS = ("smart_turn", "smart_turn_threshold", "score_after_ms", "fallback_silence_ms", "silence_ms")


def _num(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return None if math.isnan(value) else float(value)


def _p(values: list[float]) -> dict[str, float | None]:
    """p50/p95 (None when there is nothing to summarize) and the sample count."""
    if not values:
        return {"p50": None, "p95": None, "n": 0}
    return {**percentiles(values), "n": len(values)}


def _p3(values: list[float]) -> dict[str, float | None]:
    """p50/p90/p95 (None when there is nothing) and the sample count."""
    if not values:
        return {"p50": None, "p90": None, "p95": None, "n": 0}
    return {**percentiles(values, (50.0, 90.0, 95.0)), "n": len(values)}


def ear_report(
    caller_turns: Sequence[Mapping[str, object]], turns: Sequence[Mapping[str, object]] = ()
) -> dict[str, object]:
    """Aggregate the ear's caller turns (``EarTurn.as_dict()``, optionally with ``scenario``) and the ``ear``
    blocks of the session turns (parley's disagreement with the ear, and where it comes from)."""
    v2v: list[float] = []
    by_scenario: dict[str, list[float]] = {}
    silent: list[float] = []
    for e in caller_turns:
        if (v := _num(e.get("first_audible_ms"))) is not None:
            v2v.append(v)
            by_scenario.setdefault(str(e.get("scenario", "")), []).append(v)
        if (v := _num(e.get("onset_to_silent_ms"))) is not None:
            silent.append(v)
    cuts = [v for t in turns if isinstance(b := t.get("ear_barge_in"), Mapping)
            and (v := _num(b.get("onset_to_silent_ms"))) is not None]
    blocks = [b for t in turns if isinstance(b := t.get("ear"), Mapping) and b.get("answered_here")]
    diff = [v for b in blocks if (v := _num(b.get("disagreement_ms"))) is not None]
    end_lag = [v for b in blocks if (v := _num(b.get("speech_end_offset_ms"))) is not None]
    audible_lag = [v for b in blocks if (v := _num(b.get("first_audible_offset_ms"))) is not None]
    return {
        "voice_to_voice_ms": _p3(v2v),
        "by_scenario_ms": {k: _p3(v) for k, v in sorted(by_scenario.items()) if k},
        "caller_turns": len(caller_turns),
        "unanswered": sum(1 for e in caller_turns if e.get("first_audible_ms") is None),
        "cut_ins": sum(1 for e in caller_turns if e.get("cut_in")),
        "talk_over_ms": round(sum(_num(e.get("talk_over_ms")) or 0.0 for e in caller_turns
                                  if not e.get("barge_in")), 1),
        "barge_in_silent_ms": _p3(silent),  # scripted barge-ins
        "interruption_silent_ms": _p3(cuts),  # every reply parley stopped for caller speech (resumes too)
        "disagreement_ms": {**_p3(diff), "max": max(diff) if diff else None},
        "speech_end_offset_ms": _p3(end_lag),  # parley's speech end - the true one
        "first_audible_offset_ms": _p3(audible_lag),  # parley's FIRST_AUDIBLE mark - the ear's
    }


def policy_summary(policy: TurnPolicy) -> dict[str, object]:
    """The endpoint settings of a turn policy, and the silence that ends a turn without a model verdict."""
    out: dict[str, object] = {k: getattr(policy, k) for k in ENDPOINT_KEYS}
    out["endpoint_silence_ms"] = policy.endpoint_silence_ms
    return out


def latency_report(
    turns: Sequence[Mapping[str, object]],
    *,
    runs: int,
    policy: Mapping[str, object] | None = None,
    ear_turns: Sequence[Mapping[str, object]] = (),
) -> dict[str, object]:
    """Aggregate turn dicts (``TurnRecord.as_dict()``, optionally with a ``scenario`` key and the simulation's
    ``ear`` block) and the ear's caller turns (``SimulationResult.as_dict()["caller_turns"]``).

    Turns without stage timings (idle prompts: the caller said nothing) are not counted.
    ``voice_to_voice_ms`` is parley's own figure per turn; the caller's is ``ear.voice_to_voice_ms``.
    """
    caller_turns = [t for t in turns if isinstance(t.get("timings_ms"), Mapping) and t["timings_ms"]]
    stages: dict[str, list[float]] = {s: [] for s in STAGES}
    v2v: list[float] = []
    overhead: list[float] = []
    barge: dict[str, list[float]] = {name: [] for name, _ in BARGE_KEYS}
    reasons: Counter[str] = Counter()
    per_scenario: dict[str, list[float]] = {}
    for t in caller_turns:
        ms = t["timings_ms"]
        assert isinstance(ms, Mapping)
        for stage in STAGES:
            if (v := _num(ms.get(stage))) is not None:
                stages[stage].append(v)
        if (v := _num(t.get("voice_to_voice_ms"))) is not None:
            v2v.append(v)
            per_scenario.setdefault(str(t.get("scenario", "")), []).append(v)
        if (v := _num(t.get("overhead_ms"))) is not None:
            overhead.append(v)
        if t.get("endpoint_reason"):
            reasons[str(t["endpoint_reason"])] += 1
        b = t.get("barge_in_timings")
        if isinstance(b, Mapping):
            for name, key in BARGE_KEYS:
                if (v := _num(b.get(key))) is not None:
                    barge[name].append(v)
    return {
        "ear": ear_report(ear_turns, caller_turns),
        "stages_ms": {s: _p(vals) for s, vals in stages.items()},
        "voice_to_voice_ms": _p(v2v),
        "overhead_ms": _p(overhead),
        "barge_in_ms": {name: _p(vals) for name, vals in barge.items()},
        "barge_ins": sum(1 for t in caller_turns if isinstance(t.get("barge_in_timings"), Mapping)),
        "endpoint_reasons": dict(sorted(reasons.items())),
        "voice_to_voice_by_scenario_ms": {k: _p(v) for k, v in sorted(per_scenario.items()) if k},
        "runs": runs,
        "turns": len(caller_turns),
        "policy": dict(policy or {}),
    }


def _cell(d: object) -> str:
    if not isinstance(d, Mapping):
        return f"{'-':>8}{'-':>8}"
    p50, p95 = d.get("p50"), d.get("p95")
    return "".join(f"{v:8.0f}" if isinstance(v, int | float) else f"{'-':>8}" for v in (p50, p95))


def print_latency(report: Mapping[str, object], out: TextIO) -> None:
    w = out.write
    policy = report.get("policy")
    pol = policy if isinstance(policy, Mapping) else {}
    w(f"parley bench latency: {report['turns']} caller turns over {report['runs']} run(s)"
      f" of {', '.join(map(str, pol.get('scenarios', []))) or 'the scenarios'}\n")
    if pol:
        smart = "ON" if pol.get("smart_turn") else "OFF"
        w(f"endpoint: smart-turn {smart} (threshold {pol.get('smart_turn_threshold')}, scored after "
          f"{pol.get('score_after_ms')} ms of silence, fallback {pol.get('fallback_silence_ms')} ms); "
          f"silence_ms {pol.get('silence_ms')} (used when smart-turn is off)\n")
        overrides = pol.get("scenario_overrides")
        if isinstance(overrides, Mapping) and overrides:
            w(f"  scenario overrides of the turn policy: {dict(overrides)}\n")
    w(f"stack: {pol.get('stack', '?')}\n\n")
    _print_ear(report.get("ear"), w)
    w(f"\n  {'ms after parley noticed the speech end':<38}{'p50':>8}{'p95':>8}{'n':>6}\n")
    stages = report["stages_ms"]
    assert isinstance(stages, Mapping)
    for stage, d in stages.items():
        w(f"  {stage:<38}{_cell(d)}{d.get('n', 0):>6}\n")
    for label, key in (("voice-to-voice, parley's own", "voice_to_voice_ms"),
                       ("engine overhead", "overhead_ms")):
        d = report[key]
        assert isinstance(d, Mapping)
        w(f"  {label:<38}{_cell(d)}{d.get('n', 0):>6}\n")
    w(f"\n  barge-in ({report['barge_ins']}), ms after the caller's speech onset\n")
    barge = report["barge_in_ms"]
    assert isinstance(barge, Mapping)
    labels = {"onset_to_detect": "onset -> detected", "onset_to_break": "onset -> uuid_break written",
              "onset_to_stop": "onset -> PLAYBACK_STOP", "onset_to_silent": "onset -> agent silent (parley)",
              "heard": "agent audio heard before the cut"}
    for name, d in barge.items():
        w(f"  {labels.get(name, name):<38}{_cell(d)}{d.get('n', 0):>6}\n")
    w(f"\n  endpoint reasons: {report['endpoint_reasons']}\n")
    by = report.get("voice_to_voice_by_scenario_ms")
    if isinstance(by, Mapping):
        for name, d in by.items():
            w(f"  voice-to-voice, {name:<23}{_cell(d)}{d.get('n', 0):>6}\n")


def _print_ear(ear: object, w: Callable[[str], object]) -> None:
    if not isinstance(ear, Mapping):
        return

    def cells(d: object, keys: tuple[str, ...] = ("p50", "p90", "p95")) -> str:
        m = d if isinstance(d, Mapping) else {}
        return "".join(f"{v:8.0f}" if isinstance(v := m.get(k), int | float) else f"{'-':>8}" for k in keys) + (
            f"{m.get('n', 0):>6}")

    w(f"  {'AT THE CALLER EAR (from the rendered audio)':<46}{'p50':>8}{'p90':>8}{'p95':>8}{'n':>6}\n")
    w(f"  {'true speech end -> first audible agent sample':<46}{cells(ear.get('voice_to_voice_ms'))}\n")
    by = ear.get("by_scenario_ms")
    if isinstance(by, Mapping):
        for name, d in by.items():
            w(f"    {name:<44}{cells(d)}\n")
    w(f"  {'barge-in: caller onset -> agent silent':<46}{cells(ear.get('barge_in_silent_ms'))}\n")
    w(f"  {'  any reply stopped by caller speech':<46}{cells(ear.get('interruption_silent_ms'))}\n")
    w(f"  {'parley - ear, |diff| per answered turn':<46}{cells(ear.get('disagreement_ms'))}\n")
    w(f"  {'  from: speech end (parley - true)':<46}{cells(ear.get('speech_end_offset_ms'))}\n")
    w(f"  {'  from: FIRST_AUDIBLE mark (parley - ear)':<46}{cells(ear.get('first_audible_offset_ms'))}\n")
    w(f"  cut-ins (agent audible inside a caller turn): {ear.get('cut_ins')} of {ear.get('caller_turns')} caller "
      f"turns; talk-over {ear.get('talk_over_ms')} ms outside scripted barge-ins; unanswered {ear.get('unanswered')}\n")


def resolve_scenarios(names: Sequence[str] | None) -> list[Path]:
    from parley.sim.simulate import shipped_scenarios

    shipped = shipped_scenarios()
    if not names:
        return shipped
    paths = []
    for name in names:
        path = Path(name)
        if not path.exists():
            matches = [p for p in shipped if p.stem == name]
            if not matches:
                raise ConfigError(f"no scenario {name!r} (shipped: {[p.stem for p in shipped]})")
            path = matches[0]
        paths.append(path)
    return paths


def _chain(value: object) -> str:
    return ">".join(map(str, value)) if isinstance(value, tuple | list) else str(value)


async def collect_turns(
    settings: Settings, scenario_paths: Sequence[Path], runs: int, err: TextIO
) -> tuple[list[dict[str, object]], dict[str, object], list[dict[str, object]]]:
    """Run every scenario ``runs`` times on one engine; return the session turn dicts (with their ``ear``
    blocks), the policy in force and the ear's caller turns."""
    from parley.app import build_engine
    from parley.providers.base import TTSProvider
    from parley.sim.caller_voice import caller_voice
    from parley.sim.simulate import load_scenario, run_scenario

    scenarios = [load_scenario(p) for p in scenario_paths]
    conv = settings.conversation
    err.write(f"loading stt {_chain(conv.stt)}, llm {_chain(conv.llm)}, tts {_chain(conv.tts)} ...\n")
    engine = await asyncio.to_thread(build_engine, settings)
    voices: dict[str, TTSProvider] = {}
    turns: list[dict[str, object]] = []
    ear: list[dict[str, object]] = []
    for run in range(1, runs + 1):
        for sc in scenarios:
            if sc.caller_voice not in voices:
                voices[sc.caller_voice] = caller_voice(sc.caller_voice, engine.tts)
            with tempfile.TemporaryDirectory(prefix="parley-bench-") as spool:
                result = await run_scenario(sc, engine, voices[sc.caller_voice], Path(spool))
            d = result.as_dict()
            rows, callers = d["turns"], d["caller_turns"]
            assert isinstance(rows, list) and isinstance(callers, list)
            got = [{**t, "scenario": sc.name, "run": run} for t in rows]
            err.write(f"  run {run}/{runs} {sc.name}: {len(got)} turns, ended {result.fake_call.hangup_cause}; "
                      f"at the ear v2v {d['voice_to_voice_ms']}, cut-ins {d['cut_ins']}\n")
            turns.extend(got)
            ear.extend({**e, "scenario": sc.name, "run": run} for e in callers)
    policy = policy_summary(engine.policy)
    policy["scenarios"] = [sc.name for sc in scenarios]
    policy["scenario_overrides"] = {sc.name: dict(sc.conversation.get("turn", {})) for sc in scenarios
                                    if isinstance(sc.conversation.get("turn"), Mapping)}
    policy["stack"] = f"stt {engine.stt.name}, llm {engine.llm.name}, tts {engine.tts.name}"
    return turns, policy, ear


def run_latency_command(
    settings: Settings,
    *,
    runs: int = 3,
    scenarios: Sequence[str] | None = None,
    json_path: str | None = None,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
) -> int:
    """What ``parley bench latency`` does; returns the exit code."""
    from parley.bench import write_json

    if runs < 1:
        raise ConfigError("--runs must be at least 1")
    paths = resolve_scenarios(scenarios)
    turns, policy, ear = asyncio.run(collect_turns(settings, paths, runs, err))
    report = latency_report(turns, runs=runs, policy=policy, ear_turns=ear)
    print_latency(report, out)
    if json_path:
        write_json(Path(json_path), {**report, "turn_records": turns, "caller_turns": ear})
        out.write(f"\n  json: {json_path}\n")
    return 0
