"""Progress of a run from the job records: per stage counts, failures with their messages, the last invocation.

Read-only: used by ``twinkles status``, the status page and the report.
"""

from __future__ import annotations

import os
import socket
import time

from ..repo import RAW_RUN, Repository
from .graph import STATUSES
from .records import latest_run, load_blocks, load_invocations

__all__ = ["collect_status", "format_status", "format_disk"]


def _alive(inv: dict) -> bool:
    if inv.get("host") != socket.gethostname() or not inv.get("pid"):
        return True  # cannot tell from here
    try:
        os.kill(int(inv["pid"]), 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _query(repo: Repository, sql: str, run: str) -> list[dict]:
    with repo.read_only() as conn:
        if conn.execute("SELECT 1 FROM sqlite_master WHERE name='jobs'").fetchone() is None:
            return []
        return [dict(r) for r in conn.execute(sql, (run,)).fetchall()]


def collect_status(repo: Repository | str, run: str | None = None, max_failures: int = 1000) -> dict:
    """{run, stages: {stage: {status: count, total}}, totals, failures: [the first max_failures], invocation,
    state, blocks}.

    ``blocks``: the batch-system jobs (Slurm jobs) of the last invocation, each {block, job_id, state, message,
    done, failed} (jobs finished in it); empty for the local and thread executors.

    ``state``: running, finished, failed, interrupted (a "running" invocation whose process is gone), or none.
    """
    repo = repo if isinstance(repo, Repository) else Repository(repo)
    run = run or latest_run(repo)
    out = {"run": run, "stages": {}, "totals": dict.fromkeys(STATUSES, 0), "failures": [], "invocation": None,
           "state": "none", "missing_stages": [], "repo": str(repo.root), "time": time.time(), "blocks": []}
    if run is None:
        return out
    invs = load_invocations(repo, run)
    stage_order: list[str] = []
    if invs:
        inv = invs[-1]
        state = inv["status"]
        if state == "running" and not _alive(inv):
            state = "interrupted"
        out["invocation"] = inv
        out["state"] = state
        stage_order = [s for s in inv["stages"].split(",") if s]
        out["missing_stages"] = [s for s in (inv.get("missing_stages") or "").split(",") if s]
    counts = _query(repo, "SELECT stage, status, COUNT(*) AS n FROM jobs WHERE run=? GROUP BY stage, status", run)
    for s in stage_order + sorted({c["stage"] for c in counts} - set(stage_order)):
        out["stages"][s] = dict.fromkeys(STATUSES, 0)
    for c in counts:
        status = c["status"]
        if status == "running" and out["state"] != "running":
            status = "pending"  # its run is gone: it will be redone
        out["stages"][c["stage"]][status] += c["n"]
        out["totals"][status] += c["n"]
    for j in _query(repo, "SELECT stage, data_id, status, attempt, error, log_path FROM jobs WHERE run=? AND status "
                    f"IN ('failed', 'skipped-upstream') ORDER BY status != 'failed', id LIMIT {int(max_failures)}",
                    run):
        out["failures"].append({**j, "error": j["error"] or ""})
    if out["invocation"]:
        out["blocks"] = _blocks(repo, run, out["invocation"]["id"], out["state"])
    for c in out["stages"].values():
        c["total"] = sum(c[s] for s in STATUSES)
    out["totals"]["total"] = sum(out["totals"][s] for s in STATUSES)
    out["disk"] = repo.disk_usage([run, RAW_RUN])
    return out


def _blocks(repo: Repository, run: str, invocation: int, state: str) -> list[dict]:
    blocks = load_blocks(repo, run, invocation)
    if not blocks:
        return []
    with repo.read_only() as conn:
        per = {(r["block"], r["status"]): r["n"] for r in conn.execute(
            "SELECT block, status, COUNT(*) AS n FROM job_attempts WHERE run=? AND invocation=? AND block IS NOT NULL "
            "GROUP BY block, status", (run, invocation)).fetchall()}
    out = []
    for b in blocks:
        live = b["state"]
        if state == "interrupted" and live in ("running", "pending", "submitted"):
            live = f"{live} when the run stopped"
        out.append({"block": b["block"], "job_id": b["job_id"], "state": live, "message": b["message"] or "",
                    "executor": b["executor"], "done": per.get((b["job_id"], "done"), 0),
                    "failed": per.get((b["job_id"], "failed"), 0)})
    return out
def _mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB" if n < 1e10 else f"{n / 1e9:.2f} GB"


def format_disk(disk: dict) -> list[str]:
    """Lines of the disk budget: bytes per dataset type (and per visit), per visit, and what --no-keep freed."""
    if not disk or not disk["files"]:
        return []
    lines = [f"disk (run and its inputs): {_mb(disk['total_bytes'])} in {disk['files']} files"]
    width = max([len(t) for t in disk["types"]] + [12])
    lines.append(f"  {'dataset type':<{width}}  {'files':>6} {'total':>10} {'per visit':>10}")
    for name, t in disk["types"].items():
        per = _mb(t["bytes_per_visit"]) if t["bytes_per_visit"] is not None else "-"
        lines.append(f"  {name:<{width}}  {t['files']:>6} {_mb(t['bytes']):>10} {per:>10}")
    if disk["visits"]:
        v = list(disk["visits"].values())
        lines.append(f"  per visit: {_mb(sum(v) / len(v))} mean, {_mb(min(v))} min, {_mb(max(v))} max over "
                     f"{len(v)} visit(s) (datasets with a visit: {_mb(sum(v))})")
    for name, r in disk["removed"].items():
        lines.append(f"  removed once read (--no-keep): {name} {r['files']} file(s), {_mb(r['bytes'])} freed")
    return lines


def format_status(st: dict, max_failures: int = 50) -> str:
    if st["run"] is None:
        return f"{st['repo']}: no workflow run yet; start one with `twinkles run {st['repo']}`"
    lines = []
    inv = st["invocation"]
    if inv:
        started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(inv["start"]))
        lines.append(f"run {st['run']} (pipeline {inv['pipeline']}, executor {inv['executor']}, {inv['workers']} "
                     f"workers): {st['state']}, started {started}")
        if st["state"] == "interrupted":
            lines.append("  the last `twinkles run` stopped before the end: run it again to finish (it resumes)")
    else:
        lines.append(f"run {st['run']}")
    width = max([len(s) for s in st["stages"]] + [5])
    lines.append(f"  {'stage':<{width}}  {'done':>6} {'failed':>6} {'skipped':>7} {'running':>7} {'pending':>7}"
                 f" {'total':>6}")
    for name, c in list(st["stages"].items()) + [("all", st["totals"])]:
        pct = 100.0 * c["done"] / c["total"] if c["total"] else 0.0
        lines.append(f"  {name:<{width}}  {c['done']:>6} {c['failed']:>6} {c['skipped-upstream']:>7} "
                     f"{c['running']:>7} {c['pending']:>7} {c['total']:>6}  {pct:5.1f}% done")
    if st["missing_stages"]:
        lines.append(f"  not implemented yet: {', '.join(st['missing_stages'])}")
    if st.get("blocks"):
        lines.append(f"  blocks (batch jobs) of this run: {len(st['blocks'])}")
        lines.append(f"    {'block':>5}  {'job id':>10}  {'state':<12} {'jobs done':>9} {'failed':>6}")
        for b in st["blocks"]:
            lines.append(f"    {b['block']:>5}  {b['job_id'] or '-':>10}  {b['state']:<12} {b['done']:>9} "
                         f"{b['failed']:>6}")
    lines.extend(format_disk(st.get("disk")))
    failed = [f for f in st["failures"] if f["status"] == "failed"]
    skipped = [f for f in st["failures"] if f["status"] == "skipped-upstream"]
    if failed:
        lines.append(f"failures ({st['totals']['failed']}):")
        for f in failed[:max_failures]:
            lines.append(f"  {f['stage']} {f['data_id']} (attempt {f['attempt']}): {f['error']}")
            if f["log_path"]:
                lines.append(f"      log: {f['log_path']}")
        if st["totals"]["failed"] > min(len(failed), max_failures):
            lines.append(f"  ... and {st['totals']['failed'] - min(len(failed), max_failures)} more")
    if st["totals"]["skipped-upstream"]:
        eg = f", e.g. {skipped[0]['stage']} {skipped[0]['data_id']}: {skipped[0]['error']}" if skipped else ""
        lines.append(f"skipped because upstream jobs failed: {st['totals']['skipped-upstream']} job(s){eg}")
    return "\n".join(lines)
