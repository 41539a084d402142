"""parley bench turns: the pure simulation and scoring on hand-made VAD tracks, and one real run on a
tiny corpus (slow: real models). Figures are checked for shape and sanity only, never for speed."""

from __future__ import annotations

import io
import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from parley.audio.phone import PhoneLine
from parley.bench.turn_corpus import CorpusItem, ItemSpec, Voice
from parley.bench.turns import (
    OLD_DEFAULT,
    ItemRun,
    Oracle,
    Timing,
    VadFrameResult,
    configurations,
    print_report,
    run_bench,
    score_item,
    simulate,
    summarize,
    vad_lags,
)
from parley.turns.events import BargeIn, EndOfTurn, TurnResumed, UserSpeechStarted
from parley.turns.policy import TurnPolicy


def item(kind: str, segments: tuple[tuple[float, float], ...], seconds: float = 5.0) -> CorpusItem:
    spec = ItemSpec(f"x-{kind}", kind, ("a",) * max(1, len(segments)), (), Voice("hibari"), PhoneLine())  # type: ignore[arg-type]
    pauses = tuple((a[1], b[0]) for a, b in itertools.pairwise(segments))
    return CorpusItem(spec, np.zeros(int(seconds * 8000), dtype=np.int16), segments, pauses)


def track(speech: list[tuple[float, float]], seconds: float = 5.0) -> list[VadFrameResult]:
    """A VAD that says speech on [a, b) spans, frame by frame."""
    out = []
    for i in range(1, int(seconds * 50) + 1):
        t = round(i * 0.02, 6)
        on = any(a < t <= b + 1e-9 for a, b in speech)
        out.append(VadFrameResult(t, on, 0.9 if on else 0.05))
    return out


class Fixed(Oracle):
    """Smart-turn says ``p`` everywhere; the transcript is ``text`` everywhere."""

    def __init__(self, p: float, text: str | None) -> None:
        super().__init__(lambda a, r: p, None if text is None else (lambda a: text))


# One turn with a 600 ms pause (1.0-1.6 s), true end 2.4 s; the VAD lags 100 ms at each offset.
PAUSED = item("turn", ((0.6, 1.0), (1.6, 2.4)))
PAUSED_VAD = track([(0.64, 1.1), (1.64, 2.5)])


def test_old_default_cuts_in_on_a_pause_smart_turn_calls_complete() -> None:
    run = simulate(PAUSED, PAUSED_VAD, OLD_DEFAULT, Fixed(0.9, None))
    s = score_item(PAUSED, run)
    assert s.paused and s.premature == 1 and s.revoked == 0 and s.heard_early
    assert s.delay_ms is not None and s.delay_ms > 0 and s.reason == "smart_turn"


def test_unfinished_transcript_holds_the_turn() -> None:
    run = simulate(PAUSED, PAUSED_VAD, TurnPolicy(), Fixed(0.9, "my name is"))
    s = score_item(PAUSED, run)
    assert s.premature == 0 and not s.heard_early
    assert s.delay_ms is not None and s.reason == "silence"  # the last hint is also "unfinished" here


def test_early_resume_revokes_the_end_of_turn() -> None:
    short = item("turn", ((0.6, 1.0), (1.3, 2.0)))  # a 300 ms pause
    run = simulate(short, track([(0.64, 1.1), (1.34, 2.1)]), TurnPolicy(), Fixed(0.9, "Sarah Johnson."),
                   Timing(reply_ms=400))
    kinds = [type(a) for a in run.actions]
    assert TurnResumed in kinds and BargeIn not in kinds
    s = score_item(short, run)
    assert s.premature == 1 and s.revoked == 1 and not s.heard_early
    assert summarize([s])["cut_in_turns"] == 0


def test_bursts_and_barge_ins_are_scored() -> None:
    burst = item("burst", ())
    b = score_item(burst, ItemRun([BargeIn(1.0, 0.7), UserSpeechStarted(1.0, 0.7)], [0.0]))
    assert (b.barge_ins, b.false_turns) == (1, 1)
    barge = item("barge", ((0.6, 2.0),))
    run = simulate(barge, track([(0.64, 2.1)]), TurnPolicy(), Fixed(0.9, "wait"))
    g = score_item(barge, run)
    assert g.barge_ins == 1 and g.barge_latency_ms == pytest.approx(300, abs=1)  # 40 ms lag + 13 frames
    summary = summarize([b, g, score_item(PAUSED, ItemRun([EndOfTurn(2.7, 2.4, "silence", 0.6)]))])
    assert summary["false_barge_ins"] == 1 and summary["missed_barge_ins"] == 0
    assert summary["delay_ms"] == {"p50": 300.0, "p90": 300.0} and summary["cut_in_rate"] == 0.0


def test_vad_lags_against_truth() -> None:
    onsets, offsets = vad_lags(PAUSED, PAUSED_VAD)
    assert onsets == [40.0, 40.0] and offsets == [100.0, 100.0]
    bridged = track([(0.64, 2.5)])  # the VAD held through the pause: no offset for the first segment
    assert vad_lags(PAUSED, bridged)[1] == [100.0]


def test_report_prints_every_configuration() -> None:
    report = run_bench([PAUSED], [PAUSED_VAD], Fixed(0.9, "Sarah Johnson."), configurations())
    out = io.StringIO()
    print_report(report, out)
    text = out.getvalue()
    assert all(name in text for name in configurations())
    json.dumps(report)  # JSON-serialisable as written by --json


@pytest.mark.slow
def test_tiny_corpus_with_real_models(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("hibari")
    pytest.importorskip("faster_whisper")
    from parley.bench.turns import run_turns_command

    out = tmp_path / "turns.json"
    assert run_turns_command(str(out), only=["turn00a", "short0", "click0"], cache=str(tmp_path / "cache")) == 0
    report = json.loads(out.read_text())
    assert report["items"] == 3
    for r in report["configs"].values():
        assert r["paused_turns"] == 1 and r["caller_turns"] == 2 and r["burst_items"] == 1
        assert r["no_decision"] == 0 and r["delay_ms"]["p50"] is not None
        assert 0 <= r["false_barge_ins"] <= 1
    assert report["vad"]["n_onsets"] >= 2
