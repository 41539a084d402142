"""The local cluster rehearsal's processes (``scripts/cluster_rehearsal.py``): the parley workers it starts,
where their HTTP ports are, scraping their ``/metrics``, and stopping them all.

Owns: writing each worker's configuration and starting it in the two layouts (``nodes``: one
``parley serve --workers 2`` holding every node, its workers found under the supervisor in /proc;
``node-per-worker``: one ``parley serve`` per node), running ``parley records migrate`` once before any
worker, and the teardown (SIGTERM, then SIGKILL of each process group this module started). Every process runs
in its own session, so nothing outlives :meth:`Cluster.stop`. Must not know how calls are driven or checked.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from parley.bench.cluster import Node, metric_sums, worker_config, write_config
from parley.sim.echo_call import free_port


def two_free_ports() -> int:
    """A port p with p + 1 free too (``parley serve --workers 2`` serves HTTP on observe.port + i)."""
    for _ in range(100):
        base = free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", base + 1))
            except OSError:
                continue
        return base
    raise RuntimeError("no two consecutive free ports")


@dataclass
class Worker:
    index: int
    pid: int
    http_port: int
    nodes: list[str]
    proc: subprocess.Popen[bytes] | None = None  # when this script started it itself (else the supervisor did)
    counters: dict[str, float] = field(default_factory=dict)  # the last good scrape

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"


@dataclass
class Cluster:
    """The parley processes this script started (group leaders) and the workers they are."""

    leaders: list[subprocess.Popen[bytes]] = field(default_factory=list)
    workers: list[Worker] = field(default_factory=list)
    ws_url: dict[str, str] = field(default_factory=dict)  # node name -> the stream URL its calls dial
    supervisor_log: Path | None = None  # parley serve --workers N: its log (it names each worker's exit code)

    async def start(self, nodes: list[Node], records_url: str, tmp: Path, env: dict[str, str], *,
                    multi_node: bool, grace_s: float) -> None:
        """Migrate the records database once, then start the workers (configs and logs in ``tmp``).
        ``multi_node``: ``parley serve --workers 2`` with every node; else one ``parley serve`` per node."""
        cli = [sys.executable, "-m", "parley.cli"]
        serve_flags = ["--drain-grace-s", str(grace_s)]
        if multi_node:
            ws, http = free_port(), two_free_ports()
            conf = write_config(tmp / "parley.yaml", worker_config(
                nodes, ws_port=ws, http_port=http, records_url=records_url, spool_dir=tmp / "spool",
                records_host="rehearsal", multi_node=True))
            migrate([*cli, "--config", str(conf), "records", "migrate"], env, tmp)
            self.supervisor_log = tmp / "serve.log"
            sup = spawn([*cli, "--config", str(conf), "serve", "--workers", "2", *serve_flags], env,
                        self.supervisor_log, tmp)
            self.leaders.append(sup)
            for n in nodes:
                self.ws_url[n.name] = f"ws://127.0.0.1:{ws}/call/{{uuid}}"
            async with asyncio.timeout(120):
                while len(kids := children_by_index(sup.pid)) < 2:
                    if sup.poll() is not None:
                        raise RuntimeError(f"parley serve --workers 2 exited {sup.returncode}: see {tmp / 'serve.log'}")
                    await asyncio.sleep(0.1)
            self.workers = [Worker(i, kids[i], http + i, [n.name for n in nodes]) for i in range(2)]
            return
        # one node per worker: each `parley serve` has its node as freeswitch.esl and its own WebSocket port
        for i, node in enumerate(nodes):
            ws, http = free_port(), free_port()
            conf = write_config(tmp / f"parley-w{i}.yaml", worker_config(
                [node], ws_port=ws, http_port=http, records_url=records_url, spool_dir=tmp / f"spool-w{i}",
                records_host=f"rehearsal-w{i}", multi_node=False))
            wenv = {**env, "PARLEY_ESL_PASSWORD": node.password}
            if i == 0:
                migrate([*cli, "--config", str(conf), "records", "migrate"], wenv, tmp)  # once, before any worker
            proc = spawn([*cli, "--config", str(conf), "serve", "--call-ownership", "stream", *serve_flags], wenv,
                         tmp / f"serve-w{i}.log", tmp)
            self.leaders.append(proc)
            self.workers.append(Worker(i, proc.pid, http, [node.name], proc=proc))
            self.ws_url[node.name] = f"ws://127.0.0.1:{ws}/call/{{uuid}}"

    async def wait_ready(self, client: httpx.AsyncClient, timeout_s: float = 180.0) -> None:
        """Until every worker's /ready says 200; RuntimeError when a parley process exits meanwhile."""
        async with asyncio.timeout(timeout_s):
            while not all([await status(client, f"{w.base}/ready") == 200 for w in self.workers]):
                if any(p.poll() is not None for p in self.leaders):
                    raise RuntimeError("a parley process exited at start (its log is in the temporary directory)")
                await asyncio.sleep(0.2)

    def exit_codes(self) -> list[int | None]:
        """Each worker's exit code once stopped: its own process's, or as its supervisor logged them
        (``workers exited: [0, 0]``); None where neither says."""
        codes: list[int | None] = [w.proc.returncode if w.proc is not None else None for w in self.workers]
        if self.supervisor_log is not None and self.supervisor_log.exists():
            found = re.findall(r"workers exited: \[([-0-9, ]*)\]", self.supervisor_log.read_text(errors="replace"))
            logged = [int(c) for c in found[-1].split(",") if c.strip()] if found else []
            if len(logged) == len(codes):
                codes = [*logged]
        return codes

    async def stop(self, grace_s: float = 60.0) -> None:
        """SIGTERM every leader (a drain; nothing is up by now), wait, then SIGKILL their process groups."""
        for proc in self.leaders:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.leaders:
            try:
                await asyncio.to_thread(proc.wait, grace_s)
            except subprocess.TimeoutExpired:
                pass
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)  # its own group (start_new_session): the workers too
            await asyncio.to_thread(proc.wait)


