"""What runs on a worker: one batch of jobs, each measured on its own (wall, CPU, peak RSS) and logged.

A job never touches the registry: it runs the stage through :func:`twinkles.stages.runner.run_quantum_once`
(a :class:`~twinkles.repo.QuantumButler` writing files atomically), and returns the refs it wrote with its
measurements; the orchestrator registers them. Any exception of the stage becomes a ``failed`` result with its
message (the traceback goes to the job's log), so one bad quantum never takes its batch or its worker down.

Per-job measurements, not per worker lifetime:

* CPU time: the worker process's CPU time (user + system, all its threads) across the job. A Parsl
  HighThroughputExecutor worker runs one task at a time, so this is the job's. In the thread executor, jobs
  share a process: CPU time is then the calling thread's (``time.thread_time``), which misses threads the job
  starts itself.
* CPU wait: time the job was ready to run but the CPU was taken by another process (Linux schedstat), to
  tell a busy shared machine from an inefficient engine.
* Peak RSS: Linux's high-water mark VmHWM, reset before each job by writing 5 to ``/proc/self/clear_refs``.
  In the thread executor the mark is the process's (shared by concurrent jobs), without reset.

Logs: ``REPO/logs/<run>/<stage>/<stage>_<dataId>_a<attempt>.log`` written under a temporary name and renamed
when the job ends (a killed job leaves a temporary that ``Repository.check(fix=True)`` removes).

Limits (``spec["limits"]`` = {memory_bytes, time_s}, see :mod:`twinkles.workflow.limits`): the job then runs in
a child process forked by the worker, in its own process group; the worker polls the child's resident memory
(VmRSS) and its wall time every :data:`POLL_S` and, past a limit, reads its peak (VmHWM), kills the group and
returns a ``failed`` result with ``limit`` set ("memory" or "time") and the reason as error, e.g. "exceeded memory
limit 4.0 GB (peak 4.3 GB)". The worker itself is untouched and takes its next job. The measurements (CPU, peak
RSS) are the child's, as they are the worker's without limits.

Each result also carries ``block``: the batch-system job the worker runs in (``SLURM_JOB_ID``), else None.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import logging
import os
import secrets
import select
import signal
import socket
import sys
import threading
import time
import traceback
from pathlib import Path

__all__ = ["execute_batch", "execute_job", "log_relpath", "reset_peak_rss", "peak_rss_mb", "worker_block"]

_TMP_MARKER = ".tmp-"  # == twinkles.repo.storage.TMP_MARKER (check(fix=True) removes leftovers)
#: seconds between two looks at a limited job's memory and time
POLL_S = 0.05
#: environment variables naming the batch-system job a worker runs in (the block), first found wins
BLOCK_VARIABLES = ("SLURM_JOB_ID",)


def worker_block() -> str | None:
    """The batch-system job id this process runs in (a Slurm job: a Parsl block), else None."""
    for name in BLOCK_VARIABLES:
        if os.environ.get(name):
            return os.environ[name]
    return None


def log_relpath(run: str, stage: str, data_key: str, attempt: int) -> str:
    """Log path relative to the repository; data ID values are validated integers/bands, so safe in a name."""
    stem = data_key.replace("=", "").replace(",", "_") or "all"
    return f"logs/{run}/{stage}/{stage}_{stem}_a{attempt}.log"


def reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def runqueue_wait_s() -> float:
    """Seconds this thread has spent runnable but waiting for a CPU (Linux schedstat), else 0.

    The difference across a job is the time other processes took the CPU from it: on a shared machine this,
    not the engine, is what keeps CPU / wall below 1.
    """
    try:
        with open("/proc/thread-self/schedstat") as f:
            return int(f.read().split()[1]) * 1e-9
    except (OSError, IndexError, ValueError):
        return 0.0


def peak_rss_mb() -> float:
    """Peak resident set size (MiB) since the last reset (VmHWM), else of the process lifetime."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024.0 * 1024.0) if sys.platform == "darwin" else rss / 1024.0


class _ThreadFilter(logging.Filter):
    def __init__(self, ident: int):
        super().__init__()
        self.ident = ident

    def filter(self, record: logging.LogRecord) -> bool:
        return record.thread == self.ident


def _jsonable(meta) -> dict:
    try:
        return json.loads(json.dumps(meta, default=str, allow_nan=True))
    except (TypeError, ValueError):
        return {"repr": repr(meta)[:2000]}


