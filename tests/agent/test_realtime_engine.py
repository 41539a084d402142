"""The pure parts of a speech-to-speech conversation: an item's first audible sample and heard text, the ids
and codec it derives from the call, and the pipeline session that takes a call over after a model failure."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

import numpy as np

from parley.agent.engine import Engine
from parley.agent.port import CallPort, UtterancePort
from parley.agent.realtime_engine import RealtimeEngine, Spoken, call_codec, pipeline_engine, utterance_id
from parley.agent.realtime_fallback import pipeline_session
from parley.agent.turn import TurnRecord
from parley.config import ConversationSettings
from parley.turns.policy import TurnPolicy


def spoken(rate: int = 8000) -> Spoken:
    return Spoken("item_1", TurnRecord(index=1), cast(UtterancePort, object()), rate, first_audio_at=0.0)


def test_first_audible_sample_counts_leading_silence_across_deltas() -> None:
    s = spoken()
    s.add(np.zeros(800, np.int16))  # 100 ms of silence
    tone = (8000 * np.sin(np.arange(800) / 3.0)).astype(np.int16)
    s.add(np.concatenate([np.zeros(160, np.int16), tone]))
    assert s.audible and s.lead == 960 and round(s.lead_s, 3) == 0.12
    assert s.samples == 1760 and round(s.audio_ms) == 220


def test_heard_text_is_cut_at_whole_words_by_audio_share() -> None:
    s = spoken()
    s.add(np.ones(16000, np.int16))  # 2 s
    s.deltas += ["We are open ", "from eight ", "until six."]
    assert s.text == "We are open from eight until six."
    assert s.heard(900.0) == "We are open"  # 45% of the audio: 12 of 34 characters, "from" not yet whole
    s.final_text = "We are open from eight until six today."
    assert s.heard(2000.0) == s.final_text


def test_utterance_ids_and_codec_from_the_call() -> None:
    assert utterance_id("item_AbC-9/../x") == "item_AbC-9____x"
    assert utterance_id("") == "item"
    assert call_codec(cast(CallPort, SimpleNamespace(codec="PCMA"))) == "PCMA"  # the CallPort says it
    assert call_codec(cast(CallPort, SimpleNamespace(codec=None))) is None  # no event named it yet


def test_the_pipeline_continues_the_numbering_and_knows_what_was_said() -> None:
    stub: Any = SimpleNamespace(name="stub")
    conv = ConversationSettings(greeting="Hello!")
    engine = RealtimeEngine(stt=stub, llm=stub, tts=stub, policy=TurnPolicy(), conversation=conv,
                            vad_factory=lambda rate: stub, realtime=stub)
    plain = pipeline_engine(engine)
    assert type(plain) is Engine and plain.conversation is conv
    before = [TurnRecord(index=0, agent="Hello!"), TurnRecord(index=1, caller="Hi there", agent="Hi, how can I")]
    call = cast(CallPort, SimpleNamespace(uuid="u1", stream_rate=8000))
    session = pipeline_session(call, engine, before)
    assert session.engine.conversation.greeting == ""  # no second greeting mid-call
    assert [t.index for t in session.core.turns] == [1]
    assert session.core.new_turn().index == 2
    said = [(m.role, m.content) for m in session.core.memory.for_llm()[1:]]
    assert said == [("assistant", "Hello!"), ("user", "Hi there"), ("assistant", "Hi, how can I")]
