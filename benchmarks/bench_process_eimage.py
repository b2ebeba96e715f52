"""Benchmark process_eimage on one 4k x 4k twinkles1 visit against SExtractor + PSFEx + SExtractor-with-PSF.

    python benchmarks/bench_process_eimage.py [--repo REPO] [--visit 840] [--workdir DIR] [--no-peers] [--repeat N]

Without --repo, one twinkles1 visit (4096 x 4096) is simulated into WORKDIR first (not timed). Each program runs as
its own child process, started by a small launcher; wall time, CPU time (user + system) and peak resident memory
come from the kernel's rusage of that child (os.wait4). Ours includes Python start-up and imports (~0.9 s), numba
loading its compiled kernels (~0.2 s), reading the eimage and writing the calexp, background and catalog. Ours is
also measured the way the workflow runs it, in a long-lived process (a Parsl worker): the same visit processed 4
times in one process, the median of the last 3 (reading and writing included, start-up and imports not).

The peer pipeline (Debian packages ``source-extractor`` and ``psfex``; installed with apt-get when missing and
possible, else skipped with a message) is the classic one: SExtractor to pick PSF stars
(vignettes), PSFEx to model the PSF, SExtractor again with the PSF model for PSF photometry. It does not find
cosmic rays nor calibrate the astrometry or photometry, which ours does; the comparison is therefore
conservative for us. Prints a table and the ratio ours / theirs; no assertion (speed is not a test).

Ours runs the ``twinkles stage`` command's main() with INFO logging, so the stage's per-step timings (logged,
not written: the metadata dataset must be identical when a job is re-run) are printed too. On a shared machine
single runs vary by 10-20% (and the system CPU of ours, which makes and drops many 64 MB planes, by more):
``--repeat N`` runs both pipelines N times, interleaved, and reports the medians.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SEX_PARAMS_PSF = """X_IMAGE
Y_IMAGE
XWIN_IMAGE
YWIN_IMAGE
XPSF_IMAGE
YPSF_IMAGE
FLUX_PSF
FLUXERR_PSF
FLUX_APER(5)
FLUXERR_APER(5)
FLUX_AUTO
FLUXERR_AUTO
BACKGROUND
X2WIN_IMAGE
Y2WIN_IMAGE
XYWIN_IMAGE
FLAGS
"""


# A small launcher measures each program: its own RSS (~10 MB) is the floor of ru_maxrss. Started from this
# (large) Python process directly, a child's ru_maxrss would start at this process's RSS (the kernel carries the
# high-water mark over fork and exec), which hid SExtractor's real peak (~55 MB) behind ours.
_LAUNCHER = """
import json, os, sys, time
out, cmd = sys.argv[1], sys.argv[2:]
t0 = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.execvp(cmd[0], cmd)
    finally:
        os._exit(127)
_, status, ru = os.wait4(pid, 0)
wall = time.perf_counter() - t0
with open(out, "w") as f:
    json.dump({"wall_s": wall, "cpu_s": ru.ru_utime + ru.ru_stime, "user_s": ru.ru_utime, "sys_s": ru.ru_stime,
               "peak_rss_mb": ru.ru_maxrss / 1024.0, "exit": os.waitstatus_to_exitcode(status)}, f)
"""


def run_measured(cmd: list[str], cwd: Path, log: Path) -> dict:
    """Run ``cmd``; return its wall, CPU (user + system) seconds and peak RSS (MB), from the kernel's rusage."""
    result = cwd / ".measured.json"
    with open(log, "ab") as out:
        subprocess.run([sys.executable, "-S", "-c", _LAUNCHER, str(result)] + cmd, cwd=cwd, stdout=out,
                       stderr=subprocess.STDOUT, check=True)
    r = json.loads(result.read_text())
    result.unlink()
    if r.pop("exit") != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed; see {log}")
    return r


