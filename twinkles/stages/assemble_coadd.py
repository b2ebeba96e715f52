"""assembleCoadd: the deep coadd of a patch in one band from its warps, with artifact rejection and a coadd PSF.

The DM stack's ``AssembleCoaddTask`` with ``CompareWarpAssembleCoaddTask``'s artifact rejection (pipe_tasks
``assembleCoadd``, now drp_tasks ``assemble_coadd``; the ``assembleDeepCoadd`` step of the DRP pipeline), and
``CoaddPsf``. Per (tract, patch, band):

1. static-sky model: the clipped mean of the PSF-matched warps (two streaming passes);
2. artifacts: footprints of each PSF-matched warp minus the model beyond ``threshold`` sigma in either sign that
   appear in only a few of the epochs covering them (at most ``int(min(0.4 N, 2 + 0.03 N))`` of N) and do not
   lie inside a source of the model -- satellite trails, cosmic rays, moving objects; variable stars and
   supernovae are kept (one more pass);
3. coadd: the weighted mean of the direct warps (weight ``1 / mean variance`` of each warp, flux in nJy) with
   their bad pixels and artifacts left out, read one at a time; NO_DATA where nothing covers, INEXACT_PSF where
   an input covering the pixel was left out, or within 2 FWHM of an input's edge inside the patch (a star there
   is a mix of inputs its PSF at the centre does not describe; DM flags the PSF-matched EDGE band so);
   ``deepCoadd_nImage`` the inputs used per pixel;
4. coadd PSF (:class:`~twinkles.psf.CoaddPsf`): the same weighted sum of the warps' PSFs (already in the patch
   frame) over the inputs whose coverage polygon holds the position;
5. the noise correlation: PSF-flux errors from the variance plane are too small by the factor
   ``psf_flux_noise_factor`` in the coadd's metadata (resampling correlates neighbouring pixels), which
   measurement stages apply;
6. ``deepCoadd_inputs``: every input visit of the band with its weight, PSF size and status -- ``used``,
   ``rejected`` (no usable pixels, or no PSF-matched warp to check it against: DM masks the whole epoch then) or
   ``missing`` with the reason (a visit whose calexp or warp job failed, from the eimages, calexps and job
   records of the registry).

The algorithms are :mod:`twinkles.algorithms.coadd`. A patch with no warps has no quantum (``find_quanta``
lists the patches with warps); ``run_quantum`` on one writes nothing and says so.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from astropy.io import fits
from astropy.table import Table

from ..algorithms.coadd import (CoaddAccumulator, coverage_edge, coverage_polygon, find_artifacts,
                                resampling_noise_factor, static_sky_model, usable, warp_weight)
from ..image import Exposure, PhotoCalib, mask_bit
from ..psf import SIGMA_TO_FWHM, CoaddPsf
from . import ProcessingError

__all__ = ["Config", "QUANTUM", "INPUTS", "OUTPUTS", "WarpInput", "Result", "run", "run_quantum", "find_quanta",
           "INPUT_COLUMNS"]

log = logging.getLogger(__name__)

QUANTUM = ("tract", "patch", "band")
INPUTS = ["deepCoadd_directWarp", "deepCoadd_psfMatchedWarp", "skyMap"]
OUTPUTS = ["deepCoadd", "deepCoadd_nImage", "deepCoadd_inputs"]

#: columns of deepCoadd_inputs
INPUT_COLUMNS = ["visit", "detector", "band", "weight", "psf_fwhm_px", "status", "reason", "n_pixels",
                 "n_artifact_pixels"]


@dataclass
class Config:
    bad_mask_planes: list = field(default_factory=lambda: ["NO_DATA", "BAD", "SAT", "CR"])  # left out of the mean
    do_artifact_rejection: bool = True  # CompareWarp; False: the plain weighted mean (DM AssembleCoaddTask)
    model_clip_sigma: float = 3.0  # static-sky model: clip at this many sigma of each warp's noise (DM 2.5 sample)
    threshold: float = 5.0  # sigma per pixel of warp - model for artifact candidates (DM detect.thresholdValue 5)
    min_pixels: int = 4  # smallest candidate footprint, pixels (DM detect.minPixels 4)
    grow_sigma: float = 1.0  # candidates grown by this many sigmas of the PSF-matched PSF (DM nSigmaToGrow 0.4)
    spatial_threshold: float = 0.5  # an artifact: more than this fraction of its pixels transient (DM 0.5)
    max_num_epochs: int = 2  # DM maxNumEpochs
    max_fraction_epochs_low: float = 0.4  # DM maxFractionEpochsLow
    max_fraction_epochs_high: float = 0.03  # DM maxFractionEpochsHigh
    streak_grow_sigma: float = 3.0  # streak-like artifacts (trails) grown by this many PSF sigmas (DM growStreakFp 5)
    preserve_contained_by_source: bool = True  # candidates wholly inside a model source are kept (DM True)
    source_threshold: float = 5.0  # model sources: PSF-smoothed S/N (DM detectTemplate 5), grown 2.4 sigma
    preserve_min_model_ratio: float = 0.5  # ... and only where the model's flux there >= this x the residual's
    prefilter_ratio: float = 0.05  # drop candidates with less than this fraction of good pixels (DM 0.05)
    require_psf_matched: bool = True  # a visit without a PSF-matched warp is left out (DM masks the epoch)


@dataclass
class WarpInput:
    """One visit's warps of the patch: Exposures or zero-argument loaders (read when needed, one at a time)."""

    visit: int
    direct: object  # Exposure | Callable[[], Exposure]
    psf_matched: object = None  # Exposure | Callable[[], Exposure] | None (none was made)
    detector: int = 0
    band: str = ""


