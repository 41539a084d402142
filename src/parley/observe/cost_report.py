"""The cost of recorded calls over a period: ``parley cost report`` and the dashboard's Costs page.

Owns: what a report reads of a call (:class:`RecordedCall`), the period's start (``--since`` / ``?since=``:
an ISO date, a date-time or an age such as ``24h`` or ``7d``), summing the calls into a :class:`CostReport`
(per day, per clock hour, per cost kind, per provider/model/unit; hosting shared over the call-minutes of
each hour; idle hours apart), and rendering it as text or JSON. Must not know argparse or the call-record
database: anything shaped like :class:`RecordedCall` can be summed. The arithmetic is
:mod:`parley.observe.cost`'s; this module only adds up its lines.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import TYPE_CHECKING, Protocol, TextIO

from parley.errors import ConfigError
from parley.observe.cost import LINE_KINDS, ZERO, HostingShare, LineKind, PriceTable, call_cost, dec, money

if TYPE_CHECKING:
    from parley.observe.records import RecordStore
    from parley.providers.base import Usage


class RecordedCall(Protocol):
    """What a report needs of one recorded call (a call-record row satisfies it structurally)."""

    @property
    def started_at(self) -> datetime: ...  # naive datetimes are taken as UTC
    @property
    def duration_s(self) -> float: ...
    @property
    def direction(self) -> str | None: ...  # None: no carrier leg known
    @property
    def usages(self) -> Sequence[Usage]: ...
    @property
    def failed(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class CallUsage:
    """A plain :class:`RecordedCall`: one call's start, billable length, direction, usage and outcome."""

    started_at: datetime
    duration_s: float
    direction: str | None
    usages: Sequence[Usage] = ()
    failed: bool = False


async def calls_for_cost(store: RecordStore, since: datetime | None, limit: int = 100_000) -> list[CallUsage]:
    """The recorded calls started since ``since``, as the report reads them (answer-to-end minutes)."""
    out: list[CallUsage] = []
    for summary in await store.list_calls(limit=limit, since=since):
        detail = await store.get_call(summary.id)
        if detail is None:
            continue
        c = detail.call
        start = c.answered_at or c.started_at
        duration = (c.ended_at - start).total_seconds() if c.ended_at and start else 0.0
        out.append(CallUsage(started_at=start, duration_s=duration, direction=c.direction,
                             usages=[u.usage for u in detail.usage], failed=c.failed))
    return out


@dataclass(frozen=True, slots=True)
class Bucket:
    """Totals of one day, one clock hour, one cost kind, or one provider/model/unit."""

    key: tuple[str, ...]
    calls: int = 0
    failed_calls: int = 0
    minutes: Decimal = ZERO
    quantity: Decimal = ZERO
    requests: int = 0
    usd: Decimal = ZERO
    usd_high: Decimal = ZERO
    failed_usd: Decimal = ZERO  # failed or cancelled requests, or any cost of a failed call
    hosting_usd: Decimal = ZERO  # the calls' shares of the hosting (days and hours)

    @property
    def hosting_per_call(self) -> Decimal | None:
        return money(self.hosting_usd / self.calls) if self.calls else None


@dataclass(frozen=True, slots=True)
class CostReport:
    since: datetime | None
    calls: int
    failed_calls: int
    call_minutes: Decimal
    total: Decimal
    total_high: Decimal
    failed_calls_usd: Decimal  # everything spent on calls marked failed
    failed_requests_usd: Decimal  # failed/cancelled requests inside calls that did not fail
    days: tuple[Bucket, ...]
    items: tuple[Bucket, ...]
    idle_hours: int
    idle_hosting_usd: Decimal
    warnings: tuple[str, ...]
    hours: tuple[Bucket, ...] = ()  # clock hours (UTC) with calls, oldest first; key: the hour's ISO time
    kinds: tuple[Bucket, ...] = ()  # one per cost kind (stt, llm, tts, carrier, hosting), zeros included


# ---- the period -------------------------------------------------------------------------------------