def ensure_peers() -> tuple[str | None, str | None, str]:
    sex = shutil.which("source-extractor") or shutil.which("sex")
    psfex = shutil.which("psfex")
    if sex and psfex:
        return sex, psfex, ""
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("installing the Debian packages source-extractor and psfex ...", flush=True)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True)
        r = subprocess.run(["apt-get", "install", "-y", "-qq", "source-extractor", "psfex"], env=env,
                           capture_output=True, text=True)
        if r.returncode != 0:
            return None, None, f"apt-get install source-extractor psfex failed: {r.stderr.strip()[-300:]}"
        sex = shutil.which("source-extractor") or shutil.which("sex")
        psfex = shutil.which("psfex")
        if sex and psfex:
            return sex, psfex, ""
    return None, None, ("SExtractor/PSFEx not found and cannot be installed here (needs root and apt-get): "
                        "install the Debian packages source-extractor and psfex to compare")


def export_for_sextractor(repo, visit: int, outdir: Path) -> dict:
    """Write the eimage's pixels (with its header WCS) and variance as plain FITS for SExtractor."""
    from astropy.io import fits

    exp = repo.get("eimage", {"visit": visit, "detector": 0})
    hdr = exp.wcs.to_header(relax=True) if exp.wcs is not None else fits.Header()
    sat = float(exp.metadata.get("saturate", exp.metadata.get("saturation", 1e5)))
    hdr["GAIN"] = 1.0
    hdr["SATURATE"] = sat
    fits.PrimaryHDU(exp.image, header=hdr).writeto(outdir / "image.fits", overwrite=True)
    fits.PrimaryHDU(exp.variance).writeto(outdir / "variance.fits", overwrite=True)
    fwhm_px = (exp.visit_info.seeing_arcsec / exp.visit_info.pixel_scale_arcsec
               if exp.visit_info is not None else 4.0)
    return {"saturation": sat, "fwhm_px": float(fwhm_px), "shape": exp.image.shape}


def run_peers(sex: str, psfex: str, repo, visit: int, workdir: Path) -> dict:
    d = workdir / "peers"
    d.mkdir(parents=True, exist_ok=True)
    info = export_for_sextractor(repo, visit, d)
    log = d / "peers.log"
    log.write_text("")
    (d / "psf.param").write_text(SEX_PARAMS_PSF)
    # what PSFEx needs from the first pass (Debian's prepsfex.param lacks SNR_WIN, which PSFEx 3.21 requires)
    (d / "prepsfex.param").write_text("VIGNET(35,35)\nX_IMAGE\nY_IMAGE\nXWIN_IMAGE\nYWIN_IMAGE\nFLUX_APER(1)\n"
                                      "FLUXERR_APER(1)\nFLUX_RADIUS\nELONGATION\nFLAGS\nSNR_WIN\n")
    conv = "/usr/share/source-extractor/gauss_3.0_7x7.conv"
    # SExtractor compares the filtered image with DETECT_THRESH x the *unfiltered* pixel RMS; the filter
    # (a normalised Gaussian of FWHM 3 px, sigma s = 1.27 px) lowers the noise by 1 / (2 sqrt(pi) s) = 0.22, so
    # 1.1 here is ~5 sigma of the filtered image: the same depth as our matched-filter 5-sigma threshold
    thresh = f"{5.0 / (2.0 * np.sqrt(np.pi) * 3.0 / 2.3548):.2f}"
    common = ["-WEIGHT_TYPE", "MAP_VAR", "-WEIGHT_IMAGE", "variance.fits", "-GAIN", "1.0", "-SATUR_LEVEL",
              str(info["saturation"]), "-PIXEL_SCALE", "0.2", "-SEEING_FWHM", str(info["fwhm_px"] * 0.2),
              "-FILTER", "Y", "-FILTER_NAME", conv, "-DETECT_THRESH", thresh, "-ANALYSIS_THRESH", thresh,
              "-DETECT_MINAREA", "3", "-BACK_SIZE", "128", "-CHECKIMAGE_TYPE", "NONE", "-VERBOSE_TYPE", "QUIET",
              "-NTHREADS", "1"]
    steps = {}
    steps["sextractor (PSF stars)"] = run_measured(
        [sex, "image.fits", "-c", "/dev/null", "-CATALOG_NAME", "prepsfex.cat", "-CATALOG_TYPE", "FITS_LDAC",
         "-PARAMETERS_NAME", "prepsfex.param", "-PHOT_APERTURES", "24"] + common, d, log)
    steps["psfex"] = run_measured(
        [psfex, "prepsfex.cat", "-c", "/usr/share/psfex/default.psfex", "-PSF_SIZE", "31,31",
         "-PSFVAR_DEGREES", "2", "-CHECKPLOT_TYPE", "NONE", "-CHECKIMAGE_TYPE", "NONE", "-WRITE_XML", "N",
         "-VERBOSE_TYPE", "QUIET", "-NTHREADS", "1"], d, log)
    steps["sextractor (PSF photometry)"] = run_measured(
        [sex, "image.fits", "-c", "/dev/null", "-CATALOG_NAME", "psfphot.cat", "-CATALOG_TYPE", "FITS_1.0",
         "-PARAMETERS_NAME", "psf.param", "-PSF_NAME", "prepsfex.psf", "-PHOT_APERTURES", "6,9,12,18,24"] + common,
        d, log)
    from astropy.io import fits
    with fits.open(d / "psfphot.cat") as h:
        n = len(h[1].data)
    return {"steps": steps, "n_sources": n}


