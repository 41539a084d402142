"""Chunked playback: chunk sizes, codec-rate continuity, heard position, barge-in and the three modes.

The ESL side here is a recorder of the serialized commands (the real client is tested against the fake
FreeSWITCH over TCP); events are built the way FreeSWITCH sends them (see the recorded PLAYBACK_STOP).
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re
import time
import wave
from pathlib import Path

import numpy as np
import pytest

from parley.audio.resample import StreamResampler
from parley.config import PlaybackSettings
from parley.errors import EslCommandError, PlaybackError
from parley.freeswitch import esl_protocol as esl
from parley.freeswitch.esl_client import Sent
from parley.freeswitch.playback import CallPlayback

UUID = "b8176bcb-105f-470a-94d0-a5c506ed4e11"


class RecordingEsl:
    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.fail_next: str | None = None

    async def send(self, data: bytes, *, timeout: float | None = None) -> Sent:
        self.sent.append(data)
        return Sent(esl.ApiResponse("+OK\n", {"Content-Type": "api/response"}), time.monotonic())

    async def sendmsg(self, data: bytes, *, timeout: float | None = None) -> Sent:
        self.sent.append(data)
        if self.fail_next:
            reply, self.fail_next = self.fail_next, None
            raise EslCommandError("sendmsg", reply)
        return Sent(esl.CommandReply("+OK", {}), time.monotonic())

    async def api(self, command: str, *, timeout: float | None = None, check: bool = True) -> str:
        self.sent.append(esl.api_command(command))
        return "+OK Message sent\n"

    def commands(self) -> list[str]:
        return [d.decode() for d in self.sent]


def tone(seconds: float, rate: int, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (8000 * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def event(name: str, arg: str, ts_us: int, **extra: str) -> esl.Event:
    m = re.match(r"\{([^}]*)\}", arg)
    assert m
    tags = dict(kv.split("=") for kv in m.group(1).split(","))
    headers = {"Event-Name": name, "Unique-ID": UUID, "Event-Date-Timestamp": str(ts_us),
               "Playback-File-Path": arg, **tags, **extra}
    return esl.Event(name, headers, None, "json")


def play_args(rec: RecordingEsl) -> list[str]:
    return re.findall(r"execute-app-arg: (.*)", "".join(rec.commands()))


def read_chunk(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path)) as w:
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2"), w.getframerate()


@pytest.fixture
def settings(tmp_path: Path) -> PlaybackSettings:
    return PlaybackSettings(spool_dir=str(tmp_path / "spool"), freeswitch_spool_dir="/fs/view/spool")


async def test_chunks_are_small_first_then_regular_at_the_codec_rate(settings: PlaybackSettings) -> None:
    rec = RecordingEsl()
    pb = CallPlayback(UUID, rec, settings, codec_rate=8000)
    utt = pb.utterance(16000, "u1")
    source = tone(1.5, 16000)
    for i in range(0, source.size, 320):  # 20 ms pieces, as a streaming TTS would deliver
        await utt.write(source[i : i + 320])
    await utt.finish()
    args = play_args(rec)
    assert len(args) == 4
    assert args[0] == f"{{parley_utterance=u1,parley_chunk=0}}/fs/view/spool/{UUID}/u1_0000.wav"
    sizes = []
    for c in utt.chunks:
        data, rate = read_chunk(c.path)
        assert rate == 8000
        sizes.append(data.size)
    assert sizes[:3] == [1600, 4800, 4800]  # 200 ms first, then 600 ms, at 8 kHz
    assert sum(sizes) == pytest.approx(12000, abs=40)  # 1.5 s, the resampler's delay flushed at the end
    text = rec.commands()[0]
    assert text.startswith(f"sendmsg {UUID}\ncall-command: execute\nexecute-app-name: playback\n")
    assert "event-lock: true\n" in text and "Event-UUID: " in text and "lead-frames" not in text


async def test_one_continuous_resampler_makes_chunks_join_sample_exactly(settings: PlaybackSettings) -> None:
    pb = CallPlayback(UUID, RecordingEsl(), settings, codec_rate=8000)
    source = tone(2.0, 16000, 523.0)
    utt = pb.utterance(16000, "u1")
    for i in range(0, source.size, 441):  # odd piece sizes
        await utt.write(source[i : i + 441])
    await utt.finish()
    joined = np.concatenate([read_chunk(c.path)[0] for c in utt.chunks]).astype(int)
    ref = StreamResampler(16000, 8000)
    whole = np.concatenate([ref.process(source), ref.flush()])
    assert joined.size == whole.size
    assert np.abs(joined - whole).max() <= 2  # float rounding of soxr's block sizes, nothing more
    # what a resampler restarted per chunk would have produced: a burst at every boundary
    per_chunk = []
    pos = 0
    for c in utt.chunks:
        n = read_chunk(c.path)[0].size * 2
        r = StreamResampler(16000, 8000)
        per_chunk.append(np.concatenate([r.process(source[pos : pos + n]), r.flush()]))
        pos += n
    restarted = np.concatenate(per_chunk)[: whole.size].astype(int)
    boundary = utt.chunks[0].samples
    assert np.abs(restarted[boundary - 8 : boundary + 8] - whole[boundary - 8 : boundary + 8]).max() > 200


async def test_heard_position_comes_from_playback_event_timestamps(settings: PlaybackSettings) -> None:
    rec = RecordingEsl()
    pb = CallPlayback(UUID, rec, settings, codec_rate=8000)
    utt = await pb.play(tone(1.4, 8000), 8000, utterance_id="u1")
    a0, a1, _a2 = play_args(rec)
    t = 1_795_477_783_000_000
    pb.handle_event(event("PLAYBACK_START", a0, t))
    pb.handle_event(event("PLAYBACK_STOP", a0, t + 200_000, **{"Playback-Status": "done"}))
    pb.handle_event(event("PLAYBACK_START", a1, t + 200_000))
    # FreeSWITCH's variable_playback_ms is read-ahead (2048 here); the timestamps say 250 ms played
    pb.handle_event(event("PLAYBACK_STOP", a1, t + 450_000, **{"Playback-Status": "break",
                                                                  "variable_playback_ms": "2048"}))
    assert not utt.chunks[0].path.exists() and not utt.chunks[1].path.exists()  # removed when played
    assert utt.chunks[2].status == "queued"
    assert utt.heard_ms() == pytest.approx(450.0)


async def test_barge_in_breaks_all_flushes_the_queue_and_reports_heard(settings: PlaybackSettings) -> None:
    rec = RecordingEsl()
    pb = CallPlayback(UUID, rec, settings, codec_rate=8000)
    utt = await pb.play(tone(3.0, 8000), 8000, utterance_id="u9")
    args = play_args(rec)
    t = 1_795_477_783_000_000
    pb.handle_event(event("PLAYBACK_START", args[0], t))
    pb.handle_event(event("PLAYBACK_STOP", args[0], t + 200_000, **{"Playback-Status": "done"}))
    pb.handle_event(event("PLAYBACK_START", args[1], t + 200_000))
    assert pb.is_playing

    async def freeswitch_answers() -> None:  # the STOP of the playing chunk arrives ~21 ms after the break
        while not any(b"uuid_break" in c for c in rec.sent):
            await asyncio.sleep(0.001)
        pb.handle_event(event("PLAYBACK_STOP", args[1], t + 513_000, **{"Playback-Status": "break"}))

    answer = asyncio.create_task(freeswitch_answers())
    barge = await pb.barge_in()
    await answer
    assert barge is not None
    assert rec.sent[-1] == f"api uuid_break {UUID} all\n\n".encode()
    assert barge.stopped_at is not None and barge.break_written_at >= barge.requested_at
    assert barge.heard_ms == pytest.approx(513.0)
    assert [c.status for c in utt.chunks][:2] == ["done", "break"]
    assert all(c.status == "flushed" for c in utt.chunks[2:])
    assert not any(c.path.exists() for c in utt.chunks)  # flushed chunks will never play: deleted
    assert utt.done and utt.report().interrupted and not pb.is_playing
    n = len(rec.sent)
    await utt.write(tone(0.5, 8000))  # a producer still writing after the break is ignored
    assert len(rec.sent) == n


async def test_barge_in_with_nothing_playing_does_nothing(settings: PlaybackSettings) -> None:
    rec = RecordingEsl()
    assert await CallPlayback(UUID, rec, settings).barge_in() is None
    assert rec.sent == []


async def test_close_removes_the_call_spool(settings: PlaybackSettings) -> None:
    pb = CallPlayback(UUID, RecordingEsl(), settings)
    await pb.play(tone(1.0, 8000), 8000)
    spool = Path(settings.spool_dir) / UUID
    assert any(spool.iterdir())
    await pb.close()
    assert not spool.exists()


async def test_broadcast_mode_uses_uuid_broadcast(settings: PlaybackSettings) -> None:
    rec = RecordingEsl()
    s = PlaybackSettings(mode="broadcast", spool_dir=settings.spool_dir)
    await CallPlayback(UUID, rec, s).play(tone(0.3, 8000), 8000, utterance_id="b")
    first = rec.commands()[0]
    assert re.fullmatch(rf"api uuid_broadcast {UUID} \{{parley_utterance=b,parley_chunk=0\}}\S+/b_0000\.wav aleg\n\n",
                        first)


async def test_remote_mode_sends_wav_over_the_stream_and_plays_the_named_file(settings: PlaybackSettings) -> None:
    rec = RecordingEsl()
    sent_texts: list[str] = []
    pb: CallPlayback

    async def send_text(text: str) -> None:  # mod_audio_stream writes the file and fires ::play
        sent_texts.append(text)
        data = json.loads(text)["data"]
        body = {k: v for k, v in data.items() if k != "audioData"}
        body["file"] = f"/tmp/{UUID}_{len(sent_texts) - 1}.tmp.wav"
        ev = esl.Event("CUSTOM", {"Event-Name": "CUSTOM", "Event-Subclass": "mod_audio_stream::play",
                                  "Unique-ID": UUID}, json.dumps(body), "plain")
        asyncio.get_running_loop().call_soon(pb.handle_event, ev)

    pb = CallPlayback(UUID, rec, PlaybackSettings(mode="remote", spool_dir=settings.spool_dir),
                      send_stream_text=send_text)
    await pb.play(tone(0.9, 8000), 8000, utterance_id="r")
    assert len(sent_texts) == 3  # 200 + 600 + 100 ms
    msg = json.loads(sent_texts[0])
    assert msg["type"] == "streamAudio" and msg["data"]["audioDataType"] == "wav"
    with wave.open(io.BytesIO(base64.b64decode(msg["data"]["audioData"]))) as w:
        assert w.getframerate() == 8000 and w.getnframes() == 1600
    assert play_args(rec) == [f"{{parley_utterance=r,parley_chunk={i}}}/tmp/{UUID}_{i}.tmp.wav" for i in range(3)]
    assert not (Path(settings.spool_dir) / UUID).exists()  # nothing written locally


async def test_file_not_found_marks_the_chunk_failed(settings: PlaybackSettings) -> None:
    rec = RecordingEsl()
    pb = CallPlayback(UUID, rec, settings)
    utt = await pb.play(tone(0.1, 8000), 8000, utterance_id="f")
    arg = play_args(rec)[0]
    ev = esl.Event("CHANNEL_EXECUTE_COMPLETE", {"Event-Name": "CHANNEL_EXECUTE_COMPLETE", "Unique-ID": UUID,
                                               "Application": "playback", "Application-Data": arg,
                                               "Application-Response": "FILE NOT FOUND"}, None, "json")
    pb.handle_event(ev)
    assert utt.chunks[0].status == "failed" and utt.done and pb.stats.failed == 1


async def test_rejected_command_raises_a_playback_error(settings: PlaybackSettings) -> None:
    rec = RecordingEsl()
    rec.fail_next = "-ERR something odd"
    with pytest.raises(PlaybackError, match="could not queue chunk"):
        await CallPlayback(UUID, rec, settings).play(tone(0.1, 8000), 8000)


async def test_a_low_water_flush_that_finds_the_audio_already_sent_does_nothing(
    settings: PlaybackSettings, caplog: pytest.LogCaptureFixture
) -> None:
    """The low-water timer's task may run after write()/finish() already queued the pending audio."""
    pb = CallPlayback(UUID, RecordingEsl(), settings, codec_rate=8000)
    utt = pb.utterance(8000, "u1")
    await utt.write(tone(0.1, 8000))  # below the 200 ms first chunk: stays pending
    utt._low_water()  # the timer fires: a flush task is created but has not run yet
    task = utt._flush_task
    assert task is not None
    await utt.finish()  # queues the same pending audio first
    await asyncio.gather(task)  # used to fail with IndexError on the emptied pending list
    assert "low-water flush failed" not in caplog.text
    assert sum(c.samples for c in utt.chunks) == 800  # every sample queued exactly once


