"""parley.eventloop: --loop auto|asyncio|uvloop resolves to a loop that runs (uvloop only when installed)."""

from __future__ import annotations

import asyncio
import importlib.util

import pytest

from parley.errors import ConfigError
from parley.eventloop import resolve_loop, run_on

HAS_UVLOOP = importlib.util.find_spec("uvloop") is not None


async def _loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__.split(".")[0]


def test_asyncio_is_the_stdlib_loop() -> None:
    assert resolve_loop("asyncio") == "asyncio"
    assert run_on("asyncio", _loop_module()) == "asyncio"


def test_auto_takes_uvloop_when_installed() -> None:
    assert resolve_loop("auto") == ("uvloop" if HAS_UVLOOP else "asyncio")
    assert run_on("auto", _loop_module()) == ("uvloop" if HAS_UVLOOP else "asyncio")


def test_uvloop_without_the_extra_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(ConfigError, match=r"parley\[fast\]"):
        resolve_loop("uvloop")
    assert resolve_loop("auto") == "asyncio"


def test_an_unknown_loop_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="trio"):
        resolve_loop("trio")
