"""``twinkles report REPO``: the run report, ``REPO/report/index.html`` with PNG plots, from the job records.

What it shows (DESIGN.md section 5 and 6):

* the seed's sentence: "processed N images in X CPU hours at Y% efficiency", where N = quanta done by the first
  stage of the pipeline (the eimages processed), X = CPU time of every attempt, Y = CPU efficiency;
* throughput: jobs and visits processed per hour; success rate per stage;
* CPU efficiency = sum of job CPU time / (wall time x workers), summed over the ``twinkles run`` invocations of
  the run (so engine start-up, scheduling, idle workers and I/O waits all count against it); beside it the worker
  occupancy = sum of job wall time / (wall x workers);
* wall time, CPU time and peak memory per stage; a timeline of jobs per worker;
* CPU contention: the time jobs were ready to run but other processes held the CPU (Linux schedstat), and the
  efficiency without it -- on a shared machine this, not the engine, is what lowers the efficiency;
* the science validation sections of ``twinkles.validate.report.validation_sections(repo, run, outdir)`` when that
  module exists (its errors are shown in the report, not raised).
"""

from __future__ import annotations

import html
import importlib
import json
import math
import time
import traceback
from pathlib import Path

import numpy as np

from ..repo import RAW_RUN, Repository
from ..repo.storage import atomic_write, atomic_write_bytes
from .records import latest_run, load_attempts, load_invocations, load_jobs

__all__ = ["compute_summary", "write_report", "concurrency_series", "rate_series", "ReportError"]


class ReportError(RuntimeError):
    pass


# ------------------------------------------------------------------------------------------- numbers
def _invocation_wall(inv: dict, attempts: list[dict]) -> float:
    end = inv.get("end")
    if end is None:  # killed: its last job end is the best we know
        ends = [a["end"] for a in attempts if a["invocation"] == inv["id"] and a["end"] is not None]
        end = max(ends) if ends else inv["start"]
    return max(0.0, end - inv["start"])


def compute_summary(repo: Repository, run: str) -> dict:
    """Every number of the report, computed from the job records of ``run``."""
    invs = load_invocations(repo, run)
    attempts = load_attempts(repo, run)
    jobs = load_jobs(repo, run)
    if not invs:
        raise ReportError(f"{repo.root}: no workflow run {run!r} recorded; run `twinkles run {repo.root}` first")
    order = []
    for inv in invs:
        for s in inv["stages"].split(","):
            if s and s not in order:
                order.append(s)
    for j in jobs:
        if j["stage"] not in order:
            order.append(j["stage"])
    first = next((s for s in order if any(j["stage"] == s for j in jobs)), None)
    first_done = [j for j in jobs if j["stage"] == first and j["status"] == "done"]
    n_images = len(first_done)
    visits_done = {j["visit"] for j in first_done if j["visit"] is not None}

    slot_seconds = sum(_invocation_wall(inv, attempts) * inv["workers"] for inv in invs)
    wall_total = sum(_invocation_wall(inv, attempts) for inv in invs)
    cpu_total = sum(a["cpu_s"] or 0.0 for a in attempts)
    job_wall_total = sum(a["wall_s"] or 0.0 for a in attempts)
    wait_total = sum(a["cpu_wait_s"] or 0.0 for a in attempts)
    efficiency = cpu_total / slot_seconds if slot_seconds > 0 else float("nan")
    occupancy = job_wall_total / slot_seconds if slot_seconds > 0 else float("nan")
    # time the jobs were ready but other processes had the CPU (a shared machine), and the efficiency without it
    contention = wait_total / slot_seconds if slot_seconds > 0 else float("nan")
    own = slot_seconds - wait_total
    efficiency_own = cpu_total / own if own > 0 else float("nan")
    hours = wall_total / 3600.0
    n_done = sum(1 for j in jobs if j["status"] == "done")

    stages = {}
    for s in order:
        sj = [j for j in jobs if j["stage"] == s]
        sa = [a for a in attempts if a["stage"] == s]
        counts = {k: sum(1 for j in sj if j["status"] == k)
                  for k in ("done", "failed", "skipped-upstream", "pending", "running")}
        finished = counts["done"] + counts["failed"] + counts["skipped-upstream"]

        def stats(key):
            v = np.array([a[key] for a in sa if a[key] is not None], dtype=float)
            if not v.size:
                return {"n": 0, "mean": None, "median": None, "max": None, "sum": 0.0}
            return {"n": int(v.size), "mean": float(v.mean()), "median": float(np.median(v)),
                    "max": float(v.max()), "sum": float(v.sum())}

        stages[s] = {"jobs": len(sj), **counts, "attempts": len(sa),
                     "failed_attempts": sum(1 for a in sa if a["status"] != "done"),
                     "success_rate": counts["done"] / finished if finished else None,
                     "wall_s": stats("wall_s"), "cpu_s": stats("cpu_s"), "peak_rss_mb": stats("peak_rss_mb")}
    return {
        "run": run, "repo": str(repo.root), "generated": time.time(),
        "first_stage": first, "images": n_images, "visits": len(visits_done),
        "cpu_hours": cpu_total / 3600.0, "cpu_seconds": cpu_total, "job_wall_seconds": job_wall_total,
        "wall_seconds": wall_total, "worker_seconds": slot_seconds,
        "workers": [inv["workers"] for inv in invs], "invocations": len(invs),
        "cpu_efficiency": efficiency, "occupancy": occupancy, "cpu_wait_seconds": wait_total,
        "contention": contention, "cpu_efficiency_without_contention": efficiency_own,
        "jobs_done": n_done, "jobs_total": len(jobs), "attempts": len(attempts),
        "jobs_per_hour": n_done / hours if hours > 0 else float("nan"),
        "visits_per_hour": len(visits_done) / hours if hours > 0 else float("nan"),
        "images_per_hour": n_images / hours if hours > 0 else float("nan"),
        "stages": stages,
    }


