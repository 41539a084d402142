"""The dashboard's Costs page, without a browser: over HTTP, over a seeded SQLite call-records database.

The page's figures are checked against :func:`summarize_calls` over the same calls written out by hand (not
read back through the page's own query), so a wrong minute, direction or period would show.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from parley.observe.cost import PriceTable
from parley.observe.cost_report import CallUsage, CostReport, summarize_calls
from parley.observe.dashboard import Dashboard
from parley.observe.http import HttpServer
from parley.observe.records import CallEnd, CallStart, RecordStore
from parley.providers.base import Usage

NOW = datetime(2026, 11, 2, 12, 30, tzinfo=UTC)
EVIL = '<img src=x onerror="alert(1)">'
COMMERCIAL = [Usage("deepgram", "nova-3", "stt", audio_seconds=290),
              Usage("openai", "gpt-4o-mini", "llm", input_tokens=3000, output_tokens=120, requests=3),
              Usage("elevenlabs", "eleven_flash_v2_5", "tts", characters=300, requests=3),
              Usage("elevenlabs", "eleven_flash_v2_5", "tts", characters=60, cancelled=True)]
LOCAL = [Usage("whisper-local", "tiny.en", "stt", audio_seconds=170)]
FAILED = [Usage(EVIL, "x", "stt", audio_seconds=20, failed=True)]  # unpriced: a warning quoting the name
# (started, answered, ended, direction, usage, failed); the last one is before the default 24 hours
CALLS = [
    (NOW - timedelta(hours=2, minutes=55), timedelta(seconds=10), timedelta(minutes=5, seconds=10), "inbound",
     COMMERCIAL, False),
    (NOW - timedelta(hours=1, minutes=50), timedelta(0), timedelta(minutes=3), "inbound", LOCAL, False),
    (NOW - timedelta(minutes=40), timedelta(seconds=5), timedelta(minutes=1, seconds=5), "outbound", FAILED, True),
    (NOW - timedelta(days=3), timedelta(0), timedelta(minutes=4), "inbound", LOCAL, False),
]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[RecordStore]:
    async with RecordStore.open(f"sqlite+aiosqlite:///{tmp_path / 'calls.db'}") as s:
        for i, (started, answered, ended, direction, usages, failed) in enumerate(CALLS):
            rec = await s.start_call(CallStart(fs_uuid=f"fs-{i}", started_at=started, caller="+15551234567",
                                               direction=direction, answered_at=started + answered))
            await rec.add_usage(usages)
            await rec.finish(CallEnd(hangup_cause="NORMAL_CLEARING", hangup_by="caller", ended_at=started + ended,
                                     status="failed" if failed else "completed", failed=failed))
        assert await s.flush(10)
        yield s


def expected(prices: PriceTable, since: datetime, hosting: str | None) -> CostReport:
    calls = [CallUsage(started + answered, (ended - answered).total_seconds(), direction, usages, failed)
             for started, answered, ended, direction, usages, failed in CALLS]
    share = prices.hosting_share(hosting, 0) if hosting else None
    return summarize_calls(calls, prices=prices, since=since, until=NOW, hosting=share)


async def get(dashboard: Dashboard, path: str = "/costs", **query: str) -> tuple[httpx.Response, str]:
    """``path`` over real HTTP, the dashboard's routes on a fresh server."""
    server = HttpServer("127.0.0.1", 0)
    dashboard.install(server)
    async with server, httpx.AsyncClient(base_url=server.url) as http:
        response = await http.get(path, params=query)
    return response, response.text


def row_values(body: str, attr: str) -> dict[str, Decimal]:
    return {m[0]: Decimal(m[1]) for m in re.findall(rf'<tr (?:class="part" )?{attr}="([^"]+)" data-usd="([^"]+)"', body)}


