"""Call records that survive faults: the schema, the queued writer, and the queries behind the dashboard.

Owns: the ``calls`` / ``turns`` / ``usage`` / ``events`` tables (SQLAlchemy 2 models; the Alembic
revisions under ``migrations/`` create them), one writer task per store that commits queued rows, and
read-side summaries. Must not know how a call is run, which vendors exist or what anything costs (a
``pricer`` callable may be handed in; cost lines are derived elsewhere from the stored usage).

Fault model:

* Nothing here blocks the audio path: ``CallRecorder`` methods only append to an in-memory queue. One
  writer task per store drains it and commits each batch at once, so a crash or ``kill -9`` loses only
  rows still queued or in flight (milliseconds' worth, normally the turn that was just added).
* Overflow policy: turn / usage / event rows are bounded by ``queue_max``; beyond it the NEWEST row is
  dropped and counted (older rows are what later rows and the call's outcome build on). The start and
  finish of a call are never dropped: they are at most two per call, so they are bounded by the number
  of calls, and the outcome of a call is the one thing a report must have.
* A database that is down, locked or slow makes the writer retry the same batch with backoff while the
  queue stays bounded; rows the database rejects outright (constraint, bad data) are dropped singly and
  counted. No exception from the store ever reaches a call.
* A call whose process was killed stays ``in_progress``; ``RecordStore.recover()`` at start-up marks the
  calls of this host that no live store owns ``interrupted`` (ended at their last recorded activity).
* SQLite runs in WAL mode with ``synchronous=NORMAL``: a committed transaction survives the process being
  killed (it is in the WAL, in the OS page cache), readers (the dashboard) never block the writer, and a
  commit costs no fsync. Only a power loss / kernel crash can lose the last few commits, never corrupt
  the database; FULL would pay an fsync per turn for that case alone.

This module is larger than the house target (~400 lines): schema, writer and queries share the row
shapes and are read together; splitting would scatter one table's definition over three files.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
import statistics
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

from alembic import command
from alembic.config import Config
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    TypeDecorator,
    event,
    func,
    insert,
    select,
    update,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.pool import ConnectionPoolEntry, StaticPool

from parley.errors import ConfigError, ParleyError
from parley.observe.records_spill import SpilledWrite, claim_spills, unclaimed, write_spill
from parley.observe.redact import redact_number
from parley.providers.base import Usage

if TYPE_CHECKING:
    from parley.agent.session import TurnRecord
    from parley.freeswitch.call import Call

log = logging.getLogger("parley.records")

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
CallStatus: TypeAlias = Literal["in_progress", "completed", "failed", "interrupted"]
HangupBy: TypeAlias = Literal["caller", "agent", "system"]
CallOutcomeKind: TypeAlias = Literal["caller_hangup", "agent_hangup", "transferred", "shutdown"]
_OUTCOME_TEXT = {"caller_hangup": "caller hung up", "agent_hangup": "agent hung up", "transferred": "transferred",
                 "shutdown": "parley stopped"}
# (the call's usage, billable call minutes (answer -> end), direction) -> USD, e.g. parley.observe.cost
Pricer: TypeAlias = Callable[[Sequence[Usage], float, str | None], float | None]


class RecordStoreError(ParleyError):
    """The call-record database could not be opened or migrated (retryable: it may be down)."""

    retryable = True


def _utcnow() -> datetime:
    return datetime.now(UTC)


# ---- schema --------------------------------------------------------------------------------------------


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out, on every backend (SQLite stores naive UTC text)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


RowId = BigInteger().with_variant(Integer(), "sqlite")  # SQLite autoincrements INTEGER PRIMARY KEY only


class Base(DeclarativeBase):
    pass


class CallModel(Base):
    __tablename__ = "calls"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)  # parley's UUID4
    fs_uuid: Mapped[str] = mapped_column(Text, index=True)
    host: Mapped[str | None] = mapped_column(Text)  # which machine's parley wrote it (for recover())
    caller: Mapped[str | None] = mapped_column(Text)
    caller_name: Mapped[str | None] = mapped_column(Text)
    callee: Mapped[str | None] = mapped_column(Text)
    direction: Mapped[str | None] = mapped_column(Text)
    codec: Mapped[str | None] = mapped_column(Text)
    codec_rate: Mapped[int | None] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    answered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    hangup_cause: Mapped[str | None] = mapped_column(Text)
    hangup_by: Mapped[str | None] = mapped_column(String(16))
    providers: Mapped[dict[str, Any]] = mapped_column(JSON)  # {"stt": [...], "llm": [...], "tts": [...]}
    fallbacks: Mapped[list[Any]] = mapped_column(JSON)  # [{"at", "capability", "from", "to", "error"}]
    dtmf: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[str] = mapped_column(String(16), index=True)
    failed: Mapped[bool] = mapped_column(Boolean, default=False)
    error: Mapped[str | None] = mapped_column(Text)
    cost_usd: Mapped[float | None] = mapped_column(Float)
    recording: Mapped[str | None] = mapped_column(Text)
    # how the call left parley: caller_hangup | agent_hangup | transferred | shutdown (NULL: not known)
    outcome: Mapped[str | None] = mapped_column(String(16))


class TurnModel(Base):
    __tablename__ = "turns"
    id: Mapped[int] = mapped_column(RowId, primary_key=True, autoincrement=True)
    call_id: Mapped[str] = mapped_column(ForeignKey("calls.id", ondelete="CASCADE"), index=True)
    index: Mapped[int] = mapped_column(Integer)
    caller_text: Mapped[str] = mapped_column(Text)
    agent_text: Mapped[str] = mapped_column(Text)  # what the caller heard
    agent_full: Mapped[str] = mapped_column(Text)  # what the brain said
    barge_in: Mapped[bool] = mapped_column(Boolean)
    endpoint_reason: Mapped[str] = mapped_column(Text)
    timings_ms: Mapped[dict[str, Any]] = mapped_column(JSON)
    voice_to_voice_ms: Mapped[float | None] = mapped_column(Float)
    overhead_ms: Mapped[float | None] = mapped_column(Float)
    barge_in_timings: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    tool_calls: Mapped[list[Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class UsageModel(Base):
    __tablename__ = "usage"
    id: Mapped[int] = mapped_column(RowId, primary_key=True, autoincrement=True)
    call_id: Mapped[str] = mapped_column(ForeignKey("calls.id", ondelete="CASCADE"), index=True)
    provider: Mapped[str] = mapped_column(Text)
    model: Mapped[str] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(String(8))
    audio_seconds: Mapped[float] = mapped_column(Float)
    input_tokens: Mapped[int] = mapped_column(Integer)
    output_tokens: Mapped[int] = mapped_column(Integer)
    characters: Mapped[int] = mapped_column(Integer)
    requests: Mapped[int] = mapped_column(Integer)
    cancelled: Mapped[bool] = mapped_column(Boolean)
    failed: Mapped[bool] = mapped_column(Boolean)
    at: Mapped[datetime] = mapped_column(UTCDateTime)


class EventModel(Base):
    __tablename__ = "events"
    id: Mapped[int] = mapped_column(RowId, primary_key=True, autoincrement=True)
    call_id: Mapped[str] = mapped_column(ForeignKey("calls.id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    kind: Mapped[str] = mapped_column(String(32))  # error | fallback | dtmf | barge_in | hangup | ...
    detail: Mapped[dict[str, Any]] = mapped_column(JSON)


# ---- what callers hand in and get back -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CallStart:
    fs_uuid: str
    started_at: datetime
    caller: str | None = None
    caller_name: str | None = None
    callee: str | None = None
    direction: str | None = None
    codec: str | None = None
    codec_rate: int | None = None
    answered_at: datetime | None = None
    providers: Mapping[str, Sequence[str]] = field(default_factory=dict)
    id: str = field(default_factory=lambda: str(uuid.uuid4()))

    @classmethod
    def from_call(
        cls, call: Call, *, providers: Mapping[str, Sequence[str]], mono_now: float, wall_now: datetime | None = None
    ) -> CallStart:
        """From a live Call; its monotonic timestamps become UTC via one (monotonic, wall) pair."""
        wall = wall_now or _utcnow()

        def utc(t: float | None) -> datetime | None:
            return None if t is None else wall - timedelta(seconds=mono_now - t)

        info = call.info
        return cls(
            fs_uuid=call.uuid,
            started_at=wall - timedelta(seconds=mono_now - call.created_at),
            caller=info.caller_number,
            caller_name=info.caller_name,
            callee=info.destination,
            direction=info.direction,
            codec=info.codec,
            codec_rate=info.codec_rate,
            answered_at=utc(call.answered_at),
            providers=providers,
        )


@dataclass(frozen=True, slots=True)
class CallEnd:
    hangup_cause: str | None
    hangup_by: HangupBy
    status: Literal["completed", "failed"] = "completed"
    cost_usd: float | None = None  # None: the store's pricer (if any) computes it from the call's usage
    failed: bool = False  # the providers failed and the caller got the apology
    error: str | None = None
    dtmf: str = ""
    ended_at: datetime | None = None  # None: now
    answered_at: datetime | None = None  # when only known at the end
    recording: str | None = None
    outcome: CallOutcomeKind | None = None  # how the call left parley (see CallModel.outcome)


@dataclass(frozen=True, slots=True)
class TurnRow:
    index: int
    caller_text: str = ""
    agent_text: str = ""  # as heard
    agent_full: str = ""
    barge_in: bool = False
    endpoint_reason: str = ""
    timings_ms: Mapping[str, float] = field(default_factory=dict)
    voice_to_voice_ms: float | None = None
    overhead_ms: float | None = None
    barge_in_timings: Mapping[str, float | None] | None = None
    tool_calls: Sequence[Mapping[str, Any]] = ()
    created_at: datetime | None = None  # set by the recorder when None

    @classmethod
    def from_record(cls, turn: TurnRecord) -> TurnRow:
        return cls(
            index=turn.index,
            caller_text=turn.caller,
            agent_text=turn.agent,
            agent_full=turn.agent_full,
            barge_in=turn.barge_in,
            endpoint_reason=turn.endpoint_reason,
            timings_ms=turn.timings.ms(),
            voice_to_voice_ms=turn.timings.voice_to_voice_ms,
            overhead_ms=turn.timings.overhead_ms(),
            barge_in_timings=turn.barge.as_dict() if turn.barge else None,
            tool_calls=[{"name": c.name, "arguments": dict(c.arguments)} for c in turn.tool_calls],
        )


@dataclass(frozen=True, slots=True)
class UsageRow:
    at: datetime
    usage: Usage


@dataclass(frozen=True, slots=True)
class EventRow:
    at: datetime
    kind: str
    detail: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class CallRecord:
    id: str
    fs_uuid: str
    host: str | None
    caller: str | None
    caller_name: str | None
    callee: str | None
    direction: str | None
    codec: str | None
    codec_rate: int | None
    started_at: datetime
    answered_at: datetime | None
    ended_at: datetime | None
    hangup_cause: str | None
    hangup_by: str | None
    providers: Mapping[str, Any]
    fallbacks: Sequence[Mapping[str, Any]]
    dtmf: str
    status: str
    failed: bool
    error: str | None
    cost_usd: float | None
    recording: str | None
    outcome: str | None = None


@dataclass(frozen=True, slots=True)
class CallSummary:
    id: str
    started_at: datetime
    caller: str | None
    duration_s: float | None  # None while in progress
    turns: int
    median_voice_to_voice_ms: float | None
    cost_usd: float | None
    status: str
    hangup_by: str | None
    hangup_cause: str | None
    failed: bool
    ended: str | None = None  # CallModel.outcome

    @property
    def outcome(self) -> str:
        how = _OUTCOME_TEXT.get(self.ended or "")
        if self.status != "completed":
            status = self.status.replace("_", " ")
            return f"{status}, {how}" if how else status
        return how or (f"{self.hangup_by} hung up" if self.hangup_by else "completed")


@dataclass(frozen=True, slots=True)
class CallDetail:
    call: CallRecord
    turns: Sequence[TurnRow]
    usage: Sequence[UsageRow]
    events: Sequence[EventRow]


@dataclass(slots=True)
class WriterStats:
    written: int = 0  # rows/updates committed
    dropped: int = 0  # queue full, store closing, or given up at shutdown
    rejected: int = 0  # the database refused the row (constraint / bad data)
    retries: int = 0  # batches retried after a transient failure
    spilled: int = 0  # writes still queued at close kept in the spill folder (written at the next start)
    last_error: str | None = None


# ---- engine, pragmas, migrations -----------------------------------------------------------------------


def make_engine(url: str, *, busy_timeout_s: float = 5.0, connect_timeout_s: float = 5.0) -> AsyncEngine:
    """An async engine for ``url``; ``sqlite://`` / ``postgresql://`` get the aiosqlite / asyncpg driver."""
    try:
        u = make_url(url)
    except sa_exc.ArgumentError as exc:
        raise ConfigError(f"records.url: {exc}") from None
    if u.drivername == "sqlite":
        u = u.set(drivername="sqlite+aiosqlite")
    elif u.drivername in ("postgresql", "postgres"):
        u = u.set(drivername="postgresql+asyncpg")
    kwargs: dict[str, Any] = {}
    sqlite = u.get_backend_name() == "sqlite"
    if sqlite:
        if u.database in (None, "", ":memory:"):
            kwargs["poolclass"] = StaticPool  # one shared in-memory database
        else:
            folder = Path(u.database).expanduser().parent
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ConfigError(f"records.url: cannot create the folder {folder}: {exc.strerror}") from None
    else:
        kwargs["pool_pre_ping"] = True  # a connection from before a database restart is replaced
    try:
        if u.get_driver_name() == "asyncpg":
            kwargs["connect_args"] = {"timeout": connect_timeout_s, "command_timeout": 30.0}
        engine = create_async_engine(u, **kwargs)
    except (sa_exc.ArgumentError, sa_exc.NoSuchModuleError, sa_exc.InvalidRequestError, ImportError) as exc:
        raise ConfigError(f"records.url: cannot use {u.render_as_string(hide_password=True)}: {exc}") from None
    if sqlite:
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas(busy_timeout_s))
    return engine


