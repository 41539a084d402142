"""``parley cost estimate`` and ``parley cost report``: the cost ledger's two commands.

Owns: the call profile an estimate is made from (and its stated assumptions), the three stacks of the
article's "The Cost Reality" (A: Deepgram + GPT-4o mini + ElevenLabs Flash; B: Deepgram + GPT-4o mini +
Deepgram Aura-2, the series' choice; C: self-hosted on a GPU box), the self-hosting utilization table,
printing an estimate as text or JSON, and the argparse helpers of both commands. Must not know the
call-record database. Summing recorded calls is :mod:`parley.observe.cost_report`'s (the dashboard's
Costs page shares it); its names are re-exported here for the command line and existing importers.
The arithmetic is :mod:`parley.observe.cost`'s.

Estimate assumptions (all options of :class:`CallProfile`): STT bills the whole call (the stream stays
open); every turn sends the LLM the system prompt and tool specs plus the conversation so far, so input
grows with history: ``turns * prompt_tokens + history_tokens_per_turn * turns * (turns - 1) / 2`` (10 x
1,000 + 100 x 45 = 14,500 tokens); the LLM writes what TTS speaks, ~4 characters per token (1,500 / 4 =
375 tokens). With GPT-4o mini that is $0.0024 a call, inside the article's "$0.002-$0.005".
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import TYPE_CHECKING, TextIO

from parley.errors import ConfigError
from parley.observe.cost import (
    MICRO,
    ZERO,
    CallCost,
    CostLine,
    HostingShare,
    PriceEntry,
    PriceTable,
    Rate,
    call_cost,
    carrier_line,
    dec,
    money,
    plain,
)
from parley.observe.cost_report import CallUsage as CallUsage
from parley.observe.cost_report import RecordedCall as RecordedCall
from parley.observe.cost_report import cost_report as cost_report
from parley.observe.cost_report import parse_since as parse_since
from parley.observe.cost_report import summarize_calls as summarize_calls
from parley.observe.cost_report import usd, usd_range

if TYPE_CHECKING:
    from parley.providers.base import Usage

# ---- estimate ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CallProfile:
    """The call an estimate prices. Defaults: the article's 5-minute call with ~10 turns."""

    minutes: float = 5.0
    turns: int = 10
    tts_characters: int = 1500  # what the agent says in the whole call
    prompt_tokens: int = 1000  # sent every turn: system prompt, tool specs, the caller's newest words
    history_tokens_per_turn: int = 100  # each finished exchange adds this to every later prompt
    input_tokens: int | None = None  # the call's LLM input tokens, instead of the derivation above
    output_tokens: int | None = None  # instead of tts_characters / 4
    direction: str = "inbound"  # carrier price: inbound, outbound, toll_free_inbound, internal
    carrier_usd_per_minute: float | None = None  # your carrier's rate instead of the table's range
    call_minutes_per_day: float = 300.0  # stack C: the GPU box runs 24/7 and carries this many
    gpu_box: str = "gpu_box"  # hosting entry of stack C
    gpu_hourly_usd: float | None = None  # instead of the table's price for gpu_box

    def llm_input_tokens(self) -> int:
        if self.input_tokens is not None:
            return self.input_tokens
        t = self.turns
        return t * self.prompt_tokens + self.history_tokens_per_turn * t * (t - 1) // 2

    def llm_output_tokens(self) -> int:
        return self.output_tokens if self.output_tokens is not None else math.ceil(self.tts_characters / 4)

    def check(self) -> CallProfile:
        if not self.minutes > 0:
            raise ConfigError(f"--minutes must be above 0, got {self.minutes}")
        if self.turns < 1:
            raise ConfigError(f"--turns must be at least 1, got {self.turns}")
        for name in ("tts_characters", "prompt_tokens", "history_tokens_per_turn", "input_tokens", "output_tokens"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 0, got {value}")
        if self.carrier_usd_per_minute is not None and self.carrier_usd_per_minute < 0:
            raise ConfigError(f"--carrier-usd-per-min must be >= 0, got {self.carrier_usd_per_minute}")
        if self.gpu_hourly_usd is not None and self.gpu_hourly_usd < 0:
            raise ConfigError(f"--gpu-hourly-usd must be >= 0, got {self.gpu_hourly_usd}")
        if not self.call_minutes_per_day > 0:
            raise ConfigError(f"--call-minutes-per-day must be above 0, got {self.call_minutes_per_day}")
        return self

    def as_dict(self) -> dict[str, object]:
        return {
            "minutes": self.minutes, "turns": self.turns, "tts_characters": self.tts_characters,
            "llm_input_tokens": self.llm_input_tokens(), "llm_output_tokens": self.llm_output_tokens(),
            "prompt_tokens": self.prompt_tokens, "history_tokens_per_turn": self.history_tokens_per_turn,
            "direction": self.direction, "carrier_usd_per_minute": self.carrier_usd_per_minute,
            "call_minutes_per_day": self.call_minutes_per_day, "gpu_box": self.gpu_box,
            "assumptions": [
                "STT is billed for the whole call (the stream stays open)",
                f"LLM input = turns x prompt_tokens + history_tokens_per_turn x turns x (turns-1) / 2 "
                f"= {self.llm_input_tokens():,} tokens" if self.input_tokens is None else "LLM input tokens as given",
                "LLM output = tts_characters / 4 (the model writes what TTS speaks)"
                if self.output_tokens is None else "LLM output tokens as given",
                "FreeSWITCH host cost of stacks A and B: negligible (article), not included",
                f"stack C: a {self.gpu_box} running 24/7 carrying {self.call_minutes_per_day:g} call-minutes/day",
            ],
        }


@dataclass(frozen=True, slots=True)
class Stack:
    key: str
    name: str
    stt: tuple[str, str]
    llm: tuple[str, str]
    tts: tuple[str, str]
    self_hosted: bool
    article_total: str
    article_lines: Mapping[str, str] = field(default_factory=dict)  # kind -> the article's figure

    def usages(self, p: CallProfile) -> list[Usage]:
        from parley.providers.base import Usage  # numpy comes with it: not at parser-building time

        return [
            Usage(*self.stt, "stt", audio_seconds=p.minutes * 60),
            Usage(*self.llm, "llm", input_tokens=p.llm_input_tokens(), output_tokens=p.llm_output_tokens(),
                  requests=p.turns),
            Usage(*self.tts, "tts", characters=p.tts_characters, requests=p.turns),
        ]


_COMMERCIAL = {"stt": "~$0.04", "llm": "~$0.002-$0.005"}
STACKS: tuple[Stack, ...] = (
    Stack("A", "Deepgram + GPT-4o mini + ElevenLabs Flash", ("deepgram", "nova-3"), ("openai", "gpt-4o-mini"),
          ("elevenlabs", "eleven_flash_v2_5"), False, "~$0.12-$0.15", {**_COMMERCIAL, "tts": "~$0.08"}),
    Stack("B", "Deepgram + GPT-4o mini + Deepgram Aura-2 (the series' choice)", ("deepgram", "nova-3"),
          ("openai", "gpt-4o-mini"), ("deepgram", "aura-2-thalia-en"), False, "~$0.06-$0.10",
          {**_COMMERCIAL, "tts": "~$0.02-$0.05 (lower-cost TTS)"}),
    Stack("C", "self-hosted: whisper + local LLM + hibari on a GPU box", ("whisper-local", "tiny.en"),
          ("openai-local", "llama3.1:8b"), ("hibari-local", "heart"), True, "capacity, not per call"),
)
# The article's utilization table: (label, call-minutes per hour, the article's figure)
UTILIZATION: tuple[tuple[str, Decimal, str], ...] = (
    ("100% utilized (60 call-min every hour)", Decimal(60), "~$0.003/min"),
    ("300 call-minutes/day (box runs 24/7)", Decimal(300) / 24, "~$0.016/min"),
    ("1,000 call-minutes/day (box runs 24/7)", Decimal(1000) / 24, "~$0.005/min"),
)


@dataclass(frozen=True, slots=True)
class StackEstimate:
    stack: Stack
    cost: CallCost  # AI (+ hosting for C), without carrier
    carrier: CostLine

    def with_carrier(self) -> tuple[Decimal, Decimal]:
        return self.cost.total + self.carrier.usd, self.cost.total_high + self.carrier.usd_high


@dataclass(frozen=True, slots=True)
class Estimate:
    profile: CallProfile
    stacks: tuple[StackEstimate, ...]
    self_hosting: tuple[tuple[str, Decimal, Decimal, Decimal, str], ...]  # label, min/h, $/min, $/call, article
    prices: PriceTable


def _gpu(profile: CallProfile, prices: PriceTable, call_minutes_in_hour: Decimal) -> HostingShare:
    share = prices.hosting_share(profile.gpu_box, call_minutes_in_hour)
    return share if profile.gpu_hourly_usd is None else replace(share, hourly_usd=dec(profile.gpu_hourly_usd))


def estimate(profile: CallProfile, prices: PriceTable) -> Estimate:
    """Price the profile on stacks A, B and C, and the self-hosting utilization rows. Pure."""
    profile = profile.check()
    if profile.carrier_usd_per_minute is not None:
        rate = dec(profile.carrier_usd_per_minute)
        entry = PriceEntry("--carrier-usd-per-min", (Rate(rate, rate, 1, "call minute"),), "command line", "undated")
        prices = replace(prices, carrier={**prices.carrier, profile.direction: entry})
    minutes = dec(profile.minutes)
    carrier = carrier_line(profile.direction, minutes.quantize(MICRO), prices)
    stacks = []
    for stack in STACKS:
        hosting = _gpu(profile, prices, dec(profile.call_minutes_per_day) / 24) if stack.self_hosted else None
        cost = call_cost(stack.usages(profile), call_minutes=minutes, direction=None, prices=prices, hosting=hosting)
        stacks.append(StackEstimate(stack, cost, carrier))
    rows = [(label, per_hour, article) for label, per_hour, article in UTILIZATION]
    if dec(profile.call_minutes_per_day) not in (Decimal(300), Decimal(1000)):
        rows.append((f"{profile.call_minutes_per_day:,g} call-minutes/day (yours)",
                     dec(profile.call_minutes_per_day) / 24, ""))
    table = []
    for label, per_hour, article in rows:
        share = _gpu(profile, prices, per_hour)
        per_minute = money(dec(share.hourly_usd) / per_hour)  # the box's hour over the call-minutes it carries
        table.append((label, per_hour, per_minute, money(share.share(minutes)), article))
    return Estimate(profile, tuple(stacks), tuple(table), prices)


def estimate_as_dict(est: Estimate) -> dict[str, object]:
    stacks: dict[str, object] = {}
    for s in est.stacks:
        low, high = s.with_carrier()
        minutes = s.cost.call_minutes
        stacks[s.stack.key] = {
            "name": s.stack.name,
            "total_usd": float(s.cost.total), "total_usd_high": float(s.cost.total_high),
            "per_minute_usd": float(s.cost.per_minute or 0), "per_minute_usd_high": float(s.cost.per_minute_high or 0),
            "lines": [line.as_dict() for line in s.cost.lines],
            "carrier": s.carrier.as_dict(),
            "with_carrier": {"total_usd_low": float(low), "total_usd_high": float(high),
                             "per_minute_usd_low": float(money(low / minutes)),
                             "per_minute_usd_high": float(money(high / minutes))},
            "article_total": s.stack.article_total,
            "warnings": list(s.cost.warnings) + ([s.carrier.warning] if s.carrier.warning else []),
        }
    return {
        "profile": est.profile.as_dict(),
        "stacks": stacks,
        "self_hosting": [
            {"label": label, "call_minutes_per_hour": float(round(per_hour, 4)), "per_minute_usd": float(pm),
             "per_call_usd": float(pc), "article": article}
            for label, per_hour, pm, pc, article in est.self_hosting
        ],
        "bundled": [
            {"name": name, "per_minute_usd": float(e.rates[0].low), "per_minute_usd_high": float(e.rates[0].high),
             "per_call_usd": float(money(e.rates[0].low * dec(est.profile.minutes))), "source": e.source}
            for name, e in est.prices.bundled.items()
        ],
        "prices": {"table": est.prices.origin, "note": est.prices.note},
    }


# ---- text -------------------------------------------------------------------------------------------


def quantity(line: CostLine) -> str:
    short = {"audio minute": "audio min", "call minute": "call min", "input token": "input tok",
             "output token": "output tok", "character": "chars"}.get(line.unit, line.unit)
    q = line.quantity
    text = f"{q:,.2f}" if line.unit.endswith("minute") else f"{q:,.0f}"
    return f"{text} {short}"


def line_text(line: CostLine, note: str = "") -> str:
    rate = Rate(line.unit_usd, line.unit_usd_high, line.per, line.unit).label()
    amount = usd_range(line.usd, line.usd_high)
    return f"  {line.item[:44]:<44} {quantity(line):>17} x {rate:<26} {amount:>16}  {note}".rstrip()


def print_estimate(est: Estimate, out: TextIO) -> None:
    p = est.profile
    w = out.write
    article = (p.minutes, p.turns, p.tts_characters) == (5.0, 10, 1500)  # the article's call: show its figures
    w(f"Cost of one call: {p.minutes:g} minutes, {p.turns} turns, {p.tts_characters:,} TTS characters, "
      f"{p.llm_input_tokens():,} LLM input / {p.llm_output_tokens():,} output tokens\n")
    w(f"Prices: {est.prices.origin}. {est.prices.note}\n")
    for s in est.stacks:
        notes = s.stack.article_lines if article else {}
        w(f"\n{f'Stack {s.stack.key}: {s.stack.name}':<112}{'article' if article else ''}".rstrip() + "\n")
        for line in s.cost.lines:
            first = line.item.endswith(("STT", "TTS", "input"))  # the LLM's figure goes on its first line
            w(line_text(line, notes.get(line.kind, "") if first else "") + "\n")
        if not s.stack.self_hosted:
            w(f"  {'FreeSWITCH host':<90} {'not included':>16}  {'negligible' if article else ''}".rstrip() + "\n")
        c = s.cost
        total_note = s.stack.article_total if article else ""
        w(f"  {'per call':<90} {usd_range(c.total, c.total_high):>16}  {total_note}".rstrip() + "\n")
        w(f"  {'per minute':<90} {usd_range(c.per_minute or ZERO, c.per_minute_high or ZERO):>16}\n")
        carrier_note = "~$0.025-$0.075" if article and p.carrier_usd_per_minute is None \
            and p.direction in ("inbound", "outbound") else ""
        w(line_text(s.carrier, carrier_note).replace("  carrier", "+ carrier", 1) + "\n")
        low, high = s.with_carrier()
        w(f"  {'per call with carrier':<90} {usd_range(low, high):>16}\n")
        w(f"  {'per minute with carrier':<90} "
          f"{usd_range(money(low / c.call_minutes), money(high / c.call_minutes)):>16}\n")
        for warning in (*c.warnings, *([s.carrier.warning] if s.carrier.warning else [])):
            w(f"  warning: {warning}\n")
    hourly = _gpu(p, est.prices, Decimal(60)).hourly_usd
    w(f"\nSelf-hosting: a {p.gpu_box} at ${plain(hourly)}/hour, whether it carries one call or sixty minutes of them\n")
    w(f"  {'utilization':<42} {'call-min/h':>10} {'per minute':>11} {f'per {p.minutes:g}-min call':>16}  article\n")
    for label, per_hour, pm, pc, figure in est.self_hosting:
        w(f"  {label:<42} {per_hour:>10.2f} {usd(pm, 5):>11} {usd(pc):>16}  {figure}\n")
    for name, e in est.prices.bundled.items():
        rate = e.rates[0]
        w(f"\nFor comparison, bundled: {name} {rate.label()} = "
          f"{usd_range(rate.low * dec(p.minutes), rate.high * dec(p.minutes))} per {p.minutes:g}-minute call\n")


def cost_estimate(profile: CallProfile, *, prices: PriceTable, out: TextIO, as_json: bool = False) -> int:
    """``parley cost estimate``: the article's stacks for ``profile``. Returns the exit status."""
    est = estimate(profile, prices)
    if as_json:
        out.write(json.dumps(estimate_as_dict(est), indent=2) + "\n")
    else:
        print_estimate(est, out)
    return 0


# ---- argparse helpers (the lead's cli.py calls these) ------------------------------------------------


def add_estimate_arguments(p: argparse.ArgumentParser) -> None:
    d = CallProfile()
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--prices", help="a price table YAML (default: the one shipped with parley)")
    p.add_argument("--minutes", type=float, default=d.minutes, help="call length (default 5)")
    p.add_argument("--turns", type=int, default=d.turns, help="caller/agent exchanges (default 10)")
    p.add_argument("--tts-characters", type=int, default=d.tts_characters, help="characters spoken (default 1500)")
    p.add_argument("--prompt-tokens", type=int, default=d.prompt_tokens,
                   help="system prompt + tools + newest caller words, sent every turn (default 1000)")
    p.add_argument("--history-tokens-per-turn", type=int, default=d.history_tokens_per_turn,
                   help="history each exchange adds to later prompts (default 100)")
    p.add_argument("--input-tokens", type=int, help="LLM input tokens of the whole call (overrides the above)")
    p.add_argument("--output-tokens", type=int, help="LLM output tokens of the whole call (default characters/4)")
    p.add_argument("--direction", default=d.direction,
                   help="carrier price: inbound, outbound, toll_free_inbound, internal (default inbound)")
    p.add_argument("--carrier-usd-per-min", type=float, help="your carrier's per-minute rate")
    p.add_argument("--call-minutes-per-day", type=float, default=d.call_minutes_per_day,
                   help="stack C: call-minutes a day on the 24/7 GPU box (default 300)")
    p.add_argument("--gpu-hourly-usd", type=float, help="stack C: the GPU box's hourly price (default: the table's)")


def profile_from_args(ns: argparse.Namespace) -> CallProfile:
    return CallProfile(
        minutes=ns.minutes, turns=ns.turns, tts_characters=ns.tts_characters, prompt_tokens=ns.prompt_tokens,
        history_tokens_per_turn=ns.history_tokens_per_turn, input_tokens=ns.input_tokens,
        output_tokens=ns.output_tokens, direction=ns.direction, carrier_usd_per_minute=ns.carrier_usd_per_min,
        call_minutes_per_day=ns.call_minutes_per_day, gpu_hourly_usd=ns.gpu_hourly_usd,
    )


def add_report_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--since", type=parse_since,
                   help="calls started on or after this ISO date / date-time (UTC), or this long ago (24h, 7d)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--prices", help="a price table YAML (default: the one shipped with parley)")
    p.add_argument("--hosting", help="share this hosting entry of the price table (e.g. gpu_box) over the calls")