def run_ours(repo_path: Path, visit: int, workdir: Path, keep_outputs: bool = False) -> dict:
    from twinkles.repo import Repository
    log = workdir / "ours.log"
    log.write_text("")
    run_name = f"bench/process_eimage-{time.time_ns()}"
    # the `twinkles stage` command's main(), with INFO logging on so that the stage's per-step timings (which are
    # not in the written metadata: a re-run must write identical files) reach the log
    code = ("import logging, sys; logging.basicConfig(level=logging.INFO, format='%(name)s: %(message)s'); "
            "from twinkles.cli import main; sys.exit(main(sys.argv[1:]))")
    step = run_measured([sys.executable, "-c", code, "stage", "process_eimage", str(repo_path), "--id",
                         f"visit={visit}", "--run", run_name], workdir, log)
    repo = Repository(repo_path)
    meta = repo.get("process_eimage_metadata", {"visit": visit, "detector": 0}, runs=[run_name])
    timings = {}
    for line in log.read_text().splitlines():
        if "timings (s): " in line:
            timings = json.loads(line.split("timings (s): ", 1)[1])
    if not keep_outputs:
        _drop_run(repo, run_name)
    return {"steps": {"twinkles process_eimage": step}, "metadata": meta, "timings_s": timings}


_WARM_CODE = """
import json, resource, sys, time
from twinkles.environment import single_threaded_libraries
single_threaded_libraries()
from twinkles.stages.runner import run_stage
repo, visit, run0, n, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5]
runs = []
for i in range(n):
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    rec = run_stage(repo, "process_eimage", {"visit": visit}, output_run=f"{run0}-{i}")[0]
    r1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    if rec["status"] != "done":
        sys.exit(f"process_eimage failed: {rec.get('error')}")
    runs.append({"wall_s": t1 - t0, "cpu_s": (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)})
json.dump(runs, open(out, "w"))
"""


