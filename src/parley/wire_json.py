"""JSON read from the wire (FreeSWITCH events, vendor messages), with its nesting depth and number sizes bounded.

Owns: :func:`loads`, the one JSON decoder for text parley did not write itself. The stdlib decoder accepts
what an attacker (or a broken peer) can use to crash or stall a parser further on: a document nested ~1000
deep (``RecursionError`` inside the decoder, or later in ``json.dumps``/``repr`` of the result), an integer
of 4301+ digits (a ``ValueError`` that is not a ``JSONDecodeError``; shorter ones still cost quadratic time
to convert), ``1e999`` (``inf``, then ``OverflowError`` in ``int()``), ``NaN``/``Infinity`` (not JSON). Here
every such input raises :class:`WireJsonError`, a ``ValueError`` like ``json.JSONDecodeError``, so each
caller maps one exception class to its own protocol error. Must not know any protocol or vendor.

Depth is checked on the decoded value (iteratively; skipped when the text has too few brackets to nest that
deep), and the decoder's own recursion limit is turned into the same error, so the bound holds whatever the
depth of the calling stack.
"""

from __future__ import annotations

import json
import math

__all__ = ["MAX_DEPTH", "MAX_NUMBER_CHARS", "WireJsonError", "depth", "loads"]

MAX_DEPTH = 64  # containers inside containers; every message parley reads is < 10 deep
MAX_NUMBER_CHARS = 64  # digits, sign, point and exponent of one number literal


class WireJsonError(ValueError):
    """Text that is not JSON, or JSON beyond the depth / number-size bounds."""


def _parse_int(text: str) -> int:
    if len(text) > MAX_NUMBER_CHARS:
        raise WireJsonError(f"integer literal of {len(text)} characters (limit {MAX_NUMBER_CHARS})")
    return int(text)


def _parse_float(text: str) -> float:
    if len(text) > MAX_NUMBER_CHARS:
        raise WireJsonError(f"number literal of {len(text)} characters (limit {MAX_NUMBER_CHARS})")
    value = float(text)
    if not math.isfinite(value):
        raise WireJsonError(f"number {text[:20]!r} is out of range")
    return value


def _parse_constant(text: str) -> float:
    raise WireJsonError(f"{text} is not JSON")


_DECODER = json.JSONDecoder(parse_int=_parse_int, parse_float=_parse_float, parse_constant=_parse_constant)


def loads(data: str | bytes | bytearray, *, max_depth: int = MAX_DEPTH) -> object:
    """The value of one JSON document (bytes must be UTF-8); :class:`WireJsonError` for anything else."""
    if isinstance(data, bytes | bytearray):
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise WireJsonError(f"not UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start})") from None
    else:
        text = data
    try:
        value: object = _DECODER.decode(text)
    except WireJsonError:
        raise
    except RecursionError:
        raise WireJsonError(f"nested deeper than {max_depth} levels") from None
    except ValueError as exc:  # JSONDecodeError
        raise WireJsonError(str(exc)) from None
    # Every container opens with a bracket in the text (brackets inside strings only add to the count), so a
    # text with at most max_depth of them cannot nest deeper: the walk is skipped for the flat messages that
    # are almost all of the traffic (an ESL event: ~150 string headers, 13 of its 32 us were the walk).
    if text.count("{") + text.count("[") > max_depth and depth(value, max_depth) > max_depth:
        raise WireJsonError(f"nested deeper than {max_depth} levels")
    return value


def depth(value: object, limit: int = MAX_DEPTH) -> int:
    """Container nesting of a decoded value (a scalar is 0), counted without recursion; stops past ``limit``."""
    deepest = 0
    stack: list[tuple[object, int]] = [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children: list[object] | tuple[object, ...] = list(item.values())
        elif isinstance(item, list):
            children = item
        else:
            continue
        level += 1
        if level > deepest:
            deepest = level
            if deepest > limit:
                return deepest
        stack.extend((child, level) for child in children if isinstance(child, dict | list))
    return deepest
