"""``parley bench``: figures about parley's own speed and capacity, printed (and optionally saved as JSON).

Owns: the benchmark commands. :mod:`~parley.bench.latency` runs the scripted scenarios on the local stack
and summarizes per-stage timings; :mod:`~parley.bench.density` runs many concurrent calls through instant
benchmark fakes (:mod:`~parley.bench.instant`) against a fake FreeSWITCH in another process
(:mod:`~parley.bench.load_proc`) and measures CPU, memory, frame lag and dropped frames. Benchmarks report;
they never assert timings. Must not be imported by ``parley serve``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path


def _clean(value: object) -> object:
    """NaN/inf -> None, recursively, so the file is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def write_json(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_clean(data), indent=2, default=str) + "\n", encoding="utf-8")