def run_ours_warm(repo_path: Path, visit: int, workdir: Path, n: int = 4) -> dict:
    """The same visit processed ``n`` times in one process (a workflow worker's steady state): the medians of the
    runs after the first (which pays the imports and numba's loading), and the process's peak RSS."""
    from twinkles.repo import Repository
    run0 = f"bench/process_eimage-warm-{time.time_ns()}"
    out = workdir / "warm.json"
    step = run_measured([sys.executable, "-c", _WARM_CODE, str(repo_path), str(visit), run0, str(n), str(out)],
                        workdir, workdir / "ours-warm.log")
    runs = json.loads(out.read_text())
    repo = Repository(repo_path)
    for i in range(n):
        _drop_run(repo, f"{run0}-{i}")
    later = runs[1:]
    return {"first": runs[0], "wall_s": float(np.median([r["wall_s"] for r in later])),
            "cpu_s": float(np.median([r["cpu_s"] for r in later])), "peak_rss_mb": step["peak_rss_mb"],
            "n": len(later)}


def _drop_run(repo, run_name: str) -> None:
    """Remove a benchmark run's files (~270 MB per 4k visit) and its registry rows, and nothing else."""
    if not run_name.startswith("bench/"):
        raise ValueError(f"refusing to drop run {run_name!r}: not a benchmark run")
    shutil.rmtree(repo.root / run_name, ignore_errors=True)
    with repo.connect() as conn:
        conn.execute("DELETE FROM datasets WHERE run = ?", (run_name,))
        conn.execute("DELETE FROM runs WHERE name = ?", (run_name,))