def _orchestrator_alive(orchestrator: tuple[str, int] | None) -> bool:
    if not orchestrator or orchestrator[0] != socket.gethostname():
        return True
    try:
        os.kill(orchestrator[1], 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def execute_job(repo_root: str, run: str, input_runs: list[str], spec: dict, isolated: bool = True) -> dict:
    """Run one job described by ``spec`` = {stage, module, data_id, overrides, attempt, log_path[, limits]}.

    Returns {status, outputs (DatasetRef dicts), metadata, error, start, end, wall_s, cpu_s, peak_rss_mb, host,
    pid, log_path, block[, limit]}. ``isolated``: the job has the process to itself (HTEX worker): its
    stdout/stderr and all logging go to the job log, CPU and peak RSS are the process's. With ``limits``
    (memory_bytes, time_s; either may be None) the job runs in a watched child process (module doc).
    """
    limits = spec.get("limits") or {}
    if limits.get("memory_bytes") or limits.get("time_s"):
        if not isolated:
            raise ValueError("job limits need a process of their own per job (the local or a cluster executor), "
                             "not the thread executor")
        return _execute_limited(repo_root, run, input_runs, spec, limits)
    return _execute_job(repo_root, run, input_runs, spec, isolated)


def _proc_status_kb(pid: int, fields: tuple[str, ...]) -> dict[str, int]:
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key = line.split(":", 1)[0]
                if key in fields:
                    out[key] = int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return out


def _proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process and its waited-for children (/proc/PID/stat), else 0."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def _execute_limited(repo_root: str, run: str, input_runs: list[str], spec: dict, limits: dict) -> dict:
    """Run the job in a forked child, killed (with its process group) when it goes over a limit."""
    from .limits import format_duration, format_memory

    mem_limit, time_limit = limits.get("memory_bytes"), limits.get("time_s")
    # the stage's modules imported here, in the worker, once: each child inherits them instead of importing them
    # again (~1 s of CPU a job); the time it takes is the job's, as it is without limits (a first job pays it)
    t_import, c_import = time.time(), time.process_time()
    with contextlib.suppress(Exception):  # an import error is the job's: it is raised again in the child
        _import_stage(spec["module"])
    import_wall, import_cpu = time.time() - t_import, time.process_time() - c_import
    read_fd, write_fd = os.pipe()
    start = time.time()
    pid = os.fork()
    if pid == 0:  # the child: run the job, send its result, leave without the parent's exit handlers
        code = 0
        try:
            os.close(read_fd)
            os.setpgid(0, 0)
            data = json.dumps(_execute_job(repo_root, run, input_runs, spec, True), default=str).encode()
            with os.fdopen(write_fd, "wb") as w:
                w.write(data)
        except BaseException:  # noqa: BLE001 - whatever happens, the child must not return into the worker
            code = 1
        finally:
            os._exit(code)
    os.close(write_fd)
    chunks, exceeded, peak_kb, cpu_s = [], None, 0, 0.0
    try:
        while True:
            ready, _, _ = select.select([read_fd], [], [], POLL_S)
            if ready:
                chunk = os.read(read_fd, 1 << 16)
                if not chunk:
                    break  # the child closed the pipe: done (or died)
                chunks.append(chunk)
                continue
            elapsed = time.time() - start
            st = _proc_status_kb(pid, ("VmRSS", "VmHWM"))
            if mem_limit and st.get("VmRSS", 0) * 1024 > mem_limit:
                peak_kb = max(st.get("VmHWM", 0), st.get("VmRSS", 0))
                exceeded = ("memory", f"exceeded memory limit {format_memory(mem_limit)} (peak "
                                      f"{format_memory(peak_kb * 1024)})")
            elif time_limit and elapsed > time_limit:
                peak_kb = st.get("VmHWM", 0)
                exceeded = ("time", f"exceeded time limit {format_duration(time_limit)} (ran "
                                    f"{format_duration(elapsed)})")
            if exceeded:
                cpu_s = _proc_cpu_s(pid)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
                break
    finally:
        os.close(read_fd)
        _, wait_status = os.waitpid(pid, 0)
    if exceeded is None and chunks:
        try:
            result = json.loads(b"".join(chunks))
        except ValueError:
            result = None
        if result is not None:
            result.update(start=result["start"] - import_wall, wall_s=result["wall_s"] + import_wall,
                          cpu_s=result["cpu_s"] + import_cpu)
            return result
    end = time.time()
    kind, error = exceeded or ("", f"the job's process ended without a result (exit status "
                                   f"{os.waitstatus_to_exitcode(wait_status)}): see its log")
    log_rel = spec["log_path"]
    _finish_child_log(Path(repo_root) / log_rel, pid, error)
    result = {"status": "failed", "outputs": [], "metadata": {}, "error": error, "host": socket.gethostname(),
              "pid": pid, "log_path": log_rel, "block": worker_block(), "start": start, "end": end,
              "wall_s": end - start, "cpu_s": cpu_s, "peak_rss_mb": peak_kb / 1024.0, "cpu_wait_s": 0.0}
    if kind:
        result["limit"] = kind
    return result


def _import_stage(module_name: str):
    """The modules a job needs (the stage's, with its scientific stack), imported without cycle collections and
    then frozen (twinkles.startup)."""
    from ..startup import frozen_imports
    with frozen_imports():
        from ..repo import Repository  # noqa: F401
        from ..stages import apply_config_overrides  # noqa: F401
        from ..stages.runner import run_quantum_once  # noqa: F401

        return importlib.import_module(module_name)


def _finish_child_log(log_path: Path, pid: int, error: str) -> None:
    """The killed child left its log under a temporary name: append why it stopped, give it its final name."""
    tmps = sorted(log_path.parent.glob(f"{log_path.name}{_TMP_MARKER}{pid}-*"))
    if tmps:
        with open(tmps[-1], "a") as f:
            f.write(f"# failed: stopped by its worker: {error}\n# error: {error}\n")
        os.replace(tmps[-1], log_path)
    else:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.write_text(f"# failed: stopped by its worker: {error}\n")


def _execute_job(repo_root: str, run: str, input_runs: list[str], spec: dict, isolated: bool = True) -> dict:
    root = Path(repo_root)
    log_path = root / spec["log_path"]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = log_path.with_name(f"{log_path.name}{_TMP_MARKER}{os.getpid()}-{secrets.token_hex(4)}")
    logf = open(tmp, "w", buffering=1)
    host, pid = socket.gethostname(), os.getpid()
    did = " ".join(f"{k}={v}" for k, v in spec["data_id"].items()) or "(field)"
    logf.write(f"# twinkles job: stage {spec['stage']} {did} attempt {spec['attempt']} run {run}\n"
               f"# host {host} pid {pid} started {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n")
    handler = logging.StreamHandler(logf)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    if not isolated:
        handler.addFilter(_ThreadFilter(threading.get_ident()))
    root_logger = logging.getLogger()
    old_level = root_logger.level
    root_logger.addHandler(handler)
    if isolated and (root_logger.level > logging.INFO or root_logger.level == logging.NOTSET):
        root_logger.setLevel(logging.INFO)  # (in the thread executor the level is shared: left alone)

    result = {"status": "failed", "outputs": [], "metadata": {}, "error": "", "host": host, "pid": pid,
              "log_path": spec["log_path"], "block": worker_block()}
    rss_reset = reset_peak_rss() if isolated else False
    clock = time.process_time if isolated else time.thread_time
    start, cpu0, wait0 = time.time(), clock(), runqueue_wait_s()
    redirect = (contextlib.redirect_stdout(logf), contextlib.redirect_stderr(logf)) if isolated else ()
    try:
        with contextlib.ExitStack() as stack:
            for r in redirect:
                stack.enter_context(r)
            # imported here, in the measured time: a worker's first job pays for loading the stack (without
            # cycle collections walking it, then or in later jobs: twinkles.startup)
            from ..startup import frozen_imports
            with frozen_imports():
                from ..repo import Repository
                from ..stages import apply_config_overrides
                from ..stages.runner import run_quantum_once

                module = importlib.import_module(spec["module"])
            config = apply_config_overrides(module.Config(), spec.get("overrides") or {}, spec["stage"])
            repo = Repository(root, durable_writes=False)  # no fsync per file: see storage.atomic_write
            outputs, meta = run_quantum_once(repo, module, spec["data_id"], config, run, input_runs)
        result.update(status="done", outputs=[r.to_dict() for r in outputs], metadata=_jsonable(meta))
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - a failing stage is a failed job, recorded
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        result["error"] = f"{type(exc).__name__}: {first}"[:1000]
        buf = io.StringIO()
        traceback.print_exc(file=buf)
        logf.write(buf.getvalue())
    end, cpu1, wait1 = time.time(), clock(), runqueue_wait_s()
    result.update(start=start, end=end, wall_s=end - start, cpu_s=cpu1 - cpu0, peak_rss_mb=peak_rss_mb(),
                  cpu_wait_s=wait1 - wait0)
    logf.write(f"# {result['status']} in {result['wall_s']:.3f} s wall, {result['cpu_s']:.3f} s CPU, peak RSS "
               f"{result['peak_rss_mb']:.1f} MiB{'' if rss_reset else ' (process peak, not reset per job)'}; "
               f"{result['cpu_wait_s']:.3f} s waiting for a CPU taken by other processes\n")
    if result["error"]:
        logf.write(f"# error: {result['error']}\n")
    root_logger.removeHandler(handler)
    if isolated:
        root_logger.setLevel(old_level)
    logf.close()
    os.replace(tmp, log_path)
    return result


def execute_batch(repo_root: str, run: str, input_runs: list[str], specs: list[dict], isolated: bool = True,
                  orchestrator: tuple[str, int] | None = None) -> list[dict]:
    """Run a batch of jobs one after the other (the Parsl app). Stops early, returning what it did, if the
    orchestrator on this host has died (a killed ``twinkles run`` should not leave workers computing)."""
    out = []
    for spec in specs:
        if not _orchestrator_alive(orchestrator):
            break
        out.append(execute_job(repo_root, run, input_runs, spec, isolated))
    return out