def concurrency_series(attempts: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """(times, number of jobs running just after each time): a step function from the job start/end records."""
    ev = [(a["start"], 1) for a in attempts if a["start"] is not None and a["end"] is not None]
    ev += [(a["end"], -1) for a in attempts if a["start"] is not None and a["end"] is not None]
    if not ev:
        return np.zeros(0), np.zeros(0)
    ev.sort(key=lambda e: (e[0], e[1]))
    t = np.array([e[0] for e in ev])
    n = np.cumsum([e[1] for e in ev])
    return t, n


def rate_series(times: list[float], t0: float, t1: float, nbins: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Histogram of event times in ``nbins`` bins over [t0, t1], as events per hour: (bin centres in s, rate)."""
    t1 = max(t1, t0 + 1e-6)
    edges = np.linspace(t0, t1, nbins + 1)
    counts, _ = np.histogram(np.asarray(times, dtype=float), bins=edges)
    width_h = (edges[1] - edges[0]) / 3600.0
    return 0.5 * (edges[1:] + edges[:-1]) - t0, counts / width_h


# ------------------------------------------------------------------------------------------- figures
def _save(fig, path: Path) -> None:
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=90))
    import matplotlib.pyplot as plt
    plt.close(fig)


def _time_unit(span_s: float) -> tuple[float, str]:
    if span_s > 3 * 3600:
        return 3600.0, "h"
    if span_s > 180:
        return 60.0, "min"
    return 1.0, "s"


def _figures(summary: dict, attempts: list[dict], jobs: list[dict], invs: list[dict], outdir: Path) -> list:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figs = []
    stage_names = list(summary["stages"])
    cmap = plt.get_cmap("tab20")
    color = {s: cmap(i % 20) for i, s in enumerate(stage_names)}
    timed = [a for a in attempts if a["start"] is not None and a["end"] is not None]
    t0 = min([inv["start"] for inv in invs] + [a["start"] for a in timed])
    t1 = max([a["end"] for a in timed] + [inv["end"] or inv["start"] for inv in invs])
    scale, unit = _time_unit(t1 - t0)

    # 1. throughput
    first = summary["first_stage"]
    done_ends = [a["end"] for a in timed if a["status"] == "done"]
    first_visit_end: dict = {}
    for a in timed:
        if a["stage"] == first and a["status"] == "done" and a["visit"] is not None:
            first_visit_end[a["visit"]] = max(first_visit_end.get(a["visit"], 0.0), a["end"])
    fig, ax = plt.subplots(1, 2, figsize=(11, 3.8))
    for times, what in ((done_ends, "jobs"), (list(first_visit_end.values()), "visits")):
        if not times:
            continue
        ts = np.sort(np.asarray(times, dtype=float))
        ax[0].step(np.concatenate([[0.0], (ts - t0) / scale]), np.arange(ts.size + 1), where="post",
                   label=f"{what}: {summary[what + '_per_hour']:.4g} per hour overall")
        x, rate = rate_series(times, t0, t1, nbins=int(np.clip(len(times) // 5, 3, 40)))
        ax[1].step(x / scale, rate, where="mid", label=what)
    ax[0].set_ylabel("processed so far")
    ax[1].set_ylabel("processed per hour")
    for axis in ax:
        axis.set_xlabel(f"time since start ({unit})")
        axis.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    _save(fig, outdir / "throughput.png")
    figs.append(("Throughput", "throughput.png"))

    # 2. success rate per stage
    fig, ax = plt.subplots(figsize=(max(5, 1.1 * len(stage_names) + 2), 3.8))
    rates = [summary["stages"][s]["success_rate"] for s in stage_names]
    ax.bar(range(len(stage_names)), [100 * (r or 0) for r in rates], color=[color[s] for s in stage_names])
    for i, s in enumerate(stage_names):
        st = summary["stages"][s]
        ax.text(i, 2, f"{st['done']}/{st['done'] + st['failed'] + st['skipped-upstream']}", ha="center",
                va="bottom", fontsize=8)
    ax.set_xticks(range(len(stage_names)), stage_names, rotation=30, ha="right")
    ax.set_ylabel("success rate (%)")
    ax.set_ylim(0, 105)
    fig.tight_layout()
    _save(fig, outdir / "success_rate.png")
    figs.append(("Success rate per stage (done / finished jobs)", "success_rate.png"))

    # 3. efficiency: busy workers over time
    t, n = concurrency_series(timed)
    fig, ax = plt.subplots(figsize=(9, 3.8))
    if t.size:
        ax.step(np.concatenate([[0.0], (t - t0) / scale]), np.concatenate([[0], n]), where="post",
                label="jobs running")
    for inv in invs:
        ax.hlines(inv["workers"], (inv["start"] - t0) / scale, ((inv["end"] or t1) - t0) / scale, colors="k",
                  linestyles="--", label="workers" if inv is invs[0] else None)
    ax.set_xlabel(f"time since start ({unit})")
    ax.set_ylabel("jobs running")
    ax.set_title(f"CPU efficiency {100 * summary['cpu_efficiency']:.1f}%  (worker occupancy "
                 f"{100 * summary['occupancy']:.1f}%)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    _save(fig, outdir / "efficiency.png")
    figs.append(("CPU efficiency: jobs running vs workers", "efficiency.png"))

    # 4. wall, CPU, memory per stage
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for axis, key, label in ((axes[0], "wall_s", "wall time (s)"), (axes[1], "cpu_s", "CPU time (s)"),
                             (axes[2], "peak_rss_mb", "peak RSS (MiB)")):
        data = [[a[key] for a in attempts if a["stage"] == s and a[key] is not None] or [np.nan]
                for s in stage_names]
        axis.boxplot(data, showfliers=True)
        axis.set_xticks(range(1, len(stage_names) + 1), stage_names, rotation=30, ha="right")
        axis.set_ylabel(label)
    fig.tight_layout()
    _save(fig, outdir / "resources.png")
    figs.append(("Wall time, CPU time and peak memory per job, by stage", "resources.png"))

    # 5. timeline
    workers = sorted({(a["host"] or "?", a["pid"] or 0) for a in timed})
    row = {w: i for i, w in enumerate(workers)}
    fig, ax = plt.subplots(figsize=(11, max(2.5, 0.35 * len(workers) + 1.5)))
    for s in stage_names:
        for ok in (True, False):
            sel = [a for a in timed if a["stage"] == s and (a["status"] == "done") == ok]
            if not sel:
                continue
            ax.barh([row[(a["host"] or "?", a["pid"] or 0)] for a in sel],
                    [(a["end"] - a["start"]) / scale for a in sel],
                    left=[(a["start"] - t0) / scale for a in sel], height=0.8, color=color[s],
                    edgecolor="red" if not ok else "white", linewidth=0.4, hatch="xx" if not ok else None,
                    label=s if ok else f"{s} (failed)")
    ax.set_xlim(left=0)  # from the start of the run: the engine's start-up shows as the blank at the left
    ax.set_yticks(range(len(workers)), [f"{h}:{p}" for h, p in workers], fontsize=7)
    ax.set_xlabel(f"time since start ({unit})")
    ax.set_ylabel("worker (host:pid)")
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    _save(fig, outdir / "timeline.png")
    figs.append(("Job timeline per worker", "timeline.png"))
    return figs


# ------------------------------------------------------------------------------------------- html
def _validation_sections(repo: Repository, run: str, outdir: Path) -> list[dict]:
    try:
        module = importlib.import_module("twinkles.validate.report")
    except ModuleNotFoundError as exc:
        if exc.name in ("twinkles.validate.report", "twinkles.validate"):
            return [{"title": "Validation", "metrics": {}, "figures": [],
                     "error": "twinkles.validate.report is not available yet: no science validation in this report"}]
        return [{"title": "Validation", "metrics": {}, "figures": [], "error": traceback.format_exc()}]
    try:
        return list(module.validation_sections(repo, run, outdir))
    except Exception:  # noqa: BLE001 - the report shows it
        return [{"title": "Validation", "metrics": {}, "figures": [],
                 "error": "validation_sections raised:\n" + traceback.format_exc()}]


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def write_report(repo_path, run: str | None = None) -> Path:
    """Write ``REPO/report/index.html`` (+ PNGs and summary.json); returns the path of index.html."""
    repo = Repository(repo_path)
    run = run or latest_run(repo)
    if run is None:
        raise ReportError(f"{repo.root}: no workflow run recorded yet; run `twinkles run {repo.root}` first")
    outdir = repo.root / "report"
    outdir.mkdir(exist_ok=True)
    summary = compute_summary(repo, run)
    summary["disk"] = repo.disk_usage([run, RAW_RUN])
    attempts, jobs, invs = load_attempts(repo, run), load_jobs(repo, run), load_invocations(repo, run)
    figs = _figures(summary, attempts, jobs, invs, outdir)
    sections = _validation_sections(repo, run, outdir)
    atomic_write_bytes(outdir / "summary.json", json.dumps(summary, indent=1, default=str).encode())

    e = html.escape
    eff = summary["cpu_efficiency"]
    sentence = (f"processed {summary['images']} images in {summary['cpu_hours']:.3g} CPU hours at "
                f"{100 * eff:.1f}% efficiency" if math.isfinite(eff) else
                f"processed {summary['images']} images in {summary['cpu_hours']:.3g} CPU hours")
    stage_rows = []
    for s, st in summary["stages"].items():
        def m(d):
            return "-" if d["mean"] is None else f"{d['mean']:.3g} / {d['max']:.3g}"
        sr = "-" if st["success_rate"] is None else f"{100 * st['success_rate']:.1f}%"
        stage_rows.append(f"<tr><td>{e(s)}</td><td>{st['jobs']}</td><td>{st['done']}</td><td>{st['failed']}</td>"
                          f"<td>{st['skipped-upstream']}</td><td>{sr}</td><td>{st['attempts']}</td>"
                          f"<td>{m(st['wall_s'])}</td><td>{m(st['cpu_s'])}</td><td>{m(st['peak_rss_mb'])}</td></tr>")
    disk = summary["disk"]
    disk_rows = "".join(
        "<tr><td>{}</td><td>{}</td><td>{:.1f}</td><td>{}</td></tr>".format(
            e(name), t["files"], t["bytes"] / 1e6,
            "-" if t["bytes_per_visit"] is None else f"{t['bytes_per_visit'] / 1e6:.2f}")
        for name, t in disk["types"].items())
    removed_rows = "".join(f"<tr><td>{e(name)}</td><td>{r['files']}</td><td>{r['bytes'] / 1e6:.1f}</td></tr>"
                           for name, r in disk["removed"].items())
    visit_rows = "".join(f"<tr><td>{v}</td><td>{b / 1e6:.1f}</td></tr>" for v, b in list(disk["visits"].items())[:500])
    fig_html = "".join(f"<h3>{e(t)}</h3><img src=\"{e(p)}\" alt=\"{e(t)}\">" for t, p in figs)
    val_html = []
    for sec in sections:
        val_html.append(f"<h3>{e(str(sec.get('title', 'Validation')))}</h3>")
        if sec.get("error"):
            val_html.append(f"<pre class=\"err\">{e(str(sec['error']))}</pre>")
        metrics = sec.get("metrics") or {}
        if metrics:
            val_html.append("<table>" + "".join(f"<tr><td>{e(str(k))}</td><td>{e(_fmt(v))}</td></tr>"
                                                 for k, v in metrics.items()) + "</table>")
        for p in sec.get("figures") or []:
            val_html.append(f"<img src=\"{e(str(p))}\" alt=\"{e(str(p))}\">")
    failures = [j for j in jobs if j["status"] == "failed"]
    fail_html = "".join(f"<tr><td>{e(j['stage'])}</td><td>{e(j['data_id'])}</td><td>{e(j['error'] or '')}</td>"
                        f"<td>{e(j['log_path'] or '')}</td></tr>" for j in failures[:500])
    generated = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(summary["generated"]))
    page = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>twinkles report: {e(run)}</title>
<style>body {{ font-family: sans-serif; margin: 1.5em; max-width: 1200px; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; }} th, td {{ border-bottom: 1px solid #ddd;
padding: 3px 8px; text-align: left; }} img {{ max-width: 100%; }} pre.err {{ background: #fee; padding: 0.5em; }}
</style></head><body>
<p class="lead" id="sentence"><b>{e(sentence)}.</b></p>
<p>{summary['jobs_done']} of {summary['jobs_total']} jobs done ({summary['attempts']} attempts) in
{summary['wall_seconds'] / 3600:.3g} h of wall time over {summary['invocations']} invocation(s) with
{', '.join(str(w) for w in summary['workers'])} worker(s); {summary['jobs_per_hour']:.4g} jobs and
{summary['visits_per_hour']:.4g} visits per hour; CPU efficiency (sum CPU / (wall x workers))
{100 * eff:.1f}%, worker occupancy {100 * summary['occupancy']:.1f}%. Jobs waited
{summary['cpu_wait_seconds']:.4g} s for a CPU held by other processes ({100 * summary['contention']:.1f}% of the
worker time; CPU efficiency without that time {100 * summary['cpu_efficiency_without_contention']:.1f}%).</p>
<h1>twinkles run report: {e(run)}</h1>
<p>{e(summary['repo'])}; generated {generated}. Numbers in <a href="summary.json">summary.json</a>.</p>
<h2>Stages</h2>
<table><tr><th>stage</th><th>jobs</th><th>done</th><th>failed</th><th>skipped</th><th>success</th>
<th>attempts</th><th>wall s (mean / max)</th><th>CPU s (mean / max)</th><th>peak RSS MiB (mean / max)</th></tr>
{''.join(stage_rows)}</table>
<h2>Disk</h2>
<p>{disk['total_bytes'] / 1e6:.1f} MB in {disk['files']} files (the run and its inputs; sizes as registered).</p>
<table><tr><th>dataset type</th><th>files</th><th>MB</th><th>MB per visit</th></tr>{disk_rows}</table>
{('<table><tr><th>removed once read (--no-keep)</th><th>files</th><th>MB freed</th></tr>' + removed_rows
  + '</table>') if removed_rows else ''}
<details><summary>MB per visit ({len(disk['visits'])} visits)</summary>
<table><tr><th>visit</th><th>MB</th></tr>{visit_rows}</table></details>
<h2>Workflow</h2>{fig_html}
<h2>Failures ({len(failures)})</h2>
<table><tr><th>stage</th><th>data ID</th><th>error</th><th>log</th></tr>{fail_html}</table>
<h2>Validation against the truth</h2>{''.join(val_html)}
</body></html>
"""
    index = outdir / "index.html"
    atomic_write_bytes(index, page.encode())
    return index
