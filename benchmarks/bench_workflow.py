"""Workflow engine overhead (scheduling + recording) per job, measured with no-op stages; optionally the CPU
efficiency of a real run on the demo field.

    .venv/bin/python benchmarks/bench_workflow.py [--jobs 400] [--workers N] [--demo twinkles-demo]

Engine overhead per job = (wall x workers - sum of job wall times) / jobs: the worker-slot time each job costs
beyond its own run (Parsl start-up and shutdown, submission, result transport, registering outputs, writing the
job records), measured by the orchestrator's own records. The target is <= 50 ms per job. With --demo, runs
`twinkles run` (in a new run) + `twinkles report` on that repository and prints the report's CPU efficiency and
the time from the invocation's start to the first job on each worker.

This file is also the no-op stage ("bench_noop") the benchmark runs: workers import it by module name.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from twinkles.repo.datasets import DATASET_TYPES, register_dataset_type

if "bench_noop_out" not in DATASET_TYPES:
    register_dataset_type("bench_noop_out", ("visit", "detector"), "StructuredData")

# ------------------------------------------------------------------------------------- the no-op stage
QUANTUM = ("visit", "detector")
INPUTS = ("eimage",)
OUTPUTS = ("bench_noop_out",)


@dataclass
class Config:
    pass


def run_quantum(butler, data_id, config) -> dict:
    butler.put({"visit": int(data_id["visit"])}, "bench_noop_out", data_id)  # a tiny output, registered
    return {}


# ------------------------------------------------------------------------------------- the benchmark
def _make_repo(root: Path, n: int):
    import numpy as np

    from twinkles.image import Exposure
    from twinkles.repo import Repository

    repo = Repository.create(root)
    img = np.zeros((8, 8), np.float32)
    for v in range(n):
        repo.put(Exposure(img), "eimage", {"visit": v, "detector": 0})
    return repo


def _measure(root: Path, executor: str, workers: int, batch: int | None) -> dict:
    from twinkles.workflow import run_pipeline
    from twinkles.workflow.records import load_attempts, load_invocations

    from twinkles.repo import Repository
    import resource
    repo = Repository(root)
    r0s, r0c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    s = run_pipeline(root, "bench_noop", executor=executor, workers=workers, retries=0, progress=False,
                     batch=batch, run=f"bench/{executor}-{batch or 'auto'}", echo=lambda m: None)
    wall_outer = time.perf_counter() - t0
    r1s, r1c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_self = (r1s.ru_utime + r1s.ru_stime) - (r0s.ru_utime + r0s.ru_stime)
    cpu_children = (r1c.ru_utime + r1c.ru_stime) - (r0c.ru_utime + r0c.ru_stime)  # the interchange
    assert s.ok, s.failures
    run = f"bench/{executor}-{batch or 'auto'}"
    inv = load_invocations(repo, run)[-1]
    att = load_attempts(repo, run)
    wall = inv["end"] - inv["start"]
    first_job = min(a["start"] for a in att) - inv["start"]
    n = len(att)
    job_wall = sum(a["wall_s"] for a in att)
    return {"jobs": n, "wall": wall, "wall_outer": wall_outer, "job_wall_mean_ms": 1e3 * job_wall / n,
            "overhead_ms": 1e3 * (wall * inv["workers"] - job_wall) / n, "per_job_elapsed_ms": 1e3 * wall / n,
            "orchestrator_cpu_ms": 1e3 * cpu_self / n, "interchange_cpu_ms": 1e3 * cpu_children / n,
            "first_job_s": first_job}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=400)
    p.add_argument("--workers", type=int, default=None, help="default: the number of cores")
    p.add_argument("--demo", help="also run the pipeline on this (simulated) repository and report its efficiency")
    p.add_argument("--demo-runs", type=int, default=1, help="run the demo this many times (each in a new run)")
    args = p.parse_args()

    here = Path(__file__).resolve().parent
    os.environ["TWINKLES_STAGE_MODULES"] = ",".join(
        x for x in [os.environ.get("TWINKLES_STAGE_MODULES", ""), "bench_noop=bench_workflow"] if x)
    os.environ["PYTHONPATH"] = os.pathsep.join([str(here)] + [x for x in os.environ.get("PYTHONPATH", "").split(
        os.pathsep) if x])
    sys.path.insert(0, str(here))
    from twinkles.workflow.execute import available_cores

    workers = args.workers or available_cores()
    tmp = Path(tempfile.mkdtemp(prefix="bench_workflow_"))
    ok = True
    try:
        _make_repo(tmp / "repo", args.jobs)
        print(f"engine overhead with no-op stages: {args.jobs} jobs, {workers} workers "
              f"({available_cores()} cores)")
        print(f"{'executor':<9} {'batch':>6} {'wall s':>8} {'job ms':>8} {'elapsed/job ms':>15} "
              f"{'overhead/job ms':>16} {'orchestrator CPU/job ms':>24} {'interchange CPU/job ms':>23} "
              f"{'first job s':>12}")
        for executor, batch in (("local", None), ("local", 1), ("threads", None)):
            r = _measure(tmp / "repo", executor, workers, batch)
            print(f"{executor:<9} {batch or 'auto':>6} {r['wall']:>8.2f} {r['job_wall_mean_ms']:>8.2f} "
                  f"{r['per_job_elapsed_ms']:>15.2f} {r['overhead_ms']:>16.2f} {r['orchestrator_cpu_ms']:>24.2f} "
                  f"{r['interchange_cpu_ms']:>23.2f} {r['first_job_s']:>12.3f}")
            if executor == "local" and batch is None:
                ok = r["overhead_ms"] <= 50.0
                print(f"  -> default executor: {r['overhead_ms']:.1f} ms of worker-slot time per job beyond the job "
                      f"(target <= 50 ms): {'OK' if ok else 'ABOVE TARGET'}; ratio to target "
                      f"{r['overhead_ms'] / 50.0:.2f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    if args.demo:
        import json

        from twinkles.workflow import run_pipeline
        from twinkles.workflow.report import write_report
        from twinkles.repo import Repository
        from twinkles.workflow.records import load_attempts, load_invocations
        for i in range(args.demo_runs):
            run = f"bench/demo-{time.strftime('%Y%m%dT%H%M%S')}-{i}"  # a new run: every job is done again
            t0 = time.perf_counter()
            s = run_pipeline(args.demo, "l2", executor="local", workers=workers, progress=None, run=run)
            print(f"demo: {sum(c['done'] for c in s.counts.values())} jobs done, {s.n_failed} failed in "
                  f"{time.perf_counter() - t0:.1f} s (run {run})")
            index = write_report(args.demo, run)
            summary = json.loads((index.parent / "summary.json").read_text())
            eff = summary["cpu_efficiency"]
            repo = Repository(args.demo)
            inv = load_invocations(repo, run)[-1]
            starts = sorted({a["pid"]: a["start"] for a in sorted(load_attempts(repo, run),
                                                                  key=lambda a: -a["start"])}.values())
            firsts = ", ".join(f"{t - inv['start']:.2f}" for t in starts)
            print(f"demo: processed {summary['images']} images in {summary['cpu_hours']:.3g} CPU hours at "
                  f"{100 * eff:.1f}% efficiency ({100 * summary['cpu_efficiency_without_contention']:.1f}% without the "
                  f"{summary['cpu_wait_seconds']:.2f} s jobs waited for a CPU held by other processes); worker "
                  f"occupancy {100 * summary['occupancy']:.1f}%; "
                  f"invocation start -> first job on each worker {firsts} s; report {index}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
