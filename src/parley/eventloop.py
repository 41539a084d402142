"""Which asyncio event loop a parley process runs on: the stdlib's, or uvloop's when installed (``[fast]``).

Owns: naming the choice (``asyncio``, ``uvloop``, ``auto``: uvloop if it imports, else asyncio), resolving it
and running a coroutine to completion on that loop. ``parley serve --loop`` and ``parley bench density
--loop`` use it; nothing else in parley depends on which loop runs (both implement asyncio's API). Must not
import uvloop unless asked to.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Callable, Coroutine
from typing import Any, Literal, TypeVar

from parley.errors import ConfigError

LoopChoice = Literal["asyncio", "uvloop", "auto"]
LOOP_CHOICES: tuple[LoopChoice, ...] = ("auto", "asyncio", "uvloop")
T = TypeVar("T")


def resolve_loop(choice: str) -> Literal["asyncio", "uvloop"]:
    """``auto`` -> ``uvloop`` when it is installed, else ``asyncio``; ``uvloop`` without it is a ConfigError."""
    if choice == "asyncio":
        return "asyncio"
    has_uvloop = importlib.util.find_spec("uvloop") is not None
    if choice == "uvloop":
        if not has_uvloop:
            raise ConfigError("--loop uvloop: uvloop is not installed (pip install 'parley[fast]')")
        return "uvloop"
    if choice == "auto":
        return "uvloop" if has_uvloop else "asyncio"
    raise ConfigError(f"event loop: {choice!r} is not one of {', '.join(LOOP_CHOICES)}")


def loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    if resolve_loop(choice) == "asyncio":
        return None
    import uvloop

    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run_on(choice: str, coro: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(coro)`` on the chosen loop (Python 3.11: ``asyncio.Runner`` takes the factory)."""
    with asyncio.Runner(loop_factory=loop_factory(choice)) as runner:
        return runner.run(coro)
