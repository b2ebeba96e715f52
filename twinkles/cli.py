"""The ``twinkles`` command. Every verb is a thin call into the packages.

Verbs: simulate, ingest, stage, sql, check (here and in twinkles.sim.cli); run, status, serve, report
(twinkles.workflow.cli). Errors the user can fix are printed as one message and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

from .environment import ensure_env_bin_on_path, single_threaded_libraries
from .errors import UserError
from .startup import frozen_imports

__all__ = ["main", "build_parser"]


# ------------------------------------------------------------------------------------------ verbs
def cmd_ingest(args) -> int:
    from .repo.ingest import IngestError, ingest_files
    try:
        refs, failures = ingest_files(args.repo, args.files, band=args.band, visit_start=args.visit_start)
    except IngestError as exc:
        raise UserError(str(exc)) from None
    for ref in refs:
        print(f"ingested {ref.path}")
    for path, msg in failures:
        print(f"REFUSED {path}: {msg}", file=sys.stderr)
    print(f"{len(refs)} file(s) ingested, {len(failures)} refused")
    return 0 if not failures else 1


def cmd_stage(args) -> int:
    from .repo import parse_id_args
    from .stages import load_stage, parse_overrides
    from .stages.runner import run_stage

    query = parse_id_args(args.id or [])
    overrides = parse_overrides(args.config)
    with frozen_imports():  # the stage's scientific stack, frozen once imported (see startup.py)
        load_stage(args.name)

    def progress(i, n, rec):
        did = " ".join(f"{k}={v}" for k, v in rec["data_id"].items())
        extra = rec.get("error", "")
        print(f"[{i}/{n}] {args.name} {did}: {rec['status']} ({rec['seconds']:.1f} s) {extra}".rstrip(),
              flush=True)

    records = run_stage(args.repo, args.name, query, overrides, args.run, progress=progress)
    if not records:
        raise UserError(f"no quanta for stage {args.name} with --id {' '.join(args.id or []) or '(all)'}: "
                        "check that its inputs exist (twinkles status REPO) and the data ID range")
    failed = [r for r in records if r["status"] == "failed"]
    print(f"{args.name}: {len(records) - len(failed)} done, {len(failed)} failed")
    return 1 if failed else 0


def cmd_sql(args) -> int:
    from .repo.sql import SqlError, run_sql
    try:
        table = run_sql(args.repo, args.query)
    except SqlError as exc:
        raise UserError(str(exc)) from None
    if args.output:
        import pyarrow.csv as pacsv
        import pyarrow.parquet as pq
        if args.output.endswith(".parquet"):
            pq.write_table(table, args.output)
        else:
            pacsv.write_csv(table, args.output)
        print(f"wrote {table.num_rows} rows to {args.output}")
    else:
        from .repo.sql import format_table
        print(format_table(table, max_rows=args.max_rows))
    return 0


def cmd_check(args) -> int:
    from .repo import Repository
    result = Repository(args.repo).check(fix=args.fix)
    print(f"registry rows without a file: {result['missing_files']}; outputs truncated or changed since they were "
          f"registered: {result['damaged_files']}; leftover temporary files: {result['temporary_files']}"
          + (" (removed)" if args.fix else ""))
    if result["damaged_inputs"]:
        print(f"inputs (runs raw, truth) truncated or changed since they were registered: "
              f"{result['damaged_inputs']} -- kept; simulate or ingest them again")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="twinkles", description="Emulate the LSST DM Level 2 pipeline on "
                                "simulated LSST images of a deep field.")
    sub = p.add_subparsers(dest="verb", required=True, metavar="VERB")

    for modname in ("twinkles.sim.cli", "twinkles.workflow.cli"):
        try:
            found = importlib.util.find_spec(modname) is not None
        except ModuleNotFoundError:
            found = False
        if found:
            importlib.import_module(modname).register(sub)

    s = sub.add_parser("ingest", help="ingest external FITS images with a celestial WCS as eimages")
    s.add_argument("repo")
    s.add_argument("files", nargs="+")
    s.add_argument("--band", help="band for files whose header has no FILTER/BAND keyword (ugrizy)")
    s.add_argument("--visit-start", type=int, default=None,
                   help="visit number for files whose header has no VISIT (default: after the last visit)")
    s.set_defaults(func=cmd_ingest)

    s = sub.add_parser("stage", help="run one stage on the quanta matching --id")
    s.add_argument("name", help="stage name, e.g. process_eimage")
    s.add_argument("repo")
    s.add_argument("--id", nargs="*", help="data ID query, e.g. visit=840..879 band=r")
    s.add_argument("--config", action="append", help="override, e.g. process_eimage.detection.threshold=5")
    s.add_argument("--run", help="output run (default: output_run in twinkles.yaml, else runs/l2)")
    s.set_defaults(func=cmd_stage)

    s = sub.add_parser("sql", help="run SQL (DuckDB) over the catalogs: Source, Object, ForcedSource, ...")
    s.add_argument("repo")
    s.add_argument("query")
    s.add_argument("--output", help="write the result to a .csv or .parquet file")
    s.add_argument("--max-rows", type=int, default=50)
    s.set_defaults(func=cmd_sql)

    s = sub.add_parser("check", help="check the repository: registry rows without files, leftover temporaries")
    s.add_argument("repo")
    s.add_argument("--fix", action="store_true", help="remove both")
    s.set_defaults(func=cmd_check)
    return p


def main(argv: list[str] | None = None) -> int:
    single_threaded_libraries()
    ensure_env_bin_on_path()
    with frozen_imports():  # the verbs' modules and the repository stack (see startup.py)
        parser = build_parser()
        from .repo import DataIdError, RepositoryError
        from .repo.repository import DatasetNotFoundError
        from .stages import StageError
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (UserError, DataIdError, RepositoryError, DatasetNotFoundError, StageError) as exc:
        print(f"twinkles {args.verb}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"twinkles {args.verb}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
