"""A whole call through the fake FreeSWITCH over real sockets: WebSocket audio in, utterance detected by
energy, reply streamed as chunks with sendmsg, PLAYBACK events tracked, barge-in with ``uuid_break all``
mid-sentence, heard milliseconds reported, hangup, spool empty."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import numpy as np
import pytest

from parley.sim.echo_call import EchoCallResult, run_echo_call


@pytest.fixture(scope="module", params=["json", "plain"])
def call(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> EchoCallResult:
    """One ~12 s call per event format, shared by the assertions below."""
    return asyncio.run(run_echo_call(tmp_path_factory.mktemp("spool"), event_format=request.param))


def test_parley_authenticated_subscribed_and_set_the_call_up(call: EchoCallResult) -> None:
    cmds = call.commands
    assert cmds[0].startswith("auth ") and cmds[1].startswith("event ")
    assert "BACKGROUND_JOB" in cmds[1] and "CUSTOM mod_audio_stream::connect" in cmds[1]
    assert f"api uuid_setvar {call.call_uuid} playback_terminators none\n\n" in cmds
    assert call.fake_call.variables.get("playback_terminators") == "none"


def test_replies_are_streamed_as_tagged_sendmsg_chunks(call: EchoCallResult) -> None:
    plays = [c for c in call.commands if c.startswith(f"sendmsg {call.call_uuid}\n")]
    assert len(plays) >= 10
    for c in plays:
        assert "call-command: execute\nexecute-app-name: playback\n" in c
        assert "event-lock: true\n" in c and "Event-UUID: " in c and "lead-frames" not in c
        assert re.search(r"execute-app-arg: \{parley_utterance=\w+,parley_chunk=\d+\}/", c)
    greeting = call.result.greeting
    assert greeting is not None and greeting.report().complete
    first = greeting.chunks[0]
    assert first.duration_ms == pytest.approx(200.0)  # the first chunk is small
    assert all(c.rate == 8000 for c in greeting.chunks)  # written at the PCMU call's rate


def test_playback_events_were_tracked_per_chunk(call: EchoCallResult) -> None:
    fake = {p.path: p for p in call.fake_call.playbacks}
    greeting = call.result.greeting
    assert greeting is not None
    for chunk in greeting.chunks:
        assert chunk.status == "done" and chunk.started_at is not None and chunk.fs_start_us is not None
    assert all(p.status == "done" for p in fake.values() if "greeting" in p.path)
    assert greeting.heard_ms() == pytest.approx(sum(c.duration_ms for c in greeting.chunks))


def test_caller_utterances_were_detected_and_echoed(call: EchoCallResult) -> None:
    assert len(call.result.echoes) == 2
    for echo in call.result.echoes:
        assert echo.utterance.chunks  # the echo went out
        assert echo.utterance.chunks[0].queued_at is not None


def test_barge_in_broke_all_mid_sentence_and_reported_what_was_heard(call: EchoCallResult) -> None:
    assert len(call.result.barge_ins) == 1
    timing = call.result.barge_ins[0]
    barge = timing.barge
    assert f"api uuid_break {call.call_uuid} all\n\n" in call.commands
    assert barge.stopped_at is not None
    (report,) = barge.utterances
    echo = call.result.echoes[0].utterance
    assert report.utterance_id == echo.id and report.interrupted and not report.complete
    assert 0 < report.heard_ms < report.queued_ms
    # what parley says was heard is what the fake FreeSWITCH played (its event clock vs its playout record)
    played = sum(
        (p.stopped_at - p.started_at) * 1000
        for p in call.fake_call.playbacks
        if f"parley_utterance={echo.id}," in p.path and p.started_at is not None and p.stopped_at is not None
    )
    assert report.heard_ms == pytest.approx(played, abs=20.0)  # within one 20 ms frame
    flushed = [p for p in call.fake_call.playbacks if f"parley_utterance={echo.id}," in p.path and p.flushed]
    assert flushed and all(p.started_at is None for p in flushed)
    assert any(c.status == "flushed" for c in echo.chunks)
    assert barge.break_written_at >= timing.speech_onset_t


def test_the_caller_heard_the_greeting_and_then_silence_after_the_break(call: EchoCallResult) -> None:
    heard = call.heard.astype(np.int32)
    greeting = call.result.greeting
    assert greeting is not None
    n = int(greeting.report().queued_ms * 8)
    assert np.abs(heard[:n]).max() > 1000
    echo = call.result.echoes[0].utterance
    heard_ms = echo.heard_ms()
    # the echo's audio stops within a frame of the break: nothing of the flushed chunks reaches the caller
    start = next(p.started_at for p in call.fake_call.playbacks if f"parley_utterance={echo.id}," in p.path)
    t0 = call.fake_call.answered_at
    assert t0 is not None
    stop_i = int((start - t0 + heard_ms / 1000 + 0.04) * 8000)
    next_echo = call.result.echoes[1].utterance
    next_start = next(p.started_at for p in call.fake_call.playbacks if f"parley_utterance={next_echo.id}," in p.path)
    next_i = int((next_start - t0) * 8000)
    assert stop_i < next_i
    assert np.abs(heard[stop_i:next_i]).max() == 0


def test_hangup_retired_the_call_and_emptied_the_spool(call: EchoCallResult, tmp_path: Path) -> None:
    assert call.fake_call.hungup
    assert call.calls_left == 0
    assert call.spool_left == []
    assert call.commands[-1] == "exit\n\n"
