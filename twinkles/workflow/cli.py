"""Verbs of the workflow engine: run, status, serve, report (registered into the ``twinkles`` command)."""

from __future__ import annotations

import sys

__all__ = ["register", "CLUSTER_FLAGS"]

#: flags of `twinkles run` passed to a Slurm config (generic_slurm.py), by setting name
CLUSTER_FLAGS = ("partition", "account", "nodes_per_block", "max_blocks", "walltime", "worker_init")


def _overrides(items):
    from ..stages import parse_overrides
    return parse_overrides(items)


def cmd_run(args) -> int:
    from ..errors import UserError
    from ..repo import parse_id_args
    from .execute import WorkflowError, run_pipeline

    query = parse_id_args(args.id or [])
    overrides = _overrides(args.config)
    from ..startup import frozen_imports
    from .pipeline import resolve_pipeline
    with frozen_imports():  # the stages' scientific stack and Parsl, frozen once imported (see startup.py)
        import parsl.dataflow.dflow  # noqa: F401
        resolve_pipeline(args.pipeline, overrides)
    try:
        s = run_pipeline(args.repo, pipeline=args.pipeline, executor=args.executor, workers=args.workers,
                         retries=args.retries, run=args.run, query=query, overrides=overrides,
                         progress=None if not args.no_progress else False, batch=args.batch,
                         no_keep=args.no_keep, job_memory=args.job_memory, job_time=args.job_time,
                         retry_exceeded=args.retry_exceeded, cluster={k: getattr(args, k) for k in CLUSTER_FLAGS})
    except WorkflowError as exc:
        raise UserError(str(exc)) from None
    for note in s.notes:
        print(f"note: {note}")
    print(f"run {s.run} ({s.pipeline}: {', '.join(s.stages)}) with {s.workers} workers, {s.wall_s:.1f} s:")
    for stage, c in s.counts.items():
        extra = f", {c['skipped-upstream']} skipped-upstream" if c["skipped-upstream"] else ""
        print(f"  {stage}: {c['done']} done, {c['failed']} failed{extra} (of {sum(c.values())})")
    if s.resumed:
        print(f"  ({s.resumed} job(s) were already done by an earlier run)")
    if s.failures:
        print(f"{len(s.failures)} job(s) failed:", file=sys.stderr)
        for label, error, log in s.failures[:30]:
            print(f"  {label}: {error}\n      log: {args.repo}/{log}", file=sys.stderr)
        if len(s.failures) > 30:
            print(f"  ... and {len(s.failures) - 30} more (twinkles status {args.repo})", file=sys.stderr)
        print("what to do: read the logs above; fix or remove the bad inputs, or change the configuration "
              f"(--config), then `twinkles run {args.repo}` again: it redoes only the failed and skipped jobs. "
              f"Report: `twinkles report {args.repo}`.", file=sys.stderr)
    return 0 if s.ok else 1


def cmd_status(args) -> int:
    from .status import collect_status, format_status
    print(format_status(collect_status(args.repo, args.run)))
    return 0


def cmd_serve(args) -> int:
    from .serve import serve
    try:
        serve(args.repo, port=args.port, run=args.run, refresh=args.refresh)
    except OSError as exc:
        from ..errors import UserError
        raise UserError(f"cannot serve on 127.0.0.1:{args.port} ({exc}); choose another --port") from None
    return 0


def cmd_report(args) -> int:
    from ..errors import UserError
    from .report import ReportError, write_report
    try:
        path = write_report(args.repo, args.run)
    except ReportError as exc:
        raise UserError(str(exc)) from None
    import json
    summary = json.loads((path.parent / "summary.json").read_text())
    eff = summary["cpu_efficiency"]
    print(f"processed {summary['images']} images in {summary['cpu_hours']:.3g} CPU hours at "
          f"{100 * float(eff):.1f}% efficiency")
    print(f"report: {path}")
    return 0


def register(subparsers) -> None:
    from .execute import EXECUTORS
    from .pipeline import PIPELINES

    s = subparsers.add_parser("run", help="run (or resume) the pipeline on a repository with Parsl")
    s.add_argument("repo")
    s.add_argument("--pipeline", default="l2",
                   help=f"{' | '.join(PIPELINES)} or a comma-separated list of stages (default l2)")
    s.add_argument("--executor", default="local",
                   help=f"{' | '.join(EXECUTORS)} | CONFIG.py (a file defining make_config(run_dir, workers)); "
                        "default local: Parsl HighThroughputExecutor on this machine; slurm: any Slurm cluster "
                        "(see the Slurm flags); perlmutter: NERSC Perlmutter CPU nodes")
    s.add_argument("--workers", type=int, default=None, help="worker processes (default: the number of cores)")
    s.add_argument("--retries", type=int, default=1, help="retries of a failing job before it is failed (default 1)")
    s.add_argument("--id", nargs="*", help="restrict to a data ID query, e.g. visit=840..879")
    s.add_argument("--config", action="append", help="stage config override, e.g. process_eimage.x.y=5")
    s.add_argument("--run", help="output run (default: output_run in twinkles.yaml, else runs/l2)")
    s.add_argument("--batch", type=int, default=None,
                   help="quanta per Parsl task (default: adaptive, ~1 s of work per task)")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.add_argument("--no-keep", action="append", default=None, metavar="STAGE|DATASET_TYPE",
                   help="intermediate outputs (of a stage, or one dataset type) to remove once every job reading "
                        "them is done, e.g. --no-keep warp (default: storage.no_keep in twinkles.yaml)")
    g = s.add_argument_group("per-job limits (also per stage in twinkles.yaml, section workflow)")
    g.add_argument("--job-memory", help="stop and fail a job whose memory (RSS) goes over this, e.g. 4GB, 500MB")
    g.add_argument("--job-time", help="stop and fail a job running longer than this, e.g. 30m, 90s, 2h, HH:MM:SS")
    g.add_argument("--retry-exceeded", action="store_true",
                   help="retry jobs stopped at a limit too (default: they fail at once; other failures are retried)")
    g = s.add_argument_group("Slurm (--executor slurm; else from TWINKLES_SLURM_* variables)")
    g.add_argument("--partition", help="Slurm partition (default: the cluster's default)")
    g.add_argument("--account", help="Slurm account charged (default: yours)")
    g.add_argument("--nodes-per-block", type=int, help="nodes per Slurm job (default 1)")
    g.add_argument("--max-blocks", type=int, help="Slurm jobs at once (default 4)")
    g.add_argument("--walltime", help="time limit per Slurm job, HH:MM:SS (default 01:00:00)")
    g.add_argument("--worker-init", help="shell lines run before the workers start (default: put this Python's "
                                         "bin folder on PATH)")
    s.set_defaults(func=cmd_run)

    s = subparsers.add_parser("status", help="progress per stage and failures of the latest run")
    s.add_argument("repo")
    s.add_argument("--run", help="run to show (default: the latest)")
    s.set_defaults(func=cmd_status)

    s = subparsers.add_parser("serve", help="read-only status page on http://127.0.0.1:PORT/")
    s.add_argument("repo")
    s.add_argument("--port", type=int, default=8765)
    s.add_argument("--run", help="run to show (default: the latest)")
    s.add_argument("--refresh", type=float, default=5.0, help="page reload period, seconds")
    s.set_defaults(func=cmd_serve)

    s = subparsers.add_parser("report", help="write REPO/report/index.html: throughput, efficiency, validation")
    s.add_argument("repo")
    s.add_argument("--run", help="run to report (default: the latest)")
    s.set_defaults(func=cmd_report)
