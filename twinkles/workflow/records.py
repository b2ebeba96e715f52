"""Job records in the repository's registry (``registry.sqlite3``): written only by the orchestrator.

Tables:

* ``workflow_invocations`` -- one row per ``twinkles run``: run, pipeline, executor, workers, host, pid, start and
  end (Unix seconds), status (running, finished, failed, interrupted);
* ``jobs`` -- the current state of each job (run, stage, data ID): status (pending, running, done, failed,
  skipped-upstream), attempt, start, end, wall, CPU time, peak RSS, host, error summary, log path, outputs;
* ``job_attempts`` -- one row per finished attempt (failed attempts included), for the report;
* ``workflow_blocks`` -- the batch-system jobs (Parsl blocks) of each invocation on a cluster executor: block
  number, batch job id (the Slurm job id), state (pending, running, completed, cancelled, failed, missing...),
  first seen and last updated; ``jobs.block`` / ``job_attempts.block`` name the batch job a job ran in.

Times are Unix seconds (UTC); ``wall_s``/``cpu_s`` in seconds; ``cpu_wait_s``: seconds the job was ready to run
but other processes had the CPU; ``peak_rss_mb`` in MiB.
"""

from __future__ import annotations

import json
import os
import socket
import time

from ..repo import Repository
from ..repo.dataid import data_id_key
from ..repo.repository import DatasetRef