@dataclass
class Result:
    coadd: Exposure | None  # None when no input has usable pixels
    n_image: np.ndarray | None
    inputs: Table
    metadata: dict


def _load(item):
    return item() if callable(item) else item


def run(warps: list[WarpInput], config: Config | None = None, missing: list[dict] | None = None,
        band: str = "") -> Result:
    """Assemble the coadd of one patch and band from its warps (see the module docstring).

    ``missing``: inputs known to be absent, ``{"visit", "detector", "reason"}`` each, listed in the inputs
    table as ``missing``.
    """
    config = config or Config()
    bad_bits = mask_bit(*config.bad_mask_planes)
    rows = {w.visit: _row(w, band) for w in warps}
    checked = [w.psf_matched is not None for w in warps]
    artifacts = None
    if config.do_artifact_rejection and any(checked):
        artifacts = _find_artifacts(warps, config)
    coadd, n_image, psf_inputs = _assemble(warps, config, bad_bits, artifacts, rows)
    psf = _coadd_psf(psf_inputs, coadd.shape) if coadd is not None else None
    inputs = _inputs_table(list(rows.values()) + [_missing_row(m, band) for m in (missing or [])])
    if coadd is None:
        return Result(None, None, inputs, {"n_inputs": 0, "band": band})
    coadd.psf = psf
    meta = _metadata(coadd, n_image, inputs, band)
    cy, cx = (np.array(coadd.shape) - 1) / 2.0
    meta["psf_flux_noise_factor"] = resampling_noise_factor(psf.kernel_image(cx, cy))
    coadd.metadata.update({k: v for k, v in meta.items() if isinstance(v, (int, float, str))})
    return Result(coadd, n_image, inputs, meta)


def _row(w: WarpInput, band: str) -> dict:
    return {"visit": int(w.visit), "detector": int(w.detector), "band": w.band or band, "weight": 0.0,
            "psf_fwhm_px": float("nan"), "status": "used", "reason": "", "n_pixels": 0, "n_artifact_pixels": 0}


def _missing_row(m: dict, band: str) -> dict:
    return {"visit": int(m["visit"]), "detector": int(m.get("detector", 0)), "band": m.get("band", band),
            "weight": 0.0, "psf_fwhm_px": float("nan"), "status": "missing", "reason": str(m.get("reason", "")),
            "n_pixels": 0, "n_artifact_pixels": 0}


