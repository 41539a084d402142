"""The dashboard's Costs page (``/costs``): what the recorded calls of a period cost, by kind and by hour.

Owns: reading the period (``?since=``: an age such as ``24h`` / ``7d``, an ISO date or date-time; default
the last 24 hours) and the hosting box (``?hosting=``: an entry of the price table's ``hosting``, or
``none``) from the query; loading the period's calls from a :class:`RecordStore` as the cost report reads
them (answer-to-end minutes, direction, usage, failed); and the page: totals per cost kind (STT, LLM,
TTS, carrier, hosting; what failed calls cost), one row per clock hour with calls (calls, call-minutes,
the hour's hosting and its share per call, total), idle hosting and price warnings.

Must not know how a cost is computed: the sums are :func:`parley.observe.cost_report.summarize_calls`',
the same function ``parley cost report`` prints, so the page and the command agree on the same database.
Markup comes only from :mod:`parley.observe.markup` (every value escaped).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from urllib.parse import urlencode

from parley.errors import ConfigError
from parley.observe.cost import ZERO, PriceTable, plain
from parley.observe.cost_report import (
    CostReport,
    calls_for_cost,
    parse_age,
    parse_since,
    share_text,
    summarize_calls,
)
from parley.observe.cost_report import usd_range as _usd_range
from parley.observe.markup import Html, el, join
from parley.observe.records import RecordStore

DEFAULT_SINCE = "24h"
PERIODS: tuple[tuple[str, str], ...] = (("24h", "last 24 hours"), ("7d", "last 7 days"), ("30d", "last 30 days"))
KIND_LABELS: Mapping[str, str] = {"stt": "STT", "llm": "LLM", "tts": "TTS", "carrier": "Carrier",
                                  "hosting": "Hosting"}
MAX_CALLS = 100_000  # as `parley cost report`


@dataclass(frozen=True, slots=True)
class CostQuery:
    """The page's period and hosting box, read from the query string."""

    since_text: str  # as asked for: "24h", "2026-11-01", ...
    since: datetime
    until: datetime  # now: the end of the period (idle hours are counted up to it)
    hosting: str | None  # a hosting entry of the price table; None: no hosting share

    @property
    def label(self) -> str:
        named = dict(PERIODS).get(self.since_text)
        if named:
            return named
        if parse_age(self.since_text):
            return f"last {self.since_text}"
        return f"since {self.since:%Y-%m-%d %H:%M} UTC"

    def href(self, *, since: str | None = None, hosting: str | None = "") -> str:
        """This page with ``since`` and/or ``hosting`` changed (``hosting=None``: no hosting)."""
        box = self.hosting if hosting == "" else hosting
        return "/costs?" + urlencode({"since": since or self.since_text, "hosting": box or "none"})


def read_query(query: Mapping[str, str], *, now: datetime, prices: PriceTable, hosting: str | None) -> CostQuery:
    """The query's period and box; ``hosting`` is the box when the query names none. Raises ConfigError."""
    text = (query.get("since") or DEFAULT_SINCE).strip()
    if len(text) > 40:
        raise ConfigError("since: too long; expected an age (24h, 7d) or an ISO date / date-time")
    since = parse_since(text, now)
    box = query.get("hosting", hosting or "none").strip()
    if box == "none":
        return CostQuery(text, since, now, None)
    if box not in prices.hosting:
        known = ", ".join(["none", *sorted(prices.hosting)])
        raise ConfigError(f"hosting: no entry {box[:40]!r} in the price table (known: {known})")
    return CostQuery(text, since, now, box)


async def cost_report_for(store: RecordStore, q: CostQuery, prices: PriceTable) -> CostReport:
    share = prices.hosting_share(q.hosting, 0) if q.hosting else None
    calls = await calls_for_cost(store, q.since, MAX_CALLS)
    return summarize_calls(calls, prices=prices, since=q.since, until=q.until, hosting=share)


# ---- the page -------------------------------------------------------------------------------------------


def usd(low: Decimal, high: Decimal | None = None) -> str:
    return _usd_range(low, low if high is None else high, 6)


def choices(q: CostQuery, prices: PriceTable) -> Html:
    """Links to the other periods and hosting boxes (no forms: the page's CSP allows none)."""
    def link(text: str, href: str, on: bool) -> Html:
        return el("a", text, href=href, class_="on" if on else None, aria_current="page" if on else None)

    periods = [link(label.removeprefix("last "), q.href(since=key), q.since_text == key) for key, label in PERIODS]
    groups = [el("span", join([el("span", "Period", class_="label"), *periods]), class_="choice")]
    if prices.hosting:
        boxes = [link("none", q.href(hosting=None), q.hosting is None)]
        boxes += [link(f"{name} ${plain(e.rates[0].low)}/h", q.href(hosting=name), q.hosting == name)
                  for name, e in sorted(prices.hosting.items())]
        groups.append(el("span", join([el("span", "Hosting", class_="label"), *boxes]), class_="choice"))
    return el("nav", join(groups), class_="choices")