__all__ = ["SCHEMA", "ensure_tables", "JobStore", "load_jobs", "load_attempts", "load_invocations",
           "latest_run", "registered_paths", "load_blocks"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS workflow_invocations (
    id INTEGER PRIMARY KEY,
    run TEXT NOT NULL,
    pipeline TEXT NOT NULL,
    stages TEXT NOT NULL,
    missing_stages TEXT NOT NULL DEFAULT '',
    executor TEXT NOT NULL,
    workers INTEGER NOT NULL,
    host TEXT, pid INTEGER,
    start REAL NOT NULL, end REAL,
    status TEXT NOT NULL,
    message TEXT,
    configs TEXT
);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY,
    run TEXT NOT NULL,
    stage TEXT NOT NULL,
    data_id TEXT NOT NULL,
    tract INTEGER, patch INTEGER, visit INTEGER, detector INTEGER, band TEXT,
    status TEXT NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 0,
    start REAL, end REAL, wall_s REAL, cpu_s REAL, cpu_wait_s REAL, peak_rss_mb REAL,
    host TEXT, pid INTEGER,
    error TEXT, log_path TEXT,
    outputs TEXT, metadata TEXT,
    invocation INTEGER,
    updated REAL,
    UNIQUE (run, stage, data_id)
);
CREATE INDEX IF NOT EXISTS jobs_run_stage ON jobs (run, stage, status);
CREATE TABLE IF NOT EXISTS job_attempts (
    id INTEGER PRIMARY KEY,
    run TEXT NOT NULL,
    stage TEXT NOT NULL,
    data_id TEXT NOT NULL,
    visit INTEGER,
    attempt INTEGER NOT NULL,
    status TEXT NOT NULL,
    start REAL, end REAL, wall_s REAL, cpu_s REAL, cpu_wait_s REAL, peak_rss_mb REAL,
    host TEXT, pid INTEGER, error TEXT, log_path TEXT,
    invocation INTEGER
);
CREATE INDEX IF NOT EXISTS job_attempts_run ON job_attempts (run, stage);
CREATE TABLE IF NOT EXISTS workflow_blocks (
    id INTEGER PRIMARY KEY,
    run TEXT NOT NULL,
    invocation INTEGER NOT NULL,
    executor TEXT NOT NULL,
    block TEXT NOT NULL,
    job_id TEXT,
    state TEXT NOT NULL,
    message TEXT,
    first_seen REAL, updated REAL,
    UNIQUE (invocation, executor, block)
);
"""

_DIMS = ("tract", "patch", "visit", "detector", "band")


#: columns added after the first version of the tables: added to older registries on the next run
_ADDED_COLUMNS = {"jobs": [("cpu_wait_s", "REAL"), ("block", "TEXT")],
                  "job_attempts": [("cpu_wait_s", "REAL"), ("block", "TEXT")],
                  "workflow_invocations": [("configs", "TEXT")]}


def ensure_tables(repo: Repository) -> None:
    with repo.connect() as conn:
        for stmt in SCHEMA.split(";"):
            if stmt.strip():
                conn.execute(stmt)
        for table, cols in _ADDED_COLUMNS.items():
            have = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
            for name, kind in cols:
                if name not in have:
                    conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")


def _tables_exist(conn) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='jobs'").fetchone() is not None


def registered_paths(repo: Repository, run: str) -> dict[tuple[str, str], str]:
    """{(dataset type, data ID key): path} of the datasets registered in ``run``."""
    with repo.read_only() as conn:
        rows = conn.execute("SELECT dataset_type, data_id, path FROM datasets WHERE run = ?", (run,)).fetchall()
    return {(r["dataset_type"], r["data_id"]): r["path"] for r in rows}


class JobStore:
    """The orchestrator's writer of job records (one instance per ``twinkles run``)."""

    def __init__(self, repo: Repository, run: str):
        self.repo = repo
        self.run = run
        self.invocation: int | None = None
        ensure_tables(repo)

    # -------------------------------------------------------------------------- invocations
    def previous_configs(self) -> dict:
        """{stage: config dict} as last recorded for this run (the stages' configs of earlier invocations)."""
        out: dict = {}
        with self.repo.read_only() as conn:
            rows = conn.execute("SELECT configs FROM workflow_invocations WHERE run=? AND configs IS NOT NULL "
                                "ORDER BY id", (self.run,)).fetchall()
        for r in rows:
            out.update(json.loads(r["configs"]))
        return out

    def start_invocation(self, pipeline: str, stages: list[str], missing: list[str], executor: str,
                         workers: int, configs: dict | None = None) -> int:
        with self.repo.connect() as conn:
            # an earlier invocation killed mid-way left "running" rows: they are pending again
            # (its end: that of its last recorded job, so the time it lay dead does not count as its wall time)
            conn.execute("UPDATE workflow_invocations SET status='interrupted', end=COALESCE(end, "
                         "(SELECT MAX(a.end) FROM job_attempts a WHERE a.invocation = workflow_invocations.id), "
                         "start) WHERE status='running'")
            conn.execute("UPDATE jobs SET status='pending' WHERE run=? AND status='running'", (self.run,))
            cur = conn.execute(
                "INSERT INTO workflow_invocations(run, pipeline, stages, missing_stages, executor, workers, host, "
                "pid, start, status, configs) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'running', ?)",
                (self.run, pipeline, ",".join(stages), ",".join(missing), executor, int(workers),
                 socket.gethostname(), os.getpid(), time.time(), json.dumps(configs or {}, default=str)))
            self.invocation = cur.lastrowid
        return self.invocation

    def end_invocation(self, status: str, message: str = "") -> None:
        with self.repo.connect() as conn:
            conn.execute("UPDATE workflow_invocations SET end=?, status=?, message=? WHERE id=?",
                         (time.time(), status, message, self.invocation))

    # -------------------------------------------------------------------------- reading previous state
    def previous_states(self) -> dict[tuple[str, str], tuple[str, int, tuple]]:
        """{(stage, data ID key): (status, attempt, outputs_removed)}; "done" only if every recorded output is
        still registered at the same path with its file present, or was removed as an intermediate once read
        (``twinkles run --no-keep``; ``outputs_removed``: the dataset types removed) -- else the job is done
        again."""
        registered = registered_paths(self.repo, self.run)
        removed = self.repo.removed_keys(self.run)
        out = {}
        with self.repo.read_only() as conn:
            rows = conn.execute("SELECT stage, data_id, status, attempt, outputs FROM jobs WHERE run=?",
                                (self.run,)).fetchall()
        for r in rows:
            status, gone = r["status"], set()
            if status == "done":
                for ref in json.loads(r["outputs"] or "[]"):
                    key = (ref["dataset_type"], data_id_key(ref["data_id"]))
                    if removed.get(key) == ref["path"]:
                        gone.add(ref["dataset_type"])
                    elif registered.get(key) != ref["path"] or not (self.repo.root / ref["path"]).exists():
                        status = "pending"
                        break
            out[(r["stage"], r["data_id"])] = (status, r["attempt"], tuple(sorted(gone)) if status == "done" else ())
        return out

    def outputs_of(self, stage: str, key: str) -> list[DatasetRef]:
        """The outputs recorded for a done job (of this run)."""
        with self.repo.read_only() as conn:
            row = conn.execute("SELECT outputs FROM jobs WHERE run=? AND stage=? AND data_id=? AND status='done'",
                               (self.run, stage, key)).fetchone()
        return [DatasetRef.from_dict(d) for d in json.loads(row["outputs"] or "[]")] if row else []

    # -------------------------------------------------------------------------- writing
    def add_pending(self, jobs) -> None:
        """Insert rows for newly planned jobs (not done): status pending; done ones keep their row."""
        now = time.time()
        rows = [(self.run, j.stage, j.key, *[j.data_id.get(d) for d in _DIMS], j.attempt, self.invocation, now)
                for j in jobs if j.status != "done"]
        if not rows:
            return
        with self.repo.connect() as conn:
            conn.executemany(
                "INSERT INTO jobs(run, stage, data_id, tract, patch, visit, detector, band, status, attempt, "
                "invocation, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?, ?) "
                "ON CONFLICT(run, stage, data_id) DO UPDATE SET status='pending', error=NULL, "
                "invocation=excluded.invocation, updated=excluded.updated", rows)

    def mark_running(self, jobs) -> None:
        self._set_status(jobs, "running", "attempt", lambda j: j.attempt)

    def mark_skipped(self, jobs) -> None:
        self._set_status(jobs, "skipped-upstream", "error", lambda j: j.error)

    def _set_status(self, jobs, status: str, column: str, value) -> None:
        """Set ``status`` and one more column (``value(job)``) of these jobs, in one transaction."""
        now = time.time()
        with self.repo.connect() as conn:
            conn.executemany(f"UPDATE jobs SET status=?, {column}=?, updated=? WHERE run=? AND stage=? AND data_id=?",
                             [(status, value(j), now, self.run, j.stage, j.key) for j in jobs])

    def record_results(self, items) -> None:
        """Record finished attempts: ``items`` = [(job, result dict, final status)], in one transaction.

        Outputs of successful jobs must already be registered (``Repository.register``) -- done first, so that
        a crash between the two leaves a job that is re-done, never a "done" job without its outputs.
        """
        now = time.time()
        job_rows, attempt_rows = [], []
        for job, res, status in items:
            common = (res.get("start"), res.get("end"), res.get("wall_s"), res.get("cpu_s"), res.get("cpu_wait_s"),
                      res.get("peak_rss_mb"), res.get("host"), res.get("pid"), res.get("error") or None,
                      res.get("log_path"), res.get("block"))
            job_rows.append((status, job.attempt, *common, json.dumps(res.get("outputs", [])),
                             json.dumps(res.get("metadata", {}), default=str), self.invocation, now,
                             self.run, job.stage, job.key))
            attempt_rows.append((self.run, job.stage, job.key, job.data_id.get("visit"), job.attempt,
                                 "done" if res.get("status") == "done" else "failed", *common, self.invocation))
        with self.repo.connect() as conn:
            conn.executemany(
                "UPDATE jobs SET status=?, attempt=?, start=?, end=?, wall_s=?, cpu_s=?, cpu_wait_s=?, peak_rss_mb=?, "
                "host=?, pid=?, error=?, log_path=?, block=?, outputs=?, metadata=?, invocation=?, updated=? "
                "WHERE run=? AND stage=? AND data_id=?", job_rows)
            conn.executemany(
                "INSERT INTO job_attempts(run, stage, data_id, visit, attempt, status, start, end, wall_s, cpu_s, "
                "cpu_wait_s, peak_rss_mb, host, pid, error, log_path, block, invocation) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", attempt_rows)

    def record_blocks(self, executor: str, blocks: dict) -> None:
        """Record the state of an executor's blocks: ``blocks`` = {block: (batch job id, state, message)}."""
        if not blocks:
            return
        now = time.time()
        rows = [(self.run, self.invocation, executor, str(b), None if jid is None else str(jid), state, msg, now, now)
                for b, (jid, state, msg) in blocks.items()]
        with self.repo.connect() as conn:
            conn.executemany(
                "INSERT INTO workflow_blocks(run, invocation, executor, block, job_id, state, message, first_seen, "
                "updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(invocation, executor, block) DO UPDATE SET "
                "job_id=COALESCE(excluded.job_id, job_id), state=excluded.state, message=excluded.message, "
                "updated=excluded.updated", rows)

    @staticmethod
    def refs_of(result: dict) -> list[DatasetRef]:
        return [DatasetRef.from_dict(d) for d in result.get("outputs", [])]


