"""The call-records dashboard: a calls list, a page per call and a costs page, rendered on the server.

Owns: the calls list (``/``), the call page (``/calls/<id>``) with its per-turn latency waterfall (inline
SVG drawn here: no JavaScript, nothing fetched from elsewhere) and cost table (the cost ledger over the
call's stored usage, else the stored total), routing ``/costs`` to :mod:`parley.observe.dashboard_costs`,
and ``parley dashboard`` (the pages on their own, over a database URL). Must not know how calls are run
or recorded: it reads :class:`RecordStore` summaries and details.

Every piece of text from the database goes through :func:`~parley.observe.markup.el` /
:func:`~parley.observe.markup.esc` (HTML-escaped); markup is an :class:`~parley.observe.markup.Html` value
and only :mod:`parley.observe.markup` makes it. Pages carry a Content-Security-Policy that allows no
script at all and only the page's own stylesheet (by hash), so even a missed escape could not run code.
Caller numbers are masked unless the dashboard is told otherwise (``redact=False``).

About 420 lines, a little above the house target: the call page and its waterfall are read together.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import signal
import statistics
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from urllib.parse import quote

from aiohttp import web
from sqlalchemy import exc as sa_exc

from parley.errors import ConfigError
from parley.observe import timings as tm
from parley.observe.cost import CallCost, PriceTable, Rate, call_cost
from parley.observe.dashboard_costs import cost_report_for, costs_body, read_query
from parley.observe.http import HttpServer
from parley.observe.markup import Html, WebAssets, el, esc, fmt_duration, fmt_ms, fmt_time, fmt_usd, join
from parley.observe.records import CallDetail, CallSummary, RecordStore, TurnRow

log = logging.getLogger("parley.dashboard")

PAGE_SIZE = 50
STAGE_LABELS: Mapping[str, str] = {
    tm.ENDPOINT: "end of turn",
    tm.STT_FINAL: "STT final",
    tm.LLM_FIRST_TOKEN: "LLM first token",
    tm.FIRST_CHUNK: "first sentence",
    tm.TTS_FIRST_AUDIO: "TTS first audio",
    tm.PLAYBACK_COMMAND: "playback command",
    tm.PLAYBACK_START: "playback start",
    tm.FIRST_AUDIBLE: "first audible (ear)",
}
_NICE_STEPS_MS = (50, 100, 200, 250, 500, 1000, 2000, 2500, 5000, 10000, 20000, 50000)


def outcome_pill(status: str, outcome: str, failed: bool) -> Html:
    kind = {"completed": "ok", "failed": "bad", "interrupted": "warn", "in_progress": "live"}.get(status, "warn")
    return el("span", outcome + (" (apologised)" if failed and status == "completed" else ""), class_=f"pill {kind}")


# ---- the waterfall -------------------------------------------------------------------------------------


def nice_scale(max_ms: float, ticks: int = 8) -> tuple[float, float]:
    """(axis end, tick step): the smallest nice step giving at most ``ticks`` intervals."""
    top = max(max_ms, 1.0)
    step = next((s for s in _NICE_STEPS_MS if top / s <= ticks), _NICE_STEPS_MS[-1])
    return float(math.ceil(top / step) * step), float(step)


def waterfall_max_ms(turns: Sequence[TurnRow]) -> float:
    return max((max(t.timings_ms.values(), default=0.0) for t in turns if t.timings_ms), default=0.0)


def waterfall_svg(turn: TurnRow, scale_ms: float, *, width: int = 760) -> Html:
    """One turn's stages as bars on a time axis from the caller's speech end (0 ms).

    Each stage is a bar from the previous recorded stage to its own time; a barge-in adds a row showing how
    much of the reply the caller heard before interrupting (clipped at the axis end).
    """
    ms = turn.timings_ms
    stages = [s for s in tm.TURN_STAGES if s != tm.SPEECH_END and s in ms]
    axis_end, step = nice_scale(scale_ms)
    left, right, row_h, bar_h, top = 132.0, 64.0, 22.0, 13.0, 6.0
    plot_w = width - left - right

    def x(t: float) -> float:
        return left + plot_w * min(max(t, 0.0), axis_end) / axis_end

    barge = turn.barge_in
    rows = len(stages) + (1 if barge else 0)
    plot_h = rows * row_h
    height = top + plot_h + 24
    parts: list[Html] = []
    grid: list[Html] = []
    for i in range(int(axis_end / step) + 1):
        t = i * step
        grid.append(el("line", x1=x(t), y1=top, x2=x(t), y2=top + plot_h, class_="gridline"))
        label = f"{t:,.0f} ms" if i == int(axis_end / step) else f"{t:,.0f}"
        grid.append(el("text", label, x=x(t), y=top + plot_h + 16, text_anchor="middle"))
    parts.append(el("g", join(grid), class_="axis"))
    prev = 0.0
    for row, stage in enumerate(stages):
        at = ms[stage]
        start, end = max(prev, 0.0), max(at, prev, 0.0)
        y = top + row * row_h
        bar_w = max(x(end) - x(start), 1.5)
        title = f"{STAGE_LABELS[stage]}: +{end - start:,.0f} ms (at {at:,.0f} ms after speech end)"
        parts.append(el("text", STAGE_LABELS[stage], x=left - 8, y=y + bar_h - 2, text_anchor="end"))
        parts.append(el("rect", el("title", title), x=x(start), y=y, width=bar_w, height=bar_h, rx=2,
                        class_=f"bar stage-{stage}", data_stage=stage))
        parts.append(el("text", f"+{end - start:,.0f}", x=x(start) + bar_w + 4, y=y + bar_h - 2, class_="value"))
        prev = max(prev, at)
    if barge:
        y = top + len(stages) * row_h
        heard = (turn.barge_in_timings or {}).get("heard_ms") or 0.0
        start = ms.get(tm.PLAYBACK_START, prev)
        end = start + heard
        text = f"caller barged in after {heard:,.0f} ms of reply" + (" →" if end > axis_end else "")
        parts.append(el("text", "heard", x=left - 8, y=y + bar_h - 2, text_anchor="end"))
        parts.append(el("rect", el("title", text), x=x(start), y=y, width=max(x(end) - x(start), 1.5), height=bar_h,
                        rx=2, class_="barge"))
        parts.append(el("line", x1=x(end), y1=y - 3, x2=x(end), y2=y + bar_h + 3, class_="barge-mark"))
        # the label goes where there is room: left of the bar (usually empty there), else after its end
        before = x(start) - left - 12 >= len(text) * 6.2
        parts.append(el("text", text, x=x(start) - 6 if before else x(end) + 6, y=y + bar_h - 2,
                        class_="barge-label", text_anchor="end" if before else None))
    parts.append(el("line", x1=left, y1=top, x2=left, y2=top + plot_h, class_="baseline"))
    label = f"Turn {turn.index} latency waterfall" + (" (barge-in)" if barge else "")
    return el("svg", el("title", label), join(parts), xmlns="http://www.w3.org/2000/svg", class_="waterfall",
              viewBox=f"0 0 {width} {height:.0f}", width=width, height=f"{height:.0f}", role="img",
              aria_label=label, data_turn=turn.index)


# ---- pages ---------------------------------------------------------------------------------------------


class Dashboard:
    """The pages over one :class:`RecordStore`. ``install(server)`` adds ``/``, ``/calls/<id>`` and ``/costs``."""

    def __init__(
        self,
        store: RecordStore,
        *,
        redact: bool = True,
        prices: PriceTable | None = None,
        page_size: int = PAGE_SIZE,
        assets: WebAssets | None = None,
        hosting: str | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.store = store
        self.redact = redact
        self.prices = prices
        self.page_size = page_size
        self.hosting = hosting  # the Costs page's hosting box unless ?hosting= names one
        self.now = now
        self._assets = assets

    @property
    def assets(self) -> WebAssets:
        if self._assets is None:
            self._assets = WebAssets.load()
        return self._assets

    def install(self, server: HttpServer) -> None:
        server.route("/", self.calls_page)
        server.route("/calls", self.calls_page)
        server.route("/calls/{call_id}", self.call_page)
        server.route("/costs", self.costs_page)

    async def calls_page(self, request: web.Request) -> web.Response:
        page = _page_number(request.query.get("page"))
        try:
            calls = await self.store.list_calls(self.page_size + 1, (page - 1) * self.page_size, redact=self.redact)
        except (sa_exc.SQLAlchemyError, OSError) as exc:
            return self._unavailable(exc)
        more = len(calls) > self.page_size
        body = [el("div", el("h1", "Calls"), el("a", "Costs →", href="/costs"), class_="page-head")]
        if not calls:
            body.append(el("div", "No calls recorded yet." if page == 1 else "No more calls.", class_="card empty"))
        else:
            body.append(calls_table(calls[: self.page_size]))
        pager = [el("a", "← newer", href=f"/?page={page - 1}") if page > 1 else el("span"),
                 el("a", "older →", href=f"/?page={page + 1}") if more else el("span")]
        body.append(el("nav", join(pager), class_="pager"))
        return self.assets.render("parley · calls", join(body))

    async def call_page(self, request: web.Request) -> web.Response:
        call_id = request.match_info["call_id"]
        if len(call_id) > 64:
            return self._not_found()
        try:
            detail = await self.store.get_call(call_id, redact=self.redact)
        except (sa_exc.SQLAlchemyError, OSError) as exc:
            return self._unavailable(exc)
        if detail is None:
            return self._not_found()
        return self.assets.render(f"parley · call {fmt_time(detail.call.started_at)}",
                                  call_body(detail, self.prices))

    async def costs_page(self, request: web.Request) -> web.Response:
        """What the calls of a period cost (``?since=24h``, ``?hosting=NAME``), as ``parley cost report``."""
        if self.prices is None:
            return self._costs_problem("No price table", "This dashboard was started without a price table.", 404)
        try:
            query = read_query(request.query, now=self.now(), prices=self.prices, hosting=self.hosting)
        except ConfigError as exc:
            return self._costs_problem("Cannot show these costs", str(exc).removeprefix("--"), 400)
        try:
            report = await cost_report_for(self.store, query, self.prices)
        except (sa_exc.SQLAlchemyError, OSError) as exc:
            return self._unavailable(exc)
        return self.assets.render(f"parley · costs, {query.label}", costs_body(report, query, self.prices))

    def _costs_problem(self, title: str, text: str, status: int) -> web.Response:
        retry = el("a", "Costs of the last 24 hours", href="/costs")
        body = join([el("a", "← all calls", href="/", class_="back"), el("h1", title),
                     el("div", el("p", text), retry, class_="card empty")])
        return self.assets.render("parley · costs", body, status)

    def _not_found(self) -> web.Response:
        body = join([el("a", "← all calls", href="/", class_="back"), el("h1", "No such call"),
                     el("div", "This call is not in the records.", class_="card empty")])
        return self.assets.render("parley · not found", body, 404)

    def _unavailable(self, exc: BaseException) -> web.Response:
        log.warning("dashboard: the call records database is unavailable: %s", exc)
        body = join([el("h1", "Call records unavailable"),
                     el("div", "The call records database cannot be read right now; try again shortly.",
                        class_="card empty")])
        return self.assets.render("parley · unavailable", body, 503)


def _page_number(raw: str | None) -> int:
    try:
        return min(max(int(raw or "1"), 1), 100_000)
    except ValueError:
        return 1


def calls_table(calls: Sequence[CallSummary]) -> Html:
    head = el("tr", join([el("th", "Time (UTC)"), el("th", "Caller"), el("th", "Duration", class_="num"),
                          el("th", "Turns", class_="num"), el("th", "Median voice-to-voice", class_="num"),
                          el("th", "Cost", class_="num"), el("th", "Outcome")]))
    rows = []
    for c in calls:
        link = el("a", fmt_time(c.started_at), href=f"/calls/{quote(c.id, safe='')}")
        rows.append(el("tr", join([
            el("td", link), el("td", c.caller or "unknown", class_=None if c.caller else "muted"),
            el("td", fmt_duration(c.duration_s), class_="num"), el("td", str(c.turns), class_="num"),
            el("td", fmt_ms(c.median_voice_to_voice_ms), class_="num"), el("td", fmt_usd(c.cost_usd), class_="num"),
            el("td", outcome_pill(c.status, c.outcome, c.failed)),
        ]), data_call=c.id))
    return el("table", el("thead", head), el("tbody", join(rows)), class_="grid calls")


def call_body(detail: CallDetail, prices: PriceTable | None) -> Html:
    c = detail.call
    duration = (c.ended_at - c.started_at).total_seconds() if c.ended_at else None
    v2v = [t.voice_to_voice_ms for t in detail.turns if t.voice_to_voice_ms is not None]
    summary = CallSummary(c.id, c.started_at, c.caller, duration, len(detail.turns),
                          statistics.median(v2v) if v2v else None, c.cost_usd, c.status, c.hangup_by,
                          c.hangup_cause, c.failed)
    chains = "; ".join(f"{k} {' > '.join(map(str, v))}" for k, v in c.providers.items() if v)
    facts: list[tuple[str, object]] = [
        ("Started", fmt_time(c.started_at)), ("Caller", c.caller or "unknown"), ("Called", c.callee or "-"),
        ("Direction", c.direction or "-"), ("Duration", fmt_duration(duration)),
        ("Outcome", outcome_pill(c.status, summary.outcome, c.failed)), ("Hangup cause", c.hangup_cause or "-"),
        ("Turns", len(detail.turns)), ("Median voice-to-voice", fmt_ms(summary.median_voice_to_voice_ms)),
        ("Codec", f"{c.codec} {c.codec_rate or ''}".strip() if c.codec else "-"), ("Providers", chains or "-"),
        ("Cost", fmt_usd(c.cost_usd)),
    ]
    if c.caller_name:
        facts.insert(2, ("Caller name", c.caller_name))
    if c.dtmf:
        facts.append(("DTMF", c.dtmf))
    if c.error:
        facts.append(("Error", c.error))
    dl = el("dl", join([el("div", el("dt", k), el("dd", v)) for k, v in facts]), class_="facts")
    body = [el("a", "← all calls", href="/", class_="back"), el("h1", f"Call {fmt_time(c.started_at)} UTC"),
            el("section", dl, class_="card")]
    body.append(el("h2", "Transcript and latency"))
    if detail.turns:
        scale = waterfall_max_ms(detail.turns)
        body.extend(turn_card(t, scale) for t in detail.turns)
    else:
        body.append(el("div", "No turns recorded.", class_="card empty"))
    body.append(el("h2", "Cost"))
    body.append(cost_section(detail, prices))
    if detail.events:
        body.append(el("h2", "Events"))
        body.append(events_table(detail))
    return join(body)


def turn_card(turn: TurnRow, scale_ms: float) -> Html:
    head = [el("h3", f"Turn {turn.index}")]
    if turn.voice_to_voice_ms is not None:
        head.append(el("span", f"voice-to-voice {fmt_ms(turn.voice_to_voice_ms)}", class_="pill live"))
    if turn.barge_in:
        head.append(el("span", "barge-in", class_="pill bad"))
    if turn.endpoint_reason:
        head.append(el("span", f"end of turn: {turn.endpoint_reason}", class_="muted"))
    if turn.tool_calls:
        head.append(el("span", "tools: " + ", ".join(str(t.get("name", "?")) for t in turn.tool_calls),
                       class_="muted"))
    said = [el("dt", "Caller"), el("dd", turn.caller_text or "(nothing transcribed)", class_="caller")]
    said += [el("dt", "Agent"), el("dd", agent_said(turn), class_="agent")]
    chart = waterfall_svg(turn, scale_ms) if turn.timings_ms else el("p", "No timings recorded.", class_="muted")
    return el("section", el("div", join(head), class_="turn-head"), el("dl", join(said), class_="say"), chart,
              class_="card turn barged" if turn.barge_in else "card turn", data_turn=turn.index)


def agent_said(turn: TurnRow) -> Html:
    """What the caller heard; on a barge-in, the unheard rest struck through."""
    heard, full = turn.agent_text, turn.agent_full
    if not turn.barge_in or not full or full == heard:
        return esc(heard or full or "(no reply)")
    if full.startswith(heard):
        return join([heard, el("del", full[len(heard):], title="not heard: the caller interrupted")])
    return join([heard or "(nothing heard)", " ", el("del", full, title="what the agent would have said")])


def ledger(detail: CallDetail, prices: PriceTable | None) -> CallCost | None:
    """The cost ledger over the call's usage, as the records' pricer sees it (answer to end, direction)."""
    if prices is None or not detail.usage:
        return None
    c = detail.call
    answered = c.answered_at
    minutes = max(0.0, (c.ended_at - answered).total_seconds() / 60.0) if answered and c.ended_at else 0.0
    return call_cost([u.usage for u in detail.usage], call_minutes=minutes, direction=c.direction, prices=prices,
                     hosting=None)


def cost_section(detail: CallDetail, prices: PriceTable | None) -> Html:
    stored = detail.call.cost_usd
    cost = ledger(detail, prices)
    if cost is None:
        text = (f"Stored cost {fmt_usd(stored, 6)}; no usage recorded to itemise." if stored is not None
                else "No cost recorded for this call.")
        return el("div", text, class_="card empty cost")
    head = el("tr", join([el("th", "Item"), el("th", "Quantity", class_="num"), el("th", "Rate"),
                          el("th", "USD", class_="num")]))
    rows = []
    for line in cost.lines:
        rate = Rate(line.unit_usd, line.unit_usd_high, line.per, line.unit).label()
        usd = f"${line.usd:.6f}" + (f"-{line.usd_high:.6f}" if line.usd_high != line.usd else "")
        rows.append(el("tr", join([el("td", line.item, class_="wrap"),
                                   el("td", f"{line.quantity.normalize():,f} {line.unit}", class_="num"),
                                   el("td", rate), el("td", usd, class_="num")]), data_kind=line.kind))
    total = f"${cost.total:.6f}" + (f"-{cost.total_high:.6f}" if cost.total_high != cost.total else "")
    foot = el("tr", join([el("td", "Total", colspan=3), el("td", total, class_="num")]))
    out = [el("table", el("thead", head), el("tbody", join(rows)), el("tfoot", foot), class_="grid cost")]
    if stored is not None and abs(float(cost.total) - stored) > 5e-7:
        out.append(el("p", f"Stored at the end of the call: {fmt_usd(stored, 6)} (prices may have changed since).",
                      class_="muted"))
    if cost.warnings:
        out.append(el("ul", join([el("li", w) for w in cost.warnings]), class_="warnings"))
    return join(out)


def events_table(detail: CallDetail) -> Html:
    day = detail.call.started_at.date()
    rows = []
    for e in detail.events:
        info = ", ".join(f"{k}: {v}" for k, v in e.detail.items() if k != "at")
        at = e.at.strftime("%H:%M:%S") if e.at.date() == day else fmt_time(e.at)
        rows.append(el("tr", join([el("td", at, class_="num"),
                                   el("td", e.kind), el("td", info, class_="wrap")])))
    head = el("tr", join([el("th", "Time (UTC)", class_="num"), el("th", "Event"), el("th", "Detail")]))
    return el("table", el("thead", head), el("tbody", join(rows)), class_="grid events")


# ---- parley dashboard ----------------------------------------------------------------------------------


async def run_dashboard(
    url: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8089,
    redact: bool = True,
    prices: PriceTable | None = None,
    hosting: str | None = None,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[str], None] | None = None,
) -> int:
    """Serve the dashboard over the call records at ``url`` until SIGINT/SIGTERM (or ``stop``).

    ``on_ready`` gets the server's base URL once it listens (the CLI prints it)."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        async with RecordStore.open(url) as store:
            server = HttpServer(host, port)
            Dashboard(store, redact=redact, prices=prices, hosting=hosting).install(server)  # routes, then start
            async with server:
                log.info("parley dashboard on %s/ (call records: %s)", server.url, _safe_url(url))
                if on_ready is not None:
                    on_ready(server.url)
                await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
    return 0


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    with contextlib.suppress(sa_exc.ArgumentError):
        return make_url(url).render_as_string(hide_password=True)
    return "(unparsable URL)"
