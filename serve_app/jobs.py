"""Durable job store: plain SQLite in WAL mode, one committed row per state change.

Schema changes are numbered SQL steps whose applied count lives in `PRAGMA user_version`; they run on open.
Writes are short `BEGIN IMMEDIATE` transactions (so two ingress replicas sharing the file cannot both claim a
job). Every state change — claims and orphan recovery included — goes through one in-transaction step
(`_transition_in`) that checks `ALLOWED`, the expected state and, for a runner, that it still owns the job
(`owned_by`), and appends a row to `job_events` (what SSE and the WebSocket stream). A runner that lost its
job (declared orphaned while it was paused) gets `LostOwnership` and can never write it again. SQLite errors
leave the store as `StoreUnavailable`. Methods are synchronous; async code calls them through
`asyncio.to_thread`.

Not here: running jobs (serve_app/orchestrator.py) and deleting files (the orchestrator's retention sweep).
"""

from __future__ import annotations

import json
import logging
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Any

from pipeline.params import CompareParams, JobParams
from serve_app.errors import JobAlreadyFinished, JobNotFound, StoreUnavailable

logger = logging.getLogger(__name__)


class JobState(str, Enum):
    """Lifecycle of a job; the values go straight into SQLite and JSON."""

    QUEUED = "queued"
    PREPROCESSING = "preprocessing"
    RECONSTRUCTING = "reconstructing"
    MERGING = "merging"
    COMPARING = "comparing"  # a compare job's one stage
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})
ACTIVE = frozenset({JobState.PREPROCESSING, JobState.RECONSTRUCTING, JobState.MERGING, JobState.COMPARING})


class JobKind(str, Enum):
    """What a job does; a compare job runs queued -> comparing -> succeeded | failed | cancelled."""

    RECONSTRUCT = "reconstruct"
    COMPARE = "compare"


# The state a claimed job enters, per kind.
FIRST_STATE = {JobKind.RECONSTRUCT: JobState.PREPROCESSING, JobKind.COMPARE: JobState.COMPARING}

# Active -> QUEUED is the re-run of a job orphaned by a crash or restart.
ALLOWED: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset(
        {JobState.PREPROCESSING, JobState.COMPARING, JobState.FAILED, JobState.CANCELLED}
    ),
    JobState.PREPROCESSING: frozenset(
        {JobState.RECONSTRUCTING, JobState.FAILED, JobState.CANCELLED, JobState.QUEUED}
    ),
    JobState.RECONSTRUCTING: frozenset(
        {JobState.MERGING, JobState.FAILED, JobState.CANCELLED, JobState.QUEUED}
    ),
    JobState.MERGING: frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.QUEUED}),
    JobState.COMPARING: frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.QUEUED}),
    JobState.SUCCEEDED: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CANCELLED: frozenset(),
}

# Stage name shown while a state is current (the DESIGN's stage field); terminal states keep the last one.
STAGE_OF = {
    JobState.QUEUED: "queue",
    JobState.PREPROCESSING: "preprocess",
    JobState.RECONSTRUCTING: "reconstruct",
    JobState.MERGING: "merge",
    JobState.COMPARING: "compare",
}


class QueueFull(RuntimeError):
    """The queue already holds `limit` jobs (checked inside the insert's transaction)."""

    def __init__(self, queued: int, limit: int) -> None:
        super().__init__(f"{queued} jobs are queued (limit {limit})")
        self.queued, self.limit = queued, limit


class ClientQuotaExceeded(RuntimeError):
    """A client already has its limit of queued jobs; `.queued` says how many."""

    def __init__(self, client: str, queued: int, limit: int) -> None:
        super().__init__(f"client {client} has {queued} queued jobs (limit {limit})")
        self.queued, self.limit = queued, limit


class InvalidTransition(RuntimeError):
    """A state change the table does not allow (e.g. succeeded -> reconstructing); a bug or a lost race."""


class LostOwnership(InvalidTransition):
    """The job is no longer owned by the runner writing it (re-queued as an orphan, or finished)."""


