"""Per-turn timing: when each stage of a turn happened, and what that adds up to.

Owns: the stage names, recording a timestamp per stage (first one wins), and deriving durations:
everything relative to the moment the caller stopped speaking, voice-to-voice, the engine's own
overhead, and barge-in timings. Pure: timestamps come in (monotonic seconds); no clock is read here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

# Stages of a caller turn, in the order they normally happen.
SPEECH_END = "speech_end"  # the VAD's last speech frame of the turn ended
ENDPOINT = "endpoint"  # the turn machine decided the caller is done
STT_FINAL = "stt_final"  # the final transcript was available
LLM_FIRST_TOKEN = "llm_first_token"  # the brain produced its first text (or tool call)
FIRST_CHUNK = "first_chunk"  # the chunker released the first speakable text
TTS_FIRST_AUDIO = "tts_first_audio"  # TTS returned the first audio of that text
PLAYBACK_COMMAND = "playback_command"  # the first playback command was written to ESL
PLAYBACK_START = "playback_start"  # FreeSWITCH reported PLAYBACK_START of that chunk
# The first agent sample above the audibility threshold (-40 dBFS) reaches the caller: PLAYBACK_START plus
# the leading silence of the audio actually queued. This, not PLAYBACK_START, is voice-to-voice.
FIRST_AUDIBLE = "first_audible"
AUDIBLE_DBFS = -40.0  # what counts as audible agent audio, here and in the ear measurement

TURN_STAGES: tuple[str, ...] = (
    SPEECH_END,
    ENDPOINT,
    STT_FINAL,
    LLM_FIRST_TOKEN,
    FIRST_CHUNK,
    TTS_FIRST_AUDIO,
    PLAYBACK_COMMAND,
    PLAYBACK_START,
    FIRST_AUDIBLE,
)


@dataclass(slots=True)
class TurnTimings:
    """Timestamps of one turn's stages; ``ms()`` gives each relative to the caller's speech end."""

    marks: dict[str, float] = field(default_factory=dict)
    # time spent inside providers that the engine waited for, per stage (for the overhead figure)
    provider_s: dict[str, float] = field(default_factory=dict)

    def mark(self, stage: str, t: float) -> None:
        self.marks.setdefault(stage, t)

    def add_provider_time(self, stage: str, seconds: float) -> None:
        self.provider_s[stage] = self.provider_s.get(stage, 0.0) + seconds

    def ms(self) -> dict[str, float]:
        """Each recorded stage in ms after ``speech_end`` (stages before it are negative)."""
        base = self.marks.get(SPEECH_END)
        if base is None:
            return {}
        return {s: round((self.marks[s] - base) * 1000.0, 1) for s in TURN_STAGES if s in self.marks}

    @property
    def voice_to_voice_ms(self) -> float | None:
        """Caller stops speaking -> the first audible agent sample (``FIRST_AUDIBLE``), as the caller hears it.

        Not PLAYBACK_START: a figure that stops there ignores the silence at the head of the audio (hibari
        starts every sentence with ~300 ms of it) and is not what the caller experiences.
        """
        a, b = self.marks.get(SPEECH_END), self.marks.get(FIRST_AUDIBLE)
        return None if a is None or b is None else round((b - a) * 1000.0, 1)

    @property
    def playback_start_ms(self) -> float | None:
        """Caller stops speaking -> PLAYBACK_START (kept as a stage; the ear figure is ``voice_to_voice_ms``)."""
        a, b = self.marks.get(SPEECH_END), self.marks.get(PLAYBACK_START)
        return None if a is None or b is None else round((b - a) * 1000.0, 1)

    def stage_ms(self) -> dict[str, float]:
        """What each stage added to the wait, in ms: from the latest earlier stage to this one, 0 when it was
        ready before (a speculative reply's first token and audio come before the final transcript)."""
        out: dict[str, float] = {}
        prev: float | None = None
        for s in TURN_STAGES:
            t = self.marks.get(s)
            if t is None:
                continue
            if prev is not None:
                out[s] = round(max(0.0, t - prev) * 1000.0, 1)
            prev = t if prev is None else max(prev, t)
        return out

    def overhead_ms(self) -> float | None:
        """Speech end -> playback command, minus the configured silence wait and provider compute.

        The silence wait is speech_end -> endpoint (a setting plus the turn model); provider compute is
        the STT wait after the endpoint, LLM time to first token, TTS time to first audio. What is left is
        parley's own cost: queues, chunking, resampling, WAV writing, the ESL write.
        """
        m = self.marks
        need = (SPEECH_END, ENDPOINT, STT_FINAL, LLM_FIRST_TOKEN, FIRST_CHUNK, TTS_FIRST_AUDIO, PLAYBACK_COMMAND)
        if any(s not in m for s in need):
            return None
        total = m[PLAYBACK_COMMAND] - m[SPEECH_END]
        silence = m[ENDPOINT] - m[SPEECH_END]
        stt = max(0.0, m[STT_FINAL] - m[ENDPOINT])
        llm = self.provider_s.get(LLM_FIRST_TOKEN, m[LLM_FIRST_TOKEN] - m[STT_FINAL])
        tts = self.provider_s.get(TTS_FIRST_AUDIO, m[TTS_FIRST_AUDIO] - m[FIRST_CHUNK])
        return round(max(0.0, total - silence - stt - llm - tts) * 1000.0, 2)

    def as_dict(self) -> dict[str, object]:
        return {
            "timings_ms": self.ms(),
            "stages_ms": self.stage_ms(),
            "voice_to_voice_ms": self.voice_to_voice_ms,
            "overhead_ms": self.overhead_ms(),
        }


@dataclass(frozen=True, slots=True)
class BargeInTimings:
    speech_onset: float  # first caller speech frame of the interruption
    detected: float  # the turn machine decided it is a barge-in (after the minimum speech)
    break_written: float  # uuid_break <uuid> all left on the ESL socket
    playback_stopped: float | None  # PLAYBACK_STOP (break) arrived
    heard_ms: float  # how much of the agent's utterance the caller heard
    # the last agent sample the caller heard (FreeSWITCH's stop time, on our clock): onset -> silent at the ear
    agent_silent: float | None = None

    def as_dict(self) -> dict[str, float | None]:
        def ms(t: float | None) -> float | None:
            return None if t is None else round((t - self.speech_onset) * 1000.0, 1)

        return {
            "onset_to_detect_ms": ms(self.detected),
            "onset_to_break_ms": ms(self.break_written),
            "onset_to_stop_ms": ms(self.playback_stopped),
            "onset_to_silent_ms": ms(self.agent_silent),
            "heard_ms": round(self.heard_ms, 1),
        }


def percentiles(values: list[float], ps: tuple[float, ...] = (50.0, 95.0)) -> Mapping[str, float]:
    """Nearest-rank-interpolated percentiles (numpy's default 'linear'), as {"p50": ..., "p95": ...}."""
    if not values:
        return {f"p{int(p)}": float("nan") for p in ps}
    xs = sorted(values)
    out: dict[str, float] = {}
    for p in ps:
        k = (len(xs) - 1) * p / 100.0
        lo = int(k)
        hi = min(lo + 1, len(xs) - 1)
        out[f"p{int(p)}"] = round(xs[lo] + (xs[hi] - xs[lo]) * (k - lo), 2)
    return out
