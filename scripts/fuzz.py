#!/usr/bin/env python3
"""The long fuzz run of parley's parsers (issue 10 item 6): ``scripts/fuzz.py --inputs 1000000``.

Feeds each parser ``--inputs`` mutated inputs (seeded, reproducible: see :mod:`testkit.fuzz`) and prints
per parser: inputs, its own protocol errors (expected), crashes by exception class, and the slowest input in
ms (as measured, and re-timed best of 5: a lone GC pause or a busy shared core shows in the first figure
only). Crash examples and each parser's slowest input are written to ``--out``. Exit status 1 when any parser
crashed or an input took longer than ``--max-ms``. On a shared machine run it with ``nice``.

    nice -n 19 .venv/bin/python scripts/fuzz.py --inputs 1000000 --targets esl,deepgram-listen
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the fuzz harness is test code (tests/testkit), not in the wheel

from testkit.fuzz import Mutator, Report, Target, run_target, targets  # noqa: E402

FIXTURES = ROOT.parent / "shared" / "fixtures" / "freeswitch"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--inputs", type=int, default=100_000, help="inputs per parser (default 100000)")
    ap.add_argument("--targets", default="", help="comma-separated parser names (default: all)")
    ap.add_argument("--seed", type=int, default=0, help="mutator seed (same seed, same inputs)")
    ap.add_argument("--fixtures", type=Path, default=FIXTURES, help="directory of *.esl-in.bin recordings")
    ap.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "parley-fuzz",
                    help="where crash and slowest inputs go")
    ap.add_argument("--max-ms", type=float, default=100.0, help="slowest input allowed (ms)")
    ap.add_argument("--list", action="store_true", help="list the parsers and exit")
    args = ap.parse_args(argv)

    logging.disable(logging.CRITICAL)  # parsers log vendor warnings; a million of them help nobody
    chosen = targets(args.fixtures)
    if args.list:
        print("\n".join(t.name for t in chosen))
        return 0
    if args.targets:
        wanted = set(args.targets.split(","))
        unknown = wanted - {t.name for t in chosen}
        if unknown:
            print(f"unknown parser(s): {', '.join(sorted(unknown))} (see --list)", file=sys.stderr)
            return 2
        chosen = [t for t in chosen if t.name in wanted]
    args.out.mkdir(parents=True, exist_ok=True)

    print(f"{'parser':<20} {'inputs':>9} {'protocol errors':>16} {'crashes':>8}  {'slowest ms':>10}  "
          f"{'re-timed':>8}  {'seconds':>8}  crash classes", flush=True)
    failed = False
    for target in chosen:
        start = time.monotonic()

        def keep(kind: str, data: bytes, name: str = target.name) -> None:
            (args.out / f"{name}.crash-{kind}.bin").write_bytes(data)

        report = run_target(target, Mutator(target, args.seed).inputs(args.inputs), on_crash=keep)
        (args.out / f"{target.name}.slowest.bin").write_bytes(report.slowest_input)
        failed |= _print(report, time.monotonic() - start, _retime(target, report.slowest_input), args.max_ms)
    print("verdict:", "FAILED" if failed else f"no crashes, no input over {args.max_ms:g} ms", flush=True)
    return 1 if failed else 0


def _retime(target: Target, data: bytes, runs: int = 5) -> float:
    """The slowest input run again (best of ``runs``, ms): tells a slow parse from a GC pause or a busy core."""
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        with contextlib.suppress(*target.allowed):
            target.run(data)
        best = min(best, (time.perf_counter() - start) * 1000.0)
    return best


def _print(report: Report, seconds: float, retimed_ms: float, max_ms: float) -> bool:
    """One parser's line. The verdict uses the re-timed figure: a single pause of the process is not the parser."""
    crashes = sum(report.crashes.values())
    classes = ", ".join(f"{k} x{v}" for k, v in report.crashes.most_common()) or "-"
    print(f"{report.target:<20} {report.inputs:>9} {report.protocol_errors:>16} {crashes:>8}  "
          f"{report.slowest_ms:>10.2f}  {retimed_ms:>8.2f}  {seconds:>8.0f}  {classes}", flush=True)
    return crashes > 0 or retimed_ms > max_ms


if __name__ == "__main__":
    sys.exit(main())
