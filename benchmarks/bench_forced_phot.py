"""Benchmark forced photometry with neighbour fitting on one 4k x 4k twinkles1 calexp.

    python benchmarks/bench_forced_phot.py [--repo REPO] [--visit 840] [--workdir DIR] [--repeat 3] [--keep]

Without --repo, one twinkles1 visit (4096 x 4096) is simulated (``twinkles simulate DIR --preset twinkles1
--visits 1``) and processed (``twinkles stage process_eimage``) in a fresh temporary directory (not timed; removed
afterwards unless --keep). The Objects (all primary) are, with ``--objects truth`` (default), every object of the
simulator's truth catalog (the benchmark only: the twinkles1 field's 10-year coadd detects nearly all of its
~27,000 objects, to ~26.5 mag), or with ``--objects src`` the detected sources of that one calexp (a single
visit's depth: far fewer).

Timed, in this process, CPU seconds (time.process_time, one thread: numba and scipy.fft run single-threaded),
median of ``--repeat`` runs after one warm-up (numba compilation excluded), inputs in memory:

* ``fit``: :func:`twinkles.algorithms.forced_photometry.forced_psf_fluxes` -- PSF stamps at every position,
  normal equations, linking, the group solves and covariances (neighbour fitting included);
* ``stage run``: :func:`twinkles.stages.forced_phot_ccd.run` -- object selection through the WCS, the fit, pixel
  flags, the table in nJy;
* peer ``independent``: :func:`twinkles.measure.photometry.psf_flux` -- PSF fluxes without neighbours (what
  DM's forcedPhotCcd measures), same fit stamp, its PSF stamps by a Fourier shift per source, for the ratio.

Prints source-measurements per CPU second of each (the goal: >= 50,000 for the fit) and the ratio to the peer.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _twinkles() -> str:
    exe = Path(sys.executable).parent / "twinkles"
    return str(exe) if exe.exists() else "twinkles"


def prepare(workdir: Path) -> Path:
    root = workdir / "twinkles1"
    t0 = time.time()
    subprocess.run([_twinkles(), "simulate", str(root), "--preset", "twinkles1", "--visits", "1", "--quiet"],
                   check=True)
    subprocess.run([_twinkles(), "stage", "process_eimage", str(root), "--run", "runs/l2"],
                   check=True)
    print(f"simulated and processed one twinkles1 visit in {time.time() - t0:.0f} s (not timed)")
    return root


def _cpu(fn, repeat: int) -> tuple[float, object]:
    out = fn()  # warm-up (numba kernels loaded / compiled)
    times = []
    for _ in range(repeat):
        t0 = time.process_time()
        out = fn()
        times.append(time.process_time() - t0)
    return statistics.median(times), out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repo", help="a repository with a processed calexp and its src (default: simulate one)")
    ap.add_argument("--visit", type=int, default=None, help="visit (default: the first calexp)")
    ap.add_argument("--workdir", help="where to simulate (default: a fresh mktemp directory, removed afterwards)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--keep", action="store_true", help="keep the simulated repository")
    ap.add_argument("--objects", choices=("truth", "src"), default="truth",
                    help="Object positions: the truth catalog (default) or the calexp's src")
    args = ap.parse_args(argv)

    from scipy import fft as _  # noqa: F401
    from astropy.table import Table

    from twinkles.algorithms.forced_photometry import PhaseTable, forced_psf_fluxes
    from twinkles.image import mask_bit
    from twinkles.measure.photometry import psf_flux
    from twinkles.repo import Repository
    from twinkles.stages import forced_phot_ccd as stage
    from twinkles.stamps import PsfStamps

    tmp = None
    try:
        if args.repo:
            root = Path(args.repo)
        else:
            tmp = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench_forced_"))
            root = prepare(tmp)
        repo = Repository(root)
        refs = repo.query("calexp", runs=["runs/l2"])
        ref = next(r for r in refs if args.visit is None or r.data_id["visit"] == args.visit)
        cal = repo.read(ref)
        if args.objects == "src":
            src = repo.get("src", ref.data_id, runs=["runs/l2"])
            ra, dec = cal.wcs.all_pix2world(np.asarray(src["x"], float), np.asarray(src["y"], float), 0)
        else:
            truth = repo.get("truth_catalog", runs=["truth"])
            ra, dec = np.asarray(truth["ra"], float), np.asarray(truth["dec"], float)
        objects = Table({"objectId": np.arange(1, len(ra) + 1, dtype=np.int64), "coord_ra": ra, "coord_dec": dec,
                         "detect_isPrimary": np.ones(len(ra), bool)})
        cfg = stage.Config()
        _, x, y = stage.select_objects(objects, cal.wcs, cal.shape)
        n = len(x)
        size = stage.fit_stamp_size(cal.psf.fwhm(), cfg)
        good = (cal.mask & mask_bit(*cfg.bad_mask_planes)) == 0
        print(f"calexp {cal.shape[1]} x {cal.shape[0]}, visit {ref.data_id['visit']}, {n} Objects "
              f"({n / (cal.shape[0] * cal.shape[1] / 1e6):.0f} per Mpix), PSF FWHM {cal.psf.fwhm():.2f} px, "
              f"model stamp {cfg.psf_model_size} px, fit stamp {size} px")

        def fit():
            stamps = PhaseTable(PsfStamps(cal.psf, cal.shape, n_grid=cfg.psf_grid, model_size=cfg.psf_model_size),
                                cfg.n_phase)
            return forced_psf_fluxes(cal.image, cal.variance, good, stamps, x, y, size=size)

        def independent():
            stamps = PsfStamps(cal.psf, cal.shape, n_grid=cfg.psf_grid, model_size=cfg.psf_model_size)
            return psf_flux(cal.image, cal.variance, stamps, x, y, good, size=size)

        t_fit, res = _cpu(fit, args.repeat)
        t_run, _ = _cpu(lambda: stage.run(cal, objects, cfg, ref.data_id["visit"], 0), args.repeat)
        t_ind, _ = _cpu(independent, args.repeat)
        grouped = int(np.sum(res.group_size > 1))
        print(f"groups: {grouped} of {n} Objects fitted with neighbours ({grouped / n:.0%}), largest "
              f"{int(res.group_size.max())}, {res.n_pairs} linked pairs; {int(res.flag.sum())} flagged")
        print(f"{'':28s}{'CPU s':>8s}{'measurements / CPU s':>24s}")
        for name, t in (("fit (neighbours fitted)", t_fit), ("stage run (fit, flags, table)", t_run),
                        ("independent fits (peer)", t_ind)):
            print(f"{name:28s}{t:8.3f}{n / t:24,.0f}")
        print(f"ratio fit / independent CPU: {t_fit / t_ind:.2f}; goal >= 50,000 measurements per CPU second: "
              f"{'met' if n / t_fit >= 50000 else 'NOT met'} ({n / t_fit:,.0f})")
    finally:
        if tmp is not None and not args.keep and not args.workdir:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
