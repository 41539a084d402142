"""Silence in the local voices' audio, and what :class:`parley.audio.trim.SpeechTrimmer` leaves of it.

Run: .venv/bin/python benchmarks/bench_tts_silence.py [--wer]   (prints figures; asserts nothing)

Each receptionist sentence is synthesized on its own, as the agent's reply path does (one ``synthesize``
per chunk), and measured on the phone path (the voice's rate -> 8 kHz, as FreeSWITCH plays it) at the
audibility threshold the ear uses (-40 dBFS, 5 ms windows):

- leading: the start of the audio -> its first audible sample (what the caller waits for after
  PLAYBACK_START);
- trailing: its last audible sample -> the end of the audio;
- between sentences: trailing of one + leading of the next (two consecutive chunks of one reply);
- longest pause inside a sentence (commas): the trimmer must leave those alone below the cap.

The trimmed columns put two consecutive sentences of a reply through one trimmer (default 15 ms pad, 250 ms
cap), once at the voice's own rate and once after resampling to 8 kHz, and measure the result at 8 kHz.

``--wer`` also transcribes every sentence with whisper tiny.en (the phone path, 8 -> 16 kHz) untrimmed and
with its leading silence trimmed to several onset pads, to check that trimming does not clip onsets the
recognizer needs.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import sys
from collections.abc import Sequence

import numpy as np

from parley.audio.pcm import Int16Array
from parley.audio.resample import resample
from parley.audio.trim import SpeechTrimmer, audible_windows, first_audible_index, last_audible_index
from parley.providers.base import AudioChunk, TTSProvider

PHONE = 8000
SENTENCES = (
    "Thank you for calling Riverside Dental, this is the front desk.",
    "How can I help you today?",
    "Sure, what day would suit you?",
    "Hold on, let me check that for you.",
    "Found it: Tuesday at three in the afternoon is free.",
    "Thanks, Sarah, you're booked for Tuesday at 3 PM.",
    "Our office is open Monday to Friday, from eight until six.",
    "We're at four hundred Main Street, next to the pharmacy.",
    "So that's a cleaning on Friday at ten?",
    "Have a great day, goodbye.",
)
PADS_MS = (0.0, 5.0, 15.0, 30.0)


async def synthesize(voice: TTSProvider, text: str) -> tuple[Int16Array, int]:
    pieces: list[Int16Array] = []
    rate = voice.sample_rate
    async for ev in voice.synthesize(text):
        if isinstance(ev, AudioChunk):
            pieces.append(ev.samples)
            rate = ev.sample_rate
    return (np.concatenate(pieces) if pieces else np.zeros(0, np.int16)), rate


def longest_inner_pause_ms(audio: Int16Array, rate: int) -> float:
    flags = audible_windows(audio, rate)
    hits = np.flatnonzero(flags)
    if hits.size < 2:
        return 0.0
    inner = ~flags[hits[0] : hits[-1] + 1]
    longest = run = 0
    for q in inner:
        run = run + 1 if q else 0
        longest = max(longest, run)
    return longest * 5.0


def edges_ms(audio: Int16Array, rate: int) -> tuple[float, float, float]:
    """(leading, trailing, duration) in ms."""
    first, last = first_audible_index(audio, rate), last_audible_index(audio, rate)
    dur = 1000.0 * audio.size / rate
    if first is None or last is None:
        return dur, 0.0, dur
    return 1000.0 * first / rate, 1000.0 * (audio.size - 1 - last) / rate, dur


def junction_pause_ms(audio: Int16Array, at: int) -> float:
    """The length of the quiet run around sample ``at`` (where the first sentence's trimmed audio ended)."""
    flags = audible_windows(audio, PHONE)
    j = min(flags.size - 1, at // 40)
    a = j
    while a > 0 and not flags[a - 1]:
        a -= 1
    b = j
    while b < flags.size and not flags[b]:
        b += 1
    return 5.0 * (b - a)


def reply_trimmed(sentences: Sequence[Int16Array], rate: int, pad_ms: float = 15.0) -> tuple[Int16Array, SpeechTrimmer]:
    """The sentences as one reply through one trimmer, chunk by chunk as the session would feed it."""
    t = SpeechTrimmer(rate, lead_pad_ms=pad_ms)
    out = [t.feed(s) for s in sentences]
    out.append(t.finish())
    return np.concatenate(out), t


def stats(values: Sequence[float]) -> str:
    if not values:
        return "-"
    return f"{min(values):4.0f} / {statistics.median(values):4.0f} / {max(values):4.0f}"


def words(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9' ]", " ", text.lower()).split()


def wer(ref: str, hyp: str) -> tuple[int, int]:
    r, h = words(ref), words(hyp)
    d = list(range(len(h) + 1))
    for i, rw in enumerate(r, 1):
        prev, d[0] = d[0], i
        for j, hw in enumerate(h, 1):
            prev, d[j] = d[j], min(d[j] + 1, d[j - 1] + 1, prev + (rw != hw))
    return d[len(h)], len(r)


def voices() -> list[tuple[str, TTSProvider]]:
    from parley.app import build_tts
    from parley.providers.piper_tts import piper_available

    out: list[tuple[str, TTSProvider]] = [("hibari", build_tts("hibari")), ("espeak", build_tts("espeak"))]
    if piper_available():
        out.append(("piper", build_tts("piper")))
    else:
        print("piper: not installed (pip install 'parley[piper]'), skipped", file=sys.stderr)
    return out


async def main(check_wer: bool) -> None:
    whisper = None
    if check_wer:
        from parley.providers.whisper_stt import WhisperModelPool

        whisper = WhisperModelPool.load(cpu_threads=1)
    print(f"{len(SENTENCES)} receptionist sentences per voice, measured at 8 kHz, -40 dBFS in 5 ms windows")
    print("ms: min / median / max\n")
    trimmed = f"{'leading':>16} {'between':>18} {'removed':>8}"
    print(f"{'':<8} {'untrimmed':>75} | {'trimmed at the voice rate':>44} | {'trimmed at 8 kHz':>44}")
    print(f"{'voice':<8} {'leading':>18} {'trailing':>18} {'between sentences':>18} {'inner pause':>18}"
          f" | {trimmed} | {trimmed}")
    for name, voice in voices():
        raw = [await synthesize(voice, s) for s in SENTENCES]
        phone = [resample(a, r, PHONE) for a, r in raw]
        edges = [edges_ms(a, PHONE) for a in phone]
        lead = [e[0] for e in edges]
        trail = [e[1] for e in edges]
        between = [trail[i] + lead[i + 1] for i in range(len(edges) - 1)]
        inner = [longest_inner_pause_ms(a, PHONE) for a in phone]
        # trimmed: two consecutive sentences of one reply through one trimmer, chunk by chunk, at the voice's
        # own rate (then resampled, as playback does) and at the phone rate (after the resampler)
        rate = raw[0][1]
        cols: list[str] = []
        for at_phone in (False, True):
            t_lead, t_between, removed = [], [], 0.0
            for i in range(len(raw) - 1):
                pair = [phone[i], phone[i + 1]] if at_phone else [raw[i][0], raw[i + 1][0]]
                r = PHONE if at_phone else rate
                out, t = reply_trimmed(pair, r)
                heard = out if at_phone else resample(out, r, PHONE)
                first_alone = reply_trimmed(pair[:1], r)[0]
                t_lead.append(edges_ms(heard, PHONE)[0])
                t_between.append(junction_pause_ms(heard, round(first_alone.size * PHONE / r)))
                removed += t.ms(t.counts.leading + t.counts.gaps)
            cols.append(f"{stats(t_lead):>16} {stats(t_between):>18} {removed / len(t_lead):>6.0f}ms")
        print(f"{name:<8} {stats(lead):>18} {stats(trail):>18} {stats(between):>18} {stats(inner):>18}"
              f" | {cols[0]} | {cols[1]}")
        if whisper is not None:
            print(f"  whisper tiny.en WER on {name}, 8 kHz phone path:", end="")
            cases: list[tuple[str, float | None]] = [("untrimmed", None), *[(f"pad {p:.0f} ms", p) for p in PADS_MS]]
            tail = {r: np.zeros(round(0.3 * r), np.int16) for _, r in raw}
            for label, pad in cases:
                errs = total = 0
                for text, (audio, r) in zip(SENTENCES, raw, strict=True):
                    # trailing silence restored: whisper garbles the last word of audio that ends abruptly,
                    # which says nothing about onsets (the caller, not whisper, hears the agent)
                    a = audio if pad is None else np.concatenate((reply_trimmed([audio], r, pad)[0], tail[r]))
                    heard = resample(resample(a, r, PHONE), PHONE, 16000)
                    e, n = wer(text, whisper.decode_blocking(heard).text)
                    errs, total = errs + e, total + n
                print(f"  {label} {100.0 * errs / total:.1f} %", end="")
            print()
    if whisper is not None:
        whisper.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--wer", action="store_true", help="also transcribe with whisper tiny.en per onset pad")
    asyncio.run(main(parser.parse_args().wer))