MIGRATIONS: list[str] = [
    # 1: jobs and their event log
    """
    CREATE TABLE jobs (
        id               TEXT PRIMARY KEY,
        state            TEXT NOT NULL,
        stage            TEXT NOT NULL,
        progress         REAL NOT NULL DEFAULT 0,
        params           TEXT NOT NULL,
        input_path       TEXT,
        input_kind       TEXT,
        output_path      TEXT,
        result_path      TEXT,
        idempotency_key  TEXT UNIQUE,
        frames           TEXT NOT NULL DEFAULT '[]',
        report           TEXT NOT NULL DEFAULT '{}',
        timings          TEXT NOT NULL DEFAULT '{}',
        error_code       TEXT,
        error_message    TEXT,
        attempts         INTEGER NOT NULL DEFAULT 0,
        owner            TEXT,
        heartbeat_at     REAL,
        cancel_requested INTEGER NOT NULL DEFAULT 0,
        created_at       REAL NOT NULL,
        updated_at       REAL NOT NULL,
        started_at       REAL,
        finished_at      REAL,
        files_removed_at REAL
    );
    CREATE INDEX jobs_state_created ON jobs (state, created_at);
    CREATE TABLE job_events (
        seq      INTEGER PRIMARY KEY AUTOINCREMENT,
        job_id   TEXT NOT NULL REFERENCES jobs (id),
        state    TEXT NOT NULL,
        stage    TEXT NOT NULL,
        progress REAL NOT NULL,
        message  TEXT,
        at       REAL NOT NULL
    );
    CREATE INDEX job_events_job ON job_events (job_id, seq);
    """,
    # 2: events say what they are ("state" change, frame "progress", "cancel" request) for SSE event names
    """
    ALTER TABLE job_events ADD COLUMN kind TEXT NOT NULL DEFAULT 'state';
    """,
    # 3: what the user should know about a job that succeeded anyway (best-effort framing), [{code, message}]
    """
    ALTER TABLE jobs ADD COLUMN warnings TEXT NOT NULL DEFAULT '[]';
    """,
    # 4: job kinds (compare jobs beside reconstructions); existing rows are reconstructions
    """
    ALTER TABLE jobs ADD COLUMN kind TEXT NOT NULL DEFAULT 'reconstruct';
    CREATE INDEX jobs_kind_created ON jobs (kind, created_at);
    """,
    # 5: who submitted a job (client address), for the per-client queue limit
    """
    ALTER TABLE jobs ADD COLUMN client TEXT;
    CREATE INDEX jobs_client_state ON jobs (client, state);
    """,
]

_JSON_FIELDS = ("frames", "report", "timings", "warnings")
_UPDATABLE = frozenset(
    {
        "stage", "progress", "input_path", "input_kind", "output_path", "result_path", "frames", "report",
        "timings", "warnings", "error_code", "error_message", "owner", "heartbeat_at", "cancel_requested",
        "started_at", "finished_at", "files_removed_at",
    }
)  # fmt: skip


def new_job_id() -> str:
    """128 random bits, URL-safe: ids cannot be guessed or enumerated."""
    return secrets.token_urlsafe(16)


def iso(ts: float | None) -> str | None:
    return (
        None if ts is None else datetime.fromtimestamp(ts, tz=timezone.utc).isoformat(timespec="milliseconds")
    )


@dataclass(frozen=True)
class Job:
    id: str
    state: JobState
    stage: str
    progress: float
    params: JobParams | CompareParams
    input_path: str | None
    input_kind: str | None
    output_path: str | None
    result_path: str | None
    idempotency_key: str | None
    frames: list[dict[str, Any]] = field(default_factory=list)
    report: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    error_code: str | None = None
    error_message: str | None = None
    attempts: int = 0
    owner: str | None = None
    heartbeat_at: float | None = None
    cancel_requested: bool = False
    created_at: float = 0.0
    updated_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    files_removed_at: float | None = None
    warnings: list[dict[str, str]] = field(default_factory=list)
    kind: JobKind = JobKind.RECONSTRUCT
    client: str | None = None  # submitter's address (per-client queue limit); never shown in public docs

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Job:
        data = dict(row)
        for name in _JSON_FIELDS:
            data[name] = json.loads(data[name])
        data["state"] = JobState(data["state"])
        data["kind"] = JobKind(data["kind"])
        params_cls = CompareParams if data["kind"] == JobKind.COMPARE else JobParams
        data["params"] = params_cls.from_mapping(json.loads(data["params"]))
        data["cancel_requested"] = bool(data["cancel_requested"])
        return cls(**data)

    def frame_counts(self) -> dict[str, int]:
        chosen = sum(1 for f in self.frames if f.get("chosen"))
        return {"selected": chosen, "rejected": len(self.frames) - chosen}

    def public(self, base_url: str = "") -> dict[str, Any]:
        """The status document of the HTTP API (no server paths)."""
        return {
            "job_id": self.id,
            "kind": self.kind.value,
            "state": self.state.value,
            "stage": self.stage,
            "progress": round(self.progress, 4),
            "params": self.params.to_dict(),
            "input_kind": self.input_kind,
            "frames": {**self.frame_counts(), "report": self.frames},
            "timings": self.timings,
            "report": self.report,
            "warnings": self.warnings,
            "error": None
            if self.error_code is None
            else {"code": self.error_code, "message": self.error_message},
            "attempts": self.attempts,
            "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at),
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
            "files_removed_at": iso(self.files_removed_at),
            "result_url": f"{base_url}/reconstruct/result/{self.id}"
            if self.state == JobState.SUCCEEDED
            else None,
        }


