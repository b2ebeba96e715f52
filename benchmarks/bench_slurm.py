"""The Slurm executor against the local one on the same field: time from `twinkles run` to the first job, and the
engine's overhead per job. Starts the one-node test Slurm cluster of the tests (needs root and Debian's slurm-wlm
and munge, as the tests do).

    .venv/bin/python benchmarks/bench_slurm.py [--repeats 3] [--preset tiny]

For each executor, in turn and `--repeats` times (a fresh copy of the simulated field each time), it runs
`twinkles run COPY --executor local --workers 2` or `--executor slurm` (2 blocks of 1 core: the same 2 worker
slots) as a command and reports, from the job records:

* first job: seconds from the command's start to the start of its first job (for Slurm: sbatch, the scheduler,
  the block's start-up, the worker pool connecting back);
* overhead per job: (wall x slots - sum of job wall times) / jobs, wall from the command's start to its end,
  i.e. the worker-slot time each job costs beyond its own run (start-up, queueing, transport, recording, stop).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "workflow"))

from slurm_cluster import SlurmCluster, missing_requirements  # noqa: E402

SLURM_ENV = {"TWINKLES_SLURM_ADDRESS": "127.0.0.1", "TWINKLES_SLURM_HEARTBEAT": "2", "TWINKLES_SLURM_EXCLUSIVE": "0",
             "TWINKLES_SLURM_CORES_PER_NODE": "1", "TWINKLES_SLURM_MAX_BLOCKS": "2",
             "TWINKLES_SLURM_WALLTIME": "00:10:00"}


def one_run(pristine: Path, work: Path, executor: str, env: dict) -> dict:
    repo = work / f"run-{executor}-{time.time_ns()}"
    shutil.copytree(pristine, repo)
    args = ["--executor", "local", "--workers", "2"] if executor == "local" else ["--executor", "slurm"]
    t0 = time.time()
    subprocess.run([str(Path(sys.executable).parent / "twinkles"), "run", str(repo), *args, "--no-progress"],
                   env=env, check=True, stdout=subprocess.DEVNULL)
    t1 = time.time()
    with sqlite3.connect(repo / "registry.sqlite3") as conn:
        rows = conn.execute("SELECT start, wall_s FROM jobs WHERE status='done'").fetchall()
    shutil.rmtree(repo)
    wall = t1 - t0
    return {"first_s": min(r[0] for r in rows) - t0, "wall_s": wall, "jobs": len(rows),
            "job_wall_s": sum(r[1] for r in rows), "overhead_s": (wall * 2 - sum(r[1] for r in rows)) / len(rows)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--preset", default="tiny")
    args = ap.parse_args()
    missing = missing_requirements()
    if missing:
        print("skipped: a test Slurm cluster needs " + "; ".join(missing))
        return 0
    from twinkles.sim.simulate import simulate_field
    from twinkles.stages.runner import run_stage
    with tempfile.TemporaryDirectory(prefix="bench-slurm-") as tmp:
        work = Path(tmp)
        simulate_field(work / "pristine", preset=args.preset, seed=1)
        shutil.copytree(work / "pristine", work / "warmup")  # numba's cache filled before anything is timed
        run_stage(work / "warmup", "process_eimage", {"visit": 840})
        cluster = SlurmCluster(work / "slurm", cpus=2).start()
        try:
            env = {**os.environ, **SLURM_ENV, "SLURM_CONF": str(cluster.conf),
                   "TWINKLES_SLURM_PARTITION": cluster.partition}
            results: dict[str, list] = {"local": [], "slurm": []}
            for _ in range(args.repeats):
                for executor in results:
                    results[executor].append(one_run(work / "pristine", work, executor, env))
                    while cluster.jobs():  # the next run starts on an idle node
                        time.sleep(0.2)
        finally:
            cluster.stop()
    print(f"{args.preset} field, {results['local'][0]['jobs']} jobs, 2 worker slots, {args.repeats} runs each "
          "(median, [min-max])")
    for executor, runs in results.items():
        line = [f"{executor:>6}:"]
        for key, label in (("first_s", "first job"), ("wall_s", "wall"), ("job_wall_s", "sum of job walls"),
                           ("overhead_s", "overhead per job")):
            vals = [r[key] for r in runs]
            line.append(f"{label} {statistics.median(vals):.2f} s [{min(vals):.2f}-{max(vals):.2f}]")
        print("  ".join(line))
    loc, slu = (statistics.median(r["overhead_s"] for r in results[e]) for e in ("local", "slurm"))
    print(f"slurm - local overhead per job: {slu - loc:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