async def test_costs_page_shows_the_report_by_kind_and_hour(store: RecordStore) -> None:
    prices = PriceTable.load()
    dashboard = Dashboard(store, prices=prices, now=lambda: NOW)
    response, body = await get(dashboard, hosting="gpu_box")  # the default period: the last 24 hours
    assert response.status_code == 200 and response.headers["content-type"] == "text/html; charset=utf-8"
    assert "script-src" not in response.headers["Content-Security-Policy"]
    r = expected(prices, NOW - timedelta(hours=24), "gpu_box")
    assert r.calls == 3 and r.failed_calls == 1 and r.total > 0
    assert "<title>parley · costs, last 24 hours</title>" in body and "<h1>Costs: last 24 hours</h1>" in body
    kinds = row_values(body, "data-kind")
    assert kinds == {**{b.key[0]: b.usd for b in r.kinds}, "total": r.total, "failed_calls": r.failed_calls_usd,
                     "failed_requests": r.failed_requests_usd}
    assert kinds["hosting"] == Decimal("0.60")  # three busy hours of the $0.20/h box, each paid once
    assert kinds["failed_calls"] > 0 and kinds["failed_requests"] == Decimal("0.003")  # 60 cancelled characters
    assert f'data-total="{r.total}" data-calls="3"' in body
    hours = row_values(body, "data-hour")
    assert hours == {b.key[0]: b.usd for b in r.hours} and len(hours) == 3
    assert list(hours) == sorted(hours, reverse=True)  # newest first
    assert "2026-11-02 10:00-11:00" in body and '<td class="num">$0.200000</td>' in body  # hosting per call
    assert f"{r.idle_hours} hour(s) of the period had no calls" in body and r.idle_hours == 22
    # the unpriced provider's name is in a warning, escaped
    assert "<img" not in body and "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in body
    assert 'href="/costs?since=7d&amp;hosting=gpu_box"' in body and 'href="/costs?since=24h&amp;hosting=none"' in body


async def test_costs_page_period_hosting_and_errors(store: RecordStore) -> None:
    prices = PriceTable.load()
    dashboard = Dashboard(store, prices=prices, now=lambda: NOW, hosting="cpu_box")
    _, body = await get(dashboard, since="7d")  # the dashboard's own box unless the query names one
    r = expected(prices, NOW - timedelta(days=7), "cpu_box")
    assert r.calls == 4 and row_values(body, "data-kind")["total"] == r.total
    assert '<a href="/costs?since=7d&amp;hosting=cpu_box" class="on" aria-current="page">cpu_box $0.03/h</a>' in body
    _, body = await get(dashboard, since="2026-11-02T10:00", hosting="none")
    r = expected(prices, datetime(2026, 11, 2, 10, tzinfo=UTC), None)
    assert r.calls == 2 and row_values(body, "data-kind")["total"] == r.total
    assert "Costs: since 2026-11-02 10:00 UTC" in body and "No hosting box chosen" in body
    _, body = await get(dashboard, since="1h", hosting="none")
    assert "No calls in this period." not in body and row_values(body, "data-kind")["hosting"] == 0
    _, body = await get(dashboard, since="2026-11-03")
    assert "No calls in this period." in body and "No hour of the period had calls." in body

    response, body = await get(dashboard, since="<b>soon</b>")
    assert response.status_code == 400 and "<b>" not in body and "got &#x27;&lt;b&gt;soon&lt;/b&gt;&#x27;" in body
    response, body = await get(dashboard, hosting="<i>mainframe</i>")
    assert response.status_code == 400 and "<i>" not in body and "known: none, cpu_box, gpu_box" in body
    response, _ = await get(dashboard, since="9" * 60)
    assert response.status_code == 400
    response, body = await get(Dashboard(store, now=lambda: NOW))
    assert response.status_code == 404 and "without a price table" in body


async def test_the_calls_list_links_to_the_costs_page(store: RecordStore) -> None:
    _, body = await get(Dashboard(store, prices=PriceTable.load()), "/")
    assert '<div class="page-head"><h1>Calls</h1><a href="/costs">Costs →</a></div>' in body
