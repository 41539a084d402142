"""Turn-taking thresholds, with defaults chosen for phone calls.

Owns: ``TurnPolicy``, one frozen value holding every number the turn machine uses, and its validation.
Must not know how the numbers are applied (that is ``turns/machine.py``) or where they come from (config).
A call can switch policies between turns (e.g. a longer silence while the caller dictates a number).
"""

from __future__ import annotations

from dataclasses import dataclass

from parley.errors import ConfigError


@dataclass(frozen=True, slots=True)
class TurnPolicy:
    # Speech needed before the caller holds the floor. 120 ms = 6 frames: longer than clicks, line pops and
    # runs of 1-3 false Silero windows (32 ms each); shorter than the voiced part of a clipped "no" (~200 ms).
    min_speech_ms: float = 120.0
    # Silence that may interrupt a candidate onset without restarting its count (a dip inside a word).
    # Separate sounds further apart (a cough, then "mm") do not add up.
    onset_gap_ms: float = 60.0
    # Silence before UserPaused (the engine's speculative STT decode). Debounces stop closures and short
    # dips inside words, and still leaves STT a 100 ms head start over the smart-turn decision.
    pause_ms: float = 100.0
    # Endpoint hangover when smart-turn is off. 700 ms: phone callers pause 300-600 ms mid-sentence
    # (reading digits, thinking); shorter values are the classic "agent answers before I finished".
    silence_ms: float = 700.0
    smart_turn: bool = True
    # P(complete) at or above which smart-turn ends the turn (the model's own decision boundary).
    smart_turn_threshold: float = 0.5
    # Silence before asking smart-turn: the model was trained on clips ending ~200 ms into silence, and
    # Silero needs ~60-100 ms to fall after speech stops, so earlier scores see speech still "running".
    score_after_ms: float = 200.0
    # With smart-turn on, end the turn after this much silence whatever the model said (or if its answer
    # is late): 800 ms bounds the worst case to ~0.1 s over plain silence endpointing.
    fallback_silence_ms: float = 800.0
    # Accept the STT provider's endpoint (Deepgram speech_final) during silence.
    stt_endpointing: bool = False
    # A turn longer than this is cut so a stuck VAD (line noise, TV) cannot hold the call forever.
    max_turn_s: float = 30.0
    # Speech while the agent holds the floor must last this long to interrupt: coughs, "mm", "yeah" are
    # shorter (peers.md §10, pain point 2). Shorter speech is a backchannel: no barge-in, no turn.
    barge_in_min_speech_ms: float = 250.0
    barge_in: bool = True
    # Silence after the agent finished before "are you still there?", and how many such prompts before
    # hanging up. 8 s: long enough to look something up, short enough that a dead line is noticed.
    idle_timeout_s: float = 8.0
    idle_max_prompts: int = 1

    # ---- phone-audio turn-taking (issue 9). Measured with `parley bench turns` (57 items: 32 turns with
    # 300-1000 ms internal pauses, 12 complete/short turns, 4 barge-ins, 9 cough/click/breath bursts; hibari
    # and espeak voices, G.711 mu/A-law, 15-30 dB SNR). Old defaults: 26/32 turns cut in, delay p50 370 ms.
    # Resumed speech in a pause (or right after EndOfTurn) counts after this much, not min_speech_ms: the
    # caller is mid-turn, so a continuation is the likely reading, and every 20 ms spent confirming it is
    # 20 ms closer to the fallback deadline (with 120 ms a 700 ms pause ended the turn at 800 ms). 60 ms =
    # 3 frames, still longer than a click; the bench's bursts gave 0 false barge-ins (those need 250 ms).
    resume_min_speech_ms: float = 60.0
    # How late the VAD notices that speech stopped (Silero's 32 ms window at 8 kHz plus the 0.35 stop
    # threshold). The bench measured an offset lag of p50 110 / p90 165 ms on 86 phrase ends (onset lag
    # p50 40 ms); 100 ms, just under the median, so a corrected end is rarely before the true end.
    # speech_end_t and every silence deadline move earlier by it, never before the start of the last run
    # of speech frames. It took 80 ms off the decision delay p50 (370 -> 290 ms).
    vad_offset_lag_ms: float = 100.0
    # Use TranscriptHint (the speculative transcript at a pause). smart-turn v3.2 scored 0.97-0.99
    # "complete" on nearly every mid-turn pause of the phone corpus ("My name is.", "I'd like to book."),
    # so when the text looks unfinished (parley.turns.lexical) smart-turn is ignored
    # (threshold 1.0) and the turn is held for unfinished_silence_ms: 1300 covers the corpus's longest
    # pause (1000 ms) plus the VAD onset lag p90 (120 ms) and the 60 ms resume, with a little margin.
    # This took the cut-ins from 27/32 (smart-turn alone) to 5/32 before revocation.
    lexical_hints: bool = True
    unfinished_silence_ms: float = 1300.0
    unfinished_smart_turn_threshold: float = 1.0
    # A "complete" smart-turn verdict waits for the pause's TranscriptHint until this much silence; after
    # that (no STT, or a slow decode) smart-turn decides alone. With the hint modelled at 150 ms after
    # UserPaused, the wait costs ~50 ms on complete turns; 500 ms bounds the cost of a late decode. 0 never
    # waits. A session without speculative STT should set lexical_hints=False.
    hint_wait_ms: float = 500.0
    # Adaptive wait: the fallback silence grows to cover this caller's own internal pauses (the longest of
    # the last 4 pauses that ended in resumed speech, revoked ends included, plus adaptive_margin_ms), up to
    # adaptive_max_silence_ms (a cap below the endpoint silence simply never lengthens it). 1400 = the
    # longest corpus pause + margin + onset lag; it only stretches callers who have paused that long.
    adaptive_wait: bool = True
    adaptive_margin_ms: float = 200.0
    adaptive_max_silence_ms: float = 1400.0
    # EndOfTurn stays revocable (TurnResumed instead of BargeIn) until the agent is audible, for at most
    # this long after it. With the reply audible 250 ms after EndOfTurn (modelled) it turned 2 of 5
    # remaining cut-ins into silent cancels. 2 s: a reply slower than that is a stall; speech then is a
    # new sentence. 0 disables revocation (resumed speech is a barge-in or a new turn, as before).
    revoke_window_ms: float = 2000.0
    # A turn whose transcript at the pause has at most this many words is held this long before its reply
    # may be heard (EndOfTurn.release_t, then ReleaseReply). With speculative replies the agent is audible
    # ~40 ms after EndOfTurn (parley bench latency), too soon for a take-back: the remaining cut-ins were
    # short complete phrases followed by more ("At three... in the afternoon", "No... that's all", "Yes,
    # that works... and"). Longer turns, and turns without a transcript yet, are released at once.
    short_turn_words: int = 3
    short_turn_hold_ms: float = 200.0

    def __post_init__(self) -> None:
        for name in ("min_speech_ms", "pause_ms", "silence_ms", "score_after_ms", "fallback_silence_ms"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"turn policy: {name} must be > 0")
        if self.onset_gap_ms < 0 or self.barge_in_min_speech_ms <= 0:
            raise ConfigError("turn policy: onset_gap_ms must be >= 0 and barge_in_min_speech_ms > 0")
        if self.pause_ms > self.silence_ms or self.pause_ms > self.fallback_silence_ms:
            raise ConfigError("turn policy: pause_ms must not exceed silence_ms or fallback_silence_ms")
        if self.smart_turn and not self.pause_ms <= self.score_after_ms < self.fallback_silence_ms:
            raise ConfigError("turn policy: need pause_ms <= score_after_ms < fallback_silence_ms")
        if not 0.0 <= self.smart_turn_threshold <= 1.0:
            raise ConfigError("turn policy: smart_turn_threshold must be in [0, 1]")
        if self.max_turn_s <= 0 or self.idle_timeout_s <= 0 or self.idle_max_prompts < 0:
            raise ConfigError("turn policy: max_turn_s and idle_timeout_s must be > 0, idle_max_prompts >= 0")
        if self.resume_min_speech_ms <= 0 or self.unfinished_silence_ms <= 0:
            raise ConfigError("turn policy: resume_min_speech_ms and unfinished_silence_ms must be > 0")
        if self.short_turn_words < 0 or self.short_turn_hold_ms < 0:
            raise ConfigError("turn policy: short_turn_words and short_turn_hold_ms must be >= 0")
        for name in ("vad_offset_lag_ms", "hint_wait_ms", "adaptive_margin_ms", "revoke_window_ms"):
            if getattr(self, name) < 0:
                raise ConfigError(f"turn policy: {name} must be >= 0")
        if self.vad_offset_lag_ms >= self.pause_ms + self.score_after_ms:
            raise ConfigError("turn policy: vad_offset_lag_ms must be shorter than pause_ms + score_after_ms")
        if not 0.0 <= self.unfinished_smart_turn_threshold <= 1.0:
            raise ConfigError("turn policy: unfinished_smart_turn_threshold must be in [0, 1]")

    @property
    def endpoint_silence_ms(self) -> float:
        """The silence that ends a turn without a positive smart-turn verdict."""
        return self.fallback_silence_ms if self.smart_turn else self.silence_ms