def _sqlite_pragmas(busy_timeout_s: float) -> Callable[[DBAPIConnection, ConnectionPoolEntry], None]:
    def on_connect(dbapi_conn: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
        cur.close()

    return on_connect


def alembic_config(url: str | None = None) -> Config:
    """An Alembic ``Config`` for the packaged migrations (e.g. ``command.revision(cfg, autogenerate=True)``)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def _upgrade(connection: Connection) -> None:
    cfg = alembic_config()
    cfg.attributes["connection"] = connection
    command.upgrade(cfg, "head")


async def upgrade(engine: AsyncEngine) -> None:
    """``alembic upgrade head`` on ``engine`` (idempotent)."""
    async with engine.begin() as conn:
        await conn.run_sync(_upgrade)


async def migrate(url: str) -> None:
    """``alembic upgrade head`` on the database at ``url``; creates a SQLite file (and its folder)."""
    engine = make_engine(url)
    try:
        await upgrade(engine)
    finally:
        await engine.dispose()


def _transient(exc: BaseException) -> bool:
    """Worth retrying the same batch: the database is down, locked, restarting or slow."""
    if isinstance(exc, sa_exc.DBAPIError):
        return exc.connection_invalidated or isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError)
    return isinstance(exc, OSError | TimeoutError | sa_exc.DisconnectionError | sa_exc.TimeoutError)


def _jsonable(value: object) -> Any:
    """A deep copy that JSON (and PostgreSQL) accepts: no NaN, no NUL, str keys, unknowns as text."""
    match value:
        case None | bool() | int():
            return value
        case float():
            return value if math.isfinite(value) else None
        case str():
            return value.replace("\x00", "")
        case datetime():
            return value.isoformat()
        case Mapping():
            return {str(k): _jsonable(v) for k, v in value.items()}
        case list() | tuple() | set() | frozenset():
            return [_jsonable(v) for v in value]
        case _:
            return str(value).replace("\x00", "")


def _text(value: str | None) -> str | None:
    return None if value is None else value.replace("\x00", "")


# ---- writer --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Insert:
    model: type[Base]
    rows: tuple[dict[str, Any], ...]
    lifecycle: bool = False  # a call's start: never dropped


@dataclass(frozen=True, slots=True)
class _Finish:
    call_id: str
    values: dict[str, Any]
    start: dict[str, Any]  # to insert the row if its start never made it
    lifecycle: bool = True


_Op: TypeAlias = _Insert | _Finish


_MODELS: dict[str, type[Base]] = {}


def _spilled(op: _Op) -> SpilledWrite:
    if isinstance(op, _Insert):
        return SpilledWrite("insert", table=op.model.__tablename__, rows=op.rows, lifecycle=op.lifecycle)
    return SpilledWrite("finish", call_id=op.call_id, values=op.values, start=op.start)


def _unspilled(write: SpilledWrite) -> _Op | None:
    if not _MODELS:
        _MODELS.update({m.__tablename__: m for m in (CallModel, TurnModel, UsageModel, EventModel)})
    if write.kind == "finish":
        return _Finish(write.call_id, dict(write.values or {}), dict(write.start or {}))
    model = _MODELS.get(write.table)
    if model is None:
        log.error("call records: a spilled write for an unknown table %r is skipped", write.table)
        return None
    return _Insert(model, write.rows, lifecycle=write.lifecycle)


class CallRecorder:
    """One call's handle on the store. Every method returns at once and never raises."""

    def __init__(self, store: RecordStore, start: CallStart) -> None:
        self._store = store
        self.start = start
        self.usage: list[Usage] = []
        self.fallbacks: list[dict[str, Any]] = []
        self.finished = False
        self.cost_usd: float | None = None  # what finish() recorded (providers + carrier; None: no pricer)

    @property
    def id(self) -> str:
        return self.start.id

    async def add_turn(self, turn: TurnRow) -> None:
        if self._after_finish("turn"):
            return
        row = {
            "call_id": self.id,
            "index": turn.index,
            "caller_text": _text(turn.caller_text),
            "agent_text": _text(turn.agent_text),
            "agent_full": _text(turn.agent_full),
            "barge_in": turn.barge_in,
            "endpoint_reason": _text(turn.endpoint_reason),
            "timings_ms": _jsonable(turn.timings_ms),
            "voice_to_voice_ms": _jsonable(turn.voice_to_voice_ms),
            "overhead_ms": _jsonable(turn.overhead_ms),
            "barge_in_timings": _jsonable(turn.barge_in_timings),
            "tool_calls": _jsonable(turn.tool_calls),
            "created_at": turn.created_at or self._store.now(),
        }
        self._store.submit(_Insert(TurnModel, (row,)))

    async def add_usage(self, usages: Iterable[Usage]) -> None:
        new = list(usages)
        if not new or self._after_finish("usage"):
            return
        self.usage.extend(new)
        at = self._store.now()
        rows = tuple(
            {
                "call_id": self.id,
                "provider": _text(u.provider),
                "model": _text(u.model),
                "kind": u.kind,
                "audio_seconds": _jsonable(u.audio_seconds) or 0.0,
                "input_tokens": u.input_tokens,
                "output_tokens": u.output_tokens,
                "characters": u.characters,
                "requests": u.requests,
                "cancelled": u.cancelled,
                "failed": u.failed,
                "at": at,
            }
            for u in new
        )
        self._store.submit(_Insert(UsageModel, rows))

    async def add_event(self, kind: str, detail: Mapping[str, object] | None = None) -> None:
        if self._after_finish("event"):
            return
        row = {"call_id": self.id, "at": self._store.now(), "kind": kind[:32], "detail": _jsonable(detail or {})}
        self._store.submit(_Insert(EventModel, (row,)))

    async def add_fallback(self, capability: str, from_: str, to: str, error: str) -> None:
        """A provider chain switched: kept for the call row, and recorded at once as an event."""
        entry = {"at": self._store.now().isoformat(), "capability": capability, "from": from_, "to": to, "error": error}
        self.fallbacks.append(_jsonable(entry))
        await self.add_event("fallback", entry)

    async def finish(self, end: CallEnd) -> None:
        """Write the call's outcome. Safe to call on every path (a second call is ignored)."""
        if self.finished:
            return
        self.finished = True
        ended = end.ended_at or self._store.now()
        cost = end.cost_usd
        if cost is None and self._store.pricer is not None:
            answered = end.answered_at or self.start.answered_at
            minutes = max(0.0, (ended - answered).total_seconds() / 60.0) if answered else 0.0
            try:
                cost = self._store.pricer(self.usage, minutes, self.start.direction)
            except Exception:
                log.exception("call %s: the pricer failed; recording no cost", self.id)
        self.cost_usd = float(cost) if cost is not None else None
        values: dict[str, Any] = {
            "ended_at": ended,
            "hangup_cause": _text(end.hangup_cause),
            "hangup_by": end.hangup_by,
            "status": end.status,
            "failed": end.failed or end.status == "failed",
            "error": _text(end.error),
            "dtmf": _text(end.dtmf),
            "cost_usd": _jsonable(cost),
            "recording": _text(end.recording),
            "outcome": end.outcome,
            "fallbacks": list(self.fallbacks),
        }
        if end.answered_at is not None:
            values["answered_at"] = end.answered_at
        self._store.submit(_Finish(self.id, values, self._store.start_row(self.start)))

    def _after_finish(self, what: str) -> bool:
        if self.finished:
            log.debug("call %s: %s after finish() ignored", self.id, what)
        return self.finished


class RecordStore:
    """The database plus its one writer task. Use ``async with RecordStore.open(url) as store``."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        pricer: Pricer | None,
        queue_max: int,
        batch_max: int,
        retry_max_s: float,
        close_timeout_s: float,
        host: str,
        now: Callable[[], datetime],
        spill_dir: Path | None = None,
    ) -> None:
        self.engine = engine
        self.spill_dir = spill_dir  # where writes still queued at close go (records_spill); None: lost
        self.pricer = pricer
        self.now = now
        self.host = host
        self.stats = WriterStats()
        self.closed = False
        self._queue_max = queue_max
        self._batch_max = batch_max
        self._retry_max_s = retry_max_s
        self._close_timeout_s = close_timeout_s
        self._pending: deque[_Op] = deque()
        self._bulk = 0  # queued ops that count against queue_max
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._active: set[str] = set()  # calls started by this store and not finished
        self._task: asyncio.Task[None] | None = None
        self._replaying: list[Path] = []  # spill files whose writes are queued here, deleted once written

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls,
        url: str,
        *,
        migrate: bool = True,
        pricer: Pricer | None = None,
        queue_max: int = 1000,
        batch_max: int = 200,
        busy_timeout_s: float = 5.0,
        retry_max_s: float = 10.0,
        close_timeout_s: float = 5.0,
        host: str | None = None,
        now: Callable[[], datetime] = _utcnow,
        spill_dir: Path | None = None,
    ) -> AsyncIterator[RecordStore]:
        """The store, migrated. ``spill_dir``: where the writes still queued when it closes (the database
        down, full or read-only) are kept, and from where the ones an earlier run left are written now."""
        engine = make_engine(url, busy_timeout_s=busy_timeout_s)
        try:
            if migrate:
                try:
                    await upgrade(engine)
                except (sa_exc.SQLAlchemyError, OSError, TimeoutError) as exc:
                    safe = make_url(url).render_as_string(hide_password=True)
                    raise RecordStoreError(f"cannot migrate the call records database {safe}: {exc}") from exc
            store = cls(
                engine,
                pricer=pricer,
                queue_max=queue_max,
                batch_max=batch_max,
                retry_max_s=retry_max_s,
                close_timeout_s=close_timeout_s,
                host=host or socket.gethostname(),
                now=now,
                spill_dir=spill_dir,
            )
            store._task = asyncio.create_task(store._run(), name="parley-records-writer")
            try:
                await store._replay()
                yield store
            finally:
                await store._close()
        finally:
            await engine.dispose()

    # ---- writing ----

    async def start_call(self, start: CallStart) -> CallRecorder:
        rec = CallRecorder(self, start)
        if not self.closed:
            self._active.add(start.id)
        self.submit(_Insert(CallModel, (self.start_row(start),), lifecycle=True))
        rec.finished = self.closed
        return rec

    def start_row(self, start: CallStart) -> dict[str, Any]:
        return {
            "id": start.id,
            "fs_uuid": _text(start.fs_uuid),
            "host": self.host,
            "caller": _text(start.caller),
            "caller_name": _text(start.caller_name),
            "callee": _text(start.callee),
            "direction": _text(start.direction),
            "codec": _text(start.codec),
            "codec_rate": start.codec_rate,
            "started_at": start.started_at,
            "answered_at": start.answered_at,
            "providers": _jsonable(start.providers),
            "fallbacks": [],
            "dtmf": "",
            "status": "in_progress",
            "failed": False,
        }

    def submit(self, op: _Op) -> None:
        """Queue one write; never blocks, never raises. Drops (and counts) bulk rows beyond queue_max."""
        if isinstance(op, _Finish):
            self._active.discard(op.call_id)
        if self.closed:
            self._drop(op, "the store is closed")
            return
        if not op.lifecycle:
            if self._bulk >= self._queue_max:
                self._drop(op, "the write queue is full")
                return
            self._bulk += 1
        self._pending.append(op)
        self._idle.clear()
        self._wakeup.set()

    @property
    def queued(self) -> int:
        return len(self._pending)

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything queued so far is committed (or given up); False on timeout."""
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    def _drop(self, op: _Op, why: str) -> None:
        n = len(op.rows) if isinstance(op, _Insert) else 1
        self.stats.dropped += n
        if self.stats.dropped == n or self.stats.dropped % 100 < n:
            log.warning("call records: dropped %d row(s) (%s); %d dropped so far", n, why, self.stats.dropped)

    def _take(self) -> list[_Op]:
        batch: list[_Op] = []
        while self._pending and len(batch) < self._batch_max:
            op = self._pending.popleft()
            if not op.lifecycle:
                self._bulk -= 1
            batch.append(op)
        return batch

    async def _run(self) -> None:
        while True:
            if not self._pending:
                self._idle.set()
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            batch = self._take()
            try:
                await self._write(batch)
            except asyncio.CancelledError:
                self._pending.extendleft(reversed(batch))  # _close spills or drops them with the rest
                raise
            except Exception:  # a bug here must not stop recording for every later call
                log.exception("call records: writer error; %d op(s) lost", len(batch))
                for op in batch:
                    self._drop(op, "writer error")

    async def _write(self, batch: list[_Op]) -> None:
        delay, failed = min(0.25, self._retry_max_s), False
        while True:
            try:
                async with self.engine.begin() as conn:
                    for op in batch:
                        await self._apply(conn, op)
            except Exception as exc:
                self.stats.last_error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                if _transient(exc):
                    self.stats.retries += 1
                    level = logging.DEBUG if failed else logging.WARNING
                    failed = True
                    log.log(
                        level,
                        "call records: database unavailable (%s); retrying, %d write(s) queued",
                        self.stats.last_error,
                        len(self._pending) + len(batch),
                    )
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self._retry_max_s)
                    continue
                if len(batch) > 1:  # find the bad op(s): write one by one
                    for op in batch:
                        await self._write([op])
                    return
                self.stats.rejected += 1
                log.error("call records: the database rejected a row: %s", self.stats.last_error)
                return
            if failed:
                log.warning("call records: database available again")
            self.stats.written += sum(len(op.rows) if isinstance(op, _Insert) else 1 for op in batch)
            return

    @staticmethod
    async def _apply(conn: AsyncConnection, op: _Op) -> None:
        match op:
            case _Insert(model=model, rows=rows):
                await conn.execute(insert(model), list(rows))
            case _Finish(call_id=call_id, values=values, start=start):
                result = await conn.execute(update(CallModel).where(CallModel.id == call_id).values(**values))
                if result.rowcount == 0:
                    await conn.execute(insert(CallModel).values(**{**start, **values}))

    async def _close(self) -> None:
        self.closed = True
        flushed = await self.flush(self._close_timeout_s)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if flushed or not self._pending:
            self._done_replaying()
            return
        queued = list(self._pending)
        if self.spill_dir is not None:
            try:
                path = write_spill(self.spill_dir, (_spilled(op) for op in queued), host=self.host)
            except OSError as exc:
                log.error("call records: cannot spill %d queued write(s) to %s: %s", len(queued), self.spill_dir, exc)
                for claimed in self._replaying:  # the earlier runs' files stay for the next start
                    with contextlib.suppress(OSError):
                        os.rename(claimed, unclaimed(claimed))
                self._replaying.clear()
            else:
                self._pending.clear()
                self.stats.spilled += len(queued)
                self._done_replaying()
                log.warning("call records: the database is unavailable (%s); %d queued write(s) kept in %s and "
                            "written at the next start", self.stats.last_error, len(queued), path)
                return
        log.warning("call records: %d write(s) still queued at shutdown are lost", len(queued))
        for op in self._take():
            self._drop(op, "the store closed while the database was unavailable")

    async def _replay(self) -> None:
        """Queue the writes earlier runs spilled (before any call of this run), and delete their files once
        written. Still unwritten when this store closes, they are spilled again with its own."""
        if self.spill_dir is None:
            return
        count = 0
        for claimed in claim_spills(self.spill_dir):
            self._replaying.append(claimed.path)
            for write in claimed.writes:
                op = _unspilled(write)
                if op is not None:
                    self._pending.append(op)  # not bounded by queue_max: a file's worth, written once
                    self._bulk += 0 if op.lifecycle else 1
                    count += 1
        if not self._replaying:
            return
        self._idle.clear()
        self._wakeup.set()
        if await self.flush(self._close_timeout_s):
            log.warning("call records: %d write(s) spilled by an earlier run written", count)
            self._done_replaying()

    def _done_replaying(self) -> None:
        for path in self._replaying:
            path.unlink(missing_ok=True)
        self._replaying.clear()

    # ---- start-up recovery ----

    async def recover(self, *, all_hosts: bool = False) -> list[str]:
        """Mark calls left ``in_progress`` by a process that died ``interrupted``; returns their ids.

        Only this host's calls by default (another host's parley may be running them); calls this store
        started are never touched.
        """
        async with self.engine.begin() as conn:
            stmt = select(CallModel.id, CallModel.started_at).where(CallModel.status == "in_progress")
            if not all_hosts:
                stmt = stmt.where(CallModel.host == self.host)
            found = [(cid, at) for cid, at in (await conn.execute(stmt)).all() if cid not in self._active]
            for call_id, started in found:
                last = started
                for col, where in ((TurnModel.created_at, TurnModel.call_id), (EventModel.at, EventModel.call_id)):
                    t = (await conn.execute(select(func.max(col)).where(where == call_id))).scalar_one_or_none()
                    last = max(last, t) if t is not None else last
                await conn.execute(
                    update(CallModel)
                    .where(CallModel.id == call_id)
                    .values(status="interrupted", ended_at=last, error="parley stopped while the call was in progress")
                )
                await conn.execute(
                    insert(EventModel).values(call_id=call_id, at=self.now(), kind="interrupted", detail={})
                )
        if found:
            log.warning("call records: %d call(s) left in progress by a stopped process marked interrupted", len(found))
        return [cid for cid, _ in found]

    # ---- queries ----

    async def list_calls(
        self, limit: int = 50, offset: int = 0, since: datetime | None = None, *, redact: bool = False
    ) -> list[CallSummary]:
        """Newest first; ``redact`` masks the caller's number."""
        stmt = select(CallModel).order_by(CallModel.started_at.desc(), CallModel.id).limit(limit).offset(offset)
        if since is not None:
            stmt = stmt.where(CallModel.started_at >= since)
        async with AsyncSession(self.engine) as session:
            calls = (await session.scalars(stmt)).all()
            ids = [c.id for c in calls]
            counts: dict[str, int] = dict.fromkeys(ids, 0)
            v2v: dict[str, list[float]] = {i: [] for i in ids}
            if ids:
                q = select(TurnModel.call_id, TurnModel.voice_to_voice_ms).where(TurnModel.call_id.in_(ids))
                for call_id, ms in (await session.execute(q)).tuples():
                    counts[call_id] += 1
                    if ms is not None:
                        v2v[call_id].append(ms)
            return [
                CallSummary(
                    id=c.id,
                    started_at=c.started_at,
                    caller=redact_number(c.caller) if redact else c.caller,
                    duration_s=(c.ended_at - c.started_at).total_seconds() if c.ended_at else None,
                    turns=counts[c.id],
                    median_voice_to_voice_ms=statistics.median(v2v[c.id]) if v2v[c.id] else None,
                    cost_usd=c.cost_usd,
                    status=c.status,
                    hangup_by=c.hangup_by,
                    hangup_cause=c.hangup_cause,
                    failed=c.failed,
                    ended=c.outcome,
                )
                for c in calls
            ]

    async def get_call(self, call_id: str, *, redact: bool = False) -> CallDetail | None:
        """The call with its turns, usage and events; ``redact`` masks the caller's number and name."""
        async with AsyncSession(self.engine) as session:
            call = await session.get(CallModel, call_id)
            if call is None:
                return None
            turns = await session.scalars(select(TurnModel).filter_by(call_id=call_id).order_by(TurnModel.id))
            usage = await session.scalars(select(UsageModel).filter_by(call_id=call_id).order_by(UsageModel.id))
            events = await session.scalars(select(EventModel).filter_by(call_id=call_id).order_by(EventModel.id))
            values = {f.name: getattr(call, f.name) for f in fields(CallRecord)}
            if redact:
                values.update(caller=redact_number(call.caller), caller_name=None)
            return CallDetail(
                call=CallRecord(**values),
                turns=[_turn_row(t) for t in turns],
                usage=[UsageRow(at=u.at, usage=_usage(u)) for u in usage],
                events=[EventRow(at=e.at, kind=e.kind, detail=e.detail) for e in events],
            )