def _find_artifacts(warps, config):
    """Steps 1 and 2: the static-sky model and each warp's artifacts (None for warps with no PSF-matched warp);
    the PSF-matched warps' model PSF sets the widths (source detection on the model, growing)."""
    loaders = [w.psf_matched for w in warps]
    model = static_sky_model(loaders, mask_bit("NO_DATA"), config.model_clip_sigma)
    first = next(_load(x) for x in loaders if x is not None)
    fwhm = first.psf.fwhm() if first.psf is not None else float(first.metadata.get("psf_fwhm_px", 3.0))
    sigma = fwhm / SIGMA_TO_FWHM
    del first
    result = find_artifacts(loaders, model, sigma, config.threshold, config.min_pixels,
                            int(round(config.grow_sigma * sigma)), prefilter_ratio=config.prefilter_ratio,
                            preserve_sources=config.preserve_contained_by_source,
                            source_threshold=config.source_threshold, spatial_threshold=config.spatial_threshold,
                            max_fraction_low=config.max_fraction_epochs_low, max_num=config.max_num_epochs,
                            max_fraction_high=config.max_fraction_epochs_high,
                            min_model_ratio=config.preserve_min_model_ratio,
                            streak_grow_px=int(round(config.streak_grow_sigma * sigma)))
    return result


def _assemble(warps, config, bad_bits, artifacts, rows):
    """Step 3: the weighted mean of the direct warps, one at a time; returns (coadd, nImage, PSF inputs)."""
    acc = None
    first = None
    psf_inputs = []
    for i, w in enumerate(warps):
        row = rows[w.visit]
        if config.require_psf_matched and config.do_artifact_rejection and w.psf_matched is None:
            row.update(status="rejected", reason="no PSF-matched warp (its PSF is broader than the model's), so "
                       "its artifacts cannot be found")
            continue
        exp = _load(w.direct)
        row["detector"] = int(exp.metadata.get("detector", row["detector"]))
        row["psf_fwhm_px"] = float(exp.metadata.get("psf_fwhm_px", np.nan))
        if exp.psf is not None and not np.isfinite(row["psf_fwhm_px"]):
            row["psf_fwhm_px"] = float(exp.psf.fwhm())
        if acc is None:
            acc = CoaddAccumulator(exp.shape)
            first = exp
        data = usable(exp, mask_bit("NO_DATA"))
        good = usable(exp, bad_bits)
        if artifacts is not None and artifacts.checkable[i] is not None:
            checkable = artifacts.checkable_mask(i, exp.shape)
            data &= checkable
            good &= checkable
            art = artifacts.artifacts[i]
            if art is not None and art.size:
                flat = good.ravel()
                row["n_artifact_pixels"] = int(np.count_nonzero(flat[art]))
                flat[art] = False
        weight = warp_weight(exp.variance, good)
        if weight == 0 or not good.any():
            row.update(status="rejected", reason="no usable pixels in the patch")
            continue
        acc.add(exp, good, weight, inexact=(data & ~good) | coverage_edge(data, 2.0 * row["psf_fwhm_px"]))
        row.update(weight=weight, n_pixels=int(good.sum()))
        if exp.psf is None:
            raise ProcessingError(f"visit {w.visit}: its direct warp has no PSF; re-run warp")
        psf_inputs.append((w.visit, exp.psf, weight, coverage_polygon(data)))
        if exp is not first:
            del exp
    if acc is None or not psf_inputs:
        return None, None, psf_inputs
    image, variance, mask, n_image = acc.finish()
    coadd = Exposure(image, mask, variance, first.wcs, None, PhotoCalib(1.0), None,
                     {k: first.metadata[k] for k in ("tract", "patch") if k in first.metadata})
    return coadd, n_image, psf_inputs


def _coadd_psf(psf_inputs, shape) -> CoaddPsf:
    """Step 4."""
    visits, psfs, weights, polygons = zip(*psf_inputs)
    return CoaddPsf(list(psfs), list(weights), list(polygons), shape, list(visits))


