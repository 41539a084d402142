"""The phone-audio turn-taking corpus: caller turns with designed pauses, short answers, barge-ins and
non-speech bursts, rendered offline with the local voices and passed through a G.711 phone line.

Owns: the corpus design (:func:`corpus_specs`: texts, where the pauses go and how long they are, which
voice, codec and SNR each item gets; all fixed or drawn from seeded generators), rendering it
(:func:`render_item`: hibari at several speeds and pitch shifts, espeak-ng voices through
:class:`~parley.providers.espeak_tts.EspeakTTS`, synthetic cough/click/breath bursts, then
:func:`~parley.audio.phone.phone_channel`), the ground truth of every item (speech segments measured on
the clean audio's energy, which silences are internal pauses, where the turn truly ends) and the cache
(``~/.cache/parley/turn-corpus/<hash>``: the hash covers the specs, the renderer version and the voice
package versions, so a change re-renders and the same inputs never do). Generated audio is never
committed. Must not know about VAD, the turn machine or scoring (that is :mod:`parley.bench.turns`).
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.metadata
import itertools
import json
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from parley.audio.pcm import Int16Array
from parley.audio.phone import G711, PHONE_RATE, Float64Array, PhoneLine, phone_channel, to_phone_rate

RENDER_VERSION = 1  # bump when rendering or truth-labelling changes
Kind = Literal["turn", "complete", "short", "barge", "burst"]
BurstKind = Literal["cough", "click", "breath"]

LEAD_MS = 600  # silence before the caller speaks (lets the VAD settle; the agent is talking in barge items)
TAIL_MS = 3000  # silence after the turn: long enough for the slowest endpoint to decide
TRUTH_FRAME = PHONE_RATE // 100  # 10 ms frames for the energy truth
TRUTH_BELOW_PEAK_DB = 35.0  # a 10 ms frame is speech when within this of the item's loudest frame ...
TRUTH_FLOOR_DBFS = -60.0  # ... and above this absolute floor
MERGE_GAP_S = 0.2  # gaps shorter than this are inside words/phrases (stops, breaths between words)
TRIM_BELOW_PEAK_DB = 40.0  # leading/trailing silence of each rendered phrase is cut below this


@dataclass(frozen=True, slots=True)
class Voice:
    engine: Literal["hibari", "espeak"]
    speed: float = 1.0  # hibari tempo
    pitch: float = 1.0  # resampling factor: < 1 lowers pitch and tempo together (a different speaker)
    name: str = "en-us"  # espeak-ng voice
    wpm: int = 165  # espeak-ng rate

    @property
    def label(self) -> str:
        if self.engine == "hibari":
            return f"hibari s{self.speed:g} p{self.pitch:g}"
        return f"espeak {self.name} {self.wpm}"


@dataclass(frozen=True, slots=True)
class ItemSpec:
    id: str
    kind: Kind
    phrases: tuple[str, ...]  # speech pieces; a designed pause separates consecutive ones
    pauses_ms: tuple[int, ...]  # len(phrases) - 1 pause lengths
    voice: Voice
    line: PhoneLine
    burst: BurstKind | None = None  # burst items only

    @property
    def agent_floor(self) -> bool:
        """The agent is talking when the item starts (barge-in and burst items)."""
        return self.kind in ("barge", "burst")


@dataclass(frozen=True, slots=True)
class CorpusItem:
    spec: ItemSpec
    audio: Int16Array = field(repr=False)  # 8 kHz phone audio, what the VAD hears
    segments: tuple[tuple[float, float], ...]  # true speech, seconds (empty for bursts)
    internal_pauses: tuple[tuple[float, float], ...]  # silences inside the turn (between segments)
    noise: tuple[tuple[float, float], ...] = ()  # where a non-speech burst sounds

    @property
    def turn_start(self) -> float | None:
        return self.segments[0][0] if self.segments else None

    @property
    def turn_end(self) -> float | None:
        return self.segments[-1][1] if self.segments else None

    @property
    def duration(self) -> float:
        return self.audio.size / PHONE_RATE


# ------------------------------------------------------------------------------------------------ design

PAUSED_TURNS: tuple[tuple[str, ...], ...] = (
    ("My name is", "Sarah Johnson."),
    ("My number is five five five", "one two three", "four five six seven."),
    ("I'd like to book", "a cleaning for next Tuesday."),
    ("Um", "I was wondering if you have anything on Friday."),
    ("The number is eight zero one", "five five five", "two three nine nine."),
    ("I need to reschedule my appointment and", "maybe move it to the afternoon."),
    ("Can I come in on", "Thursday morning?"),
    ("It's", "Michael Brown."),
    ("Uh", "yes, I'm calling about my bill."),
    ("My date of birth is", "March third, nineteen eighty five."),
    ("I'd like to cancel", "my appointment on Monday."),
    ("So the address is", "twelve Oak Street."),
    ("Yes, that works. And", "could you send me a reminder?"),
    ("I'm looking for", "the earliest slot you have."),
    ("Let me check my calendar.", "Okay, Wednesday at three works."),
    ("I think", "it was last week, on the twelfth."),
)
COMPLETE_TURNS = (
    "Hi, I'd like to book an appointment.",
    "What are your opening hours on Saturday?",
    "Can I speak to a person, please?",
    "I want to cancel my appointment.",
    "Where are you located?",
    "That's all, thank you.",
)
SHORT_ANSWERS = ("Yes.", "No.", "Uh-huh.", "Yeah, that's right.", "Okay.", "No, thanks.")
BARGE_INS = ("Sorry, wait, I meant Tuesday.", "No, no, that's wrong.", "Actually, can I change that?",
             "Hold on a second, please.")
BURSTS: tuple[BurstKind, ...] = ("cough", "click", "breath")
PAUSE_STEPS_MS = (300, 400, 500, 600, 700, 800, 900, 1000)

VOICES = (
    Voice("hibari"),
    Voice("hibari", speed=0.9, pitch=0.84),  # three semitones down: a deeper, slower speaker
    Voice("hibari", speed=1.15, pitch=1.06),  # one semitone up, quicker
    Voice("espeak", name="en-us", wpm=160),
    Voice("hibari", speed=1.0, pitch=0.92),
    Voice("espeak", name="en-gb", wpm=175),
)


def corpus_specs(seed: int = 2027) -> list[ItemSpec]:
    """The full corpus design: 32 paused turns, 6 complete, 6 short answers, 4 barge-ins, 9 bursts."""
    rng = np.random.default_rng(seed)
    specs: list[ItemSpec] = []

    def line(i: int) -> PhoneLine:
        return PhoneLine(codec="ulaw" if i % 2 == 0 else "alaw", snr_db=round(float(rng.uniform(15, 30)), 1),
                         seed=seed + i)

    for variant in range(2):
        for j, phrases in enumerate(PAUSED_TURNS):
            i = len(specs)
            pauses = tuple(PAUSE_STEPS_MS[(j + variant * 3 + k * 5) % len(PAUSE_STEPS_MS)]
                           for k in range(len(phrases) - 1))
            specs.append(ItemSpec(f"turn{j:02d}{'ab'[variant]}", "turn", phrases, pauses,
                                  VOICES[(j + variant * 2) % len(VOICES)], line(i)))
    for j, text in enumerate(COMPLETE_TURNS):
        specs.append(ItemSpec(f"complete{j}", "complete", (text,), (), VOICES[j % len(VOICES)], line(len(specs))))
    for j, text in enumerate(SHORT_ANSWERS):
        specs.append(ItemSpec(f"short{j}", "short", (text,), (), VOICES[(j + 1) % len(VOICES)], line(len(specs))))
    for j, text in enumerate(BARGE_INS):
        specs.append(ItemSpec(f"barge{j}", "barge", (text,), (), VOICES[(j + 2) % len(VOICES)], line(len(specs))))
    for j in range(9):
        burst = BURSTS[j % 3]
        specs.append(ItemSpec(f"{burst}{j // 3}", "burst", (), (), VOICES[0], line(len(specs)), burst=burst))
    return specs


# --------------------------------------------------------------------------------------------- rendering

Synth = Callable[[str, Voice], Float64Array]  # text -> clean speech at 8 kHz, int16 units


def render_item(spec: ItemSpec, synth: Synth, g711: G711 | None = None) -> CorpusItem:
    """Assemble the clean item at 8 kHz, label its truth, then pass it through the spec's phone line."""
    parts: list[Float64Array] = [np.zeros(PHONE_RATE * LEAD_MS // 1000)]
    noise: list[tuple[float, float]] = []
    if spec.kind == "burst":
        assert spec.burst is not None
        b = synth_burst(spec.burst, np.random.default_rng(spec.line.seed))
        start = parts[0].size / PHONE_RATE
        noise.append((start, start + b.size / PHONE_RATE))
        parts.append(b)
    for k, text in enumerate(spec.phrases):
        parts.append(trim(synth(text, spec.voice)))
        if k < len(spec.pauses_ms):
            parts.append(np.zeros(PHONE_RATE * spec.pauses_ms[k] // 1000))
    parts.append(np.zeros(PHONE_RATE * TAIL_MS // 1000))
    clean = np.concatenate(parts)
    segments = () if spec.kind == "burst" else speech_segments(clean)
    pauses = tuple((a[1], b[0]) for a, b in itertools.pairwise(segments))
    pcm = np.clip(np.round(clean), -32768, 32767).astype(np.int16)
    audio = phone_channel(pcm, PHONE_RATE, spec.line, g711)
    return CorpusItem(spec, audio, segments, pauses, tuple(noise))


def _frame_db(x: Float64Array) -> Float64Array:
    n = x.size // TRUTH_FRAME
    frames = x[: n * TRUTH_FRAME].reshape(n, TRUTH_FRAME)
    power = np.mean(frames**2, axis=1) / 32768.0**2
    return np.asarray(10 * np.log10(np.maximum(power, 1e-12)), dtype=np.float64)


def trim(x: Float64Array) -> Float64Array:
    """Cut a rendered phrase's leading and trailing silence (hibari starts every sentence with ~300 ms)."""
    db = _frame_db(x)
    if db.size == 0:
        return x
    loud = np.flatnonzero(db >= db.max() - TRIM_BELOW_PEAK_DB)
    return x[loud[0] * TRUTH_FRAME : (loud[-1] + 1) * TRUTH_FRAME]


def speech_segments(clean: Float64Array) -> tuple[tuple[float, float], ...]:
    """True speech spans (seconds) of clean audio: 10 ms frames within 35 dB of the loudest, gaps under
    200 ms merged (a stop closure or a breath between words is still speech), spans under 40 ms dropped."""
    db = _frame_db(clean)
    if db.size == 0:
        return ()
    on = (db >= db.max() - TRUTH_BELOW_PEAK_DB) & (db >= TRUTH_FLOOR_DBFS)
    spans: list[list[float]] = []
    step = TRUTH_FRAME / PHONE_RATE
    for i in np.flatnonzero(on):
        t0 = i * step
        if spans and t0 - spans[-1][1] < MERGE_GAP_S - 1e-9:
            spans[-1][1] = t0 + step
        else:
            spans.append([t0, t0 + step])
    return tuple((round(a, 3), round(b, 3)) for a, b in spans if b - a >= 0.04 - 1e-9)


def synth_burst(kind: BurstKind, rng: np.random.Generator) -> Float64Array:
    """Shaped-noise stand-ins for what phone lines carry besides speech, at 8 kHz in int16 units."""
    def shaped(n: int, lo: float, hi: float) -> Float64Array:
        spec = np.fft.rfft(rng.standard_normal(n))
        f = np.fft.rfftfreq(n, 1 / PHONE_RATE)
        spec[(f < lo) | (f > hi)] = 0
        y = np.fft.irfft(spec, n)
        return np.asarray(y / max(float(np.sqrt(np.mean(y**2))), 1e-12), dtype=np.float64)

    if kind == "cough":  # one or two explosive bursts: fast attack, ~80 ms decay, most energy 300-2500 Hz
        out = []
        for _ in range(int(rng.integers(1, 3))):
            n = int(PHONE_RATE * rng.uniform(0.22, 0.32))
            t = np.arange(n) / PHONE_RATE
            env = np.minimum(t / 0.008, 1.0) * np.exp(-t / rng.uniform(0.06, 0.1))
            out += [shaped(n, 250, 2500) * env * 10 ** (rng.uniform(-14, -8) / 20) * 32768,
                    np.zeros(int(PHONE_RATE * rng.uniform(0.08, 0.15)))]
        return np.concatenate(out)
    if kind == "click":  # a handset knock or line pop: a few ms, ringing briefly
        n = int(PHONE_RATE * 0.03)
        t = np.arange(n) / PHONE_RATE
        return np.asarray(shaped(n, 200, 3800) * np.exp(-t / 0.004) * 10 ** (rng.uniform(-10, -4) / 20) * 32768)
    n = int(PHONE_RATE * rng.uniform(0.4, 0.6))  # breath: soft, airy, raised-cosine envelope
    env = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)
    return np.asarray(shaped(n, 800, 3800) * env * 10 ** (rng.uniform(-32, -26) / 20) * 32768)


# ----------------------------------------------------------------------------------------------- voices


class LocalVoices:
    """The synthesizers, loaded on first use: hibari (bundled voice, fixed seed) and espeak-ng."""

    def __init__(self) -> None:
        self._hibari: object | None = None

    def __call__(self, text: str, voice: Voice) -> Float64Array:
        if voice.engine == "hibari":
            from parley.providers.hibari_tts import SAMPLE_RATE, HibariModel

            if self._hibari is None:
                self._hibari = HibariModel.load(threads=1)
            assert isinstance(self._hibari, HibariModel)
            audio = np.concatenate([a for _, a in self._hibari.pieces(text, speed=voice.speed, seed=0)])
            return to_phone_rate(audio, round(SAMPLE_RATE * voice.pitch))
        samples, rate = asyncio.run(_espeak(text, voice))
        return to_phone_rate(samples, round(rate * voice.pitch))

    def close(self) -> None:
        close = getattr(self._hibari, "close", None)
        if callable(close):
            close()


async def _espeak(text: str, voice: Voice) -> tuple[Int16Array, int]:
    from parley.providers.base import AudioChunk
    from parley.providers.espeak_tts import EspeakTTS

    chunks: list[AudioChunk] = []
    async for ev in EspeakTTS(voice.name, voice.wpm).synthesize(text):
        if isinstance(ev, AudioChunk):
            chunks.append(ev)
    rate = chunks[0].sample_rate if chunks else 22050
    return np.concatenate([c.samples for c in chunks]) if chunks else np.zeros(0, np.int16), rate


# ------------------------------------------------------------------------------------------------- cache


def default_cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "parley" / "turn-corpus"


def corpus_key(specs: Sequence[ItemSpec]) -> str:
    versions = {}
    for dist in ("hibari-tts", "numpy", "soxr"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = "-"
    versions["espeak-ng"] = shutil.which("espeak-ng") or "-"
    blob = json.dumps({"v": RENDER_VERSION, "pkgs": versions, "specs": [asdict(s) for s in specs]}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def load_corpus(
    specs: Sequence[ItemSpec] | None = None,
    *,
    cache_root: Path | None = None,
    synth: Synth | None = None,
    log: Callable[[str], None] = lambda _msg: None,
) -> list[CorpusItem]:
    """The rendered corpus, from the cache when it holds this exact design, else rendered and cached."""
    specs = list(specs if specs is not None else corpus_specs())
    folder = (cache_root or default_cache_root()) / corpus_key(specs)
    meta_path, audio_path = folder / "corpus.json", folder / "audio.npz"
    if meta_path.is_file() and audio_path.is_file():
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        with np.load(audio_path) as audio:
            return [_item(spec, m, audio[spec.id]) for spec, m in zip(specs, meta, strict=True)]
    log(f"rendering {len(specs)} corpus items into {folder}")
    voices = LocalVoices() if synth is None else None
    render: Synth = synth if synth is not None else voices  # type: ignore[assignment]
    g711 = G711()
    try:
        items = [render_item(s, render, g711) for s in specs]
    finally:
        if voices is not None:
            voices.close()
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / ".audio.part.npz"
    arrays: dict[str, Any] = {it.spec.id: it.audio for it in items}
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, audio_path)
    meta_out = [{"segments": it.segments, "internal_pauses": it.internal_pauses, "noise": it.noise} for it in items]
    (folder / ".corpus.part").write_text(json.dumps(meta_out), encoding="utf-8")
    os.replace(folder / ".corpus.part", meta_path)
    return items


def _item(spec: ItemSpec, meta: dict[str, list[list[float]]], audio: Int16Array) -> CorpusItem:
    def spans(key: str) -> tuple[tuple[float, float], ...]:
        return tuple((float(a), float(b)) for a, b in meta[key])

    return CorpusItem(spec, np.asarray(audio, dtype=np.int16), spans("segments"), spans("internal_pauses"),
                      spans("noise"))