# ------------------------------------------------------------------------------ reading (status, serve, report)
def _read(repo: Repository, sql: str, args=()) -> list[dict]:
    with repo.read_only() as conn:
        if not _tables_exist(conn):
            return []
        return [dict(r) for r in conn.execute(sql, args).fetchall()]


def load_invocations(repo: Repository, run: str | None = None) -> list[dict]:
    if run is None:
        return _read(repo, "SELECT * FROM workflow_invocations ORDER BY id")
    return _read(repo, "SELECT * FROM workflow_invocations WHERE run=? ORDER BY id", (run,))


def latest_run(repo: Repository) -> str | None:
    rows = _read(repo, "SELECT run FROM workflow_invocations ORDER BY id DESC LIMIT 1")
    return rows[0]["run"] if rows else None


def load_jobs(repo: Repository, run: str) -> list[dict]:
    return _read(repo, "SELECT * FROM jobs WHERE run=? ORDER BY id", (run,))


def load_blocks(repo: Repository, run: str, invocation: int | None = None) -> list[dict]:
    """The recorded blocks of a run (of one invocation if given), oldest first."""
    with repo.read_only() as conn:
        if conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='workflow_blocks'").fetchone() \
                is None:
            return []
        if invocation is None:
            rows = conn.execute("SELECT * FROM workflow_blocks WHERE run=? ORDER BY id", (run,)).fetchall()
        else:
            rows = conn.execute("SELECT * FROM workflow_blocks WHERE run=? AND invocation=? ORDER BY id",
                                (run, invocation)).fetchall()
    return [dict(r) for r in rows]


def load_attempts(repo: Repository, run: str) -> list[dict]:
    return _read(repo, "SELECT * FROM job_attempts WHERE run=? ORDER BY start", (run,))
