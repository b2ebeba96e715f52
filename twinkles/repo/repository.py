"""The data repository: a directory with a SQLite registry (WAL) of datasets and a YAML configuration.

A dataset is (dataset type, data ID, run) -> one file under ``REPO/<run>/<datasetType>/``. Files are written
atomically (temporary name in the same folder, fsync -- except by workflow jobs, see
:func:`~twinkles.repo.storage.atomic_write` -- then rename); the registry rows are inserted in one transaction,
with each file's size, and only after the files exist. Only the orchestrating process registers: a job calls
:meth:`Repository.write` (files only) and hands back the :class:`DatasetRef` list, which the orchestrator passes
to :meth:`Repository.register`. :meth:`Repository.put` does both, for single-process use.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import re
import sqlite3
import threading
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .dataid import DIMENSIONS, DataIdError, data_id_key, format_data_id, validate_data_id
from .datasets import DATASET_TYPES, IMAGE_STORAGE, DatasetType, get_dataset_type
from ..compression import COMPRESSION_MODES, Compression, dither_seed_for
from .storage import TMP_MARKER, read_dataset_file, write_dataset_file

__all__ = ["Repository", "DatasetRef", "RepositoryError", "DatasetNotFoundError", "RAW_RUN", "TRUTH_RUN",
           "validate_run_name"]

RAW_RUN = "raw"
TRUTH_RUN = "truth"
REGISTRY_NAME = "registry.sqlite3"
CONFIG_NAME = "twinkles.yaml"
_RUN_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:-]*(/[A-Za-z0-9_][A-Za-z0-9_.:-]*)*$")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    name TEXT PRIMARY KEY,
    created TEXT NOT NULL,
    description TEXT
);
CREATE TABLE IF NOT EXISTS datasets (
    id INTEGER PRIMARY KEY,
    dataset_type TEXT NOT NULL,
    run TEXT NOT NULL REFERENCES runs(name),
    data_id TEXT NOT NULL,
    tract INTEGER, patch INTEGER, visit INTEGER, detector INTEGER, band TEXT,
    path TEXT NOT NULL,
    registered TEXT NOT NULL,
    size INTEGER,  -- bytes of the file when registered (NULL: registered by an older version, not checked)
    UNIQUE (dataset_type, run, data_id)
);
CREATE INDEX IF NOT EXISTS datasets_type_visit ON datasets (dataset_type, visit);
CREATE TABLE IF NOT EXISTS removed_datasets (  -- intermediate datasets deleted once read (twinkles run --no-keep)
    dataset_type TEXT NOT NULL, run TEXT NOT NULL, data_id TEXT NOT NULL, visit INTEGER, path TEXT NOT NULL,
    size INTEGER, removed TEXT NOT NULL, reason TEXT,
    PRIMARY KEY (dataset_type, run, data_id)
);
CREATE INDEX IF NOT EXISTS datasets_type_patch ON datasets (dataset_type, tract, patch);
"""


class RepositoryError(RuntimeError):
    pass


class DatasetNotFoundError(LookupError):
    pass


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds")


def validate_run_name(run: str) -> str:
    if not isinstance(run, str) or not _RUN_RE.match(run) or any(p in ("..", ".") for p in run.split("/")):
        raise DataIdError(f"run name {run!r} is not allowed: use letters, digits, '_', '-', '.', ':' and '/' "
                          "between non-empty parts (e.g. runs/l2)")
    return run


@dataclass(frozen=True)
class DatasetRef:
    """One dataset: its type, data ID, run and path relative to the repository root."""

    dataset_type: str
    data_id: dict = field(hash=False)
    run: str
    path: str

    @property
    def key(self) -> str:
        return data_id_key(self.data_id)

    def to_dict(self) -> dict:
        return {"dataset_type": self.dataset_type, "data_id": dict(self.data_id), "run": self.run,
                "path": self.path}

    @classmethod
    def from_dict(cls, d: dict) -> DatasetRef:
        return cls(d["dataset_type"], dict(d["data_id"]), d["run"], d["path"])


