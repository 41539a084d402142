"""The hold line: a brain slow to say its first word gets "One moment." spoken meanwhile, not silence.

A ReplyRunner with a scripted brain, a voice that returns each text as audio at once, and a playback that
keeps what it was given: what matters is which texts reached the voice, in which order, and when."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Sequence

import numpy as np

from parley.agent import core as c
from parley.agent.reply import ReplyRunner
from parley.freeswitch.playback import UtteranceReport
from parley.providers.base import AudioChunk, LLMEvent, Message, Switched, TextDelta, ToolSpec, TTSEvent, Usage

HOLD = ("One moment.", 0.05)


class Brain:
    """Its first word comes after ``delay_s``; ``closed`` tells the request was closed."""

    def __init__(self, delay_s: float, *, failed_first: bool = False) -> None:
        self.delay_s = delay_s
        self.failed_first = failed_first  # a fallback chain: the first provider failed fast, then a switch
        self.closed = False

    async def stream(self, messages: Sequence[Message], tools: Sequence[ToolSpec] = ()) -> AsyncGenerator[LLMEvent, None]:
        try:
            if self.failed_first:
                yield Usage("cloud", "m", "llm", failed=True)
                yield Switched("llm", "cloud", "slow-local", "cloud: 503")
            await asyncio.sleep(self.delay_s)
            yield TextDelta("Your cleaning is on Tuesday at ten.")
            yield Usage("brain", "m", "llm", output_tokens=8)
        finally:
            self.closed = True

    async def close(self) -> None:
        return None


class Voice:
    sample_rate = 8000

    def __init__(self) -> None:
        self.texts: list[tuple[float, str]] = []

    async def synthesize(self, text: str) -> AsyncGenerator[TTSEvent, None]:
        self.texts.append((time.monotonic(), text))
        yield AudioChunk((3000 * np.sin(np.arange(1600) / 3)).astype(np.int16), 8000, text)

    async def close(self) -> None:
        return None


class Utterance:
    id = "u1"
    done = False
    chunks: tuple[object, ...] = ()
    first_command_at = None

    async def write(self, samples: object) -> None:
        return None

    async def finish(self) -> None:
        return None

    async def wait_started(self) -> float | None:
        return None

    async def wait_played(self, timeout: float | None = None) -> UtteranceReport:
        return UtteranceReport("u1", 1, 200.0, 200.0, False, True, None, None, None)

    def heard_ms(self) -> float:
        return 0.0


class Playback:
    def utterance(self, source_rate: int, utterance_id: str | None = None) -> Utterance:
        return Utterance()


async def _open_gate() -> None:
    return None


def runner(brain: Brain, voice: Voice, events: list[c.CoreEvent], *, held: bool,
           reported: list[Usage | Switched] | None = None) -> ReplyRunner:
    sink: list[Usage | Switched] = [] if reported is None else reported
    return ReplyRunner(1, llm=brain, tts=voice, tools=(), playback=Playback(), emit=events.append,  # type: ignore[arg-type]
                       report=sink.append, clock=time.monotonic, gate=_open_gate,
                       messages=[Message("user", "When is my cleaning?")], fixed_text=None, held=held, hold=HOLD)


def reply_text(events: list[c.CoreEvent]) -> str:
    return next(ev.text for ev in events if isinstance(ev, c.ReplyText))


async def test_a_slow_brain_gets_the_hold_line_first_and_it_is_part_of_the_reply() -> None:
    voice, events = Voice(), []
    await runner(Brain(delay_s=0.3), voice, events, held=False).run()
    assert [t for _, t in voice.texts] == ["One moment.", "Your cleaning is on Tuesday at ten."]
    assert reply_text(events) == "One moment. Your cleaning is on Tuesday at ten."


async def test_a_brain_that_answers_in_time_gets_no_hold_line() -> None:
    voice, events = Voice(), []
    await runner(Brain(delay_s=0.0), voice, events, held=False).run()
    assert [t for _, t in voice.texts] == ["Your cleaning is on Tuesday at ten."]
    assert reply_text(events) == "Your cleaning is on Tuesday at ten."


async def test_a_speculative_reply_counts_the_hold_time_from_its_commit() -> None:
    """Held at a pause, it may be thrown away: the caller is not waiting yet, so no hold line before the commit."""
    voice, events = Voice(), []
    r = runner(Brain(delay_s=0.4), voice, events, held=True)
    task = asyncio.create_task(r.run())
    await asyncio.sleep(0.2)  # four hold times, still speculative
    assert voice.texts == []
    committed_at = time.monotonic()
    r.commit()
    await task
    assert [t for _, t in voice.texts] == ["One moment.", "Your cleaning is on Tuesday at ten."]
    assert voice.texts[0][0] - committed_at >= HOLD[1] * 0.9


async def test_a_reply_cancelled_while_holding_closes_the_brain_request() -> None:
    brain, voice, events = Brain(delay_s=3600), Voice(), []
    task = asyncio.create_task(runner(brain, voice, events, held=False).run())
    while not voice.texts:
        await asyncio.sleep(0.01)
    task.cancel()  # the caller barged in over "One moment."
    await asyncio.gather(task, return_exceptions=True)
    assert brain.closed


async def test_a_provider_that_failed_fast_does_not_stop_the_hold_clock() -> None:
    """A chain whose first provider failed at once (its usage and the switch come first) and whose next one
    is slow: the caller still hears the hold line, and the usage and the switch still reach the record."""
    voice, events, reported = Voice(), [], []
    await runner(Brain(delay_s=0.3, failed_first=True), voice, events, held=False, reported=reported).run()
    assert [t for _, t in voice.texts] == ["One moment.", "Your cleaning is on Tuesday at ten."]
    assert [type(e).__name__ for e in reported] == ["Usage", "Switched", "Usage"]


async def test_a_speculative_reply_dropped_before_its_commit_leaves_no_task_behind() -> None:
    brain, voice, events = Brain(delay_s=3600), Voice(), []
    before = asyncio.all_tasks()
    task = asyncio.create_task(runner(brain, voice, events, held=True).run())
    await asyncio.sleep(0.1)
    task.cancel()  # the caller went on: the guess was wrong
    await asyncio.gather(task, return_exceptions=True)
    await asyncio.sleep(0)
    assert asyncio.all_tasks() - before == set() and brain.closed and voice.texts == []