def spawn(cmd: list[str], env: dict[str, str], log: Path, cwd: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)


def children_by_index(pid: int) -> dict[int, int]:
    """The supervisor's workers: worker index -> pid (from /proc: each runs ``--worker-index i``)."""
    out: dict[int, int] = {}
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return out
    for kid in kids:
        try:
            argv = Path(f"/proc/{kid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"--worker-index" in argv:
            out[int(argv[argv.index(b"--worker-index") + 1])] = int(kid)
    return out


def migrate(cmd: list[str], env: dict[str, str], tmp: Path) -> None:
    done = subprocess.run(cmd, env=env, cwd=tmp, capture_output=True, timeout=300, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"parley records migrate exited {done.returncode}: {done.stderr.decode()[-800:]}")


async def status(client: httpx.AsyncClient, url: str) -> int:
    try:
        return (await client.get(url, timeout=5)).status_code
    except httpx.HTTPError:
        return 0


async def esl_connected(client: httpx.AsyncClient, worker: Worker, timeout_s: float = 30.0) -> bool:
    """Whether the worker's ``/health`` says its ESL is up (with several nodes: to every node), waiting for it a
    while (a worker can be ready a moment before its last node's connection)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        try:
            if bool((await client.get(f"{worker.base}/health", timeout=5)).json().get("esl_connected")):
                return True
        except (httpx.HTTPError, ValueError, AttributeError):
            pass
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(0.2)


async def scrape(client: httpx.AsyncClient, worker: Worker) -> bool:
    try:
        reply = await client.get(f"{worker.base}/metrics", timeout=5)
    except httpx.HTTPError:
        return False
    if reply.status_code != 200:
        return False
    worker.counters = metric_sums(reply.text)
    return True


async def keep_scraping(client: httpx.AsyncClient, workers: list[Worker]) -> None:
    """Every worker's counters, again and again: a drained worker's last scrape before it exits is kept."""
    while True:
        await asyncio.gather(*(scrape(client, w) for w in workers))
        await asyncio.sleep(0.2)


async def until(cond: Callable[[], bool], every_s: float = 0.1) -> None:
    while True:
        if cond():
            return
        await asyncio.sleep(every_s)


def pid_alive(pid: int) -> bool:
    """Running (a zombie waiting for its supervisor to reap it counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