def _inputs_table(rows: list[dict]) -> Table:
    t = Table(rows=[[r[c] for c in INPUT_COLUMNS] for r in rows], names=INPUT_COLUMNS) if rows else \
        Table(names=INPUT_COLUMNS, dtype=["i8", "i8", "U1", "f8", "f8", "U10", "U200", "i8", "i8"])
    t["weight"].unit = "nJy-2"
    t["psf_fwhm_px"].unit = "pix"
    if len(t):
        t.sort("visit")
    return t


def _metadata(coadd: Exposure, n_image: np.ndarray, inputs: Table, band: str) -> dict:
    covered = n_image > 0
    used = inputs["status"] == "used"
    cy, cx = (np.array(coadd.shape) - 1) / 2.0
    return {
        "band": band, "n_inputs": int(used.sum()), "n_missing": int((inputs["status"] == "missing").sum()),
        "n_rejected_inputs": int((inputs["status"] == "rejected").sum()),
        "n_artifact_pixels": int(np.sum(inputs["n_artifact_pixels"])),
        "covered_fraction": float(covered.mean()),
        "n_image_median": float(np.median(n_image[covered])) if covered.any() else 0.0,
        "n_image_max": int(n_image.max()),
        "psf_fwhm_px": float(coadd.psf.fwhm(cx, cy)),
        "inexact_psf_fraction": float(((coadd.mask & mask_bit("INEXACT_PSF")) != 0).mean()),
        "visits_used": [int(v) for v in inputs["visit"][used]],
    }


# ------------------------------------------------------------------------------------------ repository side
def _header_band(path) -> str | None:
    try:
        hdr = fits.getheader(path, 0)
    except (OSError, ValueError):
        return None
    band = hdr.get("BAND", hdr.get("HIERARCH META BAND"))
    return None if band is None else str(band)


def _visit_bands(repo, refs) -> dict[int, str]:
    """visit -> band, from the primary header of one dataset of each visit."""
    out: dict[int, str] = {}
    for ref in refs:
        v = ref.data_id["visit"]
        if v not in out:
            band = _header_band(repo.abspath(ref))
            if band is not None:
                out[v] = band
    return out


def find_quanta(repo, query: dict, runs: list[str]) -> list[dict]:
    """(tract, patch, band) of the registered direct warps matching ``query``."""
    where = {k: v for k, v in query.items() if k in ("tract", "patch", "visit")}
    refs = repo.query("deepCoadd_directWarp", where, runs=runs)
    bands = _visit_bands(repo, refs)
    want = query.get("band")
    want = None if want is None else ([want] if isinstance(want, str) else list(want))
    seen, out = set(), []
    for ref in refs:
        band = bands.get(ref.data_id["visit"])
        if band is None or (want is not None and band not in want):
            continue
        key = (ref.data_id["tract"], ref.data_id["patch"], band)
        if key not in seen:
            seen.add(key)
            out.append({"tract": key[0], "patch": key[1], "band": band})
    return out


def _failed_jobs(repo, run: str, visit: int) -> dict[str, str]:
    """stage -> error summary of the failed jobs of a visit recorded by the workflow in this run (if any)."""
    try:
        with repo.read_only() as conn:
            rows = conn.execute("SELECT stage, error FROM jobs WHERE run = ? AND visit = ? AND status = 'failed'",
                                (run, int(visit))).fetchall()
    except sqlite3.OperationalError:  # no job records: the stages were run alone
        return {}
    return {r["stage"]: (r["error"] or "").strip().splitlines()[-1][:300] if r["error"] else "" for r in rows}


def _overlaps(path, hdu, wcs, shape) -> bool:
    """Whether the image in ``path`` (its header WCS) overlaps the patch grid (wcs, shape)."""
    from ..image import _quiet_wcs
    try:
        hdr = fits.getheader(path, hdu)
    except (OSError, KeyError, ValueError):
        return False
    if "CTYPE1" not in hdr or "NAXIS1" not in hdr:
        return False
    w = _quiet_wcs(hdr)
    nx, ny = int(hdr["NAXIS1"]), int(hdr["NAXIS2"])
    xs = np.array([0, nx - 1, nx - 1, 0, (nx - 1) / 2])
    ys = np.array([0, 0, ny - 1, ny - 1, (ny - 1) / 2])
    sky = w.pixel_to_world(xs, ys)
    px, py = wcs.world_to_pixel(sky)
    h, wd = shape
    return bool(px.max() >= 0 and px.min() < wd and py.max() >= 0 and py.min() < h)


