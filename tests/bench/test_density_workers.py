"""``parley bench density --workers 1,2``: the same load generator drives one parley process and then two
sharing the WebSocket port, end to end through the CLI, and both columns are printed with the criteria. Shape
only: no figure is asserted (the box is shared)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not hasattr(socket, "SO_REUSEPORT"), reason="needs SO_REUSEPORT"),
]


def test_one_and_two_workers_run_side_by_side(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    out = tmp_path / "density.json"
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "parley.cli", "bench", "density", "--workers", "1,2", "--calls", "4",
         "--seconds", "4", "--json", str(out)],
        capture_output=True, text=True, timeout=300, env=env, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [line.split() for line in done.stdout.splitlines() if line.strip().startswith(("1w ", "2w "))]
    rows = [r for r in lines if r[3] != "calls,"]  # the table; the summary names the variants too
    assert [r[:3] for r in rows] == [["1w", "asyncio", "4"], ["2w", "asyncio", "4"]]
    assert "calls sustained per variant" in done.stdout and "targets (issue 12" in done.stdout
    assert len([r for r in lines if r[3] == "calls,"]) == 2  # the summary: one line per worker count
    report = json.loads(out.read_text())
    one, two = report["runs"]
    assert (one["workers"], two["workers"]) == (1, 2)
    assert len(two["calls_per_worker"]) == 2 and sum(two["calls_per_worker"]) == 4  # every call on one worker
    for run in (one, two):
        assert run["calls_streaming"] == 4 and run["agent_errors"] == 0
        assert run["sustained"] in (True, False) and isinstance(run["why_not"], str)
        assert run["answered"] <= run["turns"]
        assert run["cpu_ms_per_call_second"] > 0 and run["frames"] > 0
