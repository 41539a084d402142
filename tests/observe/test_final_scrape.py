"""observe.final_scrape_s: a process going away keeps /metrics up until one scrape has read its last counters.

A real Metrics on a real HTTP server; the scrape is a real GET, as Prometheus makes it."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from parley import app
from parley.observe.http import HttpServer
from parley.observe.metrics import Metrics


async def serving() -> tuple[Metrics, HttpServer]:
    metrics, http = Metrics(), HttpServer("127.0.0.1", 0)
    metrics.install(http)
    await http.start()
    return metrics, http


async def test_the_wait_ends_with_the_first_scrape_and_that_scrape_has_the_last_counters(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    metrics, http = await serving()
    running: Any = SimpleNamespace(metrics=metrics, http=http)
    try:
        waiting = asyncio.create_task(app._final_scrape(running, 60.0, asyncio.Event()))
        await asyncio.sleep(0.05)
        assert not waiting.done()  # nobody has scraped yet: /metrics stays up
        metrics.turns.inc()  # the last call's last turn, counted after the drain began
        async with httpx.AsyncClient() as client:
            body = (await client.get(f"{http.url}/metrics")).text
        await asyncio.wait_for(waiting, 10)
    finally:
        await http.close()
    assert "parley_turns_total 1.0" in body
    assert "last counters scraped" in caplog.text


async def test_without_a_scrape_the_wait_is_bounded_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    metrics, http = await serving()
    try:
        await asyncio.wait_for(app._final_scrape(SimpleNamespace(metrics=metrics, http=http), 0.1,  # type: ignore[arg-type]
                                                 asyncio.Event()), 10)
    finally:
        await http.close()
    assert "no /metrics scrape within 0 s of the last call" in caplog.text


async def test_a_second_stop_signal_ends_the_wait() -> None:
    metrics, http = await serving()
    hurry = asyncio.Event()
    try:
        waiting = asyncio.create_task(app._final_scrape(SimpleNamespace(metrics=metrics, http=http), 60.0, hurry))  # type: ignore[arg-type]
        await asyncio.sleep(0.05)
        hurry.set()
        await asyncio.wait_for(waiting, 10)
    finally:
        await http.close()


async def test_off_by_default() -> None:
    from parley.config import ObserveSettings

    assert ObserveSettings().final_scrape_s == 0.0
    metrics, http = await serving()
    try:  # returns at once: no waiting task, no scrape needed
        await asyncio.wait_for(app._final_scrape(SimpleNamespace(metrics=metrics, http=http), 0.0,  # type: ignore[arg-type]
                                                 asyncio.Event()), 1)
    finally:
        await http.close()
