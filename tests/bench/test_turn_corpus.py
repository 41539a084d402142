"""The turn corpus design, its truth labels and its cache, with a tone standing in for the voices."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from parley.audio.phone import PHONE_RATE, Float64Array, PhoneLine
from parley.bench.turn_corpus import (
    ItemSpec,
    Voice,
    corpus_key,
    corpus_specs,
    load_corpus,
    render_item,
    speech_segments,
    synth_burst,
    trim,
)


def tone_synth(text: str, voice: Voice) -> Float64Array:
    """100 ms of silence, then 60 ms of 800 Hz tone per character (crudely word-length), then 100 ms silence."""
    n = int(0.06 * PHONE_RATE) * len(text)
    t = np.arange(n) / PHONE_RATE
    return np.concatenate([np.zeros(800), np.sin(2 * np.pi * 800 * t) * 6000 * voice.pitch, np.zeros(800)])


def test_design_has_enough_caller_turns_with_pauses_in_range() -> None:
    specs = corpus_specs()
    caller_turns = [s for s in specs if s.kind != "burst"]
    assert len(caller_turns) >= 40
    assert len({s.id for s in specs}) == len(specs)
    paused = [s for s in specs if s.pauses_ms]
    assert len(paused) >= 30
    assert all(300 <= p <= 1000 for s in paused for p in s.pauses_ms)
    assert {s.line.codec for s in specs} == {"ulaw", "alaw"}
    assert all(s.line.snr_db is not None and 15 <= s.line.snr_db <= 30 for s in specs)
    assert {s.voice.engine for s in specs} == {"hibari", "espeak"}
    assert {s.burst for s in specs if s.kind == "burst"} == {"cough", "click", "breath"}
    assert corpus_specs() == specs  # reproducible
    assert corpus_key(specs) == corpus_key(corpus_specs()) != corpus_key(specs[:-1])


def test_truth_segments_merge_short_gaps_and_keep_designed_pauses() -> None:
    x = np.zeros(PHONE_RATE * 3)
    x[4000:8000] = 5000.0  # 0.5-1.0 s
    x[9000:12000] = 5000.0  # 1.125-1.5 s: a 125 ms gap, merged
    x[16000:20000] = 3000.0  # 2.0-2.5 s: a 500 ms pause
    assert speech_segments(x) == ((0.5, 1.5), (2.0, 2.5))
    assert speech_segments(np.zeros(0)) == ()
    assert trim(x).size == 20000 - 4000


def test_render_item_labels_pauses_and_turn_end() -> None:
    spec = ItemSpec("t", "turn", ("my name is", "sarah"), (700,), Voice("hibari"), PhoneLine("alaw", 20.0, 3))
    item = render_item(spec, tone_synth)
    assert item.audio.dtype == np.int16 and item.noise == ()
    assert len(item.segments) == 2 and len(item.internal_pauses) == 1
    (a, b), = item.internal_pauses
    assert b - a == pytest.approx(0.7, abs=0.011)
    assert item.turn_start == pytest.approx(0.6, abs=0.011)
    assert item.turn_end == pytest.approx(0.6 + 0.06 * 10 + 0.7 + 0.06 * 5, abs=0.011)
    assert item.duration == pytest.approx(item.turn_end + 3.0, abs=0.011)


@pytest.mark.parametrize("kind", ["cough", "click", "breath"])
def test_bursts_are_seeded_and_short(kind: str) -> None:
    a = synth_burst(kind, np.random.default_rng(1))  # type: ignore[arg-type]
    assert np.array_equal(a, synth_burst(kind, np.random.default_rng(1)))  # type: ignore[arg-type]
    assert 0.01 <= a.size / PHONE_RATE <= 0.8 and np.abs(a).max() < 32768
    spec = ItemSpec("b", "burst", (), (), Voice("hibari"), PhoneLine(), burst=kind)  # type: ignore[arg-type]
    item = render_item(spec, tone_synth)
    assert item.segments == () and len(item.noise) == 1 and item.spec.agent_floor


def test_cache_round_trip(tmp_path: Path) -> None:
    specs = [s for s in corpus_specs() if s.id in ("turn00a", "short1", "click0")]
    first = load_corpus(specs, cache_root=tmp_path, synth=tone_synth)

    def refuse(text: str, voice: Voice) -> Float64Array:
        raise AssertionError("the cache should have been used")

    again = load_corpus(specs, cache_root=tmp_path, synth=refuse)
    assert [i.spec for i in again] == specs
    for x, y in zip(first, again, strict=True):
        assert np.array_equal(x.audio, y.audio)
        assert x.segments == y.segments and x.internal_pauses == y.internal_pauses and x.noise == y.noise
    assert len(list(tmp_path.iterdir())) == 1
