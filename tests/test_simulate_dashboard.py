"""Done means: after ``parley simulate``, ``parley dashboard`` shows that call with its waterfall and cost.

The real command line, as separate processes: ``parley simulate booking`` on the local stack writes the call
to a call-records SQLite file named by ``PARLEY_RECORDS_URL``; ``parley dashboard`` (same environment, port
0) serves it; a headless Chromium reads the calls list, clicks through to the call, and checks the
transcript, the latency waterfall and the cost table; then the Costs page against ``parley cost report
--json`` over the same database. One simulated call (about 45 s: the scripted caller speaks in real time).

Needs the local stack (faster-whisper, hibari), Debian's ``chromium`` and ``playwright`` (see conftest.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import statistics
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from parley.observe import timings as tm
from parley.observe.redact import redact_number
from parley.sim.simulate import load_scenario, shipped_scenarios

if TYPE_CHECKING:
    from tests.conftest import OpenPage, Screenshot

pytest.importorskip("faster_whisper")
pytest.importorskip("hibari")

_SCRIPT = Path(sys.executable).with_name("parley")  # the console script of this venv
PARLEY = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "parley.cli"]
CALLER = "+15550001111"  # the fake FreeSWITCH's caller number
STAGES = [s for s in tm.TURN_STAGES if s != tm.SPEECH_END]


@dataclass(frozen=True, slots=True)
class Simulated:
    env: dict[str, str]  # PARLEY_RECORDS_URL and the tmp dirs: the same for every command of the test
    cwd: Path
    result: dict[str, object]  # `parley simulate --json`


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> Simulated:
    """``parley simulate booking`` once, its call recorded in a fresh SQLite file."""
    tmp = tmp_path_factory.mktemp("simulate-dashboard")
    (tmp / "tmp").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARLEY_")}  # no settings from the shell
    env.update(PARLEY_RECORDS_URL=f"sqlite+aiosqlite:///{tmp / 'calls.db'}", TMPDIR=str(tmp / "tmp"),
               XDG_DATA_HOME=str(tmp / "xdg"), OPENBLAS_NUM_THREADS="1")
    out = subprocess.run([*PARLEY, "simulate", "booking", "--wav", "", "--json", str(tmp / "booking.json")],
                         cwd=tmp, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp / "calls.db").exists() and not (tmp / "xdg").exists()  # the URL was used, not the default
    assert not (tmp / "out").exists()  # nothing written outside the tmp dir
    return Simulated(env, tmp, json.loads((tmp / "booking.json").read_text()))


@asynccontextmanager
async def dashboard(sim: Simulated) -> AsyncIterator[str]:
    """``parley dashboard --port 0`` until the block ends; yields its base URL. Asserts a clean SIGTERM exit."""
    proc = await asyncio.create_subprocess_exec(*PARLEY, "dashboard", "--port", "0", cwd=sim.cwd, env=sim.env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
        m = re.match(r"parley dashboard on (http://127\.0\.0\.1:\d+)/ \(records: (.*)\)$", line.strip())
        assert m is not None, (line, (await proc.stderr.read()).decode()[-3000:] if not line else "")
        assert m[2] == sim.env["PARLEY_RECORDS_URL"]
        yield m[1]
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0, err.decode()[-3000:]
    assert b"Traceback" not in err, err.decode()[-3000:]


async def cost_report(sim: Simulated, *args: str) -> dict[str, object]:
    """``parley cost report --json ARGS`` over the same records."""
    proc = await asyncio.create_subprocess_exec(*PARLEY, "cost", "report", "--json", *args, cwd=sim.cwd,
                                                env=sim.env, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    data: dict[str, object] = json.loads(out)
    return data


def words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


async def test_the_simulated_call_is_on_the_dashboard_with_its_waterfall_and_cost(
    simulated: Simulated, open_page: OpenPage, screenshot: Screenshot
) -> None:
    turns: list[dict[str, object]] = simulated.result["turns"]  # type: ignore[assignment]
    heard = [str(t["caller"]) for t in turns]  # what the agent's STT made of the scripted caller
    said = [s.say for s in load_scenario(next(p for p in shipped_scenarios() if p.stem == "booking")).steps if s.say]
    assert len(heard) == len(said) == 5
    for script, text in zip(said, heard, strict=True):  # whisper may write "3" for "three", drop a comma, ...
        assert len(set(words(script)) & set(words(text))) >= len(words(script)) / 2, (script, text)
    v2v = statistics.median(float(t["voice_to_voice_ms"]) for t in turns)  # type: ignore[arg-type]
    report = await cost_report(simulated)
    assert report["calls"] == 1
    total = Decimal(str(report["total_usd"]))
    assert total > 0  # the local models are free; the carrier minutes are not

    async with dashboard(simulated) as base:
        page, problems = await open_page(base)
        response = await page.goto(base + "/")
        assert response is not None and response.status == 200
        rows = page.locator("table.calls tbody tr")
        assert await rows.count() == 1
        cells = [c.strip() for c in await rows.first.locator("td").all_inner_texts()]
        assert cells[1] == redact_number(CALLER) == "**********11"  # masked, as the dashboard does by default
        assert re.fullmatch(r"\d+:\d\d", cells[2]) and cells[2] != "0:00", cells[2]  # duration
        assert cells[3] == str(len(turns))
        assert cells[4] == f"{v2v:,.0f} ms"
        assert cells[5] == f"${float(total):,.4f}"  # the stored cost, as `parley cost report` prices it
        assert cells[6] == "agent hung up"
        await screenshot(page, "simulate-dashboard-list.png")

        call_id = await rows.first.get_attribute("data-call")
        await rows.first.locator("a").click()
        await page.wait_for_url(f"**/calls/{call_id}")
        assert await page.locator("dl.say dd.caller").all_inner_texts() == heard

        charts = page.locator("svg.waterfall")
        assert await charts.count() == len(turns)  # one waterfall per turn, a row per stage
        for i in range(len(turns)):
            chart = charts.nth(i)
            assert await chart.get_attribute("data-turn") == str(i + 1)
            bars = chart.locator("rect.bar")
            assert [await bars.nth(j).get_attribute("data-stage") for j in range(await bars.count())] == STAGES
            widths = []
            for j in range(len(STAGES)):
                box = await bars.nth(j).bounding_box()
                assert box is not None and box["width"] > 0 and box["height"] > 5, (i + 1, STAGES[j], box)
                widths.append(box["width"])
            assert max(widths) > 20, widths  # the end-of-turn wait alone is a few hundred ms

        cost = page.locator("table.cost")
        kinds = {await r.get_attribute("data-kind") for r in await cost.locator("tbody tr").all()}
        assert {"stt", "llm", "tts", "carrier"} <= kinds
        foot = await cost.locator("tfoot").inner_text()
        m = re.match(r"Total\s+\$(\d+\.\d+)", foot)
        assert m is not None and Decimal(m[1]) == total > 0, foot
        await screenshot(page, "simulate-dashboard-call.png")
        assert problems == []  # no CSP violation, script error, dialog or request leaving the dashboard


async def test_the_costs_page_agrees_with_parley_cost_report(
    simulated: Simulated, open_page: OpenPage, screenshot: Screenshot
) -> None:
    async with dashboard(simulated) as base:
        page, problems = await open_page(base)
        await page.goto(base + "/")
        await page.click("a[href='/costs']")
        await page.click("nav.choices a:text-is('7 days')")
        await page.click("nav.choices a:text-is('cpu_box $0.03/h')")
        await page.wait_for_url("**/costs?since=7d&hosting=cpu_box")
        assert await page.inner_text("h1") == "Costs: last 7 days"
        report = await cost_report(simulated, "--since", "7d", "--hosting", "cpu_box")

        shown = {await r.get_attribute("data-kind"): Decimal(await r.get_attribute("data-usd") or "")
                 for r in await page.locator("table.kinds tr[data-kind]").all()}
        kinds: dict[str, dict[str, float]] = report["kinds"]  # type: ignore[assignment]
        assert {k: float(v) for k, v in shown.items()} == {
            **{k: v["usd"] for k, v in kinds.items()}, "total": report["total_usd"],
            "failed_calls": report["failed_calls_usd"], "failed_requests": report["failed_requests_usd"]}
        assert shown["hosting"] == Decimal("0.03")  # the only call of its hour pays the whole hour of the box
        assert shown["carrier"] > 0 and shown["total"] == shown["carrier"] + shown["hosting"]
        total_text = await page.locator("table.kinds tr[data-kind='total'] td.num").first.inner_text()
        assert total_text.startswith(f"${shown['total']:.6f}")

        hours = page.locator("table.hours tbody tr")
        report_hours: list[dict[str, object]] = report["hours"]  # type: ignore[assignment]
        assert await hours.count() == len(report_hours) == 1
        row = hours.first
        assert await row.get_attribute("data-hour") == report_hours[0]["hour"]
        cells = [c.strip() for c in await row.locator("td").all_inner_texts()]
        assert cells[1] == "1"
        assert cells[2] == f"{report_hours[0]['minutes']:,.2f}"
        assert cells[3] == cells[4] == "$0.030000"  # the hour's hosting, and its share per call
        assert float(Decimal(await row.get_attribute("data-usd") or "")) == report_hours[0]["usd"]
        await screenshot(page, "dashboard-costs.png")
        assert problems == []

