"""ESL parser throughput on the genuine recordings: plain vs JSON events, whole buffer vs 1 KiB reads.

Run: .venv/bin/python benchmarks/bench_esl_parser.py   (prints figures; asserts nothing)
"""

from __future__ import annotations

import time
from pathlib import Path

from parley.freeswitch import esl_protocol as esl

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "freeswitch"


def run(data: bytes, step: int, repeat: int) -> tuple[float, int]:
    best = float("inf")
    n = 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        parser = esl.EslParser()
        n = 0
        for i in range(0, len(data), step):
            n += len(parser.feed(data[i : i + step]))
        best = min(best, time.perf_counter() - t0)
    return best, n


def main() -> None:
    print(f"{'capture':<28} {'format':<6} {'read':>7} {'msgs':>6} {'MB/s':>8} {'msgs/s':>10} {'us/msg':>8}")
    for name in ("call-playback-plain", "call-playback-json", "timing"):
        data = (FIXTURES / f"{name}.esl-in.bin").read_bytes() * 10
        fmt = "json" if "json" in name else "plain"
        for step in (len(data), 1024):
            secs, n = run(data, step, 5)
            label = "whole" if step == len(data) else "1KiB"
            print(f"{name:<28} {fmt:<6} {label:>7} {n:>6} {len(data) / secs / 1e6:>8.1f} {n / secs:>10.0f}"
                  f" {secs / n * 1e6:>8.1f}")


if __name__ == "__main__":
    main()