def _missing_inputs(butler, band: str, have: set[int], wcs, shape) -> list[dict]:
    """Visits of ``band`` overlapping the patch that should have a warp here but have none, with the reason."""
    repo = butler.repo
    run = butler.output_run
    out = []
    calexps = {r.data_id["visit"]: r for r in butler.query("calexp")}
    eimages = {r.data_id["visit"]: r for r in butler.query("eimage")}
    for visit, ref in sorted(eimages.items()):
        if visit in have:
            continue
        cal = calexps.get(visit)
        src = cal if cal is not None else ref
        path = repo.abspath(src)
        if _header_band(path) != band or not _overlaps(path, "IMAGE", wcs, shape):
            continue
        failed = _failed_jobs(repo, run, visit)
        if cal is None:
            why = failed.get("process_eimage")
            reason = (f"process_eimage failed: {why}" if why else
                      "no calexp (process_eimage has not run on this visit or failed)")
        else:
            why = failed.get("warp")
            reason = f"warp failed: {why}" if why else "no warp for this patch (warp has not run or failed)"
        out.append({"visit": visit, "detector": ref.data_id.get("detector", 0), "band": band, "reason": reason})
    return out


def run_quantum(butler, data_id: dict, config: Config) -> dict:
    """Read the patch's warps lazily (one at a time, per pass), run, write deepCoadd, nImage and inputs."""
    tract, patch, band = data_id["tract"], data_id["patch"], data_id["band"]
    where = {"tract": tract, "patch": patch}
    direct = [r for r in butler.query("deepCoadd_directWarp", where)]
    bands = _visit_bands(butler.repo, direct)
    direct = [r for r in direct if bands.get(r.data_id["visit"]) == band]
    if not direct:
        log.info("tract %s patch %s band %s: no warps, no coadd", tract, patch, band)
        return {"n_inputs": 0, "written": False, "reason": "no warps of this band cover the patch"}
    matched = {r.data_id["visit"]: r for r in butler.query("deepCoadd_psfMatchedWarp", where)}
    warps = []
    for ref in direct:
        visit = ref.data_id["visit"]
        pm = matched.get(visit)
        warps.append(WarpInput(visit, _reader(butler, ref), None if pm is None else _reader(butler, pm),
                               band=band))
    wcs, shape = _patch_grid(butler, tract, patch)
    missing = _missing_inputs(butler, band, {w.visit for w in warps}, wcs, shape) if wcs is not None else []
    result = run(warps, config, missing, band)
    did = {"tract": tract, "patch": patch, "band": band}
    if result.coadd is None:
        return {"n_inputs": 0, "written": False, "reason": "no input has usable pixels in the patch",
                "inputs": json.loads(json.dumps([dict(zip(INPUT_COLUMNS, r)) for r in result.inputs.iterrows()],
                                                default=str))}
    butler.put(result.coadd, "deepCoadd", did)
    butler.put(result.n_image, "deepCoadd_nImage", did)
    butler.put(result.inputs, "deepCoadd_inputs", did)
    return dict(result.metadata, written=True)


def _patch_grid(butler, tract: int, patch: int):
    """The patch's WCS and (ny, nx) from the sky map (the grid every warp of the patch is on)."""
    from ..algorithms.skymap import SkyMap
    sky = SkyMap.from_dict(butler.get("skyMap"))
    if int(sky.tract) != int(tract) or patch not in sky.patches():
        raise ProcessingError(f"tract {tract} patch {patch} is not in the sky map (tract {sky.tract}, patches "
                              f"0..{sky.n_patches - 1}); run make_skymap again if the warps come from another one")
    return sky.patch_wcs(patch), sky.patch_shape(patch)


def _reader(butler, ref) -> Callable[[], Exposure]:
    return lambda: butler.read(ref)