def costs_body(r: CostReport, q: CostQuery, prices: PriceTable) -> Html:
    body = [el("a", "← all calls", href="/", class_="back"), el("h1", f"Costs: {q.label}"), choices(q, prices)]
    per_call = usd(r.total / r.calls) if r.calls else "-"
    per_minute = usd(r.total / r.call_minutes) if r.call_minutes else "-"
    facts: list[tuple[str, object]] = [
        ("Period (UTC)", f"{q.since:%Y-%m-%d %H:%M} to {q.until:%Y-%m-%d %H:%M}"),
        ("Calls", f"{r.calls:,}" + (f" ({r.failed_calls:,} failed)" if r.failed_calls else "")),
        ("Call-minutes", f"{r.call_minutes:,.1f}"), ("Total", usd(r.total, r.total_high)),
        ("Per call", per_call), ("Per call-minute", per_minute),
        ("Hosting", "none chosen" if q.hosting is None else f"{q.hosting}, shared per hour"),
        ("Prices", prices.origin),
    ]
    if r.idle_hours:
        facts.insert(4, ("Idle hosting", f"{usd(r.idle_hosting_usd)} ({r.idle_hours:,} h without calls)"))
    dl = el("dl", join([el("div", el("dt", k), el("dd", v)) for k, v in facts]), class_="facts")
    body.append(el("section", dl, class_="card", data_total=str(r.total), data_calls=r.calls))
    if not r.calls:
        body.append(el("div", "No calls in this period.", class_="card empty"))
    body += [el("h2", "By category"), kinds_table(r), el("h2", "Per hour"), hours_table(r, q)]
    notes = []
    if q.hosting is None:
        notes.append("No hosting box chosen: pick one above to share its hourly price over each hour's "
                     "call-minutes (as parley cost report --hosting NAME does).")
    if r.idle_hours:
        notes.append(f"{r.idle_hours:,} hour(s) of the period had no calls: {usd(r.idle_hosting_usd)} of hosting "
                     f"that is in no call's cost; the total with it is {usd(r.total + r.idle_hosting_usd)}.")
    body += [el("p", n, class_="muted") for n in notes]
    if r.warnings:
        body.append(el("ul", join([el("li", w) for w in r.warnings]), class_="warnings"))
    return join(body)


def kinds_table(r: CostReport) -> Html:
    head = el("tr", join([el("th", "Category"), el("th", "USD", class_="num"), el("th", "Share", class_="num"),
                          el("th", "Failed or cancelled", class_="num")]))
    rows = [el("tr", join([el("td", KIND_LABELS.get(b.key[0], b.key[0])),
                           el("td", usd(b.usd, b.usd_high), class_="num"),
                           el("td", share_text(b.usd, r.total), class_="num"),
                           el("td", usd(b.failed_usd), class_="num")]),
               data_kind=b.key[0], data_usd=str(b.usd), data_usd_high=str(b.usd_high))
            for b in r.kinds]
    total = el("tr", join([el("td", "Total"), el("td", usd(r.total, r.total_high), class_="num"),
                           el("td", "100%" if r.total else "-", class_="num"),
                           el("td", usd(r.failed_calls_usd + r.failed_requests_usd), class_="num")]),
               data_kind="total", data_usd=str(r.total), data_usd_high=str(r.total_high))
    failed = el("tr", join([el("td", f"of which failed calls ({r.failed_calls:,} of {r.calls:,})"),
                            el("td", usd(r.failed_calls_usd), class_="num"),
                            el("td", share_text(r.failed_calls_usd, r.total), class_="num"), el("td", "")]),
                class_="part", data_kind="failed_calls", data_usd=str(r.failed_calls_usd))
    requests = el("tr", join([el("td", "of which failed or cancelled requests in other calls"),
                              el("td", usd(r.failed_requests_usd), class_="num"),
                              el("td", share_text(r.failed_requests_usd, r.total), class_="num"), el("td", "")]),
                  class_="part", data_kind="failed_requests", data_usd=str(r.failed_requests_usd))
    return el("table", el("thead", head), el("tbody", join(rows)), el("tfoot", join([total, failed, requests])),
              class_="grid kinds")


def hours_table(r: CostReport, q: CostQuery) -> Html:
    if not r.hours:
        return el("div", "No hour of the period had calls.", class_="card empty")
    head = el("tr", join([el("th", "Hour (UTC)"), el("th", "Calls", class_="num"),
                          el("th", "Call-minutes", class_="num"), el("th", "Hosting", class_="num"),
                          el("th", "Hosting per call", class_="num"), el("th", "Total", class_="num")]))
    rows = []
    for b in reversed(r.hours):  # newest first, as the calls list
        start = datetime.fromisoformat(b.key[0])
        hour = f"{start:%Y-%m-%d %H:%M}-{start + timedelta(hours=1):%H:%M}"
        hosting = usd(b.hosting_usd) if q.hosting else "-"
        per_call = b.hosting_per_call
        rows.append(el("tr", join([
            el("td", hour), el("td", f"{b.calls:,}" + (f" ({b.failed_calls} failed)" if b.failed_calls else ""),
                               class_="num"),
            el("td", f"{b.minutes:,.2f}", class_="num"), el("td", hosting, class_="num"),
            el("td", usd(per_call) if q.hosting and per_call is not None else "-", class_="num"),
            el("td", usd(b.usd, b.usd_high), class_="num"),
        ]), data_hour=b.key[0], data_usd=str(b.usd), data_hosting_usd=str(b.hosting_usd)))
    hosting_sum = sum((b.hosting_usd for b in r.hours), ZERO)
    foot = el("tr", join([el("td", "All hours with calls"), el("td", f"{r.calls:,}", class_="num"),
                          el("td", f"{r.call_minutes:,.2f}", class_="num"),
                          el("td", usd(hosting_sum) if q.hosting else "-", class_="num"), el("td", ""),
                          el("td", usd(r.total, r.total_high), class_="num")]))
    return el("table", el("thead", head), el("tbody", join(rows)), el("tfoot", foot), class_="grid hours")
