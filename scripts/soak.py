#!/usr/bin/env python3
"""Soak: keep N calls up for a long time, hanging each up after a while and placing a new one, and watch for
leaks. Not part of the test suite (it runs for minutes to hours); prints a table as it goes and a verdict.

    .venv/bin/python scripts/soak.py --calls 50 --minutes 30 --call-s 60

parley runs as ``parley serve`` composes it (app.start, the ConversationAgent, real sockets, the real
Silero/webrtcvad VAD and turn machine, chunked playback over ESL) with instant benchmark providers (the
engine of ``parley bench density``) and a real SQLite records store; the fake FreeSWITCH places the calls
in the same process (so RSS is both; the growth is what matters: the fake forgets each call once it has
hung up, so what grows is parley). Every ``--sample-s`` it prints RSS, open
file descriptors, asyncio tasks, calls placed/ended/recorded. At the end: RSS growth from the first sample
after warm-up to the last, records lost (calls placed minus calls recorded as ended), and fds and tasks
left once every call has ended, against the targets of the faults issue (RSS growth < 5 %, 0 lost records,
0 leaked fds or tasks).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import secrets
import sys
import tempfile
import time
import uuid as uuidlib
from pathlib import Path

import numpy as np

from parley import app
from parley.bench.density import instant_engine
from parley.bench.host import raise_fd_limit, rss_mb
from parley.bench.load_proc import FIRST_SPEECH_S, NOISE_RMS, PERIOD_S, STREAM_RATE, caller_timeline
from parley.config import AudioStreamSettings, EslSettings, FreeSwitchSettings, PlaybackSettings, Settings
from parley.freeswitch.stream_token import stream_token
from parley.observe.records import RecordStore
from parley.sim.echo_call import packaged_wav
from parley.sim.fake_freeswitch import FakeCall, FakeFreeSwitch
from parley.sim.fake_playback import resample


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def soak(calls: int, minutes: float, call_s: float, sample_s: float, seed: int) -> int:
    raise_fd_limit(calls * 4)
    rng, pick = np.random.default_rng(seed), random.Random(seed)
    raw, rate = packaged_wav("caller_1.wav")
    speech = resample(raw, rate, STREAM_RATE)
    n = round((call_s + 5) * STREAM_RATE)
    line = np.rint(rng.normal(0.0, NOISE_RMS, n + round(PERIOD_S * STREAM_RATE))).astype(np.int16)
    engine, _silero = await asyncio.to_thread(instant_engine, "batched")
    password, secret = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    fs = FakeFreeSwitch(password=password)
    await fs.start()
    with tempfile.TemporaryDirectory(prefix="parley-soak-") as tmp:
        url = f"sqlite+aiosqlite:///{Path(tmp) / 'calls.db'}"
        settings = Settings(freeswitch=FreeSwitchSettings(
            esl=EslSettings(port=fs.esl_port, password=password),
            audio_stream=AudioStreamSettings(listen_port=0, token_secret=secret),
            playback=PlaybackSettings(spool_dir=str(Path(tmp) / "spool")),
        ), conversation=engine.conversation)
        async with RecordStore.open(url) as store:
            agent = app.ConversationAgent(engine, store)
            running = await app.start(settings, agent)
            ws_url = f"ws://127.0.0.1:{running.server.port}/call/{{uuid}}"
            placed = ended = 0
            live: set[FakeCall] = set()

            async def one_call() -> None:
                nonlocal placed, ended
                shift = round(pick.uniform(0.0, PERIOD_S) * STREAM_RATE)
                audio = caller_timeline(speech, line[shift: shift + n], FIRST_SPEECH_S, PERIOD_S)
                call_uuid = str(uuidlib.uuid4())
                call = await fs.place_call(
                    ws_url=ws_url, caller_audio=audio, caller_rate=STREAM_RATE, stream_rate=STREAM_RATE,
                    uuid=call_uuid, extra_headers={"Authorization": f"Bearer {stream_token(secret, call_uuid)}"},
                    channel_vars={"parley_agent": "true"},
                )
                placed += 1
                live.add(call)
                try:
                    await asyncio.sleep(call_s * pick.uniform(0.8, 1.2))
                    await call.hangup()
                finally:
                    live.discard(call)
                    ended += 1
                    if call.hungup:
                        fs.forget(call_uuid)  # the fake keeps every call's audio otherwise: not parley's memory

            async def keep_up(deadline: float) -> None:
                running_calls: set[asyncio.Task[None]] = set()
                while time.monotonic() < deadline:
                    while len(running_calls) < calls and time.monotonic() < deadline:
                        task = asyncio.ensure_future(one_call())
                        running_calls.add(task)
                        task.add_done_callback(running_calls.discard)
                        await asyncio.sleep(0.05)
                    await asyncio.sleep(0.2)
                await asyncio.gather(*running_calls, return_exceptions=True)

            t0 = time.monotonic()
            deadline = t0 + minutes * 60
            load = asyncio.ensure_future(keep_up(deadline))
            samples: list[tuple[float, float, int, int, int, int]] = []
            header = f"{'min':>6} {'RSS MB':>8} {'fds':>6} {'tasks':>6} {'placed':>7} {'ended':>6} {'live':>5}"
            print(header, flush=True)
            while not load.done():
                await asyncio.wait({load}, timeout=sample_s)
                row = (round((time.monotonic() - t0) / 60, 2), rss_mb(), open_fds(), len(asyncio.all_tasks()),
                       placed, ended)
                samples.append(row)
                fs.commands.clear()  # the fake logs every ESL command for tests: not parley's memory
                print(f"{row[0]:>6} {row[1]:>8.1f} {row[2]:>6} {row[3]:>6} {row[4]:>7} {row[5]:>6} {len(live):>5}",
                      flush=True)
            async with asyncio.timeout(30):  # every call retired
                await asyncio.gather(*(c.retired.wait() for c in list(running.bridge.calls.values())))
            await store.flush(10.0)
            recorded = sum(1 for c in await store.list_calls(limit=1_000_000) if c.status != "in_progress")
            fds_after, tasks_after = open_fds(), len(asyncio.all_tasks())
            await running.close()
    await fs.close()
    # warm-up: three call lifetimes (the first cohort of calls has ended and been replaced twice, so every
    # allocation a whole call makes has happened), at most a third of the run
    warm_min = min(3 * call_s * 1.2 / 60, minutes / 3)
    warm = next((s for s in samples if s[0] >= warm_min), samples[0])
    growth = 100.0 * (samples[-1][1] - warm[1]) / warm[1]
    after = [s for s in samples if s[0] >= warm[0] and s[5] < placed]  # while calls were up
    if len(after) >= 3:
        t = np.array([s[0] for s in after])
        rss = np.array([s[1] for s in after])
        slope = float(np.polyfit(t, rss, 1)[0])  # MB per minute
        calls_per_min = (after[-1][4] - after[0][4]) / max(after[-1][0] - after[0][0], 1e-9)
        print(f"RSS slope after warm-up: {slope * 60:+.1f} MB/h, {1024 * slope / max(calls_per_min, 1e-9):+.1f} KB "
              f"per call placed")
    idle_fds, idle_tasks = samples[0][2], samples[0][3]
    print(f"\nRSS growth after warm-up ({warm[0]:.0f} min, {warm[1]:.0f} MB -> {samples[-1][1]:.0f} MB): "
          f"{growth:+.1f} % (target < 5 %)")
    print(f"calls placed {placed}, recorded as ended {recorded}: lost {placed - recorded} (target 0)")
    print(f"with every call ended: {fds_after} fds, {tasks_after} tasks "
          f"(first sample, with calls up: {idle_fds} fds, {idle_tasks} tasks)")
    return 0 if growth < 5.0 and placed == recorded else 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=50)
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--call-s", type=float, default=60.0, help="how long each call lasts (+-20 %%)")
    p.add_argument("--sample-s", type=float, default=60.0)
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args()
    return asyncio.run(soak(a.calls, a.minutes, a.call_s, a.sample_s, a.seed))


if __name__ == "__main__":
    sys.exit(main())
