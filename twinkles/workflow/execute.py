"""The orchestrator: runs a pipeline's job graph on Parsl and records every job in the registry.

Executors (``--executor``):

* ``local`` (default): Parsl's HighThroughputExecutor with a LocalProvider on this machine, one worker per core
  (``--workers`` to change); workers are separate processes, so per-job CPU and memory are measured exactly.
  Stock Parsl, configured through its public options only (one block started at once, a prefetched task per
  worker, a 50 ms poll period, short heartbeats);
* ``threads``: Parsl's ThreadPoolExecutor in this process (tests, debugging);
* ``slurm``: any Slurm cluster, ``twinkles/workflow/configs/generic_slurm.py`` (partition, account, nodes per
  block, walltime, worker init from ``--partition`` ... flags or ``TWINKLES_SLURM_*`` variables);
* ``perlmutter``: the NERSC Perlmutter example, ``twinkles/workflow/configs/nersc_perlmutter.py``;
* ``CONFIG.py``: any Python file defining ``make_config(run_dir, workers)`` returning a ``parsl.config.Config``
  (or a module-level ``config``); moving from a laptop to a cluster is a matter of this file.

Only this process writes the registry: jobs return the refs they wrote and their measurements; outputs are
registered in one transaction per finished batch, then the job records are updated. Parsl run directories go
under ``REPO/runinfo``. On a batch-system executor the blocks (Slurm jobs) and their states are recorded every
few seconds (``workflow_blocks``, shown by ``twinkles status``). Per-job limits (``--job-memory``, ``--job-time``,
per stage in ``twinkles.yaml``: :mod:`twinkles.workflow.limits`) travel with each job to its worker; a job stopped
at a limit is failed at once (retried only with ``--retry-exceeded``). Small jobs are batched (several quanta
per Parsl task) once their duration is known, so the ~40 ms per-task cost of Parsl stays small against the work.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import dataclasses
import fcntl
import importlib.util
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..repo import Repository, RepositoryError, validate_processing_run
from ..repo.storage import TMP_MARKER
from ..stages import StageError
from ..stages.runner import default_output_run, find_quanta
from .graph import JobGraph
from .job import execute_batch, log_relpath
from .pipeline import resolve_pipeline
from .records import JobStore

__all__ = ["run_pipeline", "RunSummary", "IntermediateRemover", "resolve_no_keep", "build_parsl_config", "EXECUTORS",
           "WorkflowError", "available_cores", "NERSC_CONFIG", "SLURM_CONFIG"]

EXECUTORS = ("local", "threads", "slurm", "perlmutter")
NERSC_CONFIG = Path(__file__).parent / "configs" / "nersc_perlmutter.py"
SLURM_CONFIG = Path(__file__).parent / "configs" / "generic_slurm.py"
#: seconds between two records of the blocks' states
BLOCK_RECORD_S = 2.0
INPUT_RUNS = ["raw"]
#: aim for Parsl tasks of about this many seconds when batching quick jobs
TARGET_TASK_SECONDS = 1.0
MAX_BATCH = 256


class WorkflowError(RuntimeError):
    """The workflow cannot start (bad executor or config file, another run holds the repository...)."""


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


# ---------------------------------------------------------------------------------------------- Parsl configs
#: seconds between the ticks of Parsl's block poller; the first tick after the executor started launches the
#: ``init_blocks`` block, so this is also how long a run may wait for its workers to be launched (Parsl's
#: default is 5 s). A tick that has nothing to do costs microseconds; the LocalProvider's own status polling
#: stays at its 5 s.
LOCAL_STRATEGY_PERIOD_S = 0.1


def _local_htex_config(run_dir: Path, workers: int):
    """Parsl's HighThroughputExecutor with a LocalProvider, configured through its public options only."""
    from parsl.config import Config
    from parsl.executors import HighThroughputExecutor
    from parsl.providers import LocalProvider

    from ..environment import LIBRARY_THREAD_VARIABLES
    cores = available_cores()
    # one thread per worker for BLAS/OpenMP unless the user says otherwise: workers = cores already fill the CPU
    exports = " ".join(f"{k}=1" for k in LIBRARY_THREAD_VARIABLES if k not in os.environ)
    htex = HighThroughputExecutor(
        label="local",
        address="127.0.0.1",
        loopback_address="127.0.0.1",
        max_workers_per_node=workers,
        prefetch_capacity=workers,  # the next task waits in the pool: a worker starts it at once
        cores_per_worker=min(1.0, cores / workers),
        encrypted=False,  # loopback only
        # Parsl's interchange loop and this process's result thread wake up every poll_period (ms) when no
        # message comes; the default 10 ms costs them CPU taken from the workers. Messages are not delayed by
        # it; stopping the executor waits up to one period.
        poll_period=50,
        heartbeat_period=2,
        heartbeat_threshold=10,  # workers of a killed run notice within seconds and exit
        worker_logdir_root=str(run_dir),
        provider=LocalProvider(init_blocks=1, min_blocks=0, max_blocks=1,
                               worker_init=f"export {exports}" if exports else ""),
    )
    return Config(executors=[htex], run_dir=str(run_dir), strategy="none",
                  strategy_period=LOCAL_STRATEGY_PERIOD_S, retries=0, usage_tracking=0)


