"""Table-driven tests for the pure turn machine.

Each case is a little script, one step per line: ``<command> -> <expected actions>``. Time starts at 0 and
every audio frame is 20 ms (a frame is stamped with the time its audio ended). Commands:

    speech N / silence N   N ms of VAD frames with speech=True / False
    score P                TurnScore for the pause id of the most recent ScoreTurn (stale if speech resumed)
    hint TEXT              TranscriptHint with TEXT for the pause id of the most recent UserPaused
    agent speaking | agent done | agent takes turn | stt final
    tick N                 one Tick N ms later, with no audio in between (the audio stalled)

Actions are written by class name; ``EndOfTurn(reason)`` and ``IdlePrompt(n)`` show their key field.
The cases live in ``SCRIPTS``: a ``## name`` header (optionally ``[policy_field=value, ...]``), then steps.
"""

from __future__ import annotations

import ast
import dataclasses
from typing import Any

import pytest

from parley.errors import ConfigError
from parley.turns.events import (
    AgentDone,
    AgentSpeaking,
    AgentTurnTaken,
    EndOfTurn,
    IdlePrompt,
    ScoreTurn,
    SttSpeechFinal,
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

FRAME_MS = 20


def render(action: TurnAction) -> str:
    match action:
        case EndOfTurn(reason=reason):
            return f"EndOfTurn({reason})"
        case IdlePrompt(n=n):
            return f"IdlePrompt({n})"
        case _:
            return type(action).__name__


class Script:
    """Drives a TurnMachine with the step language above and records everything it said."""

    def __init__(self, policy: TurnPolicy) -> None:
        self.machine = TurnMachine(policy)
        self.ms = 0
        self.last_score_id = 0
        self.last_pause_id = 0
        self.log: list[TurnAction] = []

    def run(self, command: str) -> list[TurnAction]:
        words = command.split()
        events: list[TurnEvent] = []
        t = self.ms / 1000
        match words:
            case ["speech" | "silence" as kind, n]:
                for _ in range(int(n) // FRAME_MS):
                    self.ms += FRAME_MS
                    events.append(VadFrame(self.ms / 1000, kind == "speech", 0.9 if kind == "speech" else 0.05))
            case ["score", p]:
                events.append(TurnScore(t, self.last_score_id, float(p)))
            case ["hint", *text]:
                events.append(TranscriptHint(t, self.last_pause_id, " ".join(text)))
            case ["agent", "speaking"]:
                events.append(AgentSpeaking(t))
            case ["agent", "done"]:
                events.append(AgentDone(t))
            case ["agent", "takes", "turn"]:
                events.append(AgentTurnTaken(t))
            case ["stt", "final"]:
                events.append(SttSpeechFinal(t))
            case ["tick", n]:
                self.ms += int(n)
                events.append(Tick(self.ms / 1000))
            case _:
                raise ValueError(f"bad step {command!r}")
        out: list[TurnAction] = []
        for event in events:
            out += self.machine.feed(event)
        for action in out:
            if isinstance(action, ScoreTurn):
                self.last_score_id = action.pause_id
            if isinstance(action, UserPaused):
                self.last_pause_id = action.pause_id
        self.log += out
        return out


def run_case(script_text: str, policy: TurnPolicy) -> Script:
    script = Script(policy)
    for lineno, line in enumerate(script_text.strip().splitlines(), 1):
        command, _, expected = line.partition("->")
        want = [a.strip() for a in expected.split(",") if a.strip()]
        got = [render(a) for a in script.run(command.strip())]
        assert got == want, f"step {lineno} {line.strip()!r}: got {got}"
    return script


SCRIPTS = """
## short noise burst ignored
speech 60    ->
silence 1000 ->

## normal turn via smart-turn
speech 300   -> UserSpeechStarted
silence 100  -> UserPaused
silence 100  -> ScoreTurn
hint I'd like a cleaning. ->
score 0.8    -> EndOfTurn(smart_turn)
silence 2000 ->

## smart-turn says incomplete, fallback silence ends the turn
speech 300   -> UserSpeechStarted
silence 200  -> UserPaused, ScoreTurn
score 0.2    ->
silence 580  ->
silence 20   -> EndOfTurn(silence)

## smart-turn answer never comes: fallback still ends the turn
speech 300   -> UserSpeechStarted
silence 780  -> UserPaused, ScoreTurn
silence 20   -> EndOfTurn(silence)

## smart-turn off uses silence_ms  [smart_turn=False]
speech 300   -> UserSpeechStarted
silence 100  -> UserPaused
silence 580  ->
silence 20   -> EndOfTurn(silence)

## pause then resume: UserPaused/UserResumed, no EndOfTurn
speech 300   -> UserSpeechStarted
silence 150  -> UserPaused
speech 40    ->
speech 20    -> UserResumed
speech 200   ->
silence 120  -> UserPaused
speech 300   -> UserResumed

## a dip shorter than pause_ms is not a pause
speech 300   -> UserSpeechStarted
silence 80   ->
speech 300   ->

## stale score (speech resumed) ignored
speech 300   -> UserSpeechStarted
silence 200  -> UserPaused, ScoreTurn
speech 200   -> UserResumed
score 0.95   ->
silence 100  -> UserPaused
silence 100  -> ScoreTurn
hint Tuesday. ->
score 0.9    -> EndOfTurn(smart_turn)

## score arriving after the turn ended is ignored
speech 300   -> UserSpeechStarted
silence 800  -> UserPaused, ScoreTurn, EndOfTurn(silence)
score 0.9    ->

## noise blip in a pause neither resumes nor moves the endpoint
speech 300   -> UserSpeechStarted
silence 200  -> UserPaused, ScoreTurn
score 0.1    ->
speech 40    ->
silence 540  ->
silence 20   -> EndOfTurn(silence)

## a complete verdict waits while a resume candidate is in progress
speech 300   -> UserSpeechStarted
silence 200  -> UserPaused, ScoreTurn
hint That's all. ->
speech 40    ->
score 0.9    ->
silence 80   -> EndOfTurn(smart_turn)

## onset tolerates a short dip inside a word
speech 60    ->
silence 40   ->
speech 60    -> UserSpeechStarted

## barge-in after 250 ms of speech while the agent speaks
agent speaking ->
speech 240   ->
speech 20    -> BargeIn, UserSpeechStarted
silence 200  -> UserPaused, ScoreTurn
hint Stop, please. ->
score 0.7    -> EndOfTurn(smart_turn)

## backchannel (150 ms) while the agent speaks is ignored
agent speaking ->
speech 150   ->
silence 1000 ->
speech 100   ->
silence 1000 ->
agent done   ->
silence 1000 ->

## barge-in disabled: speech over the agent is not a turn  [barge_in=False]
agent speaking ->
speech 1000  ->
silence 1000 ->

## caller keeps talking while the agent prepares its answer: the end of turn is revoked (changed in issue 9)
speech 300   -> UserSpeechStarted
silence 800  -> UserPaused, ScoreTurn, EndOfTurn(silence)
agent takes turn ->
speech 40    ->
speech 20    -> TurnResumed
silence 200  -> UserPaused, ScoreTurn

## caller talks after the agent became audible: a barge-in, as before
speech 300   -> UserSpeechStarted
silence 800  -> UserPaused, ScoreTurn, EndOfTurn(silence)
agent takes turn ->
agent speaking ->
speech 240   ->
speech 20    -> BargeIn, UserSpeechStarted

## revocation window over: speech over a slow reply is a barge-in  [revoke_window_ms=1000.0]
speech 300   -> UserSpeechStarted
silence 800  -> UserPaused, ScoreTurn, EndOfTurn(silence)
agent takes turn ->
silence 1020 ->
speech 240   ->
speech 20    -> BargeIn, UserSpeechStarted

## revocation off: the old behaviour  [revoke_window_ms=0.0]
speech 300   -> UserSpeechStarted
silence 800  -> UserPaused, ScoreTurn, EndOfTurn(silence)
agent takes turn ->
speech 240   ->
speech 20    -> BargeIn, UserSpeechStarted

## speech after an end of turn the engine has not acted on yet also revokes it
speech 300   -> UserSpeechStarted
silence 800  -> UserPaused, ScoreTurn, EndOfTurn(silence)
silence 500  ->
speech 60    -> TurnResumed

## a complete smart-turn verdict waits for the transcript hint
speech 300   -> UserSpeechStarted
silence 200  -> UserPaused, ScoreTurn
score 0.9    ->
silence 100  ->
hint I'd like a cleaning. -> EndOfTurn(smart_turn)

## without a hint, smart-turn decides alone after hint_wait_ms
speech 300   -> UserSpeechStarted
silence 200  -> UserPaused, ScoreTurn
score 0.9    ->
silence 280  ->
silence 20   -> EndOfTurn(smart_turn)

## hints ignored when lexical_hints is off  [lexical_hints=False]
speech 300   -> UserSpeechStarted
silence 200  -> UserPaused, ScoreTurn
hint my name is ->
score 0.9    -> EndOfTurn(smart_turn)

## an unfinished sentence holds the turn: a likely-complete score is not enough
speech 300   -> UserSpeechStarted
silence 200  -> UserPaused, ScoreTurn
hint My name is ->
score 0.99   ->
silence 1080 ->
silence 20   -> EndOfTurn(silence)

## an unfinished sentence still ends on a score above its own bar  [unfinished_smart_turn_threshold=0.95]
speech 300   -> UserSpeechStarted
silence 200  -> UserPaused, ScoreTurn
hint my number is five five five ->
score 0.97   -> EndOfTurn(smart_turn)

## a stale hint (speech resumed) is ignored
speech 300   -> UserSpeechStarted
silence 200  -> UserPaused, ScoreTurn
speech 60    -> UserResumed
hint and ->
silence 200  -> UserPaused, ScoreTurn
hint Sarah Johnson. ->
score 0.8    -> EndOfTurn(smart_turn)

## adaptive wait: after a 700 ms internal pause the fallback covers 900 ms
speech 300   -> UserSpeechStarted
silence 700  -> UserPaused, ScoreTurn
score 0.1    ->
speech 60    -> UserResumed
speech 240   ->
silence 200  -> UserPaused, ScoreTurn
score 0.1    ->
silence 680  ->
silence 20   -> EndOfTurn(silence)

## adaptive wait is capped  [adaptive_max_silence_ms=900.0]
speech 300   -> UserSpeechStarted
silence 780  -> UserPaused, ScoreTurn
speech 60    -> UserResumed
silence 200  -> UserPaused, ScoreTurn
silence 680  ->
silence 20   -> EndOfTurn(silence)

## resumed speech counts after 60 ms, a new turn after 120 ms  [resume_min_speech_ms=60.0]
speech 100   ->
speech 20    -> UserSpeechStarted
silence 200  -> UserPaused, ScoreTurn
speech 40    ->
speech 20    -> UserResumed

## idle prompt then idle hangup
agent speaking ->
tick 3000    ->
agent done   ->
tick 7980    ->
tick 20      -> IdlePrompt(1)
agent speaking ->
tick 2000    ->
agent done   ->
tick 8000    -> IdleHangup
tick 60000   ->

## caller speech resets the idle prompts
agent done   ->
silence 8000 -> IdlePrompt(1)
agent speaking ->
agent done   ->
speech 300   -> UserSpeechStarted
silence 800  -> UserPaused, ScoreTurn, EndOfTurn(silence)
agent takes turn ->
agent speaking ->
agent done   ->
silence 8000 -> IdlePrompt(1)

## idle timer runs after a turn the engine drops
speech 300   -> UserSpeechStarted
silence 800  -> UserPaused, ScoreTurn, EndOfTurn(silence)
tick 8000    -> IdlePrompt(1)

## no idle prompt while the caller is starting to speak
agent done   ->
silence 7960 ->
speech 100   ->
speech 20    -> UserSpeechStarted

## max_turn cuts an endless turn  [max_turn_s=2.0]
speech 1980  -> UserSpeechStarted
speech 20    -> EndOfTurn(max_turn)

## stalled audio: a late Tick fires the overdue deadlines at once
speech 300   -> UserSpeechStarted
silence 20   ->
tick 780     -> UserPaused, EndOfTurn(silence)

## stalled audio mid-speech is not silence  [smart_turn=False]
speech 300   -> UserSpeechStarted
tick 5000    ->

## STT endpoint accepted during silence when configured  [stt_endpointing=True, smart_turn=False]
speech 300   -> UserSpeechStarted
stt final    ->
silence 100  -> UserPaused
stt final    -> EndOfTurn(stt)

## STT endpoint ignored unless configured
speech 300   -> UserSpeechStarted
silence 100  -> UserPaused
stt final    ->
"""


def parse_scripts(text: str) -> dict[str, tuple[dict[str, Any], str]]:
    """``## name  [field=value, ...]`` headers, each followed by its steps."""
    cases: dict[str, tuple[dict[str, Any], str]] = {}
    for chunk in text.split("## ")[1:]:
        header, _, body = chunk.partition("\n")
        name, _, overrides = header.partition("  [")
        policy = {k: ast.literal_eval(v) for k, v in (kv.split("=") for kv in overrides.rstrip("]").split(", ") if kv)}
        cases[name.strip()] = (policy, body)
    return cases


CASES = parse_scripts(SCRIPTS)
# The step language's VAD is ideal (frames are the truth, no offset lag), so the tables run without the lag
# correction; test_vad_offset_lag_moves_speech_end_and_deadlines_but_not_before_the_run covers it.
IDEAL = {"vad_offset_lag_ms": 0.0}


@pytest.mark.parametrize("name", list(CASES))
def test_turn_script(name: str) -> None:
    overrides, text = CASES[name]
    run_case(text, TurnPolicy(**{**IDEAL, **overrides}))


def _rounded(action: TurnAction) -> TurnAction:
    changes = {
        f.name: round(v, 6) for f in dataclasses.fields(action) if isinstance(v := getattr(action, f.name), float)
    }
    return dataclasses.replace(action, **changes)  # type: ignore[arg-type]


def test_a_short_turn_is_held_and_a_resume_in_the_hold_takes_it_back_silently() -> None:
    s = run_case(
        """
        speech 300   -> UserSpeechStarted
        silence 100  -> UserPaused
        silence 100  -> ScoreTurn
        hint At three. ->
        score 0.9    -> EndOfTurn(smart_turn)
        agent takes turn ->
        silence 100  ->
        speech 100   -> TurnResumed
        silence 2000 -> UserPaused, ScoreTurn, EndOfTurn(silence)
    """,
        TurnPolicy(**IDEAL),
    )
    assert not any(type(a).__name__ == "ReleaseReply" for a in s.log)  # never released: nothing was heard


def test_a_long_turn_is_released_at_once() -> None:
    s = run_case(
        """
        speech 300   -> UserSpeechStarted
        silence 100  -> UserPaused
        silence 100  -> ScoreTurn
        hint I would like to book a cleaning please. ->
        score 0.9    -> EndOfTurn(smart_turn)
    """,
        TurnPolicy(**IDEAL),
    )
    end = s.log[-1]
    assert type(end).__name__ == "EndOfTurn" and end.release_t is None  # type: ignore[union-attr]


def test_exact_times_and_ids_of_a_smart_turn_ending() -> None:
    s = run_case(
        """
        speech 300   -> UserSpeechStarted
        silence 100  -> UserPaused
        silence 100  -> ScoreTurn
        hint Yes, please. ->
        silence 40   ->
        score 0.8    -> EndOfTurn(smart_turn)
    """,
        TurnPolicy(**IDEAL),
    )
    assert [_rounded(a) for a in s.log] == [
        UserSpeechStarted(t=0.12, onset_t=0.0),
        UserPaused(t=0.4, pause_id=1, speech_end_t=0.3),
        ScoreTurn(t=0.5, pause_id=1),
        # "Yes, please." is a short turn: its reply may be heard 200 ms later (a resume in between takes it back)
        EndOfTurn(t=0.54, speech_end_t=0.3, reason="smart_turn", onset_t=0.0, release_t=0.74),
    ]


def test_barge_in_reports_the_onset_and_frees_the_floor() -> None:
    s = run_case(
        """
        silence 100  ->
        agent speaking ->
        speech 260   -> BargeIn, UserSpeechStarted
    """,
        TurnPolicy(**IDEAL),
    )
    barge, started = (_rounded(a) for a in s.log)
    assert barge.t == started.t == 0.36 and barge.onset_t == started.onset_t == 0.1  # type: ignore[union-attr]
    assert not s.machine.agent_has_floor and s.machine.phase == "speaking"


def test_pause_ids_increase_and_resume_names_the_pause() -> None:
    s = run_case(
        """
        speech 300   -> UserSpeechStarted
        silence 200  -> UserPaused, ScoreTurn
        speech 200   -> UserResumed
        silence 200  -> UserPaused, ScoreTurn
    """,
        TurnPolicy(**IDEAL),
    )
    ids = [getattr(a, "pause_id", None) for a in s.log]
    assert ids == [None, 1, 1, 1, 2, 2]
    assert s.machine.pause_id == 2


def test_policy_can_change_between_events() -> None:
    s = Script(TurnPolicy(smart_turn=False, **IDEAL))
    s.run("speech 300")
    s.machine.policy = TurnPolicy(smart_turn=False, silence_ms=2000, **IDEAL)  # e.g. the caller is dictating digits
    assert [render(a) for a in s.run("silence 1900")] == ["UserPaused"]
    assert [render(a) for a in s.run("silence 100")] == ["EndOfTurn(silence)"]


@pytest.mark.parametrize(
    "bad",
    [
        {"min_speech_ms": 0},
        {"pause_ms": 900},
        {"score_after_ms": 50},
        {"score_after_ms": 900},
        {"smart_turn_threshold": 1.5},
        {"idle_max_prompts": -1},
        {"barge_in_min_speech_ms": 0},
    ],
)
def test_policy_rejects_inconsistent_thresholds(bad: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        TurnPolicy(**bad)  # type: ignore[arg-type]


def test_defaults_are_the_documented_phone_values() -> None:
    p = TurnPolicy()
    assert (p.min_speech_ms, p.silence_ms, p.score_after_ms, p.fallback_silence_ms) == (120, 700, 200, 800)
    assert (p.smart_turn, p.smart_turn_threshold, p.max_turn_s, p.barge_in_min_speech_ms) == (True, 0.5, 30, 250)
    assert (p.idle_timeout_s, p.idle_max_prompts) == (8, 1)


def test_next_deadline_tells_the_engine_when_to_tick() -> None:
    s = Script(TurnPolicy(**IDEAL))
    assert s.machine.next_deadline() is None
    s.run("agent done")
    assert s.machine.next_deadline() == pytest.approx(8.0)
    s.run("speech 300")
    assert s.machine.next_deadline() == pytest.approx(30.0)  # max_turn only while speaking
    s.run("silence 20")
    assert s.machine.next_deadline() == pytest.approx(0.4)  # UserPaused
    s.run("silence 100")
    assert s.machine.next_deadline() == pytest.approx(0.5)  # ScoreTurn
    s.run("silence 100")
    assert s.machine.next_deadline() == pytest.approx(1.1)  # fallback silence
    s.run("tick 580")
    assert _rounded(s.log[-1]) == EndOfTurn(t=1.1, speech_end_t=0.3, reason="silence", onset_t=0.0)
    assert s.machine.next_deadline() == pytest.approx(9.1)  # idle, counted from the end of the turn


def test_turn_resumed_keeps_the_turn_onset_and_frees_the_floor() -> None:
    s = run_case(
        """
        silence 100  ->
        speech 300   -> UserSpeechStarted
        silence 800  -> UserPaused, ScoreTurn, EndOfTurn(silence)
        agent takes turn ->
        speech 60    -> TurnResumed
    """,
        TurnPolicy(**IDEAL),
    )
    resumed = _rounded(s.log[-1])
    assert resumed == TurnResumed(t=1.26, onset_t=1.2, turn_onset_t=0.1)
    assert s.machine.phase == "speaking" and not s.machine.agent_has_floor
    assert s.machine.remembered_pauses == pytest.approx((0.8,))  # the revoked pause counts as internal


def test_vad_offset_lag_moves_speech_end_and_deadlines_but_not_before_the_run() -> None:
    s = run_case(
        """
        speech 300   -> UserSpeechStarted
        silence 20   -> UserPaused
        silence 60   -> ScoreTurn
        hint Thanks. ->
        score 0.8    -> EndOfTurn(smart_turn)
        silence 1000 -> ReleaseReply
        agent done   ->
        silence 2000 ->
        speech 120   -> UserSpeechStarted
        silence 20   -> UserPaused
    """,
        TurnPolicy(vad_offset_lag_ms=140.0),
    )
    paused, end = _rounded(s.log[1]), _rounded(s.log[3])
    assert paused == UserPaused(t=0.32, pause_id=1, speech_end_t=0.16)
    assert end.speech_end_t == 0.16  # type: ignore[union-attr]
    assert s.machine.next_deadline() is not None
    # a 120 ms run: the corrected end stops at the run's own onset
    assert _rounded(s.log[-1]).speech_end_t == 3.38  # type: ignore[union-attr]


def test_new_defaults() -> None:
    p = TurnPolicy()
    assert (p.resume_min_speech_ms, p.revoke_window_ms, p.lexical_hints, p.adaptive_wait) == (60, 2000, True, True)
