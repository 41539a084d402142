"""The local cluster rehearsal (``scripts/cluster_rehearsal.py``, issue 12 item 6) as CI runs it: 4 calls,
2 through each fake FreeSWITCH node, 2 parley workers on the offline stack, PostgreSQL, one worker drained
mid-call. The script runs as a subprocess; its exit status and its JSON report are asserted (counts only, no
timing), and every process it started is gone afterwards. Skipped only when PostgreSQL cannot be started
here (the script exits 77 and says why).

The report's parts (the Prometheus sums, the checks) are tested on their own below, without processes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from parley.bench.cluster import CallResult, Report, WorkerResult, metric_sums

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "cluster_rehearsal.py"
SKIP = 77

METRICS = """\
# HELP parley_calls_started_total Calls the agent took.
# TYPE parley_calls_started_total counter
parley_calls_started_total 3
# HELP parley_calls_ended_total Calls ended, by FreeSWITCH hangup cause.
# TYPE parley_calls_ended_total counter
parley_calls_ended_total{cause="NORMAL_CLEARING"} 2
parley_calls_ended_total{cause="USER_BUSY"} 1
# TYPE parley_active_calls gauge
parley_active_calls 0
"""


def gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state == "Z"


@pytest.mark.slow
def test_rehearsal_with_four_calls_drains_a_worker_and_everything_adds_up(tmp_path: Path) -> None:
    pytest.importorskip("asyncpg", reason="asyncpg is not installed (pip install asyncpg)")
    out = tmp_path / "report.json"
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--calls-per-node", "2", "--turns", "2", "--json", str(out)],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=1200)  # bounds a hang only
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # the script tears its processes down on SIGTERM
        stdout, stderr = proc.communicate(timeout=180)
    if proc.returncode == SKIP:
        pytest.skip(stdout.strip())
    assert proc.returncode == 0, stdout + stderr[-6000:]
    assert "RESULT: PASS" in stdout
    report = json.loads(out.read_text())

    assert report["placed"] == 4
    assert {c["node"] for c in report["calls"]} == {"fs-a", "fs-b"}
    assert report["calls_ended_normally"] == 4  # no call dropped
    assert report["turns_planned"] == report["turns_said"] == report["turns_answered"] == 8
    assert report["records_exactly_once"] == report["records_total"] == 4
    assert report["metric_calls_started_sum"] == 4
    assert [w["calls_started"] for w in report["workers"]] == [w["records"] for w in report["workers"]]
    (drained,) = [w for w in report["workers"] if w["drained"]]
    assert drained["active_at_drain"] >= 1 and drained["ready_status_in_drain"] == 503
    assert drained["calls_ended"] == drained["calls_started"]  # its last scrape came after its last call
    assert any(c["on_drained_worker"] for c in report["calls"])
    assert all(w["esl_connected"] for w in report["workers"])
    assert all(check["ok"] for check in report["checks"]) and report["ok"]
    left = [pid for pid in report["pids"] if not gone(pid)]
    assert report["pids"] and not left, f"processes left running: {left}"
    assert os.listdir(tmp_path) == ["report.json"]  # the script's own files went to its temp dir, removed


# ---- the report's parts, no processes ---------------------------------------------------------------------


def test_metric_sums_add_labelled_samples_with_and_without_prometheus_client(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sums = metric_sums(METRICS)
    assert sums["parley_calls_started_total"] == 3
    assert sums["parley_calls_ended_total"] == 3
    assert sums["parley_active_calls"] == 0

    monkeypatch.setitem(sys.modules, "prometheus_client.parser", None)  # as if it were not installed
    tolerant = metric_sums(METRICS + 'weird{a="1"} not-a-number\nparley_calls_started_total 1 1700000000000\n')
    assert tolerant["parley_calls_started_total"] == 4
    assert tolerant["parley_calls_ended_total"] == 3
    assert "weird" not in tolerant


def _report(*, rows_per_call: int = 1, dropped: str = "", started: tuple[float, float] = (1, 1)) -> Report:
    report = Report(layout="node-per-worker")
    report.calls = [CallResult("a" * 8, "fs-a", 2, 2, 2, True, dropped, True),
                    CallResult("b" * 8, "fs-b", 2, 2, 2, True)]
    report.workers = [
        WorkerResult(0, 10, 1000, ["fs-a"], started[0], 1, 2, 1, drained=True, ready_status_in_drain=503,
                     exit_code=0, records=1, esl_connected=True),
        WorkerResult(1, 11, 1001, ["fs-b"], started[1], 1, 2, 1, exit_code=0, records=1, esl_connected=True),
    ]
    row = {"status": "completed", "outcome": "caller_hangup"}
    report.record_rows = {c.uuid: [row] * rows_per_call for c in report.calls}
    return report


def test_report_passes_when_everything_adds_up_and_fails_each_check_on_its_own() -> None:
    assert _report().ok
    assert "RESULT: PASS" in _report().table()

    def failed(report: Report) -> list[str]:
        return [c.name for c in report.checks() if not c.ok]

    assert failed(_report(rows_per_call=2)) == ["records exactly once"]
    assert failed(_report(dropped="turn 2 not answered")) == ["no call dropped"]
    assert failed(_report(started=(2, 1))) == ["metrics add up"]
    lost_end = _report()
    lost_end.workers[0].calls_ended = 0  # the drained worker went before its last call's end was scraped
    assert failed(lost_end) == ["metrics add up"]
    short = _report()
    short.calls[1].turns_said = short.calls[1].turns_answered = 1  # stopped before its last turn
    assert failed(short) == ["no call dropped"]
    broken = _report()
    broken.errors.append("RuntimeError: boom")
    assert not broken.ok and "FAIL  error: RuntimeError: boom" in broken.table()


def test_a_call_refused_in_the_drain_is_not_dropped_but_must_be_recorded_once() -> None:
    report = _report()
    refused = CallResult("c" * 8, "fs-b", 2, 0, 0, False, during_drain=True, refused="stream refused")
    report.calls.append(refused)
    report.record_rows[refused.uuid] = [{"status": "completed", "outcome": None}]
    assert report.ok, report.table()
    assert "refused by the draining worker 1" in report.table()
    del report.record_rows[refused.uuid]
    assert [c.name for c in report.checks() if not c.ok] == ["records exactly once"]