def _median_run(runs: list[dict]) -> dict:
    """One run's dict whose step numbers (and timings) are the medians over ``runs``."""
    out = dict(runs[-1])
    out["steps"] = {name: {k: float(np.median([r["steps"][name][k] for r in runs])) for k in s}
                    for name, s in runs[-1]["steps"].items()}
    if "timings_s" in out:
        keys = [k for k in out["timings_s"] if all(k in r.get("timings_s", {}) for r in runs)]
        out["timings_s"] = {k: float(np.median([r["timings_s"][k] for r in runs])) for k in keys}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repo", help="existing repository with a twinkles1-size eimage (default: simulate one)")
    p.add_argument("--visit", type=int, default=None, help="visit to process (default: the first)")
    p.add_argument("--workdir", default="bench-process-eimage", help="where to simulate and write")
    p.add_argument("--no-peers", action="store_true", help="do not run SExtractor/PSFEx")
    p.add_argument("--json", help="also write the numbers to this JSON file")
    p.add_argument("--keep-outputs", action="store_true",
                   help="keep each run's calexp/src outputs in the repository (default: removed after reading)")
    p.add_argument("--repeat", type=int, default=1,
                   help="run each program this many times, interleaved, and report the median of each step "
                        "(on a shared machine single runs vary by 10-20%%)")
    args = p.parse_args(argv)
    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    from twinkles.repo import Repository
    if args.repo:
        repo_path = Path(args.repo).resolve()
    else:
        repo_path = workdir / "twinkles1"
        if not (repo_path / "registry.sqlite3").exists():
            from twinkles.sim.simulate import simulate_field
            print("simulating one twinkles1 visit (4096 x 4096) ...", flush=True)
            t0 = time.perf_counter()
            simulate_field(repo_path, preset="twinkles1", seed=1, n_visits=1)
            print(f"  simulated in {time.perf_counter() - t0:.1f} s", flush=True)
    repo = Repository(repo_path)
    refs = repo.query("eimage")
    if not refs:
        print(f"no eimage in {repo_path}", file=sys.stderr)
        return 2
    visit = args.visit if args.visit is not None else int(refs[0].data_id["visit"])
    shape = repo.get("eimage", {"visit": visit, "detector": 0}).image.shape
    print(f"image: visit {visit}, {shape[1]} x {shape[0]} pixels", flush=True)

    sex = psfex = None
    if not args.no_peers:
        sex, psfex, why = ensure_peers()
        if sex is None:
            print(f"SKIPPING the SExtractor + PSFEx comparison: {why}")
    ours_runs, theirs_runs = [], []
    for _ in range(max(1, args.repeat)):
        ours_runs.append(run_ours(repo_path, visit, workdir, args.keep_outputs))
        if sex is not None:
            theirs_runs.append(run_peers(sex, psfex, repo, visit, workdir))
    print("ours in a long-lived process (the workflow's workers): the visit processed 4 times ...", flush=True)
    warm = run_ours_warm(repo_path, visit, workdir)
    ours = _median_run(ours_runs)
    results = {"visit": visit, "shape": list(shape), "repeat": len(ours_runs), "ours": ours}
    theirs = _median_run(theirs_runs) if theirs_runs else None
    if theirs:
        results["theirs"] = theirs
    if len(ours_runs) > 1:
        print(f"medians of {len(ours_runs)} interleaved runs; ours CPU s per run: "
              + ", ".join(f"{sum(s['cpu_s'] for s in r['steps'].values()):.2f}" for r in ours_runs)
              + ("; theirs: " + ", ".join(f"{sum(s['cpu_s'] for s in r['steps'].values()):.2f}"
                                           for r in theirs_runs) if theirs_runs else ""))

    def row(name, s):
        print(f"  {name:34s} {s['wall_s']:8.2f} {s['cpu_s']:8.2f} {s['peak_rss_mb']:10.0f}")

    print(f"\n  {'step':34s} {'wall s':>8s} {'CPU s':>8s} {'peak MB':>10s}")
    for name, s in ours["steps"].items():
        row(name, s)
    meta = ours["metadata"]
    tot_ours = {k: sum(s[k] for s in ours["steps"].values()) for k in ("wall_s", "cpu_s")}
    tot_ours["peak_rss_mb"] = max(s["peak_rss_mb"] for s in ours["steps"].values())
    if theirs:
        for name, s in theirs["steps"].items():
            row(name, s)
        tot = {k: sum(s[k] for s in theirs["steps"].values()) for k in ("wall_s", "cpu_s")}
        tot["peak_rss_mb"] = max(s["peak_rss_mb"] for s in theirs["steps"].values())
        row("SExtractor + PSFEx + SExtractor", tot)
        print(f"\n  ours / theirs: wall {tot_ours['wall_s'] / tot['wall_s']:.2f}x, CPU "
              f"{tot_ours['cpu_s'] / tot['cpu_s']:.2f}x, peak memory "
              f"{tot_ours['peak_rss_mb'] / tot['peak_rss_mb']:.2f}x (goal: <= 1.0x time, <= 2 GB)")
        print(f"  sources: ours {meta['n_sources']}, SExtractor {theirs['n_sources']}")
        results["ratio"] = {k: tot_ours[k] / tot[k] for k in tot}
        print(f"  per visit in a long-lived process (median of {warm['n']} after the first, which took "
              f"{warm['first']['wall_s']:.2f} s wall / {warm['first']['cpu_s']:.2f} s CPU): wall "
              f"{warm['wall_s']:.2f} s, CPU {warm['cpu_s']:.2f} s, peak {warm['peak_rss_mb']:.0f} MB -> "
              f"ours / theirs: wall {warm['wall_s'] / tot['wall_s']:.2f}x, CPU {warm['cpu_s'] / tot['cpu_s']:.2f}x")
        results["ratio_long_lived"] = {k: warm[k] / tot[k] for k in ("wall_s", "cpu_s")}
    results["ours_long_lived"] = warm
    timings = ours["timings_s"]
    print("\n  ours, inside the stage (s): " + ", ".join(f"{k} {v:.2f}" for k, v in timings.items()))
    meas = timings.get("measurement", float("nan"))
    print(f"  measurement: {meta['n_sources']} sources in {meas:.2f} s = {meta['n_sources'] / meas:.0f} sources/s "
          f"(two passes: provisional PSF and final)")
    print(f"  peak memory ours: {tot_ours['peak_rss_mb']:.0f} MB (goal <= 2048 MB)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
