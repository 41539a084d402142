"""The cost ledger: what one call cost, line by line, from the usage its providers reported.

Owns: the price table (the shipped ``pricing.yaml`` or the user's copy, validated with messages that name
the key path), matching a usage to its price (provider alias, exact model, glob, ``*``), and the pure
arithmetic of a call's cost: one line per provider/model/kind/outcome and measure, a carrier line, a
hosting line. Must not know where usage comes from (sessions, call records) or how lines are printed.
Reading the YAML in :meth:`PriceTable.load` is its only I/O.

Money is :class:`~decimal.Decimal`. Prices are parsed from their YAML text (``0.0077`` stays exactly
0.0077), each line's amount is rounded half-up to a micro-dollar (1e-6 USD: a 30-token request still
shows), and totals are exact sums of those lines: a thousand $0.0385 calls add up to $38.5, where floats
give 38.499999999999645. Floats appear only at the JSON edge.

Failed and cancelled requests are billed like finished ones (vendors bill what was consumed) and get
their own lines, marked with their ``status``. A usage whose provider or model has no price becomes a
line of $0 carrying a ``warning``: never a crash, never a guess.

Hosting is a fixed hourly cost shared over the call-minutes of that hour (:class:`HostingShare`).

About 460 lines, above the house target: the table's validator and the arithmetic share the measure and
unit definitions (``MEASURES``) and are read together when a price is questioned.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TypeAlias

import yaml

from parley.errors import ConfigError

if TYPE_CHECKING:  # only the type: importing cost (e.g. to build the CLI parser) stays light
    from parley.providers.base import Usage

Kind: TypeAlias = Literal["stt", "llm", "tts"]
LineKind: TypeAlias = Literal["stt", "llm", "tts", "carrier", "hosting"]
Status: TypeAlias = Literal["ok", "cancelled", "failed"]

MICRO = Decimal("0.000001")
ZERO = Decimal(0)
KINDS: tuple[Kind, ...] = ("stt", "llm", "tts")
LINE_KINDS: tuple[LineKind, ...] = ("stt", "llm", "tts", "carrier", "hosting")
STATUSES: tuple[Status, ...] = ("ok", "cancelled", "failed")
# kind -> (Usage field, YAML key, units per price, unit name, what the line calls it)
MEASURES: dict[Kind, tuple[tuple[str, str, int, str, str], ...]] = {
    "stt": (("audio_seconds", "per_audio_minute", 1, "audio minute", "STT"),),
    "llm": (
        ("input_tokens", "per_1m_input_tokens", 1_000_000, "input token", "input"),
        ("output_tokens", "per_1m_output_tokens", 1_000_000, "output token", "output"),
    ),
    "tts": (
        ("characters", "per_1k_characters", 1_000, "character", "TTS"),
        ("input_tokens", "per_1m_input_tokens", 1_000_000, "input token", "TTS input"),
        ("output_tokens", "per_1m_output_tokens", 1_000_000, "output token", "TTS output"),
    ),
}
# TTS models bill characters (most) or tokens (gpt-4o-mini-tts: text in, audio out): a TTS price names the
# keys of its unit only; a usage reporting tokens is billed by the token prices, else by the characters.
_OPTIONAL_MEASURES: dict[Kind, frozenset[str]] = {
    "tts": frozenset({"per_1k_characters", "per_1m_input_tokens", "per_1m_output_tokens"}),
}
_TOKENS = frozenset({"input_tokens", "output_tokens"})
_META_KEYS = ("source", "as_of", "note")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def money(value: Decimal) -> Decimal:
    """Round to a micro-dollar, half up."""
    return value.quantize(MICRO, rounding=ROUND_HALF_UP)


def plain(value: Decimal) -> str:
    """A price as text without trailing zeros (0.016000 -> 0.016), keeping cents (0.6 -> 0.60)."""
    text = f"{value.normalize():f}"
    whole, _, frac = text.partition(".")
    return f"{whole}.{frac:0<2}"


def dec(value: Decimal | float | int | str) -> Decimal:
    """A Decimal from a number, through its shortest text form (0.1 -> Decimal('0.1'))."""
    return value if isinstance(value, Decimal) else Decimal(str(value))


# ---- the price table ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rate:
    """USD per ``per`` units; ``low == high`` unless the source gives a range (tiers, carriers)."""

    low: Decimal
    high: Decimal
    per: int
    unit: str

    def label(self) -> str:
        price = f"${plain(self.low)}" if self.low == self.high else f"${plain(self.low)}-{plain(self.high)}"
        scale = {1: "", 1_000: "1K ", 1_000_000: "1M "}.get(self.per, f"{self.per:,} ")
        return f"{price}/{scale}{self.unit}"


@dataclass(frozen=True, slots=True)
class PriceEntry:
    """One priced thing: its key in the table, its rates (in measure order), and where they come from."""

    key: str
    rates: tuple[Rate, ...]
    source: str
    as_of: str
    priced: frozenset[str] = frozenset()  # the YAML keys present (a TTS price may leave some units out)


@dataclass(frozen=True, slots=True)
class PriceTable:
    """Prices per provider/kind/model pattern, per carrier direction, per hosting box."""

    models: Mapping[tuple[str, str], tuple[tuple[str, PriceEntry], ...]]  # most specific pattern first
    carrier: Mapping[str, PriceEntry]
    hosting: Mapping[str, PriceEntry]
    aliases: Mapping[str, str]
    bundled: Mapping[str, PriceEntry] = field(default_factory=dict)  # per-minute platforms, for comparison
    note: str = ""
    origin: str = "price table"

    @classmethod
    def load(cls, path: str | Path | None = None) -> PriceTable:
        """The table in ``path``, or the one shipped with parley (``parley/observe/pricing.yaml``)."""
        origin = "pricing.yaml (shipped)" if path is None else str(path)
        try:
            if path is None:
                text = files("parley.observe").joinpath("pricing.yaml").read_text(encoding="utf-8")
            else:
                text = Path(path).read_text(encoding="utf-8")
            data = yaml.safe_load(text)
        except OSError as exc:
            raise ConfigError(f"cannot read price table {origin}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"price table {origin} is not valid YAML: {exc}") from None
        return cls.from_mapping(data, origin=origin)

    @classmethod
    def from_mapping(cls, data: object, *, origin: str = "price table") -> PriceTable:
        return _Parser(origin).table(data)

    def provider_name(self, provider: str) -> str:
        return self.aliases.get(provider, provider)

    def lookup(self, provider: str, kind: str, model: str) -> PriceEntry | None:
        """The price of ``model``: exact name, else the most specific glob, else ``*``; None if unpriced."""
        candidates = self.models.get((self.provider_name(provider), kind), ())
        name = model.lower()
        for pattern, entry in candidates:
            if pattern.lower() == name:
                return entry
        for pattern, entry in candidates:
            if fnmatch.fnmatchcase(name, pattern.lower()):
                return entry
        return None

    def hosting_share(self, name: str, call_minutes_in_that_hour: Decimal | float) -> HostingShare:
        entry = self.hosting.get(name)
        if entry is None:
            raise ConfigError(f"{self.origin}: no hosting entry {name!r} (known: {', '.join(sorted(self.hosting))})")
        return HostingShare(entry.rates[0].low, dec(call_minutes_in_that_hour), name)


def _specificity(pattern: str) -> tuple[int, int]:
    """Exact names first, then patterns with more literal characters; ``*`` last."""
    wild = sum(pattern.count(c) for c in "*?[")
    return (0 if wild == 0 else 1, -(len(pattern) - wild))


class _Parser:
    """Validates the YAML shape; every error names the file and the key path."""

    def __init__(self, origin: str) -> None:
        self.origin = origin

    def fail(self, path: str, message: str) -> ConfigError:
        return ConfigError(f"{self.origin}: {path}: {message}" if path else f"{self.origin}: {message}")

    def mapping(self, value: object, path: str) -> dict[str, object]:
        if not isinstance(value, Mapping):
            raise self.fail(path, f"expected a mapping, got {type(value).__name__}")
        return {str(k): v for k, v in value.items()}

    def keys(self, data: Mapping[str, object], path: str, required: Sequence[str], optional: Sequence[str]) -> None:
        unknown = sorted(set(data) - set(required) - set(optional))
        if unknown:
            expected = f"expected {sorted(required)} (optional {sorted(optional)})"
            raise self.fail(path, f"unknown key(s) {unknown}; {expected}")
        missing = [k for k in required if k not in data]
        if missing:
            raise self.fail(path, f"missing {missing}")

    def number(self, value: object, path: str) -> Decimal:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise self.fail(path, f"expected a number of USD, got {value!r}")
        try:
            d = dec(value)
        except InvalidOperation:
            raise self.fail(path, f"expected a number of USD, got {value!r}") from None
        if not d.is_finite() or d < 0:
            raise self.fail(path, f"a price must be a finite number >= 0, got {value!r}")
        return d

    def rate(self, value: object, path: str, per: int, unit: str, *, allow_range: bool = True) -> Rate:
        if isinstance(value, list | tuple):
            if not allow_range:
                raise self.fail(path, f"expected one number, got the range {list(value)!r}")
            if len(value) != 2:
                raise self.fail(path, f"a range is [low, high], got {len(value)} values")
            low, high = self.number(value[0], f"{path}[0]"), self.number(value[1], f"{path}[1]")
            if low > high:
                raise self.fail(path, f"low {low} is above high {high}")
            return Rate(low, high, per, unit)
        d = self.number(value, path)
        return Rate(d, d, per, unit)

    def entry(self, value: object, path: str, prices: Sequence[tuple[str, int, str]], *, allow_range: bool = True,
              optional: frozenset[str] = frozenset()) -> PriceEntry:
        data = self.mapping(value, path)
        required = [k for k, _, _ in prices if k not in optional]
        self.keys(data, path, [*required, "source", "as_of"], ["note", *sorted(optional)])
        if optional and not required and not optional & set(data):
            raise self.fail(path, f"missing a price: one of {sorted(optional)}")
        source, as_of = data["source"], data["as_of"]
        if not isinstance(source, str) or not source.strip():
            raise self.fail(f"{path}.source", "say where the price comes from (a non-empty string)")
        as_of = as_of.isoformat() if hasattr(as_of, "isoformat") else as_of  # YAML parses bare dates
        if not isinstance(as_of, str) or not (as_of == "undated" or _DATE.match(as_of)):
            raise self.fail(f"{path}.as_of", f"expected a date YYYY-MM-DD or 'undated', got {as_of!r}")
        rates = tuple(self.rate(data[k], f"{path}.{k}", per, unit, allow_range=allow_range) if k in data
                      else Rate(ZERO, ZERO, per, unit) for k, per, unit in prices)
        return PriceEntry(path, rates, source.strip(), as_of, frozenset(k for k, _, _ in prices if k in data))

    def table(self, data: object) -> PriceTable:
        top = self.mapping(data, "")
        self.keys(top, "", ["version", "providers"], ["currency", "note", "aliases", "carrier", "hosting", "bundled"])
        if top["version"] != 1:
            raise self.fail("version", f"this parley reads version 1, got {top['version']!r}")
        if top.get("currency", "USD") != "USD":
            raise self.fail("currency", f"only USD is supported, got {top['currency']!r}")
        aliases = {k: str(v) for k, v in self.mapping(top.get("aliases") or {}, "aliases").items()}
        models: dict[tuple[str, str], tuple[tuple[str, PriceEntry], ...]] = {}
        for provider, kinds in self.mapping(top["providers"], "providers").items():
            for kind, patterns in self.mapping(kinds, f"providers.{provider}").items():
                if kind not in MEASURES:
                    raise self.fail(f"providers.{provider}.{kind}", f"unknown kind; expected one of {list(KINDS)}")
                spec = [(key, per, unit) for _, key, per, unit, _ in MEASURES[kind]]
                where = f"providers.{provider}.{kind}"
                optional = _OPTIONAL_MEASURES.get(kind, frozenset())
                entries = [(p, self.entry(v, f"{where}.{p}", spec, optional=optional))
                           for p, v in self.mapping(patterns, where).items()]
                models[(provider, kind)] = tuple(sorted(entries, key=lambda pe: _specificity(pe[0])))
        carrier = {d: self.entry(v, f"carrier.{d}", [("per_minute", 1, "call minute")])
                   for d, v in self.mapping(top.get("carrier") or {}, "carrier").items()}
        hosting = {h: self.entry(v, f"hosting.{h}", [("per_hour", 1, "hour")], allow_range=False)
                   for h, v in self.mapping(top.get("hosting") or {}, "hosting").items()}
        bundled = {b: self.entry(v, f"bundled.{b}", [("per_minute", 1, "call minute")])
                   for b, v in self.mapping(top.get("bundled") or {}, "bundled").items()}
        note = top.get("note", "")
        return PriceTable(models, carrier, hosting, aliases, bundled, str(note or ""), self.origin)


# ---- hosting ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HostingShare:
    """A box that costs ``hourly_usd`` per hour whether it is busy or not, shared by the calls of an hour.

    A call of ``m`` minutes, in an hour that carried ``M`` call-minutes in total (this call included),
    pays ``hourly_usd * m / max(M, m)``: the hour's cost is split in proportion to call-minutes, so the
    calls of one hour together pay exactly that hour, and no call pays more than the whole box for its
    hour. ``M`` may exceed 60 when the box carries concurrent calls. A call is attributed to one hour
    (the one it started in); idle hours are nobody's share (a report shows them separately).

    At 60 call-minutes an hour (one call at a time, never idle: the article's "100% utilized") a minute
    costs ``hourly_usd / 60``; a box running 24/7 for 300 call-minutes a day has ``M = 300 / 24 = 12.5``
    and a minute costs ``hourly_usd * 24 / 300``.
    """

    hourly_usd: Decimal
    call_minutes_in_that_hour: Decimal
    name: str = "host"

    @classmethod
    def from_daily_volume(cls, hourly_usd: Decimal | float, call_minutes_per_day: Decimal | float,
                          name: str = "host") -> HostingShare:
        """A box running 24/7 that carries ``call_minutes_per_day``, spread evenly over the day."""
        return cls(dec(hourly_usd), dec(call_minutes_per_day) / 24, name)

    def share(self, call_minutes: Decimal | float) -> Decimal:
        """This call's part of the hour's cost (unrounded)."""
        m = dec(call_minutes)
        denominator = max(dec(self.call_minutes_in_that_hour), m)
        return ZERO if denominator <= 0 else dec(self.hourly_usd) * m / denominator

    def per_minute(self, call_minutes: Decimal | float = 1) -> Decimal:
        """The effective price of one call-minute (unrounded)."""
        m = dec(call_minutes)
        return ZERO if m <= 0 else self.share(m) / m


# ---- the cost of one call ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CostLine:
    """``usd = quantity * unit_usd / per`` (rounded to 1e-6); ``*_high`` at the top of a price range."""

    item: str
    kind: LineKind
    provider: str
    model: str
    status: Status
    quantity: Decimal
    unit: str
    unit_usd: Decimal
    per: int
    usd: Decimal
    unit_usd_high: Decimal
    usd_high: Decimal
    requests: int = 0
    price_key: str = ""  # the table entry that priced it ("" when none did)
    warning: str | None = None

    def as_dict(self) -> dict[str, object]:
        return {
            "item": self.item, "kind": self.kind, "provider": self.provider, "model": self.model,
            "status": self.status, "quantity": float(self.quantity), "unit": self.unit,
            "unit_usd": float(self.unit_usd), "per": self.per, "usd": float(self.usd),
            "unit_usd_high": float(self.unit_usd_high), "usd_high": float(self.usd_high),
            "requests": self.requests, "price_key": self.price_key, "warning": self.warning,
        }


@dataclass(frozen=True, slots=True)
class CallCost:
    """The lines of one call (or of an estimate) and what they add up to."""

    lines: tuple[CostLine, ...]
    call_minutes: Decimal

    @property
    def total(self) -> Decimal:
        return sum((line.usd for line in self.lines), ZERO)

    @property
    def total_high(self) -> Decimal:
        return sum((line.usd_high for line in self.lines), ZERO)

    @property
    def per_minute(self) -> Decimal | None:
        return money(self.total / self.call_minutes) if self.call_minutes > 0 else None

    @property
    def per_minute_high(self) -> Decimal | None:
        return money(self.total_high / self.call_minutes) if self.call_minutes > 0 else None

    def usd_with_status(self, *statuses: Status) -> Decimal:
        return sum((line.usd for line in self.lines if line.status in statuses), ZERO)

    @property
    def warnings(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(line.warning for line in self.lines if line.warning))

    def only(self, *kinds: LineKind) -> CallCost:
        return CallCost(tuple(line for line in self.lines if line.kind in kinds), self.call_minutes)

    def without(self, *kinds: LineKind) -> CallCost:
        return CallCost(tuple(line for line in self.lines if line.kind not in kinds), self.call_minutes)


def usage_status(usage: Usage) -> Status:
    return "failed" if usage.failed else "cancelled" if usage.cancelled else "ok"


def _line(item: str, kind: LineKind, provider: str, model: str, status: Status, quantity: Decimal, rate: Rate,
          *, requests: int = 0, price_key: str = "", warning: str | None = None) -> CostLine:
    return CostLine(
        item=item, kind=kind, provider=provider, model=model, status=status, quantity=quantity, unit=rate.unit,
        unit_usd=rate.low, per=rate.per, usd=money(quantity * rate.low / rate.per), unit_usd_high=rate.high,
        usd_high=money(quantity * rate.high / rate.per), requests=requests, price_key=price_key, warning=warning,
    )


def usage_lines(usages: Iterable[Usage], prices: PriceTable) -> list[CostLine]:
    """One line per (provider, model, kind, status) and measure, in stt/llm/tts order."""
    totals: dict[tuple[str, str, Kind, Status], dict[str, Decimal]] = {}
    for u in usages:
        sums = totals.setdefault((u.provider, u.model, u.kind, usage_status(u)), {})
        for field_name, *_ in MEASURES[u.kind]:
            sums[field_name] = sums.get(field_name, ZERO) + dec(getattr(u, field_name))
        sums["requests"] = sums.get("requests", ZERO) + u.requests
    order = {key[:2]: i for i, key in reversed(list(enumerate(totals)))}
    keys = sorted(totals, key=lambda k: (KINDS.index(k[2]), order[k[:2]], STATUSES.index(k[3])))
    lines: list[CostLine] = []
    for provider, model, kind, status in keys:
        sums = totals[(provider, model, kind, status)]
        entry = prices.lookup(provider, kind, model)
        warning = None
        if entry is None:
            warning = (f"no price for {provider} {model!r} ({kind}) in {prices.origin}: counted as $0; "
                       f"add it under providers.{prices.provider_name(provider)}.{kind}")
        measures = MEASURES[kind]
        billed = _billed_measures(kind, sums)
        if entry is not None and warning is None and kind in _OPTIONAL_MEASURES:
            missing = [key for field_name, key, *_ in measures if field_name in billed and key not in entry.priced
                       and sums[field_name] > 0]
            if missing:
                warning = (f"{provider} {model!r} ({kind}): {entry.key} in {prices.origin} has no "
                           f"{', '.join(missing)} for the units this usage reports: counted as $0")
        produced = 0
        for i, (field_name, _, per, unit, what) in enumerate(measures):
            if field_name not in billed:
                continue
            quantity = sums[field_name]
            if field_name == "audio_seconds":
                quantity = (quantity / 60).quantize(MICRO, rounding=ROUND_HALF_UP)
            last = i == max(j for j, m in enumerate(measures) if m[0] in billed)
            if quantity == 0 and not (last and produced == 0):
                continue  # skip empty measures, but keep one line per request group (a failed request shows)
            rate = entry.rates[i] if entry is not None else Rate(ZERO, ZERO, per, unit)
            item = f"{provider} {model} {what}" + ("" if status == "ok" else f" ({status})")
            lines.append(_line(item, kind, provider, model, status, quantity, rate, requests=int(sums["requests"]),
                               price_key=entry.key if entry else "", warning=warning))
            produced += 1
    return lines


def _billed_measures(kind: Kind, sums: Mapping[str, Decimal]) -> frozenset[str]:
    """The Usage fields a line group bills: every measure, except that TTS bills tokens when the usage
    reported tokens (gpt-4o-mini-tts), else characters (every other TTS, and older usage records)."""
    fields = frozenset(m[0] for m in MEASURES[kind])
    if kind != "tts":
        return fields
    if any(sums.get(f, ZERO) > 0 for f in _TOKENS):
        return fields - {"characters"}
    return frozenset({"characters"})


def carrier_line(direction: str, call_minutes: Decimal, prices: PriceTable) -> CostLine:
    entry = prices.carrier.get(direction)
    if entry is None:
        known = ", ".join(sorted(prices.carrier))
        return _line(f"carrier {direction}", "carrier", direction, "", "ok", call_minutes,
                     Rate(ZERO, ZERO, 1, "call minute"),
                     warning=f"no carrier price for direction {direction!r} (known: {known}): counted as $0")
    return _line(f"carrier {direction}", "carrier", direction, "", "ok", call_minutes, entry.rates[0],
                 price_key=entry.key)


def hosting_line(hosting: HostingShare, call_minutes: Decimal) -> CostLine:
    rate = money(hosting.per_minute(call_minutes))
    usd = money(hosting.share(call_minutes))  # the exact share, not the rounded rate times the minutes
    in_hour = dec(hosting.call_minutes_in_that_hour)
    return CostLine(
        item=f"hosting {hosting.name} (${plain(dec(hosting.hourly_usd))}/h, {in_hour:.4g} call-min/h)",
        kind="hosting", provider=hosting.name, model="", status="ok", quantity=call_minutes, unit="call minute",
        unit_usd=rate, per=1, usd=usd, unit_usd_high=rate, usd_high=usd,
    )


def cost_lines(usages: Sequence[Usage], *, call_minutes: float | Decimal, direction: str | None,
               prices: PriceTable, hosting: HostingShare | None) -> list[CostLine]:
    """Every cost of one call: provider usage (failed and cancelled requests included), the carrier
    minutes in ``direction`` (None: no carrier leg), and this call's share of ``hosting``."""
    minutes = dec(call_minutes).quantize(MICRO, rounding=ROUND_HALF_UP)
    lines = usage_lines(usages, prices)
    if direction is not None:
        lines.append(carrier_line(direction, minutes, prices))
    if hosting is not None:
        lines.append(hosting_line(hosting, minutes))
    return lines


def call_cost(usages: Sequence[Usage], *, call_minutes: float | Decimal, direction: str | None,
              prices: PriceTable, hosting: HostingShare | None) -> CallCost:
    lines = cost_lines(usages, call_minutes=call_minutes, direction=direction, prices=prices, hosting=hosting)
    return CallCost(tuple(lines), dec(call_minutes).quantize(MICRO, rounding=ROUND_HALF_UP))


def pricer(prices: PriceTable, hosting: HostingShare | None = None) -> Callable[[Sequence[Usage], float, str | None],
                                                                                  float | None]:
    """A call-record store's ``pricer``: (usage, billable minutes, direction) -> the call's USD total.

    Leave ``hosting`` out to store provider + carrier cost only (``cost report --hosting`` shares the box
    over the minutes each hour really carried); a ``HostingShare`` here is an assumed utilization.
    """

    def price(usages: Sequence[Usage], call_minutes: float, direction: str | None) -> float | None:
        cost = call_cost(usages, call_minutes=call_minutes, direction=direction, prices=prices, hosting=hosting)
        return float(cost.total)

    return price
