"""The dashboard: escaping, redaction and status codes over HTTP, then a real headless Chromium loading the pages.

The browser test needs Debian's ``chromium`` and the ``playwright`` package (the ``browser`` fixture in
tests/conftest.py); without either it is skipped.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from parley.observe import timings as tm
from parley.observe.cost import PriceTable
from parley.observe.dashboard import Dashboard, el, esc, fmt_duration, nice_scale, run_dashboard
from parley.observe.http import HttpServer
from parley.observe.records import CallEnd, CallStart, RecordStore, TurnRow
from parley.providers.base import Usage

if TYPE_CHECKING:
    from tests.conftest import OpenPage, Screenshot

T0 = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
XSS = '<img src=x onerror="document.title=\'pwned\'"><script>document.title="pwned"</script>'
STAGES = [s for s in tm.TURN_STAGES if s != tm.SPEECH_END]


def marks(**ms: float) -> dict[str, float]:
    return {tm.SPEECH_END: 0.0, **ms}


TURNS = [
    TurnRow(index=1, caller_text="Hi, I'd like to book a table for two.", agent_text="Sure! For what time?",
            agent_full="Sure! For what time?", endpoint_reason="silence",
            timings_ms=marks(endpoint=420, stt_final=510, llm_first_token=830, first_chunk=900, tts_first_audio=1080,
                             playback_command=1095, playback_start=1130, first_audible=1145),
            voice_to_voice_ms=1145, created_at=T0 + timedelta(seconds=8)),
    TurnRow(index=2, caller_text="Seven tonight " + XSS, agent_text="Seven tonight works. Can I have",
            agent_full="Seven tonight works. Can I have a name for the booking, please?", barge_in=True,
            endpoint_reason="smart_turn",
            timings_ms=marks(endpoint=250, stt_final=300, llm_first_token=610, first_chunk=660, tts_first_audio=820,
                             playback_command=834, playback_start=870, first_audible=885),
            voice_to_voice_ms=885,
            barge_in_timings={"onset_to_detect_ms": 210, "onset_to_break_ms": 215, "onset_to_stop_ms": 260,
                              "heard_ms": 1450.0},
            created_at=T0 + timedelta(seconds=15)),
    TurnRow(index=3, caller_text="Ada Lovelace.", agent_text="Thanks Ada, you're booked for seven.",
            agent_full="Thanks Ada, you're booked for seven.", endpoint_reason="silence",
            timings_ms=marks(endpoint=400, stt_final=470, llm_first_token=760, first_chunk=800, tts_first_audio=990,
                             playback_command=1004, playback_start=1040, first_audible=1055),
            voice_to_voice_ms=1055, created_at=T0 + timedelta(seconds=24)),
]


async def seed(store: RecordStore) -> tuple[str, str]:
    """A 3-turn call (the second barged in) with usage and a fallback, and a short failed call."""
    rec = await store.start_call(CallStart(
        fs_uuid="fs-1", started_at=T0, caller="+15551234567", caller_name="Ada", callee="1000", direction="inbound",
        codec="PCMU", codec_rate=8000, answered_at=T0 + timedelta(seconds=1),
        providers={"stt": ["deepgram", "whisper"], "llm": ["openai"], "tts": ["elevenlabs"]}))
    for turn in TURNS:
        await rec.add_turn(turn)
    await rec.add_usage([
        Usage("deepgram", "nova-3", "stt", audio_seconds=42.5),
        Usage("openai", "gpt-4o-mini", "llm", input_tokens=2400, output_tokens=96, requests=3),
        Usage("elevenlabs", "eleven_flash_v2_5", "tts", characters=180, requests=3),
        Usage("elevenlabs", "eleven_flash_v2_5", "tts", characters=40, cancelled=True),
    ])
    await rec.add_fallback("stt", "deepgram", "whisper", "timeout " + XSS)
    await rec.finish(CallEnd(hangup_cause="NORMAL_CLEARING", hangup_by="caller", cost_usd=0.0194,
                             ended_at=T0 + timedelta(seconds=31)))
    other = await store.start_call(CallStart(fs_uuid="fs-2", started_at=T0 + timedelta(minutes=5), caller="1001"))
    await other.finish(CallEnd(hangup_cause="TEMPORARY_FAILURE", hangup_by="agent", status="failed", failed=True,
                               ended_at=T0 + timedelta(minutes=5, seconds=9)))
    assert await store.flush(10)
    return rec.id, other.id


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[HttpServer, str]]:
    async with RecordStore.open(f"sqlite+aiosqlite:///{tmp_path / 'calls.db'}") as store:
        call_id, _ = await seed(store)
        server = HttpServer("127.0.0.1", 0)
        Dashboard(store, prices=PriceTable.load()).install(server)
        async with server:
            yield server, call_id


async def fetch(server: HttpServer, path: str) -> tuple[int, dict[str, str], str]:
    async with httpx.AsyncClient(base_url=server.url) as http:
        r = await http.get(path)
    return r.status_code, {k.lower(): v for k, v in r.headers.items()}, r.text


# ---- without a browser --------------------------------------------------------------------------------


def test_markup_helpers_escape_text_and_attributes() -> None:
    assert el("a", "<b>&", href='/x?a=1&b="2"') == '<a href="/x?a=1&amp;b=&quot;2&quot;">&lt;b&gt;&amp;</a>'
    assert el("td", el("b", "x"), " & y", class_=None, data_n=1.5, hidden=True) == "<td data-n=\"1.5\" hidden><b>x</b> &amp; y</td>"
    assert esc(esc("<")) == "&lt;"  # escaping twice does not double-escape markup
    assert nice_scale(1130) == (1200.0, 200.0)
    assert nice_scale(0) == (50.0, 50.0)
    assert (fmt_duration(31), fmt_duration(3725), fmt_duration(None)) == ("0:31", "1:02:05", "-")


async def test_pages_escape_everything_redact_callers_and_send_a_strict_csp(served: tuple[HttpServer, str]) -> None:
    server, call_id = served
    status, headers, body = await fetch(server, "/")
    assert status == 200 and headers["content-type"] == "text/html; charset=utf-8"
    assert "5551234567" not in body and "*********67" in body
    assert body.count('data-call="') == 2
    csp = headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src" not in csp and "'unsafe-inline'" not in csp
    status, headers, body = await fetch(server, f"/calls/{call_id}")
    assert status == 200
    assert "<script" not in body and "<img" not in body
    assert "&lt;script&gt;document.title=&quot;pwned&quot;&lt;/script&gt;" in body
    assert "5551234567" not in body and "Ada</dd>" not in body  # number masked, caller name left out
    assert body.count('class="waterfall"') == 3 and 'class="barge"' in body
    assert 'class="grid cost"' in body
    assert (await fetch(server, "/calls/no-such-call"))[0] == 404
    assert (await fetch(server, "/calls/a/b"))[0] == 404
    assert (await fetch(server, "/?page=999"))[0] == 200
    assert (await fetch(server, "/?page=abc"))[0] == 200
    assert (await fetch(server, "/favicon.ico"))[0] == 404


async def test_cost_falls_back_to_the_stored_total_without_prices(tmp_path: Path) -> None:
    async with RecordStore.open(f"sqlite+aiosqlite:///{tmp_path / 'calls.db'}") as store:
        call_id, other_id = await seed(store)
        server = HttpServer("127.0.0.1", 0)
        Dashboard(store, redact=False).install(server)
        async with server:
            _, _, body = await fetch(server, f"/calls/{call_id}")
            assert "Stored cost $0.019400" in body and 'class="grid cost"' not in body
            assert "+15551234567" in body  # redaction off
            _, _, body = await fetch(server, f"/calls/{other_id}")
            assert "No cost recorded" in body and "No turns recorded" in body


async def test_run_dashboard_serves_until_stopped(tmp_path: Path) -> None:
    stop = asyncio.Event()
    ready: list[str] = []
    db = f"sqlite+aiosqlite:///{tmp_path / 'new' / 'calls.db'}"
    task = asyncio.create_task(run_dashboard(db, port=0, stop=stop, on_ready=ready.append))
    for _ in range(200):
        if ready or task.done():
            break
        await asyncio.sleep(0.05)
    assert ready and not task.done()
    async with httpx.AsyncClient() as http:
        page = await http.get(ready[0] + "/")
    assert page.status_code == 200 and "No calls recorded yet." in page.text
    stop.set()
    assert await asyncio.wait_for(task, 10) == 0
    assert (tmp_path / "new" / "calls.db").exists()


# ---- a real browser -------------------------------------------------------------------------------------


async def test_dashboard_in_headless_chromium(served: tuple[HttpServer, str], open_page: OpenPage,
                                             screenshot: Screenshot) -> None:
    server, call_id = served
    page, problems = await open_page(server.url)
    response = await page.goto(server.url + "/", wait_until="load")
    assert response is not None and response.status == 200
    assert await page.title() == "parley · calls"
    rows = page.locator("table.calls tbody tr")
    assert await rows.count() == 2
    assert "5551234567" not in await page.inner_text("table.calls")
    # the stylesheet applied (its CSP hash matched): the header bar is dark
    bg = await page.eval_on_selector("header.top", "e => getComputedStyle(e).backgroundColor")
    assert bg == "rgb(23, 32, 43)"
    await screenshot(page, "dashboard-list.png")

    await page.click(f'tr[data-call="{call_id}"] a')
    await page.wait_for_url(f"**/calls/{call_id}")
    assert (await page.title()).startswith("parley · call 2025-03-01 12:00:00")

    charts = page.locator("svg.waterfall")
    assert await charts.count() == 3
    for i, turn in enumerate(TURNS):
        chart = charts.nth(i)
        bars = chart.locator("rect.bar")
        assert await bars.count() == len(STAGES)  # one bar per stage after speech end
        assert [await bars.nth(j).get_attribute("data-stage") for j in range(len(STAGES))] == STAGES
        for j in range(len(STAGES)):
            box = await bars.nth(j).bounding_box()
            assert box is not None and box["width"] >= 1 and box["height"] > 5, (turn.index, STAGES[j], box)
        assert await chart.locator("rect.barge").count() == (1 if turn.barge_in else 0)
    boxes = [await charts.nth(1).locator("rect.bar").nth(j).bounding_box() for j in range(len(STAGES))]
    xs = [b["x"] for b in boxes if b is not None]
    assert xs == sorted(xs), "a waterfall: each stage starts where the previous one ended"

    barged = page.locator("section.turn.barged")
    assert await barged.count() == 1
    assert await barged.get_attribute("data-turn") == "2"
    assert await barged.locator(".pill", has_text="barge-in").count() == 1
    assert await barged.locator("dd.agent del").inner_text() == " a name for the booking, please?"
    assert "caller barged in after 1,450 ms" in await barged.locator("text.barge-label").text_content()

    # the injected markup is shown as text and never ran
    assert await page.locator("main img, main script").count() == 0
    assert "<script>" in await barged.locator("dd.caller").inner_text()
    assert "pwned" not in await page.title()

    cost = page.locator("table.cost")
    assert await cost.count() == 1
    assert await cost.locator("tbody tr").count() >= 4
    assert (await cost.locator("tfoot").inner_text()).startswith("Total")
    assert await page.locator("table.events tbody tr").count() == 1

    shot = await screenshot(page, "dashboard-call.png")
    assert shot.stat().st_size > 10_000

    # the Costs page from the list's link (the seeded calls of 2025 are outside its default 24 hours), then theirs
    await page.goto(server.url + "/")
    await page.click("a[href='/costs']")
    await page.wait_for_url("**/costs")
    assert await page.inner_text("h1") == "Costs: last 24 hours"
    assert "No calls in this period." in await page.inner_text("main")
    await page.goto(server.url + "/costs?since=2025-03-01&hosting=gpu_box")
    assert await page.locator("table.kinds tbody tr").count() == 5  # STT, LLM, TTS, carrier, hosting
    assert await page.locator("table.hours tbody tr").count() == 1  # both calls started at 12:xx
    assert await page.locator("table.kinds tr[data-kind='hosting'] td.num").first.inner_text() == "$0.200000"

    assert problems == []  # no CSP violation, script error, dialog or request leaving the server
    missing = await page.goto(server.url + "/calls/does-not-exist")
    assert missing is not None and missing.status == 404
    assert await page.inner_text("h1") == "No such call"
