"""Silence trimming on synthetic audio (tones and silence): where audio becomes audible, what the streaming
trimmer keeps and drops, and that chunking never changes the result."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from parley.audio.pcm import Int16Array
from parley.audio.trim import (
    SpeechTrimmer,
    TrimCounts,
    audible_windows,
    first_audible_index,
    last_audible_index,
    trim_speech,
)

RATE = 8000
MS = RATE // 1000  # samples per ms


def tone(ms: float, dbfs: float = -20.0, freq: float = 440.0) -> Int16Array:
    n = round(ms * MS)
    amp = 32768.0 * 10 ** (dbfs / 20) * np.sqrt(2)  # RMS at dbfs (a sine's peak is sqrt(2) x its RMS)
    out: Int16Array = np.round(amp * np.sin(2 * np.pi * freq * np.arange(n) / RATE)).astype(np.int16)
    return out


def silence(ms: float) -> Int16Array:
    return np.zeros(round(ms * MS), dtype=np.int16)


def cat(*parts: Int16Array) -> Int16Array:
    return np.concatenate(parts)


@pytest.mark.parametrize(
    ("audio", "first", "last"),
    [
        (silence(100), None, None),
        (np.zeros(0, np.int16), None, None),
        (tone(50), 0, 50 * MS - 1),
        (cat(silence(300), tone(200), silence(100)), 300 * MS, 500 * MS - 1),
        (cat(silence(300), tone(200, dbfs=-45), silence(100)), None, None),  # below -40 dBFS: not audible
        (cat(silence(300), tone(200, dbfs=-35), silence(100)), 300 * MS, 500 * MS - 1),
        (cat(silence(100), tone(20), silence(200), tone(20), silence(7)), 100 * MS, 340 * MS - 1),
    ],
    ids=["silence", "empty", "tone", "padded", "quiet", "soft", "two-bursts"],
)
def test_first_and_last_audible_sample(audio: Int16Array, first: int | None, last: int | None) -> None:
    assert first_audible_index(audio, RATE) == first
    assert last_audible_index(audio, RATE) == last


def test_audible_is_window_granular_and_the_last_window_may_be_partial() -> None:
    audio = cat(silence(12), tone(3))  # 5 ms windows: [0,5) [5,10) [10,15) -> the tone fills 3 of the last 5 ms
    assert audible_windows(audio, RATE).tolist() == [False, False, True]
    assert first_audible_index(audio, RATE) == 10 * MS
    assert last_audible_index(audio, RATE) == audio.size - 1
    assert last_audible_index(cat(tone(12), silence(2)), RATE) == 14 * MS - 1  # the partial last window ends the array


def test_threshold_is_a_parameter() -> None:
    audio = cat(silence(10), tone(10, dbfs=-45))
    assert first_audible_index(audio, RATE) is None
    assert first_audible_index(audio, RATE, threshold_dbfs=-50.0) == 10 * MS


@pytest.mark.parametrize(
    ("parts", "expect_ms", "counts_ms"),
    [
        # (audio, expected output as (kind, ms) pieces, (leading, gaps, trailing) dropped ms)
        ([("s", 300), ("t", 200)], [("s", 15), ("t", 200)], (285, 0, 0)),
        ([("s", 10), ("t", 200)], [("s", 10), ("t", 200)], (0, 0, 0)),  # shorter than the pad: untouched
        ([("t", 100), ("s", 200), ("t", 100)], [("t", 100), ("s", 200), ("t", 100)], (0, 0, 0)),  # short pause
        ([("t", 100), ("s", 250), ("t", 100)], [("t", 100), ("s", 250), ("t", 100)], (0, 0, 0)),  # exactly the cap
        ([("t", 100), ("s", 600), ("t", 100)], [("t", 100), ("s", 250), ("t", 100)], (0, 350, 0)),
        ([("s", 320), ("t", 100), ("s", 700), ("t", 100), ("s", 400)],
         [("s", 15), ("t", 100), ("s", 250), ("t", 100), ("s", 235)], (305, 450, 165)),
        ([("s", 500)], [], (500, 0, 0)),  # nothing audible: nothing to play
    ],
    ids=["leading", "short-leading", "short-pause", "cap", "long-pause", "sentences", "all-silent"],
)
def test_trimmer_keeps_pad_and_caps_pauses(
    parts: list[tuple[str, int]], expect_ms: list[tuple[str, int]], counts_ms: tuple[int, int, int]
) -> None:
    def render(spec: list[tuple[str, int]]) -> Int16Array:
        # every tone piece restarts its phase, so equal specs render equal samples
        pieces = [tone(ms) if kind == "t" else silence(ms) for kind, ms in spec]
        return np.concatenate(pieces) if pieces else np.zeros(0, np.int16)

    out, counts = trim_speech(render(parts), RATE)
    want = render(expect_ms)
    assert out.size == want.size
    assert np.array_equal(out, want)
    assert (counts.leading, counts.gaps, counts.trailing) == tuple(ms * MS for ms in counts_ms)
    assert counts.total == sum(ms for _, ms in parts) * MS - out.size


def test_counts_capped_pauses_and_where_the_first_audible_sample_lands() -> None:
    t = SpeechTrimmer(RATE)
    out = t.feed(cat(silence(300), tone(100), silence(600), tone(100), silence(100), tone(100)))
    out = cat(out, t.finish())
    assert t.counts.gaps_capped == 1
    assert t.first_audible_out == 15 * MS
    assert first_audible_index(out, RATE) == t.first_audible_out
    assert t.samples_in == 1300 * MS and t.samples_out == out.size
    assert t.ms(t.counts.leading) == pytest.approx(285.0)


def test_the_head_of_a_pause_is_released_at_once_not_held() -> None:
    """Silence that will be kept goes out immediately: playback never waits for the next sentence."""
    t = SpeechTrimmer(RATE, lead_pad_ms=15.0, max_gap_ms=250.0)
    assert t.feed(tone(100)).size == 100 * MS
    # 400 ms of silence: the first 235 ms are released, 15 ms are held for the next onset, the rest dropped
    assert t.feed(silence(400)).size == 235 * MS
    assert t.feed(tone(100)).size == 115 * MS


def test_leading_silence_is_held_until_something_audible() -> None:
    t = SpeechTrimmer(RATE)
    assert t.feed(silence(200)).size == 0
    assert not t.started
    assert t.feed(tone(50)).size == 65 * MS
    assert t.started


def test_feed_after_finish_is_an_error_and_finish_is_idempotent() -> None:
    t = SpeechTrimmer(RATE)
    t.feed(tone(10))
    t.finish()
    assert t.finish().size == 0
    with pytest.raises(RuntimeError, match="after finish"):
        t.feed(tone(10))


def _speechlike(draw: st.DrawFn) -> Int16Array:
    pieces = draw(st.lists(st.tuples(st.booleans(), st.integers(0, 900), st.sampled_from([-60, -42, -38, -20])),
                           min_size=1, max_size=8))
    return cat(*[tone(ms, db) if loud else silence(ms) for loud, ms, db in pieces])


@st.composite
def audio_and_cuts(draw: st.DrawFn) -> tuple[Int16Array, list[int], int]:
    audio = _speechlike(draw)
    cuts = sorted(draw(st.lists(st.integers(0, audio.size), max_size=12)))
    rate = draw(st.sampled_from([8000, 16000, 22050, 24000]))
    return audio, cuts, rate


@settings(max_examples=150, deadline=None)
@given(audio_and_cuts(), st.floats(0, 40), st.floats(0, 600))
def test_chunked_equals_whole(case: tuple[Int16Array, list[int], int], pad_ms: float, gap_ms: float) -> None:
    audio, cuts, rate = case
    whole = SpeechTrimmer(rate, lead_pad_ms=pad_ms, max_gap_ms=gap_ms)
    expected = cat(whole.feed(audio), whole.finish())
    chunked = SpeechTrimmer(rate, lead_pad_ms=pad_ms, max_gap_ms=gap_ms)
    bounds = [0, *cuts, audio.size]
    pieces = [chunked.feed(audio[a:b]) for a, b in itertools.pairwise(bounds)]
    got = cat(*pieces, chunked.finish())
    assert np.array_equal(got, expected)
    assert chunked.counts == whole.counts
    assert chunked.first_audible_out == whole.first_audible_out


def reference_trim(audio: Int16Array, rate: int, pad_ms: float = 15.0, gap_ms: float = 250.0) -> Int16Array:
    """The rule written out over whole runs of quiet windows (no streaming)."""
    win = max(1, round(rate * 5 / 1000))
    pad = round(rate * pad_ms / 1000)
    cap = max(pad, round(rate * gap_ms / 1000))
    flags = audible_windows(audio, rate)
    if not flags.any():
        return silence(0)
    out: list[Int16Array] = []
    i = 0
    while i < flags.size:
        j = i
        while j < flags.size and flags[j] == flags[i]:
            j += 1
        seg = audio[i * win : min(audio.size, j * win)]
        if flags[i]:
            out.append(seg)
        elif i == 0:  # leading: the pad before the onset
            out.append(seg[max(0, seg.size - pad) :])
        elif j == flags.size:  # trailing: the released head only
            out.append(seg[: cap - pad])
        elif seg.size <= cap:
            out.append(seg)
        else:
            out.append(cat(seg[: cap - pad], seg[seg.size - pad :]))
        i = j
    return cat(*out)


@settings(max_examples=150, deadline=None)
@given(audio_and_cuts())
def test_trimming_matches_the_rule_and_accounts_for_every_dropped_sample(
    case: tuple[Int16Array, list[int], int],
) -> None:
    audio, _, rate = case
    out, counts = trim_speech(audio, rate)
    assert isinstance(counts, TrimCounts)
    assert np.array_equal(out, reference_trim(audio, rate))
    assert out.size + counts.total == audio.size
