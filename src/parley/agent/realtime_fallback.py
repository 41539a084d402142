"""When a speech-to-speech model fails mid-call: an apology in the local voice, then the pipeline.

Owns: saying a fixed sentence with the local (emergency) voice on the call, and building the pipeline
:class:`~parley.agent.session.CallSession` that takes the rest of the call on the same
:class:`~parley.agent.port.CallPort`: no greeting (the caller is mid-conversation), its turn numbering
continuing after the realtime turns, and its memory holding what was said so far (as heard). Must not
know the realtime vendor or FreeSWITCH.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace

from parley.agent.engine import Engine
from parley.agent.port import CallPort, UtterancePort
from parley.agent.realtime_engine import pipeline_engine
from parley.agent.session import CallSession
from parley.agent.turn import TurnRecord
from parley.errors import ParleyError
from parley.providers.base import AudioChunk, Switched, Usage


async def say_locally(
    call: CallPort, engine: Engine, text: str, log: logging.LoggerAdapter[logging.Logger],
    report: Callable[[Usage | Switched], None],
) -> None:
    """``text`` in the local voice (the emergency TTS, else the pipeline's), heard to its end; what it costs
    (also when the call ends under it) and a switch of the voice's chain go to ``report``."""
    tts = engine.emergency_tts or engine.tts
    utt: UtterancePort | None = None
    try:
        gen = tts.synthesize(text, on_cancel=report)
        async with contextlib.aclosing(gen):
            async for ev in gen:
                if isinstance(ev, AudioChunk):
                    utt = utt or call.playback.utterance(ev.sample_rate)
                    await utt.write(ev.samples)
                else:
                    report(ev)
        if utt is not None:
            await utt.finish()
            await utt.wait_played(timeout=15)
    except (ParleyError, TimeoutError) as exc:
        log.error("the local voice failed: %s", exc)


def pipeline_session(
    call: CallPort,
    engine: Engine,
    before: Sequence[TurnRecord],
    *,
    clock: Callable[[], float] = time.monotonic,
    on_turn: Callable[[TurnRecord], Awaitable[None]] | None = None,
) -> CallSession:
    """The pipeline conversation for the rest of the call, knowing the turns ``before`` it."""
    plain = pipeline_engine(engine)
    plain = replace(plain, conversation=replace(plain.conversation, greeting=""))
    session = CallSession(call, plain, clock=clock, on_turn=on_turn)
    session.core.turns[:0] = [t for t in before if t.index > 0]  # its new turns are numbered after these
    for turn in before:
        if turn.caller:
            session.core.memory.add_user(turn.caller)
        with contextlib.suppress(ValueError):
            session.core.memory.add_assistant(turn.agent)
    return session