def _upgrade_schema(conn) -> None:
    """Add what registries made by earlier versions lack (the datasets' size column)."""
    if "size" not in {r[1] for r in conn.execute("PRAGMA table_info(datasets)")}:
        conn.execute("ALTER TABLE datasets ADD COLUMN size INTEGER")


class Repository:
    """A twinkles data repository rooted at ``root``."""

    def __init__(self, root: str | Path, durable_writes: bool = True):
        """``durable_writes=False`` (workflow jobs): dataset files are not fsync'ed (see
        :func:`~twinkles.repo.storage.atomic_write`); :meth:`check` finds those a machine crash truncated."""
        self._conns: dict[tuple[int, int], sqlite3.Connection] = {}
        self.root = Path(root).resolve()
        self.durable_writes = durable_writes
        self.registry_path = self.root / REGISTRY_NAME
        if not self.registry_path.exists():
            raise RepositoryError(f"{root}: not a twinkles repository (no {REGISTRY_NAME}); create one with "
                                  f"`twinkles simulate {root} --preset tiny` or `twinkles ingest {root} FILES`")
        self._config = None
        self._compression = None

    # ------------------------------------------------------------------ creation and configuration
    @classmethod
    def create(cls, root: str | Path, config: dict | None = None, exist_ok: bool = True) -> Repository:
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        reg = root / REGISTRY_NAME
        if reg.exists() and not exist_ok:
            raise RepositoryError(f"{root}: a repository already exists there; choose another path")
        conn = sqlite3.connect(reg, timeout=60)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(_SCHEMA)
            _upgrade_schema(conn)
            conn.commit()
        finally:
            conn.close()
        repo = cls(root)
        if config is not None or not (root / CONFIG_NAME).exists():
            merged = repo.config if (root / CONFIG_NAME).exists() else {}
            merged.update(config or {})
            repo.write_config(merged)
        return repo

    @property
    def config(self) -> dict:
        if self._config is None:
            path = self.root / CONFIG_NAME
            self._config = yaml.safe_load(path.read_text()) if path.exists() else {}
            self._config = self._config or {}
        return dict(self._config)

    def write_config(self, config: dict) -> None:
        from .storage import atomic_write_bytes
        atomic_write_bytes(self.root / CONFIG_NAME, yaml.safe_dump(config, sort_keys=False).encode())
        self._config = dict(config)
        self._compression = None

    def compression_modes(self) -> tuple[str, dict[str, str]]:
        """(default mode, {dataset type: mode}) of image compression, from ``storage.compression`` in
        twinkles.yaml: a mode (``lossy``, the default, ``lossless`` or ``none``), or a mapping with ``default``
        and per-dataset-type modes, e.g. ``{default: lossy, eimage: lossless}``."""
        if self._compression is None:
            storage = self.config.get("storage") or {}
            where = f"{self.root / CONFIG_NAME}: storage.compression"
            if not isinstance(storage, dict):
                raise RepositoryError(f"{self.root / CONFIG_NAME}: storage must be a mapping (e.g. "
                                      "storage: {compression: lossy})")
            spec = storage.get("compression", "lossy")
            overrides = {}
            if isinstance(spec, dict):
                overrides = {str(k): v for k, v in spec.items() if k != "default"}
                default = spec.get("default", "lossy")
            else:
                default = spec
            for name, mode in [("default", default)] + list(overrides.items()):
                if mode not in COMPRESSION_MODES:
                    raise RepositoryError(f"{where}: {name}: {mode!r} is not a compression mode; use one of "
                                          f"{', '.join(COMPRESSION_MODES)}")
            for name in overrides:
                dt = DATASET_TYPES.get(name)
                if dt is None or dt.storage not in IMAGE_STORAGE:
                    images = sorted(n for n, t in DATASET_TYPES.items() if t.storage in IMAGE_STORAGE)
                    raise RepositoryError(f"{where}: {name!r} is not an image dataset type; the image dataset "
                                          f"types are {', '.join(images)}")
            self._compression = (default, overrides)
        return self._compression

    def compression_for(self, dataset_type: str | DatasetType, data_id: dict) -> Compression | None:
        """How a dataset's image planes are written (None: not an image dataset): the configured mode, with a
        dither seed fixed by the dataset type and data ID (a re-run writes identical files)."""
        dt = get_dataset_type(dataset_type) if isinstance(dataset_type, str) else dataset_type
        if dt.storage not in IMAGE_STORAGE:
            return None
        default, overrides = self.compression_modes()
        return Compression(overrides.get(dt.name, default), dither_seed_for(f"{dt.name} {data_id_key(data_id)}"))

    # ------------------------------------------------------------------ registry connection
    @contextlib.contextmanager
    def connect(self):
        """A SQLite connection to the registry; commits on success, rolls back on error (one transaction).

        The connection is kept for the next transaction of the same thread of this process (the orchestrator
        makes several per job: opening and closing each time cost ~2 ms, and the last close of the database
        checkpoints its WAL)."""
        owner = (os.getpid(), threading.get_ident())
        conn = self._conns.get(owner)
        if conn is None:
            conn = sqlite3.connect(self.registry_path, timeout=60, isolation_level=None, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA busy_timeout=60000")
            self._conns[owner] = conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def close(self) -> None:
        """Close this process's kept registry connections (also done when the Repository is deleted)."""
        pid = os.getpid()
        for owner in [o for o in self._conns if o[0] == pid]:
            self._conns.pop(owner).close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    def read_only(self):
        """A connection for reading (no transaction held)."""
        conn = sqlite3.connect(f"file:{self.registry_path}?mode=ro", uri=True, timeout=60)
        conn.row_factory = sqlite3.Row
        return contextlib.closing(conn)

    # ------------------------------------------------------------------ runs
    def ensure_run(self, run: str, description: str = "") -> str:
        validate_run_name(run)
        with self.connect() as conn:
            conn.execute("INSERT OR IGNORE INTO runs(name, created, description) VALUES (?, ?, ?)",
                         (run, _now(), description))
        return run

    def runs(self) -> list[str]:
        with self.read_only() as conn:
            return [r[0] for r in conn.execute("SELECT name FROM runs ORDER BY created")]

    # ------------------------------------------------------------------ paths
    def relative_path(self, dataset_type: str | DatasetType, data_id: dict, run: str) -> str:
        dt = get_dataset_type(dataset_type) if isinstance(dataset_type, str) else dataset_type
        validate_run_name(run)
        did = validate_data_id(data_id, dt.dimensions)
        parts = [run, dt.name]
        if did:
            first = next(iter(did))
            parts.append(f"{first}{did[first]}")
            stem = dt.name + "_" + "_".join(f"{k}{v}" for k, v in did.items())
        else:
            stem = dt.name
        return "/".join(parts + [stem + dt.extension])

    def abspath(self, ref: DatasetRef) -> Path:
        return self.root / ref.path

    # ------------------------------------------------------------------ write / register / put
    def write(self, obj, dataset_type: str, data_id: dict, run: str) -> DatasetRef:
        """Write a dataset's file atomically, without registering it (for jobs)."""
        dt = get_dataset_type(dataset_type)
        did = validate_data_id(data_id, dt.dimensions)
        rel = self.relative_path(dt, did, run)
        write_dataset_file(obj, dt.storage, self.root / rel, self.durable_writes, self.compression_for(dt, did))
        return DatasetRef(dt.name, did, run, rel)

    def register(self, refs: list[DatasetRef] | DatasetRef) -> None:
        """Register written datasets in one transaction (re-registering a dataset updates its row)."""
        if isinstance(refs, DatasetRef):
            refs = [refs]
        sizes = []
        for ref in refs:
            try:
                sizes.append((self.root / ref.path).stat().st_size)
            except FileNotFoundError:
                raise RepositoryError(f"cannot register {ref.dataset_type} {format_data_id(ref.data_id)} in run "
                                      f"{ref.run}: its file {ref.path} does not exist") from None
        now = _now()
        rows = [(r.dataset_type, r.run, data_id_key(r.data_id), r.data_id.get("tract"), r.data_id.get("patch"),
                 r.data_id.get("visit"), r.data_id.get("detector"), r.data_id.get("band"), r.path, now, size)
                for r, size in zip(refs, sizes)]
        with self.connect() as conn:
            for run in {r.run for r in refs}:
                conn.execute("INSERT OR IGNORE INTO runs(name, created, description) VALUES (?, ?, '')",
                             (validate_run_name(run), now))
            insert = """INSERT INTO datasets(dataset_type, run, data_id, tract, patch, visit, detector, band, path,
                                             registered, size)
                        VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                        ON CONFLICT(dataset_type, run, data_id) DO UPDATE SET path=excluded.path,
                            registered=excluded.registered, size=excluded.size"""
            try:
                conn.executemany(insert, rows)
            except sqlite3.OperationalError as exc:
                if "size" not in str(exc):
                    raise
                _upgrade_schema(conn)  # a registry made by an earlier version
                conn.executemany(insert, rows)

    def put(self, obj, dataset_type: str, data_id: dict | None = None, run: str = RAW_RUN) -> DatasetRef:
        ref = self.write(obj, dataset_type, data_id or {}, run)
        self.register(ref)
        return ref

    # ------------------------------------------------------------------ query / get
    def query(self, dataset_type: str, where: dict | None = None, runs: list[str] | str | None = None
              ) -> list[DatasetRef]:
        """Registered datasets of a type matching ``where`` (dimension -> value, list, or range).

        ``runs``: restrict to these runs; when a data ID is in several runs, the first run listed wins (with
        ``runs=None``, the most recently registered one).
        """
        dt = get_dataset_type(dataset_type)
        sql = "SELECT dataset_type, run, data_id, tract, patch, visit, detector, band, path, registered " \
              "FROM datasets WHERE dataset_type = ?"
        args: list = [dt.name]
        for dim, value in (where or {}).items():
            if dim not in DIMENSIONS:
                raise DataIdError(f"unknown data ID dimension {dim!r}; known: {', '.join(DIMENSIONS)}")
            if dim not in dt.dimensions:
                continue
            if isinstance(value, range):
                if value.step != 1:
                    raise DataIdError(f"{dim}: only contiguous ranges are supported")
                sql += f" AND {dim} BETWEEN ? AND ?"
                args += [value.start, value.stop - 1]
            elif isinstance(value, (list, tuple, set)):
                vals = [validate_data_id({dim: v})[dim] for v in value]
                sql += f" AND {dim} IN ({','.join('?' * len(vals))})"
                args += vals
            else:
                sql += f" AND {dim} = ?"
                args.append(validate_data_id({dim: value})[dim])
        if isinstance(runs, str):
            runs = [runs]
        if runs is not None:
            for r in runs:
                validate_run_name(r)
            sql += f" AND run IN ({','.join('?' * len(runs))})"
            args += list(runs)
        with self.read_only() as conn:
            rows = conn.execute(sql, args).fetchall()
        best: dict[str, sqlite3.Row] = {}
        for row in rows:
            key = row["data_id"]
            old = best.get(key)
            if old is None:
                best[key] = row
            elif runs is not None:
                if runs.index(row["run"]) < runs.index(old["run"]):
                    best[key] = row
            elif row["registered"] > old["registered"]:
                best[key] = row
        refs = []
        for row in best.values():
            did = {d: row[d] for d in dt.dimensions}
            refs.append(DatasetRef(dt.name, did, row["run"], row["path"]))
        refs.sort(key=lambda r: tuple((r.data_id[d] if d != "band" else "ugrizy".index(r.data_id[d]))
                                      for d in dt.dimensions))
        return refs

    def find(self, dataset_type: str, data_id: dict | None = None, runs: list[str] | str | None = None
             ) -> DatasetRef:
        dt = get_dataset_type(dataset_type)
        did = validate_data_id(data_id or {}, dt.dimensions)
        refs = self.query(dt.name, did, runs)
        if not refs:
            where = f" in runs {runs}" if runs else ""
            raise DatasetNotFoundError(f"no {dt.name} dataset for {format_data_id(did)}{where} in {self.root}; "
                                       "run the stage that makes it first")
        return refs[0]

    def exists(self, dataset_type: str, data_id: dict | None = None, runs=None) -> bool:
        try:
            self.find(dataset_type, data_id, runs)
            return True
        except DatasetNotFoundError:
            return False

    def get(self, dataset_type: str, data_id: dict | None = None, runs: list[str] | str | None = None,
            columns: list[str] | None = None):
        """Read a dataset (the newest registered one unless ``runs`` says where to look)."""
        ref = self.find(dataset_type, data_id, runs)
        return self.read(ref, columns=columns)

    def read(self, ref: DatasetRef, columns: list[str] | None = None):
        return read_dataset_file(get_dataset_type(ref.dataset_type).storage, self.root / ref.path, columns)

    # ------------------------------------------------------------------ disk budget
    def disk_usage(self, runs: list[str] | str | None = None) -> dict:
        """Bytes on disk of the registered datasets (sizes recorded at registration), in ``runs`` (None: all):
        ``{"total_bytes", "files", "types": {dataset type: {"files", "bytes", "visits", "bytes_per_visit"}},
        "visits": {visit: bytes}, "removed": {dataset type: {"files", "bytes"}}}``; ``bytes_per_visit`` is the
        mean over the visits that have the type (None for types without a visit dimension); ``removed``: what
        ``twinkles run --no-keep`` deleted once every job reading it was done."""
        if isinstance(runs, str):
            runs = [runs]
        where, args = "", []
        if runs is not None:
            where = f" WHERE run IN ({','.join('?' * len(runs))})"
            args = [validate_run_name(r) for r in runs]
        with self.read_only() as conn:
            size = "size" if "size" in {r[1] for r in conn.execute("PRAGMA table_info(datasets)")} else "NULL"
            rows = conn.execute(f"SELECT dataset_type, visit, path, {size} AS size FROM datasets{where}",
                                args).fetchall()
            has_removed = conn.execute("SELECT 1 FROM sqlite_master WHERE name='removed_datasets'").fetchone()
            removed_rows = conn.execute(
                "SELECT r.dataset_type, COUNT(*) AS n, SUM(r.size) AS b FROM removed_datasets r WHERE NOT EXISTS "
                "(SELECT 1 FROM datasets d WHERE d.dataset_type=r.dataset_type AND d.run=r.run AND "
                f"d.data_id=r.data_id){where.replace(' WHERE run', ' AND r.run')} GROUP BY r.dataset_type",
                args).fetchall() if has_removed else []
        types: dict[str, dict] = {}
        visits: dict[int, int] = {}
        per_type_visits: dict[str, set] = {}
        for r in rows:
            n = r["size"]
            if n is None:  # registered by an older version: the file's size now
                try:
                    n = (self.root / r["path"]).stat().st_size
                except OSError:
                    n = 0
            t = types.setdefault(r["dataset_type"], {"files": 0, "bytes": 0, "visits": 0, "bytes_per_visit": None})
            t["files"] += 1
            t["bytes"] += n
            if r["visit"] is not None:
                visits[r["visit"]] = visits.get(r["visit"], 0) + n
                per_type_visits.setdefault(r["dataset_type"], set()).add(r["visit"])
        for name, vs in per_type_visits.items():
            types[name]["visits"] = len(vs)
            types[name]["bytes_per_visit"] = types[name]["bytes"] / len(vs)
        return {"total_bytes": sum(t["bytes"] for t in types.values()), "files": len(rows),
                "types": dict(sorted(types.items(), key=lambda kv: -kv[1]["bytes"])),
                "visits": dict(sorted(visits.items())),
                "removed": {r["dataset_type"]: {"files": r["n"], "bytes": r["b"] or 0} for r in removed_rows}}

    def remove_datasets(self, refs: list[DatasetRef], reason: str = "") -> int:
        """Delete datasets (intermediate products nothing needs any more): their registry rows go and are
        recorded in ``removed_datasets``, and their files are deleted, in one transaction (committed after the
        files are gone: a crash in between leaves rows without files, which :meth:`check` removes, and the jobs
        that made them are done again). Returns the bytes freed."""
        if not refs:
            return 0
        now = _now()
        freed = 0
        with self.connect() as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS removed_datasets (dataset_type TEXT NOT NULL, run TEXT NOT "
                         "NULL, data_id TEXT NOT NULL, visit INTEGER, path TEXT NOT NULL, size INTEGER, removed "
                         "TEXT NOT NULL, reason TEXT, PRIMARY KEY (dataset_type, run, data_id))")
            for ref in refs:
                row = conn.execute("SELECT id, path, size FROM datasets WHERE dataset_type=? AND run=? AND data_id=?",
                                   (ref.dataset_type, ref.run, data_id_key(ref.data_id))).fetchone()
                if row is None or row["path"] != ref.path:
                    continue  # not registered (any more), or re-made elsewhere: leave it
                conn.execute("DELETE FROM datasets WHERE id=?", (row["id"],))
                conn.execute("INSERT OR REPLACE INTO removed_datasets(dataset_type, run, data_id, visit, path, size, "
                             "removed, reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                             (ref.dataset_type, ref.run, data_id_key(ref.data_id), ref.data_id.get("visit"),
                              ref.path, row["size"], now, reason))
                freed += row["size"] or 0
            for ref in refs:
                (self.root / ref.path).unlink(missing_ok=True)
        return freed

    def removed_keys(self, run: str) -> dict[tuple[str, str], str]:
        """{(dataset type, data ID key): path} of the datasets of ``run`` removed by :meth:`remove_datasets` (and
        not registered again since)."""
        with self.read_only() as conn:
            if conn.execute("SELECT 1 FROM sqlite_master WHERE name='removed_datasets'").fetchone() is None:
                return {}
            rows = conn.execute("SELECT r.dataset_type, r.data_id, r.path FROM removed_datasets r WHERE r.run=? AND "
                                "NOT EXISTS (SELECT 1 FROM datasets d WHERE d.dataset_type=r.dataset_type AND "
                                "d.run=r.run AND d.data_id=r.data_id)", (run,)).fetchall()
        return {(r["dataset_type"], r["data_id"]): r["path"] for r in rows}

    # ------------------------------------------------------------------ consistency
    def check(self, fix: bool = False, keep_runs: tuple[str, ...] = (RAW_RUN, TRUTH_RUN)) -> dict:
        """Find registry rows whose file is missing or no longer has the size it had when registered (truncated
        by a machine crash before the kernel wrote it back, or damaged since), and leftover temporary files.
        With ``fix``: remove the rows without a file, the temporaries, and the damaged files with their rows --
        except in ``keep_runs`` (the inputs, which no job can make again: counted as ``damaged_inputs`` and left
        for the user to simulate or ingest again; the jobs reading them fail with a clear message). The jobs that
        made what was removed are done again by the next ``twinkles run``."""
        with self.read_only() as conn:
            columns = {r[1] for r in conn.execute("PRAGMA table_info(datasets)")}
            size = "size" if "size" in columns else "NULL AS size"
            rows = conn.execute(f"SELECT id, run, path, {size} FROM datasets").fetchall()
        missing, damaged = [], []
        for r in rows:
            try:
                st = (self.root / r["path"]).stat()
            except FileNotFoundError:
                missing.append(r["id"])
                continue
            if r["size"] is not None and st.st_size != r["size"]:
                damaged.append((r["id"], r["run"], r["path"]))
        temporaries = [p for p in self.root.rglob(f"*{TMP_MARKER}*") if p.is_file()]
        redo = [(i, path) for i, run, path in damaged if run not in keep_runs]
        if fix:
            with self.connect() as conn:
                conn.executemany("DELETE FROM datasets WHERE id = ?",
                                 [(i,) for i in missing] + [(i,) for i, _ in redo])
            for p in temporaries + [self.root / path for _, path in redo]:
                p.unlink(missing_ok=True)
        return {"missing_files": len(missing), "damaged_files": len(redo),
                "damaged_inputs": len(damaged) - len(redo), "temporary_files": len(temporaries)}
