"""The default executor (Parsl HighThroughputExecutor on this machine): per-job CPU and memory, and resume after
the run is killed with SIGKILL mid-way (outputs byte-identical to an uninterrupted run)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
from wf_common import job_rows, make_repo

from twinkles.workflow import run_pipeline


def test_htex_measures_cpu_and_memory_per_job(tmp_path):
    repo = make_repo(tmp_path / "repo", [1, 2, 3, 4])
    cfg = {"wf_check.burn_s": "0.3", "wf_check.alloc_mb": "300", "wf_down.sleep_s": "0.3"}
    s = run_pipeline(repo.root, "wf_check,wf_down", executor="local", workers=2, overrides=cfg, progress=False)
    assert s.ok, s.failures
    rows = job_rows(repo)
    check = [r for r in rows if r["stage"] == "wf_check"]
    down = [r for r in rows if r["stage"] == "wf_down"]
    # each job ran in a worker process (not here), on 2 workers
    pids = {r["pid"] for r in rows}
    assert len(pids) <= 2 and os.getpid() not in pids
    for r in check:  # busy 0.3 s of CPU and 300 MiB touched: both seen in this job's record
        assert r["cpu_s"] >= 0.3
        assert r["peak_rss_mb"] >= 300
    for r in down:
        # asleep: little CPU for its wall time; and its peak RSS is its own, not the 300 MiB its worker reached
        # in an earlier job (a per-worker-lifetime peak would be >= 300)
        assert r["wall_s"] >= 0.3 and r["cpu_s"] < 0.5 * r["wall_s"]
        assert r["peak_rss_mb"] < min(c["peak_rss_mb"] for c in check) - 200
    assert all((repo.root / r["log_path"]).read_text().startswith("# twinkles job") for r in rows)
    assert (repo.root / "runinfo").is_dir()  # Parsl's run directory is in the repository, not the cwd


def _registered_files(repo, run="runs/l2"):
    with repo.read_only() as conn:
        rows = conn.execute("SELECT dataset_type, data_id, path FROM datasets WHERE run=? ORDER BY path",
                            (run,)).fetchall()
    return {(r["dataset_type"], r["data_id"]): (repo.root / r["path"]).read_bytes() for r in rows}


def _kill_orphan_workers(repo) -> None:
    """Parsl starts the worker pool in its own process group: it would exit by itself ~10 s after its run was
    killed (heartbeat); here the pool of this repository's killed run and its children are killed at once."""
    marker = str(repo.root / "runinfo")
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if "process_worker_pool" in cmd and marker in cmd:  # Parsl's worker pool
            try:
                for proc in p.children(recursive=True) + [p]:
                    proc.kill()
            except psutil.Error:
                pass


def test_sigkill_mid_run_then_resume_gives_identical_outputs(tmp_path):
    visits = list(range(1, 13))
    pipe = "wf_check,wf_down,wf_agg"
    cfg = ["--config", "wf_check.sleep_s=0.25", "--config", "wf_down.sleep_s=0.1"]
    reference = make_repo(tmp_path / "reference", visits)
    ref = run_pipeline(reference.root, pipe, executor="threads", workers=2, progress=False,
                       overrides={"wf_check.sleep_s": "0.25", "wf_down.sleep_s": "0.1"})
    assert ref.ok

    repo = make_repo(tmp_path / "killed", visits)
    cmd = [sys.executable, "-m", "twinkles.cli", "run", str(repo.root), "--pipeline", pipe, "--workers", "2",
           "--no-progress", *cfg]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 120
        done = 0
        while time.time() < deadline and proc.poll() is None:
            if (repo.root / "registry.sqlite3").exists():
                try:
                    done = sum(1 for r in job_rows(repo) if r["status"] == "done")
                except Exception:  # noqa: BLE001 - tables not created yet
                    done = 0
            if done >= 4:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        _kill_orphan_workers(repo)
    total = 2 * len(visits) + 1  # jobs; wf_check writes two datasets
    done = sum(1 for r in job_rows(repo) if r["status"] == "done")
    assert 4 <= done < total  # killed mid-way

    s = run_pipeline(repo.root, pipe, executor="local", workers=2, progress=False,
                     overrides={"wf_check.sleep_s": "0.25", "wf_down.sleep_s": "0.1"})
    assert s.ok and s.resumed >= 4
    assert sum(1 for r in job_rows(repo) if r["status"] == "done") == total
    got, want = _registered_files(repo), _registered_files(reference)
    assert set(got) == set(want) and len(want) == total + len(visits)
    for key in want:
        assert got[key] == want[key], key
    assert repo.check() == {"missing_files": 0, "damaged_files": 0, "damaged_inputs": 0, "temporary_files": 0}
    from twinkles.workflow.records import load_attempts, load_invocations
    from twinkles.workflow.status import collect_status
    assert collect_status(repo)["state"] == "finished"
    killed, resumed = load_invocations(repo, "runs/l2")
    assert killed["status"] == "interrupted" and resumed["status"] == "finished"
    # the killed invocation ends with its last recorded job, not when it was found dead
    assert killed["end"] == max(a["end"] for a in load_attempts(repo, "runs/l2") if a["invocation"] == killed["id"])


def test_job_whose_worker_dies_is_failed_and_the_run_goes_on(tmp_path):
    repo = make_repo(tmp_path / "repo", [1, 2, 3, 4])
    s = run_pipeline(repo.root, "wf_check,wf_down", executor="local", workers=2, retries=0, progress=False,
                     overrides={"wf_check.die_visits": "2"})  # the process exits at once, as if OOM-killed
    rows = {(r["stage"], r["visit"]): r for r in job_rows(repo)}
    assert rows[("wf_check", 2)]["status"] == "failed" and "worker lost" in rows[("wf_check", 2)]["error"]
    assert rows[("wf_down", 2)]["status"] == "skipped-upstream"
    assert all(rows[(st, v)]["status"] == "done" for st in ("wf_check", "wf_down") for v in (1, 3, 4))
    # the dead job's log is kept (what it wrote before dying, and why it ended)
    log = (repo.root / rows[("wf_check", 2)]["log_path"]).read_text()
    assert log.startswith("# twinkles job: stage wf_check visit=2") and "worker lost" in log
    assert s.n_failed == 1 and repo.check()["temporary_files"] == 0
