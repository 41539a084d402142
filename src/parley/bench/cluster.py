"""The local cluster rehearsal's parts (``scripts/cluster_rehearsal.py``, issue 12 item 6).

Owns: a throwaway PostgreSQL server (Debian's ``initdb``/``pg_ctl``, run as the ``postgres`` user when we
are root), the worker configuration for the two layouts (one FreeSWITCH node per ``parley serve`` today,
``freeswitch.nodes`` behind ``parley serve --workers N`` once parley holds several nodes), the call counters
read from each worker's ``/metrics`` (the Prometheus text format, parsed by prometheus_client when it is
installed, tolerantly otherwise), and the report: the checks and the printed table.

Must not know parley's engine, the fake FreeSWITCH or how calls are driven: the script composes those.
Nothing here asserts timings; the checks are counts.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

# ---- PostgreSQL ---------------------------------------------------------------------------------------


class PostgresUnavailable(RuntimeError):
    """PostgreSQL cannot be started on this machine (not installed, or no way to run it as non-root)."""


def postgres_bindir() -> Path | None:
    """The newest ``/usr/lib/postgresql/<version>/bin`` with ``initdb`` and ``pg_ctl``."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    found = [p for p in found if (p.parent / "pg_ctl").exists()]
    return found[-1].parent if found else None


@dataclass
class PgServer:
    """One PostgreSQL cluster in ``base`` (trust auth, user ``parley``, loopback, fsync off)."""

    bindir: Path
    base: Path
    port: int
    run_as: list[str]
    started: bool = False
    pid: int = 0  # the postmaster's, once started

    @property
    def data(self) -> Path:
        return self.base / "data"

    @property
    def url(self) -> str:
        """The records URL parley takes (SQLAlchemy + asyncpg)."""
        return f"postgresql+asyncpg://parley@127.0.0.1:{self.port}/postgres"

    @classmethod
    def create(cls, base: Path, port: int) -> PgServer:
        """initdb in ``base`` (created); raises :class:`PostgresUnavailable` with the reason."""
        bindir = postgres_bindir()
        if bindir is None:
            raise PostgresUnavailable(
                "PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin (apt-get install -y postgresql)")
        base.mkdir(parents=True, exist_ok=True)
        run_as: list[str] = []
        if os.geteuid() == 0:  # initdb refuses root
            runuser = shutil.which("runuser")
            try:
                pw = pwd.getpwnam("postgres")
            except KeyError:
                pw = None
            if runuser is None or pw is None:
                raise PostgresUnavailable("running as root: initdb refuses root, and there is no 'postgres' user "
                                          "or runuser to run it as")
            os.chown(base, pw.pw_uid, pw.pw_gid)
            run_as = [runuser, "-u", "postgres", "--"]
        server = cls(bindir, base, port, run_as)
        initdb = [str(bindir / "initdb"), "-D", str(server.data), "-A", "trust", "-U", "parley", "-E", "UTF8",
                  "--locale=C", "--no-sync"]
        done = subprocess.run([*run_as, *initdb], capture_output=True, timeout=120, check=False)
        if done.returncode != 0:
            raise PostgresUnavailable(f"initdb failed: {done.stderr.decode(errors='replace').strip()[-500:]}")
        return server

    def _ctl(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        cmd = [*self.run_as, str(self.bindir / "pg_ctl"), "-D", str(self.data), *args]
        return subprocess.run(cmd, capture_output=True, timeout=120, check=False)

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 -c fsync=off"
        done = self._ctl("-l", str(self.base / "server.log"), "-w", "-t", "60", "-o", opts, "start")
        if done.returncode != 0:
            log = self.base / "server.log"
            tail = log.read_text(errors="replace")[-500:] if log.exists() else ""
            raise PostgresUnavailable(f"pg_ctl start failed: {done.stderr.decode(errors='replace').strip()} {tail}")
        self.started = True
        with contextlib.suppress(OSError, ValueError, IndexError):
            self.pid = int((self.data / "postmaster.pid").read_text().split()[0])

    def stop(self) -> None:
        """Stop (immediate: the data is thrown away); a no-op when not running."""
        if self.started:
            self._ctl("-w", "-t", "60", "-m", "immediate", "stop")
            self.started = False


# ---- worker configuration -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Node:
    """A (fake) FreeSWITCH node as parley's configuration names it."""

    name: str
    esl_port: int
    password: str
    host: str = "127.0.0.1"


def worker_config(
    nodes: list[Node], *, ws_port: int, http_port: int, records_url: str, spool_dir: Path, records_host: str,
    multi_node: bool,
) -> dict[str, Any]:
    """One ``parley serve`` configuration. ``multi_node``: every node under ``freeswitch.nodes`` (passwords
    in the file, which the caller writes mode 600); else exactly one node as ``freeswitch.esl`` (its
    password from ``PARLEY_ESL_PASSWORD``)."""
    fs: dict[str, Any] = {
        "audio_stream": {"listen_host": "127.0.0.1", "listen_port": ws_port},
        "playback": {"spool_dir": str(spool_dir)},
    }
    if multi_node:
        fs["nodes"] = [{"name": n.name, "esl": {"host": n.host, "port": n.esl_port, "password": n.password}}
                       for n in nodes]
    else:
        (node,) = nodes
        fs["esl"] = {"host": node.host, "port": node.esl_port}
    return {
        "freeswitch": fs,
        "records": {"url": records_url, "host": records_host},
        # a drained worker waits for one last scrape (the rehearsal scrapes every 0.2 s): its last calls count
        "observe": {"host": "127.0.0.1", "port": http_port, "final_scrape_s": 10},
    }


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    path.chmod(0o600)
    return path


# ---- metrics ------------------------------------------------------------------------------------------

CALLS_STARTED = "parley_calls_started_total"
CALLS_ENDED = "parley_calls_ended_total"
ACTIVE_CALLS = "parley_active_calls"
TURNS = "parley_turns_total"
_SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{[^}]*\})?\s+(\S+)")  # name{labels} value [ts]