def _threads_config(run_dir: Path, workers: int):
    from parsl.config import Config
    from parsl.executors.threads import ThreadPoolExecutor

    return Config(executors=[ThreadPoolExecutor(label="threads", max_threads=workers)], run_dir=str(run_dir),
                  strategy="none", retries=0, usage_tracking=0)


def load_config_file(path: str | Path, run_dir: Path, workers: int | None, settings: dict | None = None):
    """Build the Parsl config of a config file: ``make_config(run_dir=, workers=[, **settings])`` or module-level
    ``config``; ``settings``: cluster settings given on the command line (--partition ...), None values dropped."""
    settings = {k: v for k, v in (settings or {}).items() if v is not None}
    path = Path(path)
    if not path.is_file():
        raise WorkflowError(f"--executor {path}: no such config file; give local, threads, slurm, perlmutter or the "
                            "path of a Python file defining make_config(run_dir, workers)")
    spec = importlib.util.spec_from_file_location(f"twinkles_parsl_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise WorkflowError(f"{path}: cannot load the Parsl config file ({type(exc).__name__}: {exc})") from exc
    if hasattr(module, "make_config"):
        try:
            config = module.make_config(run_dir=str(run_dir), workers=workers, **settings)
        except TypeError as exc:
            if settings and "argument" in str(exc):
                flags = ", ".join("--" + k.replace("_", "-") for k in settings)
                raise WorkflowError(f"{path}: its make_config does not take {flags} ({exc}); set them in the file "
                                    "or use --executor slurm") from None
            raise
        except ValueError as exc:
            raise WorkflowError(f"{path}: {exc}") from None
    elif settings:
        flags = ", ".join("--" + k.replace("_", "-") for k in settings)
        raise WorkflowError(f"{path}: defines a module-level config, which cannot take {flags}")
    elif hasattr(module, "config"):
        config = module.config
        config.run_dir = str(run_dir)
    else:
        raise WorkflowError(f"{path}: defines neither make_config(run_dir, workers) nor config")
    from parsl.config import Config
    if not isinstance(config, Config):
        raise WorkflowError(f"{path}: make_config/config gave {type(config).__name__}, not a parsl.config.Config")
    return config


def config_workers(config) -> int:
    """Worker slots a Parsl config provides (for CPU efficiency = CPU / (wall x workers))."""
    total = 0
    for ex in config.executors:
        if hasattr(ex, "max_threads"):
            total += int(ex.max_threads)
            continue
        per_node = getattr(ex, "max_workers_per_node", None)
        provider = getattr(ex, "provider", None)
        cores = getattr(provider, "cores_per_node", None)
        cpw = getattr(ex, "cores_per_worker", 1.0) or 1.0
        finite = per_node not in (None, float("inf"))
        # a node's cores unknown here (a cluster's node, not this machine): the workers asked for, else ours
        n = int((cores or (int(per_node) if finite else available_cores())) // cpw)
        if finite:
            n = min(n, int(per_node))
        nodes = getattr(provider, "nodes_per_block", 1) * max(1, getattr(provider, "max_blocks", 1))
        total += max(1, n) * nodes
    return max(1, total)


def build_parsl_config(executor: str, run_dir: Path, workers: int | None, settings: dict | None = None):
    """(parsl Config, worker slots, isolated) for an ``--executor`` value; ``settings``: cluster settings
    (partition, account, nodes_per_block, max_blocks, walltime, worker_init) for a config file that takes them."""
    given = {k: v for k, v in (settings or {}).items() if v is not None}
    if given and executor in ("local", "threads"):
        flags = ", ".join("--" + k.replace("_", "-") for k in given)
        raise WorkflowError(f"{flags}: settings of a Slurm cluster, not of --executor {executor}; add "
                            "--executor slurm")
    run_dir.mkdir(parents=True, exist_ok=True)
    if executor == "local":
        n = workers or available_cores()
        return _local_htex_config(run_dir, n), n, True
    if executor == "threads":
        n = workers or available_cores()
        return _threads_config(run_dir, n), n, False
    if executor == "slurm":
        config = load_config_file(SLURM_CONFIG, run_dir, workers, given)
    elif executor == "perlmutter":
        config = load_config_file(NERSC_CONFIG, run_dir, workers, given)
    elif executor.endswith(".py"):
        config = load_config_file(executor, run_dir, workers, given)
    else:
        raise WorkflowError(f"--executor {executor!r}: use local, threads, slurm, perlmutter or a CONFIG.py file")
    isolated = not any(hasattr(ex, "max_threads") for ex in config.executors)
    return config, config_workers(config), isolated


# ---------------------------------------------------------------------------------------------- the run
@dataclass
class RunSummary:
    run: str
    pipeline: str
    stages: list[str]
    missing: list[str]
    counts: dict
    failures: list = field(default_factory=list)  # (label, error, log path)
    notes: list = field(default_factory=list)
    resumed: int = 0
    wall_s: float = 0.0
    workers: int = 1
    invocation: int | None = None

    @property
    def n_failed(self) -> int:
        return sum(c["failed"] for c in self.counts.values())

    @property
    def n_skipped(self) -> int:
        return sum(c["skipped-upstream"] for c in self.counts.values())

    @property
    def ok(self) -> bool:
        return self.n_failed == 0 and self.n_skipped == 0


def _config_dict(config) -> dict:
    """A stage config as plain JSON data (to record it and compare it between invocations)."""
    import json
    data = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else {"repr": repr(config)}
    return json.loads(json.dumps(data, default=str))


@contextlib.contextmanager
def _repo_lock(repo: Repository):
    path = repo.root / ".workflow.lock"
    f = open(path, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise WorkflowError(f"{repo.root}: another `twinkles run` is working on this repository ({holder}); wait "
                            "for it to finish or stop it, then run again (it resumes)") from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
    f.flush()
    try:
        yield
    finally:
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()


class _Estimator:
    """Mean wall time per stage of the jobs finished so far, for batch sizes."""

    def __init__(self):
        self.total: dict[str, float] = {}
        self.count: dict[str, int] = {}

    def add(self, stage: str, wall: float) -> None:
        self.total[stage] = self.total.get(stage, 0.0) + wall
        self.count[stage] = self.count.get(stage, 0) + 1

    def mean(self, stage: str) -> float | None:
        n = self.count.get(stage, 0)
        return self.total[stage] / n if n else None


def run_pipeline(repo_path, pipeline: str = "l2", executor: str = "local", workers: int | None = None,
                 retries: int = 1, run: str | None = None, query: dict | None = None,
                 overrides: dict[str, str] | None = None, progress: bool | None = None,
                 batch: int | None = None, echo=None, no_keep: list[str] | None = None, job_memory=None,
                 job_time=None, retry_exceeded: bool = False, cluster: dict | None = None) -> RunSummary:
    """Run (or resume) a pipeline on a repository; returns a summary. Never raises for a failed job.

    ``progress``: show a tqdm bar (None: only on a terminal). ``batch``: fixed quanta per Parsl task (default:
    adaptive). ``echo``: a function printing status lines (default: stderr). ``no_keep``: stages or dataset
    types whose outputs are intermediates, removed once every job of the pipeline reading them is done (None:
    ``storage.no_keep`` of twinkles.yaml, if any); see :class:`IntermediateRemover`. ``job_memory``/``job_time``:
    per-job limits ("4GB", "30m"; :mod:`twinkles.workflow.limits`); ``retry_exceeded``: retry jobs stopped at a
    limit too. ``cluster``: settings of a Slurm config (partition, account, nodes_per_block, max_blocks,
    walltime, worker_init).
    """
    from ..environment import ensure_env_bin_on_path  # HTEX starts interchange.py / process_worker_pool.py

    ensure_env_bin_on_path()
    echo = echo or (lambda msg: print(msg, file=sys.stderr, flush=True))
    if retries < 0:
        raise WorkflowError(f"--retries {retries}: must be >= 0")
    if workers is not None and workers < 1:
        raise WorkflowError(f"--workers {workers}: must be >= 1")
    repo = Repository(repo_path)
    run = validate_processing_run(run or default_output_run(repo))  # never raw or truth
    repo.ensure_run(run)
    pipe = resolve_pipeline(pipeline, overrides)
    if not pipe.stages:
        raise StageError(f"pipeline {pipeline}: none of its stages ({', '.join(pipe.missing)}) is implemented yet")
    if no_keep is None:
        no_keep = (repo.config.get("storage") or {}).get("no_keep") or []
    no_keep_types = resolve_no_keep(pipe, no_keep)
    from .limits import LimitError, stage_limits
    try:
        limits = stage_limits(repo.config, pipe.names, job_memory, job_time)
    except LimitError as exc:
        raise WorkflowError(str(exc)) from None
    limits = {k: v for k, v in limits.items() if v["memory_bytes"] or v["time_s"]}
    if limits and executor == "threads":
        raise WorkflowError("--job-memory/--job-time (or limits in twinkles.yaml) are enforced by worker processes: "
                            "use --executor local or a cluster executor, not threads")
    opts = {"limits": limits, "retry_exceeded": retry_exceeded, "cluster": cluster or {}}
    with _repo_lock(repo):
        cleaned = repo.check(fix=True)
        if cleaned["temporary_files"] or cleaned["missing_files"] or cleaned["damaged_files"]:
            echo(f"cleaned after an interrupted run: {cleaned['temporary_files']} temporary file(s), "
                 f"{cleaned['missing_files']} registry row(s) without a file, {cleaned['damaged_files']} "
                 "truncated or damaged output(s) (their jobs are done again)")
        if cleaned["damaged_inputs"]:
            echo(f"warning: {cleaned['damaged_inputs']} input file(s) changed size since they were registered "
                 "(truncated?): the jobs reading them will fail; `twinkles check` lists them -- simulate or "
                 "ingest them again")
        return _orchestrate(repo, run, pipe, executor, workers, retries, query or {}, progress, batch, echo, opts,
                            no_keep_types)


def _check_submit_command(config) -> None:
    """Fail early, with a message, when a batch-system config is used where its submit command is missing."""
    import shutil
    for ex in config.executors:
        provider = getattr(ex, "provider", None)
        if type(provider).__name__ == "SlurmProvider" and shutil.which("sbatch") is None:
            raise WorkflowError("this Parsl config submits Slurm jobs but `sbatch` is not on PATH: run `twinkles "
                                "run --executor slurm` on the cluster's login node (or use --executor local)")


def _orchestrate(repo, run, pipe, executor, workers, retries, query, progress, batch, echo, opts,
                 no_keep_types=()) -> RunSummary:
    store = JobStore(repo, run)
    previous = store.previous_states()
    run_dir = repo.root / "runinfo"
    config, n_workers, isolated = build_parsl_config(executor, run_dir, workers, opts["cluster"])
    if opts["limits"] and not isolated:
        raise WorkflowError("--job-memory/--job-time need worker processes; this config runs jobs in threads")
    _check_submit_command(config)
    label = executor if executor in EXECUTORS else str(Path(executor).resolve())
    configs = {s.name: _config_dict(s.config) for s in pipe.stages}
    before = store.previous_configs()
    store.start_invocation(pipe.name, pipe.names, pipe.missing, label, n_workers, configs)
    summary = RunSummary(run, pipe.name, pipe.names, pipe.missing, {}, workers=n_workers,
                         invocation=store.invocation)
    for name, cfg in configs.items():
        old = before.get(name)
        if old is not None and old != cfg:
            changed = sorted(k for k in set(old) | set(cfg) if old.get(k) != cfg.get(k))
            summary.notes.append(f"the config of {name} changed since the last run of {run} ({', '.join(changed)}): "
                                 "jobs done before keep the old one; use --run NEW to redo them all")
    if pipe.missing:
        summary.notes.append(f"not implemented yet (skipped): {', '.join(pipe.missing)}")
    for stage, items in pipe.blocked_inputs.items():
        what = ", ".join(f"{dt} (made by {maker})" for dt, maker in items)
        summary.notes.append(f"{stage} reads {what}: only inputs already in the repository can be used")
    input_runs = [r for r in INPUT_RUNS if r != run]
    butler_runs = [run] + input_runs

    def discover(spec):
        return find_quanta(repo, spec.module, query, butler_runs)

    t0 = time.time()
    status, message = "finished", ""
    dfk = graph = bar = None
    try:
        graph = JobGraph(pipe, discover, lambda stage, key: previous.get((stage, key)), query)
        store.add_pending(graph.take_new_jobs())
        summary.resumed = sum(1 for j in graph.jobs() if j.resumed)
        if graph.finished:
            echo(f"nothing to do: {summary.resumed} job(s) already done" if summary.resumed else
                 "nothing to do: no quanta (are there inputs in the repository? see `twinkles status`)")
        else:
            from parsl.app.app import python_app
            from parsl.dataflow.dflow import DataFlowKernel

            if summary.resumed:
                echo(f"resuming run {run}: {summary.resumed} job(s) already done")
            dfk = DataFlowKernel(config)
            app = python_app(execute_batch, data_flow_kernel=dfk)
            bar = _progress_bar(progress, graph)
            remover = IntermediateRemover(repo, store, graph, pipe, no_keep_types) if no_keep_types else None
            blocks = _BlockRecorder(dfk, store)
            _loop(repo, run, input_runs, graph, store, app, n_workers, isolated, retries, batch, bar, remover, opts,
                  blocks)
    except KeyboardInterrupt:
        status, message = "interrupted", "interrupted by the user"
        raise
    except BaseException as exc:
        status, message = "failed", f"{type(exc).__name__}: {exc}"
        raise
    finally:
        if bar is not None:
            bar.close()
        if dfk is not None:
            try:
                dfk.cleanup()
                _BlockRecorder(dfk, store).record(final=True)
            except Exception as exc:  # noqa: BLE001 - never hide why the run stopped
                if status == "finished":
                    raise
                echo(f"warning: stopping Parsl after the failure also failed ({type(exc).__name__}: {exc})")
        summary.wall_s = time.time() - t0
        summary.counts = graph.counts() if graph is not None else {}
        summary.failures = [(j.label, j.error, log_relpath(run, j.stage, j.key, j.attempt))
                            for j in (graph.jobs() if graph is not None else []) if j.status == "failed"]
        for name, st in (graph.stages.items() if graph is not None else []):
            if st.planned and not st.jobs:
                blocked = pipe.blocked_inputs.get(name)
                why = (f"its input {blocked[0][0]} is made by {blocked[0][1]}, not implemented yet" if blocked
                       else "no matching inputs")
                summary.notes.append(f"{name}: no quanta ({why})")
        if no_keep_types and graph is not None and status == "finished":
            remover = IntermediateRemover(repo, store, graph, pipe, no_keep_types)
            remover.sweep(graph.jobs())  # (also what an earlier, interrupted invocation had left)
        if no_keep_types and graph is not None:
            usage = repo.disk_usage(run)["removed"]
            gone = {t: usage[t] for t in no_keep_types if t in usage}
            if gone:
                summary.notes.append("intermediates removed once read (--no-keep): " + ", ".join(
                    f"{t} {u['files']} file(s), {u['bytes'] / 1e6:.1f} MB" for t, u in gone.items()))
        if status == "finished" and not summary.ok:
            message = f"{summary.n_failed} failed, {summary.n_skipped} skipped-upstream"
        store.end_invocation(status, message)
    return summary


def _progress_bar(progress, graph):
    from tqdm import tqdm
    disable = {True: False, None: None}.get(progress, True)  # None: only on a terminal
    return tqdm(total=graph.n_total, initial=graph.n_settled, unit="job", desc="twinkles run", disable=disable,
                dynamic_ncols=True, file=sys.stderr)


def resolve_no_keep(pipe, names) -> list[str]:
    """Dataset types named by ``--no-keep`` (stage names stand for all their outputs); each must be made by a
    stage of the pipeline and read by another, else there would be nothing to wait for."""
    from ..repo.datasets import DATASET_TYPES
    if isinstance(names, str):
        names = [names]
    out = []
    for name in [n.strip() for item in names for n in str(item).split(",") if n.strip()]:
        by_stage = {s.name: s for s in pipe.stages}
        types = list(by_stage[name].outputs) if name in by_stage else [name]
        for t in types:
            if t not in DATASET_TYPES:
                raise WorkflowError(f"--no-keep {name}: neither a stage of pipeline {pipe.name} "
                                    f"({', '.join(pipe.names)}) nor a dataset type")
            makers = [s.name for s in pipe.stages if t in s.outputs]
            readers = [s.name for s in pipe.stages if s.producers.get(t) in makers and t in s.inputs]
            if not makers:
                raise WorkflowError(f"--no-keep {name}: {t} is not made by any stage of pipeline {pipe.name}; "
                                    "only outputs of the run can be removed")
            if not readers:
                if name in by_stage:
                    continue  # a stage's output nobody in this pipeline reads (e.g. its metadata): kept
                raise WorkflowError(f"--no-keep {name}: no stage of pipeline {pipe.name} reads {t}; it is a "
                                    "final product of this pipeline and is kept")
            if t not in out:
                out.append(t)
    return out


class IntermediateRemover:
    """Removes intermediate datasets (``twinkles run --no-keep``) once every job that reads them is done.

    The job graph says who reads what: a dataset of type T made by job P is read by the jobs linked to P of the
    stages whose inputs include T (:attr:`~twinkles.workflow.graph.Job.readers`). When all those stages are
    linked (their jobs known) and every reader of P is done, P's outputs of type T are removed: registry rows
    and files in one transaction (:meth:`~twinkles.repo.Repository.remove_datasets`). A failed or skipped reader
    keeps them (a later run retries it). A later run that needs them again (a reader redone, a new stage)
    does P again (the graph revives it)."""

    def __init__(self, repo, store, graph, pipe, types):
        self.repo, self.store, self.graph = repo, store, graph
        self.types = list(types)
        self.makers = {t: {s.name for s in pipe.stages if t in s.outputs} for t in self.types}
        self.readers = {t: {s.name for s in pipe.stages if t in s.inputs and s.producers.get(t) in self.makers[t]}
                        for t in self.types}

    def after(self, settled) -> None:
        """Jobs just finished: their upstream jobs may now have been read by all their readers."""
        ups = {id(u): u for job in settled for us in job.upstream.values() for u in us}
        self.sweep(list(ups.values()))

    def sweep(self, jobs) -> None:
        remove, owners = [], []
        for job in jobs:
            if job.status != "done":
                continue
            types = [t for t in self.types if job.stage in self.makers[t] and t not in job.outputs_removed
                     and self._all_read(job, t)]
            if not types:
                continue
            refs = [r for r in self.store.outputs_of(job.stage, job.key) if r.dataset_type in types]
            if refs:
                remove.extend(refs)
                owners.append((job, {r.dataset_type for r in refs}))
        if remove:
            self.repo.remove_datasets(remove, reason="intermediate (--no-keep): every job reading it is done")
            for job, types in owners:
                job.outputs_removed = tuple(sorted(set(job.outputs_removed) | types))

    def _all_read(self, job, dataset_type) -> bool:
        stages = self.readers[dataset_type]
        if not all(self.graph.stages[s].linked for s in stages):
            return False
        readers = [r for r in job.readers if r.stage in stages]
        return bool(readers) and all(r.status == "done" for r in readers)


class _BlockRecorder:
    """Records the blocks (batch jobs) of the executors that submit to a batch system, every BLOCK_RECORD_S.

    Reads only Parsl's public executor interface: ``blocks_to_job_id`` and ``status_facade`` (the states its
    poller last got from the provider, e.g. squeue/sacct), so recording costs no batch-system command."""

    def __init__(self, dfk, store):
        self.store = store
        self.executors = {label: ex for label, ex in dfk.executors.items()
                          if getattr(ex, "provider", None) is not None and hasattr(ex, "blocks_to_job_id")
                          and type(ex.provider).__name__ != "LocalProvider"}
        self.last = 0.0

    def record(self, final: bool = False) -> None:
        if not self.executors or (not final and time.monotonic() - self.last < BLOCK_RECORD_S):
            return
        self.last = time.monotonic()
        for label, ex in self.executors.items():
            states = dict(ex.status_facade)
            blocks = {}
            for block, job_id in dict(ex.blocks_to_job_id).items():
                st = states.get(str(block))
                state = st.state.name.lower() if st is not None else "submitted"
                if final and state in ("running", "pending", "submitted"):
                    state = "scaled_in"  # the executor stopped, cancelling its blocks
                message = (st.message or None) if st is not None else None
                blocks[str(block)] = (job_id, state, message)
            self.store.record_blocks(label, blocks)


def _loop(repo, run, input_runs, graph, store, app, n_workers, isolated, retries, fixed_batch, bar,
          remover=None, opts=None, blocks=None) -> None:
    opts = opts or {"limits": {}, "retry_exceeded": False}
    inflight: dict = {}
    est = _Estimator()
    max_inflight = max(2, 2 * n_workers)
    orchestrator = (socket.gethostname(), os.getpid())

    def batch_size(stage: str) -> int:
        if fixed_batch:
            return fixed_batch
        mean = est.mean(stage)
        if mean is None:
            return 1
        balance = max(1, len(graph.ready) // (2 * n_workers))  # keep every worker busy to the end
        return int(max(1, min(MAX_BATCH, balance, TARGET_TASK_SECONDS // max(mean, 1e-4))))

    while True:
        while graph.ready and len(inflight) < max_inflight:
            first = graph.ready.popleft()
            jobs = [first]
            size = batch_size(first.stage)
            while len(jobs) < size and graph.ready and graph.ready[0].stage == first.stage:
                jobs.append(graph.ready.popleft())
            for j in jobs:
                j.attempts += 1
                j.attempt += 1
                j.status = "running"
            store.mark_running(jobs)
            specs = [{"stage": j.stage, "module": graph.stages[j.stage].spec.module_name, "data_id": j.data_id,
                      "overrides": graph.stages[j.stage].spec.overrides, "attempt": j.attempt,
                      "log_path": log_relpath(run, j.stage, j.key, j.attempt),
                      **({"limits": opts["limits"][j.stage]} if j.stage in opts["limits"] else {})} for j in jobs]
            inflight[app(str(repo.root), run, input_runs, specs, isolated, orchestrator)] = jobs
        if not inflight:
            break
        finished, _ = cf.wait(list(inflight), timeout=1.0, return_when=cf.FIRST_COMPLETED)
        for fut in finished:
            jobs = inflight.pop(fut)
            _collect(repo, run, graph, store, jobs, fut, retries, est, opts["retry_exceeded"])
            if remover is not None:
                remover.after([j for j in jobs if j.status == "done"])
        if blocks is not None:
            blocks.record()
        new = graph.take_new_jobs()
        store.add_pending(new)
        skipped = graph.take_changed()
        store.mark_skipped(skipped)
        if bar is not None:
            bar.total, bar.n = graph.n_total, graph.n_settled
            bar.set_postfix_str(f"running {sum(len(v) for v in inflight.values())}, failed {graph.n_failed}",
                                refresh=False)
            bar.refresh()


def _salvage_log(path: Path, error: str) -> bool:
    """A job whose worker died left its log under a temporary name: keep it under its final name, with why."""
    tmps = sorted(path.parent.glob(f"{path.name}{TMP_MARKER}*"), key=lambda p: p.stat().st_mtime)
    if not tmps:
        return False
    with open(tmps[-1], "a") as f:
        f.write(f"# {error}\n")
    os.replace(tmps[-1], path)
    return True


def _collect(repo, run, graph, store, jobs, fut, retries, est, retry_exceeded: bool = False) -> None:
    try:
        results = list(fut.result())
        lost = ""
    except Exception as exc:  # noqa: BLE001 - the worker (not the stage) failed: lost worker, killed by OOM...
        results, lost = [], f"{type(exc).__name__}: {exc}"
    while len(results) < len(jobs):
        job = jobs[len(results)]
        error = f"worker lost before the job finished (killed, e.g. out of memory?){': ' + lost if lost else ''}"
        log = log_relpath(run, job.stage, job.key, job.attempt)
        results.append({"status": "failed", "outputs": [], "error": error[:1000],
                        "log_path": log if _salvage_log(repo.root / log, error) else None})
    done_refs = [ref for res in results if res["status"] == "done" for ref in JobStore.refs_of(res)]
    try:
        repo.register(done_refs)
    except RepositoryError:
        for res in results:  # isolate the job whose outputs cannot be registered
            if res["status"] == "done":
                try:
                    repo.register(JobStore.refs_of(res))
                except RepositoryError as exc:
                    res.update(status="failed", error=str(exc))
    items, settle = [], []
    for job, res in zip(jobs, results):
        if res.get("wall_s") is not None:
            est.add(job.stage, res["wall_s"])
        if res["status"] == "done":
            items.append((job, res, "done"))
            settle.append((job, "done", ""))
        elif job.attempts <= retries and (retry_exceeded or not res.get("limit")):
            items.append((job, res, "pending"))  # a retry follows
            job.error = res.get("error", "")
            graph.requeue(job)
        else:
            items.append((job, res, "failed"))
            settle.append((job, "failed", res.get("error", "")))
    store.record_results(items)
    for job, status, error in settle:
        graph.settle(job, status, error)