_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(m|min|h|d|w)\s*$", re.IGNORECASE)
_AGE_UNITS = {"m": "minutes", "min": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def utc(t: datetime) -> datetime:
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def parse_age(text: str) -> timedelta | None:
    """``90m``, ``24h``, ``7d``, ``2w`` -> that long; None if ``text`` is not an age."""
    m = _AGE.match(text)
    if m is None:
        return None
    return timedelta(**{_AGE_UNITS[m.group(2).lower()]: float(m.group(1))})


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """``--since``: an ISO date (midnight UTC), a date-time (naive: UTC), or an age back from ``now``."""
    try:
        age = parse_age(text)
        if age is not None:
            return utc(now if now is not None else datetime.now(UTC)) - age
    except OverflowError:
        raise ConfigError(f"--since: {text!r} reaches back too far") from None
    try:
        return utc(datetime.fromisoformat(text)) if "T" in text or " " in text.strip() else \
            datetime.combine(date.fromisoformat(text), datetime.min.time(), UTC)
    except ValueError:
        raise ConfigError(f"--since: expected an ISO date (2026-11-01) or date-time, got {text!r} "
                          "(or an age back from now: 90m, 24h, 7d, 2w)") from None


# ---- summing ----------------------------------------------------------------------------------------


def _add(b: Bucket, **inc: object) -> Bucket:
    return replace(b, **{k: getattr(b, k) + v for k, v in inc.items()})


def _hour(t: datetime) -> datetime:
    return t.replace(minute=0, second=0, microsecond=0)


def summarize_calls(calls: Iterable[RecordedCall], *, prices: PriceTable, since: datetime | None = None,
                    until: datetime | None = None, hosting: HostingShare | None = None) -> CostReport:
    """Sum recorded calls started at or after ``since``. Pure.

    ``hosting`` (its ``call_minutes_in_that_hour`` is ignored) is shared per clock hour (UTC) over the
    call-minutes that started in it; hours from ``since`` (or the first call) to ``until`` (or the last
    call) without calls are reported as idle hosting, part of no call.
    """
    start = utc(since) if since is not None else None
    chosen = [c for c in calls if start is None or utc(c.started_at) >= start]
    chosen.sort(key=lambda c: utc(c.started_at))
    hour_minutes: dict[datetime, Decimal] = {}
    for c in chosen:
        h = _hour(utc(c.started_at))
        hour_minutes[h] = hour_minutes.get(h, ZERO) + dec(c.duration_s) / 60
    days: dict[str, Bucket] = {}
    hours: dict[str, Bucket] = {}
    kinds: dict[LineKind, Bucket] = {k: Bucket((k,)) for k in LINE_KINDS}
    items: dict[tuple[str, ...], Bucket] = {}
    warnings: dict[str, None] = {}
    failed_calls_usd = failed_requests_usd = total = total_high = minutes_sum = ZERO
    n_failed = 0
    for c in chosen:
        t = utc(c.started_at)
        minutes = dec(c.duration_s) / 60
        share = None if hosting is None else replace(hosting, call_minutes_in_that_hour=hour_minutes[_hour(t)])
        cost = call_cost(c.usages, call_minutes=minutes, direction=c.direction, prices=prices, hosting=share)
        n_failed += c.failed
        total, total_high, minutes_sum = total + cost.total, total_high + cost.total_high, minutes_sum + minutes
        bad = cost.usd_with_status("failed", "cancelled")
        if c.failed:
            failed_calls_usd += cost.total
        else:
            failed_requests_usd += bad
        inc = {"calls": 1, "failed_calls": int(c.failed), "minutes": minutes, "usd": cost.total,
               "usd_high": cost.total_high, "failed_usd": cost.total if c.failed else bad,
               "hosting_usd": cost.only("hosting").total}
        day, hour = t.date().isoformat(), _hour(t).isoformat()
        days[day] = _add(days.get(day, Bucket((day,))), **inc)
        hours[hour] = _add(hours.get(hour, Bucket((hour,))), **inc)
        for line in cost.lines:
            key = (line.kind, line.provider, line.model, line.unit)
            failed_usd = line.usd if c.failed or line.status != "ok" else ZERO
            items[key] = _add(items.get(key, Bucket(key)), quantity=line.quantity, requests=line.requests,
                              usd=line.usd, usd_high=line.usd_high, failed_usd=failed_usd)
            kinds[line.kind] = _add(kinds[line.kind], usd=line.usd, usd_high=line.usd_high, failed_usd=failed_usd)
        warnings.update(dict.fromkeys(cost.warnings))
    idle_hours, idle_usd = 0, ZERO
    if hosting is not None and (chosen or start is not None):
        first = start or utc(chosen[0].started_at)
        last = utc(until) if until is not None else utc(chosen[-1].started_at) if chosen else first
        span = max(0, int((last - _hour(first)) / timedelta(hours=1)) + 1)
        idle_hours = max(0, span - len(hour_minutes))
        idle_usd = money(dec(hosting.hourly_usd) * idle_hours)
    order: dict[str, int] = {k: i for i, k in enumerate(LINE_KINDS)}
    return CostReport(
        since=start, calls=len(chosen), failed_calls=n_failed, call_minutes=money(minutes_sum), total=total,
        total_high=total_high, failed_calls_usd=failed_calls_usd, failed_requests_usd=failed_requests_usd,
        days=tuple(days[d] for d in sorted(days)),
        items=tuple(sorted(items.values(), key=lambda b: (order[b.key[0]], -b.usd, b.key))),
        idle_hours=idle_hours, idle_hosting_usd=idle_usd, warnings=tuple(warnings),
        hours=tuple(hours[h] for h in sorted(hours)), kinds=tuple(kinds.values()),
    )


# ---- text and JSON ----------------------------------------------------------------------------------


def usd(value: Decimal, places: int = 4) -> str:
    return f"${value.quantize(Decimal(10) ** -places, rounding=ROUND_HALF_UP)}"


def usd_range(low: Decimal, high: Decimal, places: int = 4) -> str:
    return usd(low, places) if low == high else f"{usd(low, places)}-{usd(high, places)[1:]}"


def share_text(part: Decimal, whole: Decimal) -> str:
    return f"{part / whole * 100:.1f}%" if whole > 0 else "-"


def report_as_dict(r: CostReport) -> dict[str, object]:
    def per(x: Decimal, n: Decimal | int) -> float | None:
        return float(money(x / n)) if n else None

    def bucket(b: Bucket) -> dict[str, object]:
        return {"calls": b.calls, "failed_calls": b.failed_calls, "minutes": float(b.minutes), "usd": float(b.usd),
                "usd_high": float(b.usd_high), "failed_usd": float(b.failed_usd),
                "hosting_usd": float(b.hosting_usd)}

    return {
        "since": r.since.isoformat() if r.since else None, "calls": r.calls, "failed_calls": r.failed_calls,
        "call_minutes": float(r.call_minutes), "total_usd": float(r.total), "total_usd_high": float(r.total_high),
        "per_call_usd": per(r.total, r.calls), "per_minute_usd": per(r.total, r.call_minutes),
        "failed_calls_usd": float(r.failed_calls_usd),
        "failed_calls_share": float(r.failed_calls_usd / r.total) if r.total else 0.0,
        "failed_requests_usd": float(r.failed_requests_usd),
        "idle_hours": r.idle_hours, "idle_hosting_usd": float(r.idle_hosting_usd),
        "kinds": {b.key[0]: {"usd": float(b.usd), "usd_high": float(b.usd_high), "failed_usd": float(b.failed_usd)}
                  for b in r.kinds},
        "days": [{"date": b.key[0], **bucket(b)} for b in r.days],
        "hours": [{"hour": b.key[0], **bucket(b), "hosting_per_call_usd": per(b.hosting_usd, b.calls)}
                  for b in r.hours],
        "providers": [{"kind": b.key[0], "provider": b.key[1], "model": b.key[2], "unit": b.key[3],
                       "quantity": float(b.quantity), "requests": b.requests, "usd": float(b.usd),
                       "usd_high": float(b.usd_high), "failed_usd": float(b.failed_usd)} for b in r.items],
        "warnings": list(r.warnings),
    }


def print_report(r: CostReport, prices: PriceTable, out: TextIO) -> None:
    w = out.write
    since = f" since {r.since:%Y-%m-%d %H:%M} UTC" if r.since else ""
    w(f"Cost of {r.calls} recorded call(s){since}: {r.call_minutes:,.1f} call-minutes\n")
    w(f"Prices: {prices.origin}. {prices.note}\n")
    if not r.calls:
        return
    w(f"\n  {'day (UTC)':<12} {'calls':>6} {'failed':>6} {'minutes':>9} {'cost':>16} {'per call':>10} "
      f"{'per min':>10}\n")
    for b in r.days:
        w(f"  {b.key[0]:<12} {b.calls:>6} {b.failed_calls:>6} {b.minutes:>9,.1f} {usd_range(b.usd, b.usd_high):>16} "
          f"{usd(b.usd / b.calls):>10} {usd(b.usd / b.minutes) if b.minutes else '-':>10}\n")
    w(f"\n  {'kind':<8} {'provider / model':<40} {'quantity':>18} {'cost':>16} {'share':>6} {'failed':>10}\n")
    for b in r.items:
        kind, provider, model, unit = b.key
        q = f"{b.quantity:,.2f} min" if unit.endswith("minute") else f"{b.quantity:,.0f} {unit}s"
        w(f"  {kind:<8} {(provider + ' ' + model).strip()[:40]:<40} {q:>18} {usd_range(b.usd, b.usd_high):>16} "
          f"{share_text(b.usd, r.total):>6} {usd(b.failed_usd):>10}\n")
    w(f"\n  total {usd_range(r.total, r.total_high)}; per call {usd(r.total / r.calls)}"
      + (f", per minute {usd(r.total / r.call_minutes)}" if r.call_minutes else "") + "\n")
    w(f"  failed calls: {r.failed_calls} of {r.calls}, costing {usd(r.failed_calls_usd)} "
      f"({share_text(r.failed_calls_usd, r.total)} of the total); failed or cancelled requests in other calls: "
      f"{usd(r.failed_requests_usd)}\n")
    if r.idle_hours:
        w(f"  idle hosting: {r.idle_hours} hour(s) without calls, {usd(r.idle_hosting_usd)} (in no call's cost); "
          f"total with it {usd(r.total + r.idle_hosting_usd)}\n")
    for warning in r.warnings:
        w(f"  warning: {warning}\n")


def cost_report(calls: Iterable[RecordedCall], *, prices: PriceTable, out: TextIO, since: datetime | None = None,
                until: datetime | None = None, hosting: HostingShare | None = None, as_json: bool = False) -> int:
    """``parley cost report``: totals of recorded calls. Returns the exit status."""
    report = summarize_calls(calls, prices=prices, since=since, until=until, hosting=hosting)
    if as_json:
        out.write(json.dumps(report_as_dict(report), indent=2) + "\n")
    else:
        print_report(report, prices, out)
    return 0
