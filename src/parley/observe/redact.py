"""What must not leave the process in clear: callers' phone numbers and the words spoken on a call.

Owns: the one masking rule for phone numbers (:func:`redact_number`), shared by the dashboard, the logs
and the trace attributes; the marker types a call site wraps a private value in when it logs it
(:class:`CallerText`, :class:`PhoneNumber`); and the safety net that masks whatever still looks like a
phone number in a finished log line (:func:`mask_numbers`). Pure text in, text out: must not know about
logging handlers or settings (that is :mod:`parley.observe.logs`).

A marker prints redacted by default (``str()`` and ``repr()`` give the placeholder), so a log line that
bypasses parley's log filter still shows ``[caller text: 23 chars]``, never the words. Only the filter,
when caller-text logging is on, swaps a marker for its :attr:`~CallerText.clear` value.

The safety net, in the order it looks at a line (the first rule that matches a span of text wins)::

    kept as is   UUIDs (FreeSWITCH call ids)        6f0b3e0a-2f0b-4d8e-9a51-0c3c7f6e2a11
                 dates and ISO/asctime timestamps   2026-11-24T03:30:37.123, 2026-11-24 03:30:37,123
    masked       user part of sip:/sips: URIs       sip:+15551234567@pbx    -> sip:**********67@pbx
                 tel: URIs                          tel:+1-555-123-4567     -> tel:**************67
    kept as is   a figure followed by its unit      1432 ms, 16000 Hz, 1920044 bytes, 1234567 frames
                 a token with a letter in it        hex ids, sha256 digests, v2v, 0x1f2e3d4c5b6a
    masked       7 or more digits in one number     +15551234567, 5551234567, 555 123 4567, +1 (555) 123-4567,
                 (``+`` or ``%2B`` prefix, groups    %2B15551234567, frames=1234567, epoch 1732417837
                 joined by one space or dash)
    kept as is   fewer than 7 digits; decimals      port 8021, 1432, 0.1234567, 1234567.5, 10.0.0.1:8021

Deliberate consequences: a bare count without a unit (``frames=1234567``) and an epoch timestamp are
masked as if they were numbers (a false positive costs a debugging detail, a false negative leaks a
caller); numbers separated by single spaces read as one (``1000 2000 4000`` is masked); a phone number
written inside a word (``caller15551234567``) is not seen. Masking keeps the last two digits, like
:func:`redact_number`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PLACEHOLDER_NONE = "-"


def redact_number(value: str | None) -> str | None:
    """Mask all but the last two characters (all of a short number such as an extension)."""
    if not value:
        return value
    return "*" * len(value) if len(value) < 6 else "*" * (len(value) - 2) + value[-2:]


@dataclass(frozen=True, slots=True, repr=False)
class CallerText:
    """Words spoken on a call: the caller's, or the agent's reply (``who="agent"``), which repeats them."""

    text: str
    who: str = "caller"

    @property
    def clear(self) -> str:
        return self.text

    def __str__(self) -> str:
        return f"[{self.who} text: {len(self.text)} chars]"

    __repr__ = __str__


@dataclass(frozen=True, slots=True, repr=False)
class PhoneNumber:
    """A caller's number (or a SIP user): masked by :func:`redact_number` unless caller-text logging is on."""

    number: str | None

    @property
    def clear(self) -> str:
        return self.number or PLACEHOLDER_NONE

    def __str__(self) -> str:
        return redact_number(self.number) or PLACEHOLDER_NONE

    __repr__ = __str__


Private = CallerText | PhoneNumber


def reveal(value: object) -> object:
    """The clear value of a marker; anything else unchanged."""
    return value.clear if isinstance(value, CallerText | PhoneNumber) else value


_HEX = "[0-9a-fA-F]"
_UNITS = (
    "ms|us|µs|ns|s|sec|secs|seconds|min|h|Hz|kHz|%|B|kB|KB|KiB|MB|MiB|GB|GiB|bytes?|bits?|bps|kbps"
    "|frames?|samples?|chars?|characters|tokens?|words?|lines?|rows?|files?|calls?|events?|x"
)
_SCAN = re.compile(
    rf"""
      (?P<uuid>{_HEX}{{8}}(?:-{_HEX}{{4}}){{3}}-{_HEX}{{12}})
    | (?P<date>\d{{4}}-\d{{2}}-\d{{2}}(?:[T\ ]\d{{2}}:\d{{2}}(?::\d{{2}})?(?:[.,]\d+)?)?)
    | (?P<sip>\bsips?:)(?P<user>[^@\s<>"',/]+)(?=@)
    | (?P<tel>\btel:)(?P<telnum>[^\s;<>"',]+)
    | (?P<figure>(?<![\w.])\d[\d,_.]*(?:-\d[\d,_.]*)?\ ?(?:{_UNITS})(?![\w%]))
    | (?P<word>(?<!\w)\w*[^\W\d]\w*)
    | (?P<number>(?<![\w.+])(?:\+|%2[Bb])?(?:\d{{1,3}}[ -]?)?(?:\(\d{{1,5}}\)[ -]?)?\d+(?:[ -]\d+)*(?!\w|\.\d))
    """,
    re.VERBOSE,
)
_MIN_DIGITS = 7


def _mask(match: re.Match[str]) -> str:
    if match["user"] is not None:
        return match["sip"] + (redact_number(match["user"]) or "")
    if match["telnum"] is not None:
        return match["tel"] + (redact_number(match["telnum"]) or "")
    number = match["number"]
    if number is not None and sum(c.isdigit() for c in number) >= _MIN_DIGITS:
        return redact_number(number) or ""
    return match[0]


def mask_numbers(text: str) -> str:
    """``text`` with everything that looks like a phone number or a SIP/tel user masked (rules above)."""
    return _SCAN.sub(_mask, text)
