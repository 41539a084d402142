"""The density benchmark's load generator: a fake FreeSWITCH placing N talking calls, in its own process.

Owns: running :class:`~parley.sim.fake_freeswitch.FakeFreeSwitch` outside the parley process (so the
parley process's CPU and memory are measured alone), the callers' audio (a recorded speech excerpt,
``parley/data/caller_1.wav``, repeated every ``period_s`` over -70 dBFS line noise, each call at its own
random offset so turns do not line up across calls), placing the calls, holding them for the measured
window and hanging them up. Must not import or know parley's engine; it only speaks the wire protocols.

Run by :mod:`parley.bench.density`::

    PARLEY_BENCH_ESL_PASSWORD=... PARLEY_BENCH_STREAM_SECRET=... \\
        python -m parley.bench.load_proc --calls 50 --seconds 20

Secrets come from the environment, not argv (``ps`` shows argv). Protocol with the parent, one JSON
object per stdout line: ``{"event": "ready", "esl_port": N}``; then it waits for one line on stdin,
``{"ws_url": "ws://127.0.0.1:PORT/call/{uuid}"}``, sent once parley is up and connected to it; places the
calls; ``{"event": "placed", ...}``; holds them ``--seconds``;
``{"event": "window_end"}``; keeps the calls up one answer slot more (the next turn's start) and hangs
them up; ``{"event": "done", ...}`` with its own CPU use and the
caller turns answered in the window (:mod:`parley.bench.answers`: counted when the answer's playback
starts, as the caller hears it, whichever process or worker answered); and stops its fake FreeSWITCH when
stdin closes (after parley has disconnected from it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
import uuid as uuidlib
from collections.abc import Sequence

import numpy as np

from parley.audio.pcm import Int16Array
from parley.bench.answers import CallTurns, all_answers
from parley.bench.host import cpu_ms, raise_fd_limit
from parley.freeswitch.stream_token import stream_token
from parley.sim.echo_call import packaged_wav
from parley.sim.fake_freeswitch import FakeCall, FakeFreeSwitch
from parley.sim.fake_playback import resample

STREAM_RATE = 16000
PASSWORD_ENV = "PARLEY_BENCH_ESL_PASSWORD"
SECRET_ENV = "PARLEY_BENCH_STREAM_SECRET"
PERIOD_S = 6.0  # caller speech (1.3 s) + endpoint (0.7 s) + the agent's reply (~2.3 s) + a gap
FIRST_SPEECH_S = 1.0  # after the (short) greeting
NOISE_RMS = 10.0  # int16 units: about -70 dBFS, an idle phone line
PLACE_SPACING_S = 0.02  # calls are placed 50 per second at most


def caller_timeline(speech: Int16Array, noise: Int16Array, offset_s: float, period_s: float) -> Int16Array:
    """Line ``noise`` with ``speech`` starting at ``offset_s`` and every ``period_s`` after."""
    out = noise.astype(np.int32)
    n = out.size
    start = offset_s
    while (i := round(start * STREAM_RATE)) < n:
        j = min(n, i + speech.size)
        out[i:j] += speech[: j - i]
        start += period_s
    return np.clip(out, -32768, 32767).astype(np.int16)


def _emit(event: str, **fields: object) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


async def run(calls: int, seconds: float, password: str, secret: str, seed: int) -> None:
    loop = asyncio.get_running_loop()
    rng = np.random.default_rng(seed)
    pick = random.Random(seed)
    raw, rate = packaged_wav("caller_1.wav")
    speech = resample(raw, rate, STREAM_RATE)
    ramp_s = calls * PLACE_SPACING_S
    total_s = FIRST_SPEECH_S + PERIOD_S + ramp_s + seconds + 10.0
    # every call's audio is made before the first call starts: no stalls in this loop while calls stream
    n = round(total_s * STREAM_RATE)
    line = np.rint(rng.normal(0.0, NOISE_RMS, n + round(PERIOD_S * STREAM_RATE))).astype(np.int16)
    audios, offsets = [], []
    for _ in range(calls):
        shift = round(pick.uniform(0.0, PERIOD_S) * STREAM_RATE)
        offsets.append(FIRST_SPEECH_S + shift / STREAM_RATE)
        audios.append(caller_timeline(speech, line[shift : shift + n], offsets[-1], PERIOD_S))
    raise_fd_limit(calls)
    fs = FakeFreeSwitch(password=password)
    await fs.start()
    placed: list[FakeCall] = []
    try:
        _emit("ready", esl_port=fs.esl_port)
        go = await loop.run_in_executor(None, sys.stdin.readline)
        if not go:
            return  # the parent went away before the go
        ws_url = str(json.loads(go)["ws_url"])
        cpu0, t0 = cpu_ms(), time.monotonic()
        for i in range(calls):
            await asyncio.sleep(max(0.0, t0 + i * PLACE_SPACING_S - time.monotonic()))
            call_uuid = str(uuidlib.uuid4())
            placed.append(await fs.place_call(
                ws_url=ws_url,
                caller_audio=audios[i],
                caller_rate=STREAM_RATE,
                stream_rate=STREAM_RATE,
                uuid=call_uuid,
                extra_headers={"Authorization": f"Bearer {stream_token(secret, call_uuid)}"},
                channel_vars={"parley_agent": "true"},
            ))
        streaming = sum(1 for c in placed if c.audio_stream is not None)
        _emit("placed", calls=len(placed), streaming=streaming, ramp_s=round(time.monotonic() - t0, 3))
        cpu1, t1 = cpu_ms(), time.monotonic()
        await asyncio.sleep(seconds)
        cpu2, t2 = cpu_ms(), time.monotonic()
        _emit("window_end")
        await asyncio.sleep(PERIOD_S - speech.size / STREAM_RATE)  # the window's last turns get their answer slot
        await asyncio.gather(*(c.hangup() for c in placed if not c.hungup), return_exceptions=True)
        answers = all_answers(_turns(placed, offsets, speech.size / STREAM_RATE), (t1, t2))
        plays = sum(len(c.playbacks) for c in placed)
        breaks = sum(1 for c in placed for p in c.playbacks if p.status == "break")
        _emit(
            "done",
            calls=len(placed),
            playbacks=plays,
            playbacks_broken=breaks,
            frames_sent=sum(s.frames_sent for c in placed for s in c.streams),
            ramp_cpu_ms=round(cpu1 - cpu0, 1),
            window_cpu_ms=round(cpu2 - cpu1, 1),
            window_s=round(t2 - t1, 3),
            turns=answers.turns,
            answered=answers.answered,
            answer_ms=[round(x, 1) for x in answers.latencies_ms],
        )
        await loop.run_in_executor(None, sys.stdin.readline)  # parley disconnects first, then stdin closes
    finally:
        await fs.close()


def _turns(placed: Sequence[FakeCall], offsets: Sequence[float], speech_s: float) -> list[CallTurns]:
    out = []
    for call, offset in zip(placed, offsets, strict=True):
        stream = next((s for s in call.streams if s.first_frame_at is not None), None)  # detached at hangup
        if stream is None or stream.first_frame_at is None:
            continue  # never streamed: its turns are not parley's to answer (the ramp reports it)
        out.append(CallTurns(
            origin=stream.first_frame_at - stream.frame_s,  # frame 0 leaves once its 20 ms have been read
            offset_s=offset, period_s=PERIOD_S, speech_s=speech_s,
            playback_starts=tuple(p.started_at for p in call.playbacks if p.started_at is not None),
        ))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m parley.bench.load_proc", description="parley bench load generator")
    p.add_argument("--calls", type=int, required=True)
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    password, secret = os.environ.get(PASSWORD_ENV, ""), os.environ.get(SECRET_ENV, "")
    if not password or not secret:
        print(f"load_proc: set {PASSWORD_ENV} and {SECRET_ENV}", file=sys.stderr)
        return 2
    asyncio.run(run(args.calls, args.seconds, password, secret, args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
