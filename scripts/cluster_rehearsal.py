#!/usr/bin/env python3
"""A local cluster rehearsal (issue 12 item 6): PostgreSQL, two fake FreeSWITCH nodes and two parley workers
on this machine; calls through both nodes; one worker drained mid-call; then the checks, as a table.

    .venv/bin/python scripts/cluster_rehearsal.py --calls-per-node 2 [--json out/rehearsal.json]

What runs:
- PostgreSQL from Debian's ``postgresql`` package in a temporary directory (as the ``postgres`` user when
  run as root), migrated once with ``parley records migrate``; both workers write their call records there.
- Two :class:`~parley.sim.fake_freeswitch.FakeFreeSwitch` nodes (fs-a, fs-b) in this process, each with its
  own ESL port; a scripted caller per call (hibari, three semitones lower) waits for the greeting, says its
  lines one turn at a time, waits for each answer and hangs up.
- Two parley workers with the offline stack (whisper, the rules dialogue, hibari), each on its own HTTP
  port. Layout ``nodes`` (the default): ``parley serve --workers 2`` with both nodes under
  ``freeswitch.nodes``; the workers share one WebSocket port (the kernel spreads the streams of both nodes
  over them) and each holds an ESL connection to every node; the fakes are named nodes, so each stream's
  metadata says which node placed it. Layout ``node-per-worker`` (parley before ``freeswitch.nodes``): one
  ``parley serve`` per node, its node as ``freeswitch.esl``, its own WebSocket port.
- Once every call's first turn is answered, SIGTERM goes to the worker holding the most calls (a drain: its
  calls go on, it takes no new one, it exits 0 when they have ended); then the callers say their other turns.

Checks (exit 1 when one fails): no call dropped (every call placed ended by its caller after all its turns
were answered), every call record in PostgreSQL exactly once (completed, by a caller hangup), and the
workers' ``parley_calls_started_total`` (each scraped over HTTP from its own ``/metrics``) adding up to the
calls placed and to each worker's own records. Exit 77 when PostgreSQL cannot be started here. No timing is
asserted; the timeouts only bound a hang.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import sys
import tempfile
import time
import uuid as uuidlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from parley.audio.pcm import Int16Array
from parley.audio.resample import resample
from parley.bench import write_json
from parley.bench.cluster import (
    ACTIVE_CALLS,
    CALLS_ENDED,
    CALLS_STARTED,
    TURNS,
    CallResult,
    Node,
    PgServer,
    PostgresUnavailable,
    Report,
    WorkerResult,
)
from parley.bench.cluster_procs import (
    Cluster,
    Worker,
    esl_connected,
    keep_scraping,
    pid_alive,
    scrape,
    status,
    until,
)
from parley.freeswitch.stream_token import stream_token
from parley.providers.base import AudioChunk, TTSProvider
from parley.sim.echo_call import free_port
from parley.sim.fake_freeswitch import FakeCall, FakeFreeSwitch
from parley.sim.scripted_caller import ScriptedCaller

EXIT_SKIP = 77
LINES = ("What are your opening hours?", "Where is the office located?", "Do you have parking?")
PHONE_RATE = 8000
ANSWER_TIMEOUT_S = 90.0  # bounds a hang, not a figure: whisper on two shared cores can be slow
QUIET_MS = 600.0
NODE_NAMES = ("fs-a", "fs-b")
LAYOUTS = ("nodes", "node-per-worker")  # the first is the default


async def render_lines(voice: TTSProvider, lines: tuple[str, ...]) -> list[Int16Array]:
    out = []
    for text in lines:
        pieces, rate = [], voice.sample_rate
        async for ev in voice.synthesize(text):
            if isinstance(ev, AudioChunk):
                pieces.append(ev.samples)
                rate = ev.sample_rate
        out.append(resample(np.concatenate(pieces), rate, PHONE_RATE))
    return out


@dataclass
class Script:
    """What every scripted caller says and waits for."""

    turns: list[Int16Array]
    voice: TTSProvider
    drained: asyncio.Event  # set once a worker is draining: the callers go on past their first turn
    refused_hold_s: float  # how long a caller whose stream was refused stays on (at the fallback)


async def caller(call: FakeCall, result: CallResult, script: Script, first_answered: asyncio.Event) -> None:
    """Greeting, turn 1, (the drain happens here), the other turns, hangup; notes what went wrong."""
    ear = ScriptedCaller(call, script.voice)
    try:
        result.streamed = call.audio_stream is not None and call.ws_close is None
        if not result.streamed:
            if result.during_drain:  # the draining worker's answer: 503, the call goes to the fallback
                result.refused = f"stream refused ({call.ws_close or 'upgrade failed'})"
                await asyncio.sleep(script.refused_hold_s)  # the caller is with the fallback for a while
            else:
                result.dropped = f"stream refused ({call.ws_close or 'upgrade failed'})"
            return
        if await ear.wait_agent_starts(0.0, timeout=ANSWER_TIMEOUT_S) is None:
            result.dropped = "no greeting"
            return
        await ear.wait_agent_quiet(QUIET_MS, timeout=ANSWER_TIMEOUT_S)
        for i, audio in enumerate(script.turns):
            if call.hungup or call.ws_close is not None:
                break
            start = time.monotonic()
            call.say(audio, PHONE_RATE)
            result.turns_said += 1
            await asyncio.sleep(audio.size / PHONE_RATE)
            if await ear.wait_agent_starts(start, timeout=ANSWER_TIMEOUT_S) is None:
                result.dropped = f"turn {i + 1} not answered"
                return
            result.turns_answered += 1
            await ear.wait_agent_quiet(QUIET_MS, timeout=ANSWER_TIMEOUT_S)
            if i == 0:
                first_answered.set()
                await script.drained.wait()
        if call.hungup:
            result.dropped = f"hung up by parley ({call.hangup_cause})"
        elif call.ws_close is not None:
            result.dropped = f"stream closed by parley {call.ws_close}"
    except asyncio.CancelledError:
        result.dropped = result.dropped or "not finished (the rehearsal was stopped)"
        raise
    finally:
        first_answered.set()
        if not call.hungup:
            await call.hangup("NORMAL_CLEARING")


@dataclass
class Drain:
    """What the drain of one worker looked like: who, how many calls it held, /ready after the signal."""

    target: Worker
    active: dict[int, float]  # worker index -> parley_active_calls at the signal
    ready: int  # the target's /ready status once it stopped saying 200
    calls: set[str]  # the fs uuids of the calls it held


async def drain_busiest(client: httpx.AsyncClient, workers: list[Worker], pg: PgServer) -> Drain:
    """SIGTERM to the worker holding the most calls; returns once its /ready has stopped saying 200."""
    await asyncio.gather(*(scrape(client, w) for w in workers))
    target = max(workers, key=lambda w: (w.counters.get(ACTIVE_CALLS, 0.0), -w.index))
    active = {w.index: w.counters.get(ACTIVE_CALLS, 0.0) for w in workers}
    os.kill(target.pid, signal.SIGTERM)
    ready = await status(client, f"{target.base}/ready")
    while ready == 200:
        await asyncio.sleep(0.05)
        ready = await status(client, f"{target.base}/ready")
    return Drain(target, active, ready, await calls_on(target, pg))


async def place_calls(fakes: list[FakeFreeSwitch], names: tuple[str, ...], cluster: Cluster, per_node: int,
                      secret: str, script: Script, report: Report, *, during_drain: bool = False,
                      ) -> tuple[list[asyncio.Future[None]], list[asyncio.Event]]:
    """``per_node`` calls through each node, a scripted caller on each; (callers, first turn answered)."""
    callers: list[asyncio.Future[None]] = []
    first: list[asyncio.Event] = []
    for name, fs in zip(names, fakes, strict=True):
        for _ in range(per_node):
            call_uuid = str(uuidlib.uuid4())
            call = await fs.place_call(
                ws_url=cluster.ws_url[name], uuid=call_uuid, channel_vars={"parley_agent": "true"},
                extra_headers={"Authorization": f"Bearer {stream_token(secret, call_uuid)}"},
            )
            result = CallResult(call_uuid, name, turns_planned=len(script.turns), during_drain=during_drain)
            report.calls.append(result)
            first.append(asyncio.Event())
            callers.append(asyncio.ensure_future(caller(call, result, script, first[-1])))
    return callers, first


async def rehearse(args: argparse.Namespace, tmp: Path, report: Report) -> None:
    secret = secrets.token_urlsafe(24)
    env = {**os.environ, "PARLEY_STREAM_TOKEN_SECRET": secret, "PARLEY_LOG_LEVEL": "INFO",
           "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    env.pop("PARLEY_ESL_PASSWORD", None)
    multi_node = report.layout == "nodes"
    main_task = asyncio.current_task()
    if main_task is not None:  # SIGTERM (a CI timeout): unwind, so every process started here is stopped
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
    async with contextlib.AsyncExitStack() as stack:
        pg_base = Path(tempfile.mkdtemp(prefix="parley-rehearsal-pg-"))  # its own: the postgres user owns it
        stack.callback(shutil.rmtree, pg_base, True)
        pg = await asyncio.to_thread(PgServer.create, pg_base, free_port())
        stack.callback(pg.stop)
        await asyncio.to_thread(pg.start)
        report.pids.append(pg.pid)
        fakes: list[FakeFreeSwitch] = []
        for name in NODE_NAMES:
            named: dict[str, Any] = {"node": name} if multi_node else {}  # its streams' metadata names it
            fs = FakeFreeSwitch(password=secrets.token_urlsafe(18), temp_dir=tmp / name, **named)
            await fs.start()
            stack.push_async_callback(fs.close)
            fakes.append(fs)
        nodes = [Node(name, fs.esl_port, fs.password) for name, fs in zip(NODE_NAMES, fakes, strict=True)]
        cluster = Cluster()
        stack.push_async_callback(cluster.stop)
        await cluster.start(nodes, pg.url, tmp, env, multi_node=multi_node, grace_s=args.drain_grace_s)
        report.pids.extend([p.pid for p in cluster.leaders] + [w.pid for w in cluster.workers if w.proc is None])
        client = await stack.enter_async_context(httpx.AsyncClient())
        await cluster.wait_ready(client)
        connected = await asyncio.gather(*(esl_connected(client, w) for w in cluster.workers))
        from parley.sim.caller_voice import caller_voice

        voice = await asyncio.to_thread(caller_voice, "hibari-low")
        script = Script(await render_lines(voice, LINES[: args.turns]), voice, asyncio.Event(), args.refused_hold_s)
        drained = script.drained
        scraper = asyncio.ensure_future(keep_scraping(client, cluster.workers))
        stack.callback(scraper.cancel)

        callers, first = await place_calls(fakes, NODE_NAMES, cluster, args.calls_per_node, secret, script, report)
        try:
            async with asyncio.timeout(args.timeout_s):
                await asyncio.gather(*(e.wait() for e in first))  # every call is up and past its first answer
                drain = await drain_busiest(client, cluster.workers, pg)
                more, _ = await place_calls(fakes, NODE_NAMES, cluster, args.calls_during_drain, secret, script,
                                            report, during_drain=True)
                callers += more
                drained.set()  # the callers say their other turns while the worker drains
                await asyncio.gather(*callers)
                await until(lambda: not pid_alive(drain.target.pid))  # it exits once its calls have ended
        finally:
            drained.set()
            for task in callers:
                task.cancel()
            await asyncio.gather(*callers, return_exceptions=True)
        scraper.cancel()
        await asyncio.gather(*(scrape(client, w) for w in cluster.workers if w is not drain.target))
        for w in cluster.workers:
            report.workers.append(WorkerResult(
                w.index, w.pid, w.http_port, w.nodes, w.counters.get(CALLS_STARTED, 0.0),
                w.counters.get(CALLS_ENDED, 0.0), w.counters.get(TURNS, 0.0), drain.active[w.index],
                drained=w is drain.target, ready_status_in_drain=drain.ready if w is drain.target else None,
                esl_connected=connected[w.index]))
        for c in report.calls:
            c.on_drained_worker = c.uuid in drain.calls
        await cluster.stop()
        for code, res in zip(cluster.exit_codes(), report.workers, strict=True):
            res.exit_code = code
        if multi_node:
            report.supervisor_exit = cluster.leaders[0].returncode
        await read_records(pg, report)


async def calls_on(worker: Worker, pg: PgServer) -> set[str]:
    """The calls the worker holds: their records carry its host (written when each call started)."""
    import asyncpg  # type: ignore[import-untyped]

    conn = await asyncpg.connect(host="127.0.0.1", port=pg.port, user="parley", database="postgres")
    try:
        rows = await conn.fetch("SELECT fs_uuid FROM calls WHERE host LIKE $1", f"%-w{worker.index}")
    finally:
        await conn.close()
    return {r["fs_uuid"] for r in rows}


async def read_records(pg: PgServer, report: Report) -> None:
    import asyncpg

    conn = await asyncpg.connect(host="127.0.0.1", port=pg.port, user="parley", database="postgres")
    try:
        rows = await conn.fetch(
            "SELECT c.fs_uuid, c.host, c.status, c.outcome, c.hangup_by, "
            "(SELECT count(*) FROM turns t WHERE t.call_id = c.id) AS turns FROM calls c")
    finally:
        await conn.close()
    served = {c.uuid for c in report.served}
    for row in rows:
        report.record_rows.setdefault(row["fs_uuid"], []).append(dict(row))
    for w in report.workers:  # the calls it took (a call it refused in its drain has a record too)
        mine = {r["fs_uuid"] for r in rows if str(r["host"] or "").endswith(f"-w{w.index}")}
        w.records = sum(1 for r in rows if r["fs_uuid"] in mine & served)
        for c in report.calls:
            if c.uuid in mine:
                c.worker = w.index


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--calls-per-node", type=int, default=2, help="calls placed through each node (default 2)")
    p.add_argument("--calls-during-drain", type=int, default=0,
                   help="calls placed through each node once the drain has begun (default 0): the draining worker "
                        "refuses those the kernel hands it (to the fallback); the others are taken as usual")
    p.add_argument("--refused-hold-s", type=float, default=3.0,
                   help="how long a caller whose stream the draining worker refused stays on before hanging up "
                        "(default 3: it is with the fallback); 0 hangs up at once")
    p.add_argument("--turns", type=int, default=2, choices=range(1, len(LINES) + 1), help="caller turns per call")
    p.add_argument("--layout", choices=LAYOUTS, default=LAYOUTS[0],
                   help="nodes: parley serve --workers 2 holding both nodes; node-per-worker: one serve per node "
                        f"(default {LAYOUTS[0]})")
    p.add_argument("--drain-grace-s", type=float, default=300.0, help="the drained worker's grace (default 300)")
    p.add_argument("--timeout-s", type=float, default=600.0, help="give up after this long (default 600)")
    p.add_argument("--json", help="also write the report as JSON here")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, configs)")
    args = p.parse_args(argv)
    report = Report(layout=args.layout)
    tmp = Path(tempfile.mkdtemp(prefix="parley-rehearsal-"))
    try:
        asyncio.run(rehearse(args, tmp, report))
    except PostgresUnavailable as exc:
        print(f"SKIP: PostgreSQL cannot be started here: {exc}", flush=True)
        return EXIT_SKIP
    except (Exception, KeyboardInterrupt, asyncio.CancelledError) as exc:  # a failed check, with the logs' tails
        report.errors.append(f"{type(exc).__name__}: {exc}" if str(exc) else f"interrupted ({type(exc).__name__})")
        for log in sorted(tmp.glob("serve*.log")):
            tail = log.read_text(errors="replace").splitlines()[-15:]
            print(f"--- {log.name} (last lines)\n" + "\n".join(tail), file=sys.stderr)
    finally:
        if args.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print(report.table(), flush=True)
    if args.json:
        write_json(Path(args.json), report.as_dict())
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