def metric_sums(text: str) -> dict[str, float]:
    """Each sample name's value summed over its labels (``parley_calls_ended_total`` over causes)."""
    try:
        from prometheus_client.parser import text_string_to_metric_families
    except ImportError:
        return _tolerant_sums(text)
    out: dict[str, float] = {}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                out[sample.name] = out.get(sample.name, 0.0) + float(sample.value)
    except ValueError:
        return _tolerant_sums(text)
    return out


def _tolerant_sums(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line.strip())
        if m is None:
            continue
        try:
            value = float(m.group(2))
        except ValueError:
            continue
        out[m.group(1)] = out.get(m.group(1), 0.0) + value
    return out


# ---- the report ---------------------------------------------------------------------------------------


@dataclass
class CallResult:
    """One placed call, as the scripted caller saw it on its FreeSWITCH node."""

    uuid: str
    node: str
    turns_planned: int = 0
    turns_said: int = 0
    turns_answered: int = 0
    streamed: bool = False
    dropped: str = ""  # why the call did not end normally ("" = it did: the caller hung up after its turns)
    on_drained_worker: bool = False
    during_drain: bool = False  # placed after the drain began
    refused: str = ""  # placed during the drain, its stream refused by the draining worker (to the fallback)
    worker: int | None = None  # the worker whose records host wrote its record