async def test_a_spool_that_cannot_be_written_is_a_spool_error_and_nothing_is_queued(tmp_path: Path) -> None:
    from parley.errors import SpoolError

    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the spool directory should be")
    rec = RecordingEsl()
    pb = CallPlayback(UUID, rec, PlaybackSettings(spool_dir=str(blocker)), codec_rate=8000)
    utt = pb.utterance(8000)
    with pytest.raises(SpoolError, match=r"cannot write .* to the spool"):
        await utt.write(tone(0.5, 8000))
    assert rec.sent == [] and pb.stats.failed == 1
    assert isinstance(SpoolError("x"), PlaybackError)  # the session's apology path catches it as such


async def test_play_file_plays_freeswitchs_own_file_and_never_removes_it(tmp_path: Path) -> None:
    theirs = tmp_path / "sounds" / "apology.wav"
    theirs.parent.mkdir()
    theirs.write_bytes(b"RIFF")
    rec = RecordingEsl()
    pb = CallPlayback(UUID, rec, PlaybackSettings(spool_dir=str(tmp_path / "spool")), codec_rate=8000)
    utt = await pb.play_file(str(theirs))
    [arg] = play_args(rec)
    assert arg.endswith(str(theirs)) and "parley_utterance=" in arg
    pb.handle_event(event("PLAYBACK_START", arg, 1_000_000))
    pb.handle_event(event("PLAYBACK_STOP", arg, 3_000_000, **{"Playback-Status": "done"}))
    report = await utt.wait_played(timeout=1)
    assert report.complete and utt.started_at is not None
    assert theirs.exists()
