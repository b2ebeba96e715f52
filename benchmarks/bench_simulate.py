"""Benchmark: seconds and peak memory per simulated 4k x 4k visit (twinkles1 preset), fast renderer vs naive GalSim.

Run: .venv/bin/python benchmarks/bench_simulate.py [--visits 3] [--naive-galaxies 300] [--naive-points 150]

* fast renderer (twinkles.sim): the per-pointing one-off (galaxy stamps drawn once for all visits of a pointing,
  band scenes) and then, per visit, the full eimage (PSF grid, FFT galaxy convolution, point sources, sky, noise,
  cosmic rays, bleed, header WCS) written to a scratch repository, in a fresh process so that its peak RSS is
  the simulator's alone;
* naive: every object drawn with GalSim drawImage (galaxy or point source x the local PSF x pixel), one at a time,
  on the same visit -- measured on a random subset of galaxies and point sources and scaled to the visit's
  object counts (stated in the output).
Prints a small table; nothing is asserted (speed is not a test).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _setup(n_visits: int):
    from twinkles.sim.cadence import generate_cadence
    from twinkles.sim.presets import get_preset
    from twinkles.sim.simulate import plan_visits
    from twinkles.sim.skymodel import make_sky_model
    cfg = get_preset("twinkles1")
    cfg["width"] = cfg["height"] = cfg["size"]
    cadence = generate_cadence(cfg, np.random.default_rng(1))
    sky = make_sky_model(cfg, cadence, np.random.default_rng(2))
    rows = plan_visits(cfg, cadence, 0)
    # the first visits in distinct bands where possible
    picked, seen = [], set()
    for i, r in enumerate(rows):
        if r["band"] not in seen:
            picked.append(i)
            seen.add(r["band"])
        if len(picked) == n_visits:
            break
    return cfg, cadence, sky, rows, picked


def part_fast(n_visits: int) -> dict:
    from twinkles.repo import Repository
    from twinkles.sim.simulate import VisitRenderer
    t0 = time.perf_counter()
    cfg, cadence, sky, rows, picked = _setup(n_visits)
    t_setup = time.perf_counter() - t0
    timing: dict = {}
    renderer = VisitRenderer(cfg, sky, 0, timing)
    bands = "".join(sorted({rows[i]["band"] for i in picked}))
    t0 = time.perf_counter()
    renderer.prepare_pointing(rows[picked[0]], bands)
    t_pointing = time.perf_counter() - t0
    stamps_mb = renderer._stamps.nbytes / 1e6
    n_fast_disks = len(renderer._stamps.fast_rows)
    renderer.release_stamps()
    per_visit = []
    with tempfile.TemporaryDirectory() as tmp:
        repo = Repository.create(Path(tmp) / "repo", {"preset": "twinkles1"})
        for i in picked:
            timing.clear()
            t0 = time.perf_counter()
            exposure, _ = renderer.render(rows[i], i)
            t1 = time.perf_counter()
            repo.put(exposure, "eimage", {"visit": rows[i]["visit"], "detector": 0})
            t2 = time.perf_counter()
            per_visit.append(dict(visit=rows[i]["visit"], band=rows[i]["band"], render_s=t1 - t0, write_s=t2 - t1,
                                  parts={k: round(v, 2) for k, v in timing.items()}))
    types = np.asarray(sky.truth["type"])
    x, y = renderer.positions()
    inside = (x > -30) & (x < cfg["width"] + 30) & (y > -30) & (y < cfg["height"] + 30)
    n_fast = int(n_fast_disks)
    return dict(setup_s=t_setup, pointing_s=t_pointing, stamps_mb=stamps_mb, per_visit=per_visit, n_fast=n_fast,
                n_galaxies=int((inside & np.isin(types, ["galaxy", "lens_galaxy"])).sum()),
                n_points=int((inside & ~np.isin(types, ["galaxy", "lens_galaxy"])).sum()),
                n_visits_in_cadence=len(rows),
                peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0)


def part_naive(n_gal: int, n_pt: int) -> dict:
    from twinkles.sim.lsst import electrons_to_njy_factor
    from twinkles.sim.render import render_naive
    from twinkles.sim.wcs import true_wcs
    cfg, cadence, sky, rows, picked = _setup(1)
    i = picked[0]
    row = rows[i]
    wcs = true_wcs(row, cfg)
    t = sky.truth
    x, y = wcs.all_world2pix(np.asarray(t["ra"]), np.asarray(t["dec"]), 0)
    inside = (x > -30) & (x < cfg["width"] + 30) & (y > -30) & (y < cfg["height"] + 30)
    types = np.asarray(t["type"])
    gal = np.flatnonzero(inside & np.isin(types, ["galaxy", "lens_galaxy"]))
    pts = np.flatnonzero(inside & ~np.isin(types, ["galaxy", "lens_galaxy"]))
    rng = np.random.default_rng(0)
    sub_g = rng.choice(gal, size=min(n_gal, len(gal)), replace=False)
    sub_p = rng.choice(pts, size=min(n_pt, len(pts)), replace=False)
    flux = sky.fluxes_at_visit(i, row["band"])
    njy = electrons_to_njy_factor(row["zeroPoint"])
    out = {}
    for name, sub, total in (("galaxies", sub_g, len(gal)), ("points", sub_p, len(pts))):
        t0 = time.perf_counter()
        render_naive(t, row["band"], flux, njy, row, cfg, wcs, rows=sub)
        dt = time.perf_counter() - t0
        out[name] = dict(subset=len(sub), total=total, seconds=dt, scaled_s=dt * total / max(len(sub), 1))
    # the most naive of all: each object drawn onto the whole 4k image (drawImage(image=full, add_to_image=True))
    import galsim
    from twinkles.sim.render import galaxy_profiles
    from twinkles.sim.psf import psf_profile
    full = galsim.ImageF(cfg["width"], cfg["height"], scale=cfg["pixel_scale_arcsec"])
    t0 = time.perf_counter()
    few = sub_g[:3]
    for r in few:
        bulge, disk = galaxy_profiles(t[r])
        fb = float(t[f"{row['band']}_bulgeFrac"][r]) if bulge is not None else 0.0
        profile = galsim.Add(bulge * fb, disk * (1 - fb)) if bulge is not None else disk
        prof = galsim.Convolve(profile, psf_profile(row, 0.0, 0.0))
        prof.withFlux(float(flux[r]) / njy).drawImage(image=full, add_to_image=True,
                                                       center=galsim.PositionD(x[r] + 1, y[r] + 1))
    dt = time.perf_counter() - t0
    out["full_image"] = dict(subset=len(few), total=len(gal) + len(pts), seconds=dt,
                             scaled_s=dt * (len(gal) + len(pts)) / len(few))
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return out


def _child(args: list[str]) -> dict:
    res = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=False)
    if res.returncode != 0:
        sys.stderr.write(res.stderr)
        raise SystemExit(f"benchmark part {args[:2]} failed")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--visits", type=int, default=3)
    p.add_argument("--naive-galaxies", type=int, default=300)
    p.add_argument("--naive-points", type=int, default=150)
    p.add_argument("--part", choices=["fast", "naive"], help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.part == "fast":
        print(json.dumps(part_fast(a.visits)))
        return
    if a.part == "naive":
        print(json.dumps(part_naive(a.naive_galaxies, a.naive_points)))
        return
    print("twinkles1 preset: 4096 x 4096 pixels, 0.2\"/pixel, one core (each part in a fresh process)\n")
    fast = _child(["--part", "fast", "--visits", str(a.visits)])
    naive = _child(["--part", "naive", "--naive-galaxies", str(a.naive_galaxies),
                    "--naive-points", str(a.naive_points)])
    print(f"objects on the detector: {fast['n_galaxies']} galaxies ({fast['n_fast']} on the canvas are faint pure "
          f"disks, Gaussian-mixture fast path), {fast['n_points']} point sources")
    print(f"setup (cadence of {fast['n_visits_in_cadence']} visits, sky model): {fast['setup_s']:.1f} s")
    print(f"fast, once per true pointing (galaxy stamps {fast['stamps_mb']:.0f} MB + band scenes): "
          f"{fast['pointing_s']:.1f} s")
    print("\nfast renderer, per visit:")
    print(f"  {'visit':>6} {'band':>4} {'render s':>9} {'write s':>8}  parts")
    for v in fast["per_visit"]:
        print(f"  {v['visit']:>6} {v['band']:>4} {v['render_s']:>9.2f} {v['write_s']:>8.2f}  {v['parts']}")
    steady = float(np.mean([v["render_s"] + v["write_s"] for v in fast["per_visit"]]))
    amortised = steady + fast["pointing_s"] / fast["n_visits_in_cadence"]
    cold = steady + fast["pointing_s"]
    print(f"  mean per visit (render + write): {steady:.2f} s; amortised over the cadence's "
          f"{fast['n_visits_in_cadence']} visits at one pointing: {amortised:.2f} s; a lone visit incl. the "
          f"one-off: {cold:.1f} s")
    print(f"  peak RSS of the fast process: {fast['peak_rss_mb']:.0f} MB")
    ng, npt = naive["galaxies"], naive["points"]
    naive_total = ng["scaled_s"] + npt["scaled_s"]
    print("\nnaive GalSim drawImage, one object at a time (measured on a random subset, scaled linearly):")
    print(f"  galaxies: {ng['subset']} drawn in {ng['seconds']:.1f} s -> {ng['total']} take ~{ng['scaled_s']:.0f} s")
    print(f"  point sources: {npt['subset']} drawn in {npt['seconds']:.1f} s -> {npt['total']} take "
          f"~{npt['scaled_s']:.0f} s")
    print(f"  naive per visit: ~{naive_total:.0f} s (no sky, noise or defects included)")
    fi = naive["full_image"]
    print(f"  (drawing each object onto the whole 4k image instead of a stamp: {fi['subset']} took "
          f"{fi['seconds']:.1f} s -> ~{fi['scaled_s']:.0f} s per visit)")
    print(f"\nspeed-up per visit: {naive_total / steady:.0f}x steady state, {naive_total / amortised:.0f}x amortised, "
          f"{naive_total / cold:.1f}x for a lone visit including the one-off")
    print(f"goal (<= 30 s and <= 2 GB per visit): {'met' if steady <= 30 and fast['peak_rss_mb'] <= 2048 else 'NOT met'}")


if __name__ == "__main__":
    main()