def _turn_row(t: TurnModel) -> TurnRow:
    return TurnRow(
        index=t.index,
        caller_text=t.caller_text,
        agent_text=t.agent_text,
        agent_full=t.agent_full,
        barge_in=t.barge_in,
        endpoint_reason=t.endpoint_reason,
        timings_ms=t.timings_ms,
        voice_to_voice_ms=t.voice_to_voice_ms,
        overhead_ms=t.overhead_ms,
        barge_in_timings=t.barge_in_timings,
        tool_calls=t.tool_calls,
        created_at=t.created_at,
    )


def _usage(u: UsageModel) -> Usage:
    kind: Literal["stt", "llm", "tts"] = "stt" if u.kind == "stt" else "llm" if u.kind == "llm" else "tts"
    return Usage(
        provider=u.provider,
        model=u.model,
        kind=kind,
        audio_seconds=u.audio_seconds,
        input_tokens=u.input_tokens,
        output_tokens=u.output_tokens,
        characters=u.characters,
        requests=u.requests,
        cancelled=u.cancelled,
        failed=u.failed,
    )


async def recorded_calls_for_cost(url: str, *, since: datetime | None = None, limit: int = 100_000) -> list[Any]:
    """The recorded calls as the cost report reads them (answer-to-end minutes, as the store's pricer)."""
    from parley.observe.cost_report import calls_for_cost

    async with RecordStore.open(url) as store:
        return list(await calls_for_cost(store, since, limit))
