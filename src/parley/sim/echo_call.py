"""A whole simulated call with the echo agent: parley started as ``parley serve`` starts it, against the
fake FreeSWITCH, over real sockets. Used by ``parley demo`` and by the end-to-end test.

Owns: the caller's script (silence through the greeting, an utterance, then talking over the echo) and
collecting what happened: ESL commands, playback events, heard milliseconds, timings, the caller's ear.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
import tempfile
import uuid as uuidlib
from dataclasses import dataclass, field, replace
from importlib.resources import files
from pathlib import Path

import numpy as np

from parley import app
from parley.agent.echo import EchoAgent, EchoResult
from parley.audio.pcm import Int16Array
from parley.audio.wav import read_wav
from parley.config import (
    AgentSettings,
    AudioStreamSettings,
    EslSettings,
    FreeSwitchSettings,
    PlaybackSettings,
    Settings,
)
from parley.freeswitch.stream_token import stream_token
from parley.sim.fake_freeswitch import FakeCall, FakeFreeSwitch

RATE = 8000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def packaged_wav(name: str) -> tuple[Int16Array, int]:
    with files("parley.data").joinpath(name).open("rb") as fh:
        return read_wav(fh)


@dataclass(slots=True)
class EchoCallResult:
    call_uuid: str
    result: EchoResult
    fake_call: FakeCall
    commands: list[str]
    caller_audio: Int16Array
    heard: Int16Array
    spool_left: list[Path]
    calls_left: int
    timeline: list[tuple[float, str]] = field(default_factory=list)


def caller_script(greeting_s: float) -> tuple[Int16Array, float, float]:
    """Silence through the greeting, utterance 1, a pause, then utterance 2 over the echo of 1.

    Returns the audio and the offsets (s) where utterances 1 and 2 start.
    """
    one, r1 = packaged_wav("caller_1.wav")
    two, r2 = packaged_wav("caller_2.wav")
    assert r1 == r2 == RATE
    start_one = greeting_s + 0.6
    # utterance 1 ends, 600 ms of silence ends it, its echo starts ~20 ms later: talk 500 ms into the echo
    start_two = start_one + one.size / RATE + 0.6 + 0.5
    total = start_two + two.size / RATE + 1.5
    audio = np.zeros(int(total * RATE), dtype=np.int16)
    i1, i2 = int(start_one * RATE), int(start_two * RATE)
    audio[i1 : i1 + one.size] = one
    audio[i2 : i2 + two.size] = two
    return audio, start_one, start_two


async def run_echo_call(spool_dir: Path | None = None, *, event_format: str = "json") -> EchoCallResult:
    spool = spool_dir or Path(tempfile.mkdtemp(prefix="parley-spool-"))
    password = secrets.token_urlsafe(24)
    secret = secrets.token_urlsafe(24)
    port = free_port()
    settings = Settings(
        freeswitch=FreeSwitchSettings(
            esl=EslSettings(port=0, password=password, event_format=event_format),  # type: ignore[arg-type]
            audio_stream=AudioStreamSettings(listen_port=port, token_secret=secret),
            playback=PlaybackSettings(spool_dir=str(spool)),
        ),
        agent=AgentSettings(utterance_silence_ms=600),
    )
    agent = EchoAgent(settings.agent)
    greeting_s = agent.greeting[0].size / agent.greeting[1]
    caller_audio, _, _ = caller_script(greeting_s)
    fs = FakeFreeSwitch(password=password)
    await fs.start()
    try:
        settings = replace(
            settings,
            freeswitch=replace(settings.freeswitch, esl=replace(settings.freeswitch.esl, port=fs.esl_port)),
        )
        running = await app.start(settings, agent)
        try:
            call_uuid = str(uuidlib.uuid4())
            call = await fs.place_call(
                ws_url=f"ws://127.0.0.1:{port}/call/{{uuid}}",
                uuid=call_uuid,
                caller_audio=caller_audio,
                caller_rate=RATE,
                extra_headers={"Authorization": f"Bearer {stream_token(secret, call_uuid)}"},
            )
            await asyncio.sleep(caller_audio.size / RATE + 0.3)
            await call.hangup()
            held = running.bridge.calls.get(call_uuid)
            if held is not None:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(5):
                        await held.retired.wait()
            calls_left = len(running.bridge.calls)
        finally:
            await running.close()
        commands = [c.decode(errors="replace") for c in fs.commands]
        heard = call.heard_audio()
    finally:
        await fs.close()
    left = [p for p in spool.rglob("*") if p.is_file()]
    return EchoCallResult(
        call_uuid=call_uuid,
        result=agent.results.get(call_uuid) or EchoResult(),
        fake_call=call,
        commands=commands,
        caller_audio=caller_audio,
        heard=heard,
        spool_left=left,
        calls_left=calls_left,
    )