@dataclass
class WorkerResult:
    """One parley worker: its counters (the last scrape before it exited, for a drained one) and records."""

    index: int
    pid: int
    http_port: int
    nodes: list[str]
    calls_started: float = 0.0
    calls_ended: float = 0.0
    turns: float = 0.0
    active_at_drain: float = 0.0
    drained: bool = False
    ready_status_in_drain: int | None = None
    exit_code: int | None = None
    records: int = 0  # call records written with this worker's host
    esl_connected: bool = False  # its /health before the first call: ESL up to every node it holds


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class Report:
    layout: str
    calls: list[CallResult] = field(default_factory=list)
    workers: list[WorkerResult] = field(default_factory=list)
    record_rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # fs_uuid -> its rows
    supervisor_exit: int | None = None
    pids: list[int] = field(default_factory=list)  # every process started (PostgreSQL, parley): gone at the end
    errors: list[str] = field(default_factory=list)

    @property
    def placed(self) -> int:
        return len(self.calls)

    @property
    def served(self) -> list[CallResult]:
        """The calls a worker took (all but those the draining worker refused)."""
        return [c for c in self.calls if not c.refused]

    def checks(self) -> list[Check]:
        placed, served = self.placed, self.served
        ended_ok = [c for c in served if c.streamed and not c.dropped and c.turns_answered == c.turns_planned]
        said = sum(c.turns_planned for c in served)
        answered = sum(c.turns_answered for c in served)
        dropped = [f"{c.uuid[:8]}: {c.dropped}" for c in served if c.dropped or not c.streamed]
        once = [u for u, rows in self.record_rows.items() if len(rows) == 1]
        refused_ids = {c.uuid for c in self.calls if c.refused}
        good = [u for u in once if u in refused_ids or (self.record_rows[u][0]["status"] == "completed"
                                                         and self.record_rows[u][0]["outcome"] == "caller_hangup")]
        placed_ids = {c.uuid for c in self.calls}
        missing = placed_ids - set(self.record_rows)
        twice = [u for u, rows in self.record_rows.items() if len(rows) > 1]
        extra = set(self.record_rows) - placed_ids
        started = sum(w.calls_started for w in self.workers)
        drained = [w for w in self.workers if w.drained]
        per_worker = [w for w in self.workers if w.records != w.calls_started]
        unended = [w for w in self.workers if w.calls_ended != w.calls_started]
        return [
            Check("workers up", bool(self.workers) and all(w.esl_connected for w in self.workers),
                  "; ".join(f"worker {w.index}: ESL to {','.join(w.nodes)} "
                            f"{'connected' if w.esl_connected else 'NOT connected'}" for w in self.workers)
                  or "no worker"),
            Check("calls placed", placed > 0 and all(c.streamed or c.refused for c in self.calls),
                  f"{placed} placed over {len({c.node for c in self.calls})} node(s), "
                  f"{sum(c.streamed for c in self.calls)} streamed to parley"
                  + (f", {len(refused_ids)} placed during the drain refused by the draining worker (to the fallback)"
                     if refused_ids else "")),
            Check("no call dropped", len(ended_ok) == len(served) and answered == said,
                  f"{len(ended_ok)}/{len(served)} calls taken ended by the caller after their turns; {answered}/{said} "
                  "caller turns answered" + (f"; dropped: {', '.join(dropped)}" if dropped else "")),
            Check("drained mid-call", len(drained) == 1 and drained[0].active_at_drain > 0
                  and drained[0].ready_status_in_drain == 503 and drained[0].exit_code in (0, None)
                  and (self.supervisor_exit in (0, None)) and sum(c.on_drained_worker for c in self.calls) > 0,
                  "; ".join(f"worker {w.index}: {w.active_at_drain:g} call(s) up at SIGTERM, /ready "
                            f"{w.ready_status_in_drain}, exit {w.exit_code}" for w in drained) or "no worker drained"),
            Check("records exactly once", len(good) == placed and not missing and not twice and not extra,
                  f"{len(once)}/{placed} calls with exactly one record, {len(set(good) - refused_ids)} completed by a "
                  "caller hangup" + (f", {len(set(good) & refused_ids)} of the {len(refused_ids)} refused"
                                     if refused_ids else "")
                  + (f"; missing {len(missing)}" if missing else "") + (f"; duplicated {len(twice)}" if twice else "")
                  + (f"; unknown {len(extra)}" if extra else "")),
            Check("metrics add up", started == len(served) and not per_worker and not unended,
                  f"sum of {CALLS_STARTED} over {len(self.workers)} workers = "
                  + " + ".join(f"{w.calls_started:g}" for w in self.workers) + f" = {started:g} (calls taken "
                  f"{len(served)}); "
                  + ("each worker's count matches its records" if not per_worker else "records differ on worker(s) "
                     + ", ".join(str(w.index) for w in per_worker))
                  + ("; every call started is counted ended, the drained worker's in its last scrape" if not unended
                     else "; calls started but not counted ended on worker(s) "
                     + ", ".join(f"{w.index} ({w.calls_ended:g} of {w.calls_started:g})" for w in unended))),
        ]

    @property
    def ok(self) -> bool:
        return not self.errors and all(c.ok for c in self.checks())

    def table(self) -> str:
        lines = [f"parley cluster rehearsal ({self.layout})", ""]
        head = ("worker", "pid", "http", "nodes", "calls started", "calls ended", "turns", "records", "drained",
                "exit")
        rows = [head]
        for w in self.workers:
            rows.append((str(w.index), str(w.pid), str(w.http_port), ",".join(w.nodes), f"{w.calls_started:g}",
                         f"{w.calls_ended:g}", f"{w.turns:g}", str(w.records),
                         f"yes ({w.active_at_drain:g} up)" if w.drained else "no",
                         "-" if w.exit_code is None else str(w.exit_code)))
        rows.append(("sum", "", "", "", f"{sum(w.calls_started for w in self.workers):g}",
                     f"{sum(w.calls_ended for w in self.workers):g}", f"{sum(w.turns for w in self.workers):g}",
                     str(sum(w.records for w in self.workers)), "", ""))
        widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
        for r in rows:
            lines.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(r)).rstrip())
        lines.append("")
        for node in sorted({c.node for c in self.calls}):
            every = [c for c in self.calls if c.node == node]
            mine = [c for c in every if not c.refused]
            recorded = sum(1 for c in every if len(self.record_rows.get(c.uuid, ())) == 1)
            lines.append(f"node {node}: {len(every)} calls, {sum(c.turns_answered for c in mine)}/"
                         f"{sum(c.turns_planned for c in mine)} caller turns answered, "
                         f"{sum(1 for c in mine if not c.dropped)} ended by the caller, {recorded} recorded once, "
                         f"{sum(c.on_drained_worker for c in mine)} on the drained worker"
                         + (f", {len(every) - len(mine)} refused in the drain" if len(every) > len(mine) else ""))
        during = [c for c in self.calls if c.during_drain]
        if during:
            taken = [c for c in during if not c.refused]
            by = ", ".join(f"worker {i}: {sum(c.worker == i for c in taken)}" for i in sorted({w.index for w in
                                                                                              self.workers}))
            lines.append(f"placed during the drain: {len(during)}; taken {len(taken)} ({by}); refused by the draining "
                         f"worker {len(during) - len(taken)} (mod_audio_stream error, the call to the fallback)")
        for w in self.workers:
            if w.drained:
                lines.append(f"(worker {w.index} drained and exited: its figures are the last /metrics scrape, which "
                             "it waited for after its last call ended: observe.final_scrape_s)")
        lines.append("")
        for check in self.checks():
            lines.append(f"{'PASS' if check.ok else 'FAIL'}  {check.name}: {check.detail}")
        for err in self.errors:
            lines.append(f"FAIL  error: {err}")
        lines.append("")
        lines.append("RESULT: " + ("PASS" if self.ok else "FAIL"))
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {
            "layout": self.layout,
            "placed": self.placed,
            "calls_taken": len(self.served),
            "calls_refused_in_drain": sum(1 for c in self.calls if c.refused),
            "calls_ended_normally": sum(1 for c in self.served
                                        if c.streamed and not c.dropped and c.turns_answered == c.turns_planned),
            "turns_planned": sum(c.turns_planned for c in self.served),
            "turns_said": sum(c.turns_said for c in self.served),
            "turns_answered": sum(c.turns_answered for c in self.served),
            "records_exactly_once": sum(1 for rows in self.record_rows.values() if len(rows) == 1),
            "records_total": sum(len(rows) for rows in self.record_rows.values()),
            "metric_calls_started_sum": sum(w.calls_started for w in self.workers),
            "supervisor_exit": self.supervisor_exit,
            "checks": [asdict(c) for c in self.checks()],
            "errors": list(self.errors),
            "pids": list(self.pids),
            "ok": self.ok,
            "workers": [asdict(w) for w in self.workers],
            "calls": [asdict(c) for c in self.calls],
        }