class JobStore:
    """SQLite-backed jobs; safe to share between threads of one process and between processes on one host."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._listeners: list[Callable[[str], None]] = []
        self._migrate()

    def add_listener(self, listener: Callable[[str], None]) -> None:
        """`listener(job_id)` after every commit of this process that added events of that job (from the
        writing thread): readers in this process learn at once, other processes' writes are polled."""
        self._listeners.append(listener)

    # -- connection plumbing -------------------------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            # isolation_level=None: we issue BEGIN IMMEDIATE ourselves, so writers queue on the lock at once
            # instead of failing on upgrade from a read transaction.
            conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(
                "PRAGMA synchronous=NORMAL"
            )  # durable across process crashes; WAL keeps it consistent
            conn.execute("PRAGMA foreign_keys=ON")
            self._local.conn = conn
        return conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._errors():
            conn = self._conn()
            conn.execute("BEGIN IMMEDIATE")
            self._local.touched = set()
            try:
                yield conn
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        for job_id in self._local.touched:
            for listener in self._listeners:
                try:
                    listener(job_id)
                except Exception:  # a reader's trouble never fails the write that already committed
                    logger.exception("job store listener failed for job %s", job_id)

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """SQLite's own errors (locked past the timeout, I/O) leave the store as `StoreUnavailable`."""
        try:
            yield
        except sqlite3.Error as exc:
            logger.warning("job store %s: %s: %s", self.path, type(exc).__name__, exc)
            raise StoreUnavailable(
                f"the job store is unavailable ({type(exc).__name__}); retry later"
            ) from exc

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def _migrate(self) -> None:
        conn = self._conn()
        with self._write():
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > len(MIGRATIONS):
                raise RuntimeError(
                    f"{self.path}: schema version {version} is newer than this code ({len(MIGRATIONS)})"
                )
            for number in range(version, len(MIGRATIONS)):
                for statement in MIGRATIONS[number].split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {number + 1}")
                logger.info("job store %s: applied migration %d", self.path, number + 1)

    def schema_version(self) -> int:
        return int(self._conn().execute("PRAGMA user_version").fetchone()[0])

    # -- reads ---------------------------------------------------------------------------------------------
    def get(self, job_id: str) -> Job:
        with self._errors():
            row = self._conn().execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise JobNotFound(f"no job with id {job_id!r}")
        return Job.from_row(row)

    def list(
        self,
        *,
        states: list[JobState] | None = None,
        limit: int = 50,
        offset: int = 0,
        kind: JobKind | None = None,
    ) -> tuple[list[Job], int]:
        """Newest first; returns (page, total matching)."""
        clauses, args = [], []
        if states:
            clauses.append(f"state IN ({','.join('?' * len(states))})")
            args = [s.value for s in states]
        if kind is not None:
            clauses.append("kind = ?")
            args.append(kind.value)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        conn = self._conn()
        total = conn.execute(f"SELECT COUNT(*) FROM jobs {where}", args).fetchone()[0]
        rows = conn.execute(
            f"SELECT * FROM jobs {where} ORDER BY created_at DESC, id LIMIT ? OFFSET ?",
            [*args, limit, offset],
        ).fetchall()
        return [Job.from_row(r) for r in rows], int(total)

    def counts(self) -> dict[str, int]:
        rows = self._conn().execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
        out = {s.value: 0 for s in JobState}
        out.update({r[0]: int(r[1]) for r in rows})
        return out

    def events_since(self, job_id: str, after_seq: int = 0) -> list[dict[str, Any]]:
        rows = (
            self._conn()
            .execute(
                "SELECT * FROM job_events WHERE job_id = ? AND seq > ? ORDER BY seq", (job_id, after_seq)
            )
            .fetchall()
        )
        return [
            {"seq": r["seq"], "kind": r["kind"], "job_id": job_id, "state": r["state"], "stage": r["stage"],
             "progress": round(r["progress"], 4), "message": r["message"], "at": iso(r["at"])}
            for r in rows
        ]  # fmt: skip

    def exists(self, job_id: str) -> bool:
        return self._conn().execute("SELECT 1 FROM jobs WHERE id = ?", (job_id,)).fetchone() is not None

    def find_by_idempotency_key(self, key: str) -> Job | None:
        row = self._conn().execute("SELECT * FROM jobs WHERE idempotency_key = ?", (key,)).fetchone()
        return None if row is None else Job.from_row(row)

    # -- writes --------------------------------------------------------------------------------------------
    def create(
        self,
        params: JobParams | CompareParams,
        *,
        kind: JobKind = JobKind.RECONSTRUCT,
        job_id: str | None = None,
        input_path: str | None = None,
        input_kind: str | None = None,
        output_path: str | None = None,
        idempotency_key: str | None = None,
        client: str | None = None,
        client_limit: int | None = None,
        queue_limit: int | None = None,
    ) -> tuple[Job, bool]:
        """Insert a queued job; with a known idempotency key return (existing job, False) instead.

        With `client_limit`, raise ClientQuotaExceeded when `client` already has that many queued jobs; with
        `queue_limit`, QueueFull when the queue has that many. Both are counted inside the insert's write
        transaction, so parallel submissions cannot overshoot.
        """
        job_id = job_id or new_job_id()
        now = time.time()
        with self._write() as conn:
            if idempotency_key is not None:
                row = conn.execute(
                    "SELECT * FROM jobs WHERE idempotency_key = ?", (idempotency_key,)
                ).fetchone()
                if row is not None:
                    return Job.from_row(row), False
            if queue_limit is not None:
                queued = conn.execute(
                    "SELECT COUNT(*) FROM jobs WHERE state = ?", (JobState.QUEUED.value,)
                ).fetchone()[0]
                if queued >= queue_limit:
                    raise QueueFull(int(queued), queue_limit)
            if client is not None and client_limit is not None:
                queued = conn.execute(
                    "SELECT COUNT(*) FROM jobs WHERE client = ? AND state = ?",
                    (client, JobState.QUEUED.value),
                ).fetchone()[0]
                if queued >= client_limit:
                    raise ClientQuotaExceeded(client, int(queued), client_limit)
            conn.execute(
                "INSERT INTO jobs (id, kind, state, stage, progress, params, input_path, input_kind, "
                "output_path, idempotency_key, client, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, 0, ?, ?, ?, ?, ?, ?, ?, ?)",
                (job_id, kind.value, JobState.QUEUED.value, STAGE_OF[JobState.QUEUED],
                 json.dumps(params.to_dict()), input_path, input_kind, output_path, idempotency_key,
                 client, now, now),
            )  # fmt: skip
            self._event(conn, job_id, JobState.QUEUED, "queue", 0.0, None, now)
        logger.info("job created job_id=%s kind=%s input=%s", job_id, kind.value, input_kind)
        return self.get(job_id), True

    def transition(
        self,
        job_id: str,
        to: JobState,
        *,
        expect: JobState | None = None,
        owned_by: str | None = None,
        message: str | None = None,
        **fields: Any,
    ) -> Job:
        """The one way to change a job's state: checks `ALLOWED` (and `expect`, and that `owned_by` still owns
        the job), logs an event, commits."""
        with self._write() as conn:
            current = self._transition_in(
                conn, job_id, to, expect=expect, owned_by=owned_by, message=message, **fields
            )
        logger.info(
            "job_id=%s %s -> %s%s", job_id, current.value, to.value, f" ({message})" if message else ""
        )
        return self.get(job_id)

    def _transition_in(
        self,
        conn: sqlite3.Connection,
        job_id: str,
        to: JobState,
        *,
        expect: JobState | None = None,
        owned_by: str | None = None,
        message: str | None = None,
        **fields: Any,
    ) -> JobState:
        """`transition` inside the caller's write transaction; returns the state it left."""
        now = time.time()
        row = conn.execute(
            "SELECT state, progress, stage, owner FROM jobs WHERE id = ?", (job_id,)
        ).fetchone()
        if row is None:
            raise JobNotFound(f"no job with id {job_id!r}")
        current = JobState(row["state"])
        if owned_by is not None and row["owner"] != owned_by:
            raise LostOwnership(
                f"job {job_id}: owned by {row['owner']!r}, not {owned_by!r} ({current.value})"
            )
        if expect is not None and current != expect:
            raise InvalidTransition(f"job {job_id}: expected {expect.value}, found {current.value}")
        if to not in ALLOWED[current]:
            raise InvalidTransition(f"job {job_id}: {current.value} -> {to.value} is not allowed")
        fields.setdefault("stage", STAGE_OF.get(to, row["stage"]))
        if to == JobState.SUCCEEDED:
            fields.setdefault("progress", 1.0)
        if to.terminal or to == JobState.QUEUED:
            fields.setdefault("owner", None)
        if to.terminal:
            fields.setdefault("finished_at", now)
        self._update(conn, job_id, now, state=to.value, **fields)
        progress = fields.get("progress", row["progress"])
        self._event(conn, job_id, to, fields["stage"], progress, message, now)
        return current

    def update(
        self, job_id: str, *, event: str | None = None, message: str | None = None,
        owned_by: str | None = None, **fields: Any,
    ) -> Job:  # fmt: skip
        """Change non-state fields (progress, report...); `event` (a kind: "progress", "cancel", "result")
        also logs an event that SSE/WebSocket watchers receive. With `owned_by`, only while that runner owns
        the job (else `LostOwnership`)."""
        now = time.time()
        with self._write() as conn:
            row = conn.execute(
                "SELECT state, stage, progress, owner FROM jobs WHERE id = ?", (job_id,)
            ).fetchone()
            if row is None:
                raise JobNotFound(f"no job with id {job_id!r}")
            if owned_by is not None and row["owner"] != owned_by:
                raise LostOwnership(f"job {job_id}: owned by {row['owner']!r}, not {owned_by!r}")
            self._update(conn, job_id, now, **fields)
            if event:
                self._event(
                    conn, job_id, JobState(row["state"]), fields.get("stage", row["stage"]),
                    fields.get("progress", row["progress"]), message, now, kind=event,
                )  # fmt: skip
        return self.get(job_id)

    def claim_next(self, owner: str) -> Job | None:
        """Atomically move the oldest queued job to its first state (`FIRST_STATE`: preprocessing, or
        comparing) for `owner`; None if none is queued."""
        now = time.time()
        with self._write() as conn:
            row = conn.execute(
                "SELECT id, kind FROM jobs WHERE state = ? ORDER BY created_at, id LIMIT 1",
                (JobState.QUEUED.value,),
            ).fetchone()
            if row is None:
                return None
            job_id = row["id"]
            first = FIRST_STATE[JobKind(row["kind"])]
            self._transition_in(
                conn, job_id, first, expect=JobState.QUEUED, owner=owner, heartbeat_at=now, started_at=now,
                progress=0.0, error_code=None, error_message=None,
            )  # fmt: skip
            conn.execute("UPDATE jobs SET attempts = attempts + 1 WHERE id = ?", (job_id,))
        logger.info("job_id=%s claimed by %s", job_id, owner)
        return self.get(job_id)

    def heartbeat(self, owner: str, job_ids: Iterable[str]) -> set[str]:
        """Mark the given running jobs of `owner` alive; returns those it lost (re-queued or taken over by
        another replica: the runner must stop them). Jobs that just ended are neither."""
        ids = list(job_ids)
        if not ids:
            return set()
        active = {s.value for s in ACTIVE}
        with self._write() as conn:
            rows = conn.execute(
                f"SELECT id, owner, state FROM jobs WHERE id IN ({','.join('?' * len(ids))})", ids
            ).fetchall()
            owned = [r["id"] for r in rows if r["owner"] == owner and r["state"] in active]
            now = time.time()
            conn.executemany("UPDATE jobs SET heartbeat_at = ? WHERE id = ?", [(now, i) for i in owned])
        terminal = {s.value for s in TERMINAL}
        return {r["id"] for r in rows if r["id"] not in owned and r["state"] not in terminal}

    def request_cancel(self, job_id: str) -> Job:
        """Queued jobs are cancelled at once, active ones flagged for their runner; cancelled is a no-op."""
        job = self.get(job_id)
        if job.state == JobState.QUEUED:
            try:
                return self.transition(
                    job_id, JobState.CANCELLED, expect=JobState.QUEUED, message="cancelled"
                )
            except InvalidTransition:
                job = self.get(job_id)  # claimed meanwhile: flag it below
        if job.state == JobState.CANCELLED:
            return job
        if job.state.terminal:
            raise JobAlreadyFinished(f"job {job_id} already {job.state.value}")
        return self.update(job_id, cancel_requested=1, event="cancel", message="cancel requested")

    def recover_orphans(
        self, *, stale_before: float, max_attempts: int, exclude_owner: str | None = None
    ) -> int:
        """Re-queue (or fail, after `max_attempts` runs) active jobs whose owner stopped heart-beating.

        Selection and transition share one write transaction, and each transition re-checks the owner it
        saw, so a runner's heartbeat or a second recovering replica cannot interleave: a job is re-queued
        once, and its old owner's later writes fail with `LostOwnership`.
        """
        active = [s.value for s in ACTIVE]
        recovered = 0
        with self._write() as conn:
            rows = conn.execute(
                f"SELECT id, attempts, owner, cancel_requested FROM jobs WHERE state IN "
                f"({','.join('?' * len(active))}) AND (heartbeat_at IS NULL OR heartbeat_at < ?)",
                (*active, stale_before),
            ).fetchall()
            for row in rows:
                if exclude_owner is not None and row["owner"] == exclude_owner:
                    continue
                if row["cancel_requested"]:
                    to, fields = JobState.CANCELLED, {"message": "cancelled (runner went away)"}
                elif row["attempts"] >= max_attempts:
                    to, fields = JobState.FAILED, {
                        "error_code": "interrupted", "message": "interrupted",
                        "error_message": f"the service stopped while the job ran ({row['attempts']} runs)",
                    }  # fmt: skip
                else:
                    to, fields = JobState.QUEUED, {"message": "re-queued: its runner went silent"}
                self._transition_in(conn, row["id"], to, owned_by=row["owner"], **fields)
                logger.warning("job_id=%s orphaned by %s -> %s", row["id"], row["owner"], to.value)
                recovered += 1
        return recovered

    def expired(self, *, finished_before: float) -> list[Job]:
        """Terminal jobs finished before the cut-off whose files are still on disk."""
        terminal = [s.value for s in TERMINAL]
        rows = (
            self._conn()
            .execute(
                f"SELECT * FROM jobs WHERE state IN ({','.join('?' * len(terminal))}) AND finished_at < ? "
                "AND files_removed_at IS NULL",
                (*terminal, finished_before),
            )
            .fetchall()
        )
        return [Job.from_row(r) for r in rows]

    # -- helpers -------------------------------------------------------------------------------------------
    @staticmethod
    def _update(conn: sqlite3.Connection, job_id: str, now: float, **fields: Any) -> None:
        unknown = set(fields) - _UPDATABLE - {"state"}
        if unknown:
            raise ValueError(f"not updatable: {sorted(unknown)}")
        values = {k: json.dumps(v) if k in _JSON_FIELDS else v for k, v in fields.items()}
        values["updated_at"] = now
        assignments = ", ".join(f"{k} = ?" for k in values)
        conn.execute(f"UPDATE jobs SET {assignments} WHERE id = ?", (*values.values(), job_id))

    def _event(
        self,
        conn: sqlite3.Connection,
        job_id: str,
        state: JobState,
        stage: str,
        progress: float,
        message: str | None,
        now: float,
        kind: str = "state",
    ) -> None:
        conn.execute(
            "INSERT INTO job_events (job_id, kind, state, stage, progress, message, at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (job_id, kind, state.value, stage, progress, message, now),
        )
        self._local.touched.add(job_id)
