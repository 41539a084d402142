"""What the host says about a benchmark process: its CPU time and resident memory, the whole machine's CPU.

Owns: reading ``getrusage``, ``/proc/self/statm`` and ``/proc/stat``, and raising the open-files soft limit.
Linux first; elsewhere the figures degrade (peak RSS, no machine CPU) rather than fail. No asyncio.
"""

from __future__ import annotations

import os
import resource


def rss_mb() -> float:
    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            pages = int(fh.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:  # not Linux: the peak is the best there is
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_ms() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return 1000.0 * (ru.ru_utime + ru.ru_stime)


def box_jiffies() -> tuple[int, ...]:
    """/proc/stat's cpu line: user nice system idle iowait irq softirq steal (zeros where unavailable)."""
    try:
        with open("/proc/stat", encoding="ascii") as fh:
            fields = fh.readline().split()[1:9]
        return tuple(int(x) for x in fields) + (0,) * (8 - len(fields))
    except (OSError, ValueError):
        return (0,) * 8


def box_usage(before: tuple[int, ...], after: tuple[int, ...]) -> dict[str, float]:
    """Whole-machine CPU over an interval, every process: busy in % of one core (2 cores: up to 200),
    and iowait and steal in % of all cores."""
    d = [b - a for a, b in zip(before, after, strict=True)]
    total = sum(d) or 1
    cores = os.cpu_count() or 1
    return {"busy_core_percent": round(100.0 * cores * (total - d[3] - d[4]) / total, 1),
            "iowait": round(100.0 * d[4] / total, 1), "steal": round(100.0 * d[7] / total, 1)}


def raise_fd_limit(calls: int) -> None:
    """Each call holds a WebSocket (and the load generator one more); keep well clear of the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 4 * calls + 256
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
