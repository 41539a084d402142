"""``parley serve --workers 2`` as a real process tree (the offline stack loaded in each worker) against the
fake FreeSWITCH: both workers share the WebSocket port and answer /ready on their own HTTP ports, a call is
owned by exactly one of them, SIGTERM to the supervisor drains both (/ready 503) while the call goes on, and
after the caller hangs up everything exits 0 with one call record. No timing is asserted."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import uuid as uuidlib
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest

from parley.bench.cluster_procs import two_free_ports
from parley.freeswitch.stream_token import stream_token
from parley.sim.echo_call import free_port
from parley.sim.fake_freeswitch import FakeFreeSwitch

pytestmark = pytest.mark.skipif(not hasattr(socket, "SO_REUSEPORT"), reason="needs SO_REUSEPORT")


async def until(cond: Callable[[], object], timeout: float = 60.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.1)


def status(url: str) -> int:
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.HTTPError:
        return 0


def active_calls(url: str) -> float:
    try:
        text = httpx.get(url, timeout=2).text
    except httpx.HTTPError:
        return -1
    return next(float(line.split()[1]) for line in text.splitlines() if line.startswith("parley_active_calls "))


async def test_two_workers_share_the_port_own_a_call_once_and_drain_together(tmp_path: Path) -> None:
    password, secret = secrets.token_urlsafe(18), secrets.token_urlsafe(24)
    fs = FakeFreeSwitch(password=password)
    await fs.start()
    ws_port, http_port = free_port(), two_free_ports()
    db = tmp_path / "calls.db"
    config = tmp_path / "parley.yaml"
    config.write_text(
        f"freeswitch:\n  esl: {{port: {fs.esl_port}}}\n  audio_stream: {{listen_port: {ws_port}}}\n"
        f"  playback: {{spool_dir: {tmp_path / 'spool'}}}\n"
        f"records: {{url: 'sqlite+aiosqlite:///{db}'}}\nobserve: {{port: {http_port}}}\n"
    )
    env = {**os.environ, "PARLEY_ESL_PASSWORD": password, "PARLEY_STREAM_TOKEN_SECRET": secret,
           "PARLEY_LOG_LEVEL": "INFO"}
    proc = subprocess.Popen([sys.executable, "-m", "parley.cli", "--config", str(config), "serve", "--workers", "2",  # noqa: ASYNC220
                             "--drain-grace-s", "60"], env=env, cwd=tmp_path)
    ready = [f"http://127.0.0.1:{http_port + i}/ready" for i in range(2)]
    metrics = [f"http://127.0.0.1:{http_port + i}/metrics" for i in range(2)]
    try:
        await until(lambda: all(status(u) == 200 for u in ready) or proc.poll() is not None, timeout=120)
        assert proc.poll() is None, "the supervisor exited"
        uuid = str(uuidlib.uuid4())
        call = await fs.place_call(
            ws_url=f"ws://127.0.0.1:{ws_port}/call/{{uuid}}", uuid=uuid, caller_audio=np.zeros(8000 * 120, np.int16),
            extra_headers={"Authorization": f"Bearer {stream_token(secret, uuid)}"},
            channel_vars={"parley_agent": "true"},
        )
        await until(lambda: sum(active_calls(u) for u in metrics) == 1)
        counts = [active_calls(u) for u in metrics]
        assert sorted(counts) == [0, 1]  # one worker owns it, the other ignores it
        owner, idle = counts.index(1), counts.index(0)

        proc.send_signal(signal.SIGTERM)  # what Kubernetes or systemd sends
        await until(lambda: status(ready[owner]) == 503 and status(ready[idle]) in (503, 0))  # idle: gone at once
        assert proc.poll() is None and not call.hungup  # the call goes on while its worker drains

        await call.hangup("NORMAL_CLEARING")
        await until(lambda: proc.poll() is not None)
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        await fs.close()
    with sqlite3.connect(db) as conn:
        rows = conn.execute("select fs_uuid, status from calls").fetchall()
    assert rows == [(uuid, "completed")]
