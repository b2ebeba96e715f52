"""Benchmark warp + coadd of 4k x 4k calexps against SWarp (Lanczos-3, weighted combine, one thread, same grid).

    python benchmarks/bench_warp.py [--visits 3] [--repo REPO] [--keep] [--psf-matched] [--no-lock]

Without ``--repo``, ``--visits`` twinkles1 visits (4096 x 4096) are simulated and processed with process_eimage
into a ``mktemp -d`` folder under /tmp (not timed), removed at the end unless ``--keep``. The whole benchmark runs
holding the shared heavy-job lock ``/tmp/heavy.lock`` (taken here; do not wrap it in ``flock`` as well, or pass
``--no-lock``). SWarp (Debian package ``swarp``) is installed with apt-get when it is missing and that is
possible, else the benchmark says so and runs ours only.

Both sides get the same calexps and the same output grid: one TAN grid of 0.2" pixels (the sky map's tract
projection) holding every calexp, and produce one coadd in nJy:

* **ours**: for each calexp, read it (``Exposure.read_fits``; an uncompressed copy, as SWarp's input, unless
  ``--compressed-inputs``: the repository's calexps are tile-compressed, ~0.5 s more per 4k calexp to read),
  ``warp_exposure`` onto the grid (Lanczos-3 image, variance with the squared weights, mask OR-ed over the
  footprint, NO_DATA, the PSF transformed to the grid, the nJy scaling), then the combine. Until the real
  ``assemble_coadd`` (coadd11) is dropped in, the combine is a **simple weighted mean** (weights 1 / mean
  variance of each warp, as assemble_coadd's; variance propagated; no artifact rejection, no CoaddPsf) --
  labelled as such in the output; see :func:`make_combiner`, the one place to replace. ``--psf-matched`` also
  makes each warp's PSF-matched warp (timed, not combined);
* **SWarp**: the calexp image (electrons) with ``FLXSCALE`` = nJy per electron and a ``MAP_WEIGHT`` map of
  one value per image, 1 / its mean variance (ours' weights; per-pixel inverse-variance weights would bias
  bright stars low, their pixels' variance holding their own Poisson noise), the calexp's TAN-SIP WCS
  re-expressed as TPV (SWarp does not read SIP: a cubic TPV is fitted to the SIP mapping, < 1 mas),
  ``RESAMPLING_TYPE LANCZOS3``, ``COMBINE_TYPE WEIGHTED``, ``FSCALASTRO_TYPE VARIABLE`` (per-pixel Jacobian,
  as ours), ``SUBTRACT_BACK N``, ``NTHREADS 1``, the output grid given as ``coadd.head``; SWarp's own memory
  defaults (MEM_MAX 256 MB, its resampled images on disk).

Each side runs as its own child process, measured by a small launcher from the kernel's rusage (os.wait4): wall,
CPU (user + system) and peak RSS, with its input files in the page cache. Ours includes Python start-up and
imports, numba loading its cached kernels and the first touch of its accumulators (~1-2 s, fixed); the
benchmark also runs both on one calexp, so that the per-calexp cost ([N] - [1]) / (N - 1), what a long run pays
per visit, is printed beside the totals. The two coadds are compared at the end (flux scale on bright pixels
and the rms difference against the noise) so that the speed comparison is between programs doing the same job.
Prints a table and the ratios ours / SWarp; no assertion (the goal, ours
<= 0.5x SWarp's CPU and peak memory <= 2 GB, is reported).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from numba import njit

LOCK = "/tmp/heavy.lock"

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
    """Run ``cmd`` in a child of a small launcher; its wall, CPU seconds and peak RSS (MB) from rusage."""
    out = cwd / ".measured.json"
    with open(log, "w") as f:
        subprocess.run([sys.executable, "-c", _LAUNCHER, str(out), *cmd], cwd=cwd, stdout=f, stderr=subprocess.STDOUT,
                       check=False)
    res = json.loads(out.read_text())
    out.unlink()
    if res["exit"] != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} ... failed (exit {res['exit']}); see {log}:\n"
                           + log.read_text()[-2000:])
    return res


# ----------------------------------------------------------------------------------------------- SWarp
def find_swarp() -> tuple[str | None, str]:
    for name in ("SWarp", "swarp"):
        if shutil.which(name):
            return shutil.which(name), ""
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("installing the Debian package swarp (apt-get) ...", flush=True)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True)
        r = subprocess.run(["apt-get", "install", "-y", "-qq", "swarp"], env=env, capture_output=True, text=True)
        for name in ("SWarp", "swarp"):
            if shutil.which(name):
                return shutil.which(name), ""
        return None, f"apt-get install swarp failed: {r.stderr.strip()[-300:]}"
    return None, "SWarp not found and cannot be installed here (needs root and apt-get): install the swarp package"


def sip_to_tpv_header(wcs, shape, degree: int = 3):
    """A TPV FITS header equivalent to a TAN(-SIP) WCS over an image of ``shape`` (least-squares cubic fit).

    TPV (SCAMP's convention, read by SWarp) applies polynomials PV1_k(xi, eta), PV2_k(eta, xi) to the
    intermediate world coordinates (xi, eta) = CD (p - CRPIX), degrees. The fit reproduces the SIP sky positions
    on a 33 x 33 grid; returns (header, max error in mas).
    """
    from astropy.io import fits

    from twinkles.image import tan_project
    ny, nx = shape
    gx, gy = np.meshgrid(np.linspace(0, nx - 1, 33), np.linspace(0, ny - 1, 33))
    x, y = gx.ravel(), gy.ravel()
    ra, dec = wcs.all_pix2world(x, y, 0)
    ra0, dec0 = wcs.wcs.crval
    xt, et = tan_project(ra, dec, ra0, dec0)
    cd = wcs.wcs.cd if wcs.wcs.has_cd() else np.diag(wcs.wcs.cdelt) @ wcs.wcs.pc
    crpix0 = np.asarray(wcs.wcs.crpix) - 1.0
    xi = cd[0, 0] * (x - crpix0[0]) + cd[0, 1] * (y - crpix0[1])
    eta = cd[1, 0] * (x - crpix0[0]) + cd[1, 1] * (y - crpix0[1])
    # TPV term order (no r terms): 0:1 1:x 2:y 4:x^2 5:xy 6:y^2 7:x^3 8:x^2y 9:xy^2 10:y^3
    ks = [0, 1, 2, 4, 5, 6, 7, 8, 9, 10][: {1: 3, 2: 6, 3: 10}[degree]]

    def basis(a, b):
        cols = [np.ones_like(a), a, b, a * a, a * b, b * b, a ** 3, a * a * b, a * b * b, b ** 3]
        return np.stack(cols[: len(ks)], axis=1)
    c1, *_ = np.linalg.lstsq(basis(xi, eta), xt, rcond=None)
    c2, *_ = np.linalg.lstsq(basis(eta, xi), et, rcond=None)
    err = np.hypot(basis(xi, eta) @ c1 - xt, basis(eta, xi) @ c2 - et).max() * 3.6e6
    h = fits.Header()
    h["CTYPE1"], h["CTYPE2"] = "RA---TPV", "DEC--TPV"
    h["CRVAL1"], h["CRVAL2"] = float(ra0), float(dec0)
    h["CRPIX1"], h["CRPIX2"] = float(wcs.wcs.crpix[0]), float(wcs.wcs.crpix[1])
    h["CD1_1"], h["CD1_2"], h["CD2_1"], h["CD2_2"] = (float(v) for v in cd.ravel())
    h["CUNIT1"], h["CUNIT2"] = "deg", "deg"
    h["RADESYS"] = "ICRS"
    h["EQUINOX"] = 2000.0
    for k, a, b in zip(ks, c1, c2):
        h[f"PV1_{k}"] = float(a)
        h[f"PV2_{k}"] = float(b)
    return h, float(err)


def export_for_swarp(calexp_paths: list[Path], outdir: Path) -> tuple[list[Path], list[Path], float]:
    """SWarp's inputs (not timed): image (electrons) with a TPV header and FLXSCALE, weight map beside it."""
    from astropy.io import fits

    from twinkles.image import Exposure, mask_bit
    images, weights, worst = [], [], 0.0
    for i, p in enumerate(calexp_paths):
        e = Exposure.read_fits(p)
        hdr, err = sip_to_tpv_header(e.wcs, e.shape)
        worst = max(worst, err)
        hdr["FLXSCALE"] = (float(e.photo_calib.njy_per_electron), "nJy per electron")
        hdr["GAIN"] = 0.0
        img, var = outdir / f"calexp{i}.fits", outdir / f"calexp{i}.weight.fits"
        fits.PrimaryHDU(e.image.astype(np.float32), header=hdr).writeto(img, overwrite=True)
        # the same weighting as ours: one weight per image, 1 / its mean variance (SWarp divides a weight map by
        # FLXSCALE^2 itself, so it is given in electrons^-2); NO_DATA/BAD pixels weight 0
        bad = (e.mask & mask_bit("NO_DATA", "BAD")) != 0
        w = np.where(bad, 0.0, 1.0 / float(np.mean(e.variance[~bad]))).astype(np.float32)
        fits.PrimaryHDU(w, header=hdr).writeto(var, overwrite=True)
        images.append(img)
        weights.append(var)
    return images, weights, worst


def grid_header(sky, shape):
    from astropy.io import fits
    h = fits.Header()
    h["SIMPLE"] = True
    h["BITPIX"] = -32
    h["NAXIS"] = 2
    h["NAXIS1"], h["NAXIS2"] = shape[1], shape[0]
    h.update(sky.patch_wcs(0).to_header())
    return h


def run_swarp(swarp: str, images, weights, sky, shape, workdir: Path) -> tuple[dict, Path]:
    d = workdir / "swarp"
    d.mkdir(exist_ok=True)
    (d / "tmp").mkdir(exist_ok=True)
    head = grid_header(sky, shape)
    # SWarp reads the output grid from IMAGEOUT_NAME with the .head suffix: plain 80-column cards, END
    (d / "coadd.head").write_text("".join(f"{str(c):80s}" + "\n" for c in head.cards) + "END\n")
    cmd = [swarp, *[str(p) for p in images], "-IMAGEOUT_NAME", "coadd.fits", "-WEIGHTOUT_NAME", "coadd.weight.fits",
           "-WEIGHT_TYPE", "MAP_WEIGHT", "-WEIGHT_IMAGE", ",".join(str(p) for p in weights),
           "-RESCALE_WEIGHTS", "N", "-COMBINE", "Y", "-COMBINE_TYPE", "WEIGHTED", "-RESAMPLE", "Y",
           "-RESAMPLING_TYPE", "LANCZOS3", "-FSCALASTRO_TYPE", "VARIABLE", "-FSCALE_KEYWORD", "FLXSCALE",
           "-SUBTRACT_BACK", "N", "-NTHREADS", "1", "-RESAMPLE_DIR", "tmp", "-VMEM_DIR", "tmp",
           "-DELETE_TMPFILES", "Y", "-WRITE_XML", "N", "-VERBOSE_TYPE", "NORMAL", "-COPY_KEYWORDS", "",
           "-GAIN_DEFAULT", "0", "-BLANK_BADPIXELS", "Y"]
    res = run_measured(cmd, d, workdir / "swarp.log")
    return res, d / "coadd.fits"


# ----------------------------------------------------------------------------------------------- ours
@njit(nogil=True, cache=True)
def _mean_variance(image, variance):  # pragma: no cover - compiled
    """Mean variance over the pixels with data (finite image)."""
    s, n = 0.0, 0
    for y in range(image.shape[0]):
        for x in range(image.shape[1]):
            if image[y, x] == image[y, x]:
                s += variance[y, x]
                n += 1
    return s / max(n, 1)


@njit(nogil=True, cache=True)
def _accumulate(num, den, var, image, variance, w):  # pragma: no cover - compiled
    """num += w I, den += w, var += w^2 V where the warp has data."""
    for y in range(image.shape[0]):
        for x in range(image.shape[1]):
            v = image[y, x]
            if v == v:
                num[y, x] += w * v
                den[y, x] += w
                var[y, x] += w * w * variance[y, x]


@njit(nogil=True, cache=True)
def _finish(num, den, var, nodata):  # pragma: no cover - compiled
    ny, nx = num.shape
    image = np.empty((ny, nx), np.float32)
    variance = np.empty((ny, nx), np.float32)
    mask = np.zeros((ny, nx), np.int32)
    for y in range(ny):
        for x in range(nx):
            d = den[y, x]
            if d > 0:
                image[y, x] = num[y, x] / d
                variance[y, x] = var[y, x] / (d * d)
            else:
                image[y, x] = np.nan
                variance[y, x] = np.nan
                mask[y, x] = nodata
    return image, variance, mask


class WeightedMean:
    """STAND-IN for assemble_coadd: the weighted mean of the warps, weight 1 / mean variance of each warp.

    Accumulates one warp at a time (sum w I, sum w, sum w^2 V over pixels with data; compiled loops); no artifact
    rejection, no CoaddPsf. Only here so that the benchmark compares a whole warp + combine with SWarp's.
    """

    label = "simple weighted mean (stand-in for assemble_coadd)"

    def __init__(self, shape):
        self.num = np.zeros(shape)
        self.den = np.zeros(shape)
        self.var = np.zeros(shape)

    def add(self, warp) -> None:
        w = 1.0 / _mean_variance(warp.image, warp.variance)
        _accumulate(self.num, self.den, self.var, warp.image, warp.variance, w)

    def finish(self, wcs):
        from twinkles.image import Exposure, PhotoCalib, mask_bit
        image, var, mask = _finish(self.num, self.den, self.var, np.int32(mask_bit("NO_DATA")))
        return Exposure(image, mask, var, wcs, None, PhotoCalib(1.0))


def make_combiner(shape):
    """The combine step. To benchmark the real assemble_coadd, return an object with ``add(warp)`` (one warp at
    a time) and ``finish(wcs) -> Exposure`` built on twinkles.algorithms.coadd here."""
    return WeightedMean(shape)


def ours_main(args) -> int:
    """Child process: warp every calexp onto the grid, combine, write the coadd (what is timed)."""
    from twinkles.algorithms.resample import warp_exposure
    from twinkles.algorithms.skymap import SkyMap
    from twinkles.image import Exposure
    spec = json.loads(Path(args.ours_spec).read_text())
    sky = SkyMap.from_dict(spec["sky"])
    shape = tuple(spec["shape"])
    wcs = sky.patch_wcs(0)
    if spec["combine"] == "assemble_coadd":
        # the real stage's run(): warps made by loaders, read one at a time into its accumulator (CoaddPsf and
        # inputs table included); no artifact rejection and only NO_DATA left out, as SWarp's WEIGHTED combine
        from twinkles.stages.assemble_coadd import Config, WarpInput, run
        t0 = time.perf_counter()
        warps = [WarpInput(visit=i, direct=(lambda p=p: warp_exposure(Exposure.read_fits(p), wcs, shape)))
                 for i, p in enumerate(spec["calexps"])]
        res = run(warps, Config(do_artifact_rejection=False, require_psf_matched=False, bad_mask_planes=["NO_DATA"]))
        t1 = time.perf_counter()
        res.coadd.psf = None  # the CoaddPsf is computed (timed) but not written: SWarp writes none
        res.coadd.write_fits(spec["out"])
        print("ours steps (s):", json.dumps({"read_warp_assemble": round(t1 - t0, 2),
                                             "write": round(time.perf_counter() - t1, 2)}), flush=True)
        return 0
    combiner = make_combiner(shape)
    t = {"read": 0.0, "warp": 0.0, "psf_match": 0.0, "combine": 0.0}
    for p in spec["calexps"]:
        t0 = time.perf_counter()
        e = Exposure.read_fits(p)
        t1 = time.perf_counter()
        w = warp_exposure(e, wcs, shape)
        del e
        t2 = time.perf_counter()
        if spec["psf_matched"]:
            from twinkles.psf import GaussianPSF
            from twinkles.stages.warp import Config, _psf_matched
            cfg = Config()
            x0, y0, x1, y1 = (int(v) for v in w.metadata["bbox"].split())
            w.metadata["psf_fwhm_px"] = float(w.psf.fwhm((x0 + x1) / 2, (y0 + y1) / 2))
            _psf_matched(w, GaussianPSF(cfg.model_psf_fwhm_arcsec / sky.pixel_scale_arcsec), (x0, y0, x1, y1), cfg)
        t3 = time.perf_counter()
        combiner.add(w)
        del w
        t4 = time.perf_counter()
        t["read"] += t1 - t0
        t["warp"] += t2 - t1
        t["psf_match"] += t3 - t2
        t["combine"] += t4 - t3
    t0 = time.perf_counter()
    coadd = combiner.finish(wcs)
    coadd.write_fits(spec["out"])
    t["finish_write"] = time.perf_counter() - t0
    print("ours steps (s):", json.dumps({k: round(v, 2) for k, v in t.items()}), flush=True)
    return 0


def run_ours(calexps, sky, shape, workdir: Path, psf_matched: bool, combine: str) -> tuple[dict, Path]:
    out = workdir / "ours_coadd.fits"
    spec = workdir / "ours_spec.json"
    spec.write_text(json.dumps({"sky": sky.to_dict(), "shape": list(shape), "calexps": [str(p) for p in calexps],
                                "out": str(out), "psf_matched": psf_matched,
                                "combine": combine}))
    res = run_measured([sys.executable, str(Path(__file__).resolve()), "--ours-spec", str(spec)], workdir,
                       workdir / "ours.log")
    return res, out


# ----------------------------------------------------------------------------------------------- set-up
def prepare_repo(workdir: Path, n_visits: int) -> Path:
    from twinkles.cli import main as cli_main
    from twinkles.sim.simulate import simulate_field
    repo = workdir / "repo"
    print(f"simulating {n_visits} twinkles1 visit(s) (4096 x 4096) into {repo} (not timed) ...", flush=True)
    t0 = time.perf_counter()
    simulate_field(repo, preset="twinkles1", seed=1, n_visits=n_visits)
    print(f"  simulated in {time.perf_counter() - t0:.0f} s; process_eimage ...", flush=True)
    t0 = time.perf_counter()
    if cli_main(["stage", "process_eimage", str(repo), "--run", "runs/l2"]) != 0:
        raise RuntimeError("process_eimage failed on the simulated visits")
    print(f"  processed in {time.perf_counter() - t0:.0f} s", flush=True)
    return repo


def output_grid(calexp_paths):
    """One TAN grid (the sky map's projection, 0.2"/px) holding every calexp: a one-patch SkyMap."""
    from twinkles.algorithms.skymap import SkyMap, make_discrete_skymap
    from twinkles.stages.make_skymap import calexp_footprint
    fps = [calexp_footprint(p) for p in calexp_paths]
    unit = make_discrete_skymap(fps, patch_inner_px=1, patch_overlap_px=0)  # n_patches = extent in pixels
    n = max(unit.n_patches_x, unit.n_patches_y) + 8
    sky = SkyMap(unit.ra_deg, unit.dec_deg, 1, 1, patch_inner_px=n, patch_overlap_px=0)
    return sky, sky.patch_shape(0)


def compare_coadds(ours_path: Path, swarp_path: Path) -> dict:
    from astropy.io import fits
    from twinkles.image import Exposure
    ours = Exposure.read_fits(ours_path)
    with fits.open(swarp_path) as h:
        sw = np.array(h[0].data, np.float64)
    a = ours.image.astype(np.float64)
    ok = np.isfinite(a) & np.isfinite(sw) & (sw != 0) & np.isfinite(ours.variance)
    # interior only (edges differ by the kernel footprint rules)
    noise = np.sqrt(np.median(ours.variance[ok]))
    bright = ok & (a > 50 * noise)
    diff = (a - sw)[ok & (np.abs(a) < 5 * noise)]
    return {"flux_ratio_bright_median": float(np.median(a[bright] / sw[bright])) if bright.any() else float("nan"),
            "rms_diff_over_noise_sky": float(np.std(diff) / noise) if diff.size else float("nan"),
            "n_common_pixels": int(ok.sum())}


def _under_flock() -> bool:
    try:
        cmd = Path(f"/proc/{os.getppid()}/cmdline").read_bytes().split(b"\0")
        return any(b"flock" in c for c in cmd[:1]) and any(b"heavy.lock" in c for c in cmd)
    except OSError:
        return False


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--visits", type=int, default=3, help="twinkles1 visits to simulate (default 3)")
    p.add_argument("--repo", help="existing repository with twinkles1-size calexps in runs/l2 (default: simulate)")
    p.add_argument("--keep", action="store_true", help="keep the scratch folder")
    p.add_argument("--psf-matched", action="store_true", help="ours also makes PSF-matched warps (timed)")
    p.add_argument("--no-lock", action="store_true", help=f"do not take {LOCK}")
    p.add_argument("--combine", choices=["assemble_coadd", "mean"], default="assemble_coadd",
                   help="ours' combine: the assemble_coadd stage's run() (default) or the simple weighted mean")
    p.add_argument("--compressed-inputs", action="store_true",
                   help="ours reads the repository's tile-compressed calexps (default: uncompressed copies, as SWarp)")
    p.add_argument("--ours-spec", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.ours_spec:
        return ours_main(args)

    lock = None
    if not args.no_lock and not _under_flock():
        lock = open(LOCK, "a")
        print(f"waiting for {LOCK} (one heavy job at a time) ...", flush=True)
        fcntl.flock(lock, fcntl.LOCK_EX)
    swarp, why = find_swarp()
    workdir = Path(tempfile.mkdtemp(prefix="bench-warp-", dir="/tmp"))
    try:
        repo_path = Path(args.repo) if args.repo else prepare_repo(workdir, args.visits)
        from twinkles.repo import Repository
        repo = Repository(repo_path)
        refs = repo.query("calexp", runs=["runs/l2"])
        if not refs:
            raise SystemExit(f"no calexp in {repo_path} run runs/l2")
        calexps = [repo.abspath(r) for r in refs]
        sky, shape = output_grid(calexps)
        if not args.compressed_inputs:
            # the same uncompressed FITS for both sides (SWarp reads plain FITS): the repository's calexps are
            # tile-compressed (quantized floats), which costs ours ~0.5 s per 4k calexp to decompress
            from twinkles.image import Exposure
            plain = workdir / "ours_inputs"
            plain.mkdir()
            copies = []
            for i, pth in enumerate(calexps):
                copies.append(plain / f"calexp{i}.fits")
                Exposure.read_fits(pth).write_fits(copies[-1])
            calexps = copies
        print(f"{len(calexps)} calexps -> one {shape[1]} x {shape[0]} grid (TAN, 0.2\"/px)", flush=True)
        if swarp:
            images, weights, tpv_err = export_for_swarp(calexps, workdir)
            print(f"SWarp inputs: TAN-SIP -> TPV, max fit error {tpv_err:.2f} mas", flush=True)
        else:
            images = weights = None
            print(f"SWarp: {why}; ours only")
        results = {}
        subsets = [len(calexps)] + ([1] if len(calexps) > 1 else [])
        for n in subsets:
            d = workdir / f"n{n}"
            d.mkdir()
            # both read their inputs from the page cache (SWarp's were just written; ours may not be)
            for path in list(calexps[:n]) + (list(images[:n]) + list(weights[:n]) if swarp else []):
                Path(path).read_bytes()
            ours, ours_out = run_ours(calexps[:n], sky, shape, d, args.psf_matched, args.combine)
            print(f"[{n} calexp(s)]", (d / "ours.log").read_text().strip().splitlines()[-1], flush=True)
            theirs = agreement = None
            if swarp:
                theirs, sw_out = run_swarp(swarp, images[:n], weights[:n], sky, shape, d)
                agreement = compare_coadds(ours_out, sw_out)
            results[n] = (ours, theirs, agreement)
        ours_name = "ours: warp_exposure + " + ("assemble_coadd.run (no artifact rejection)"
                                                if args.combine == "assemble_coadd" else WeightedMean.label)
        sw_name = "SWarp 2.41 (LANCZOS3, WEIGHTED, 1 thread)"
        print()
        print(f"{'program':74s} {'wall s':>8s} {'CPU s':>8s} {'peak MB':>8s}")

        def line(name, r):
            print(f"{name:74s} {r['wall_s']:8.2f} {r['cpu_s']:8.2f} {r['peak_rss_mb']:8.0f}")
        for n in subsets:
            ours, theirs, agreement = results[n]
            line(f"{ours_name} [{n}]", ours)
            if theirs is None:
                continue
            line(f"{sw_name} [{n}]", theirs)
            print(f"{'ratio ours / SWarp [' + str(n) + ']':74s} {ours['wall_s'] / theirs['wall_s']:8.2f} "
                  f"{ours['cpu_s'] / theirs['cpu_s']:8.2f} {ours['peak_rss_mb'] / theirs['peak_rss_mb']:8.2f}")
            print("  coadds compared:", json.dumps({k: (round(v, 4) if isinstance(v, float) else v)
                                                   for k, v in agreement.items()}))
        n = len(calexps)
        ours, theirs, _ = results[n]
        if theirs is not None:
            met = "met" if ours["cpu_s"] <= 0.5 * theirs["cpu_s"] else "NOT met"
            print(f"goal [{n} calexps]: CPU ratio <= 0.5 -> {met} ({ours['cpu_s'] / theirs['cpu_s']:.2f}); "
                  "peak memory <= 2 GB -> "
                  f"{'met' if ours['peak_rss_mb'] <= 2048 else 'NOT met'} ({ours['peak_rss_mb']:.0f} MB)")
        if n > 1 and theirs is not None:
            o1, t1, _ = results[1]
            mo = (ours["cpu_s"] - o1["cpu_s"]) / (n - 1)
            mt = (theirs["cpu_s"] - t1["cpu_s"]) / (n - 1)
            print(f"per additional calexp (CPU, from [{n}] - [1]): ours {mo:.2f} s, SWarp {mt:.2f} s, ratio "
                  f"{mo / mt:.2f}; fixed cost (start-up, imports, output): ours {o1['cpu_s'] - mo:.2f} s, "
                  f"SWarp {t1['cpu_s'] - mt:.2f} s")
        return 0
    finally:
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
        if lock is not None:
            lock.close()


if __name__ == "__main__":
    sys.exit(main())
