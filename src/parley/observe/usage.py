"""Routing usage that providers report out of band (cancelled requests) to the call that caused it.

Owns: one context variable. Providers are shared by every call in the process, and an async generator that
a barge-in closed cannot yield its Usage to the consumer that left, so providers hand such Usage to an
``on_cancel`` callback instead. The composition root passes :func:`report` as that callback; each call's
session sets :data:`CURRENT` to its own sink, and since a closed generator's cleanup runs in the closing
task's context, the Usage lands on the right call. Outside any call it is logged and dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextvars import ContextVar

from parley.providers.base import Usage

log = logging.getLogger("parley.usage")

CURRENT: ContextVar[Callable[[Usage], None] | None] = ContextVar("parley_usage_sink", default=None)


def report(usage: Usage) -> None:
    sink = CURRENT.get()
    if sink is None:
        log.debug("usage outside a call: %s", usage)
        return
    sink(usage)


# Call events raised inside shared providers (a fallback switch), routed the same way.
EVENTS: ContextVar[Callable[[str, dict[str, str]], None] | None] = ContextVar("parley_event_sink", default=None)


def event(kind: str, detail: dict[str, str]) -> None:
    sink = EVENTS.get()
    if sink is not None:
        sink(kind, detail)
