"""The fault matrix: every test here injects one fault and records one row; the table prints at the end.

A row says what was injected, what the caller got (an apology, a transfer, a clean hangup, a call that went
on), the longest silence the caller heard while the call was up, and what the call record says. Whether the
row passed is the test's own verdict (its asserts). ``pytest -k faults`` runs just these and prints:

    fault                                  outcome                        longest silence  record             result
    ESL reset mid-call                     reconnected, call went on      0.4 s            completed          passed
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest


@dataclass(frozen=True, slots=True)
class FaultRow:
    nodeid: str
    fault: str
    outcome: str
    longest_silence_s: float | None
    record: str


ROWS: list[FaultRow] = []
RecordRow = Callable[..., None]


@pytest.fixture
def fault_row(request: pytest.FixtureRequest) -> RecordRow:
    """``fault_row(fault, outcome, longest_silence_s=..., record=...)``: this test's row of the matrix."""

    def record(fault: str, outcome: str, *, longest_silence_s: float | None = None, record: str = "") -> None:
        ROWS.append(FaultRow(request.node.nodeid, fault, outcome, longest_silence_s, record))

    return record


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not ROWS:
        return
    verdict: dict[str, str] = {}
    for outcome in ("passed", "failed", "error", "skipped", "xfailed"):
        for rep in terminalreporter.stats.get(outcome, []):
            nodeid = getattr(rep, "nodeid", "")
            if nodeid and verdict.get(nodeid) != "failed":
                verdict[nodeid] = outcome
    w = terminalreporter.write_line
    terminalreporter.section("fault matrix (goal: longest silence <= 2 s while the call is up)")
    w(f"{'fault':<46} {'outcome':<40} {'longest silence':>15}  {'record':<28} result")
    for row in ROWS:
        silence = "-" if row.longest_silence_s is None else f"{row.longest_silence_s:.2f} s"
        w(f"{row.fault[:46]:<46} {row.outcome[:40]:<40} {silence:>15}  {row.record[:28]:<28} "
          f"{verdict.get(row.nodeid, '?')}")
