"""makeCoaddTempExp / MakeWarpTask / makeDirectWarp (+ makePsfMatchedWarp): each calexp onto the patches it covers.

The DM stack's makeCoaddTempExp (Gen2) / MakeWarpTask (Gen3 pipe_tasks) / makeDirectWarp and makePsfMatchedWarp
(drp_tasks MakeDirectWarpTask, MakePsfMatchedWarpTask). One job takes one calexp (``visit, detector``) and, for
every patch of the sky map whose outer region it overlaps:

1. **direct warp** (``deepCoadd_directWarp``): the calexp resampled onto the patch grid with a Lanczos-3 kernel
   (:func:`twinkles.algorithms.resample.warp_exposure`: pixel mapping between the TAN-SIP calexp WCS and the
   patch's TAN WCS on a coarse grid, interpolated; variance with the squared kernel weights; mask planes OR-ed
   over the kernel footprint; NO_DATA, NaN image and variance, where the calexp does not cover), scaled to nJy
   with the calexp's ``njy_per_electron`` (``photo_calib = PhotoCalib(1.0)``), flux-conserving (Jacobian of the
   mapping). Its PSF is the calexp's, transformed by the local Jacobian of the mapping, sampled on a grid of patch
   positions (``ImageGridPSF``); its metadata the visit's (``visit, detector, band, tract, patch, psf_fwhm_px``
   in the patch frame, ``njy_per_electron``, seeing, ...).
2. **PSF-matched warp** (``deepCoadd_psfMatchedWarp``): the direct warp convolved to a common model PSF, a
   Gaussian of ``model_psf_fwhm_arcsec`` (the same for every visit, so all PSF-matched warps of a band have the
   same PSF; it should be a little broader than the worst seeing), with a kernel computed in Fourier space from
   the warp's PSF and the model on a coarse grid of the patch and blended bilinearly
   (:mod:`twinkles.algorithms.psf_matching`); its ``psf`` is the model. A visit whose PSF is broader than the
   model (or cannot be matched to it within ``max_matching_residual``) gets none: the reason is logged and in
   the job's metadata, never a wrongly matched warp.

Patches that the calexp's bounding box touches but where the warp has no pixel are skipped.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from ..algorithms.resample import footprint_or, pixel_mapping, warp_exposure
from ..algorithms.psf_matching import match_to_model
from ..algorithms.skymap import SkyMap
from ..image import Exposure, PhotoCalib, wcs_is_celestial
from ..psf import GaussianPSF
from . import ProcessingError

__all__ = ["Config", "QUANTUM", "INPUTS", "OUTPUTS", "Result", "PatchWarp", "run", "run_quantum"]

log = logging.getLogger(__name__)

QUANTUM = ("visit", "detector")
INPUTS = ["calexp", "skyMap"]
OUTPUTS = ["deepCoadd_directWarp", "deepCoadd_psfMatchedWarp"]


@dataclass
class Config:
    kernel: str = "lanczos3"  # image resampling kernel (DM warpingKernelName lanczos3)
    grid_step_px: int = 32  # pixel mapping computed exactly every this many patch pixels (DM interpLength 10)
    psf_grid: int = 5  # the warp's PSF sampled on psf_grid x psf_grid patch positions
    make_direct: bool = True  # write deepCoadd_directWarp (DM makeDirect)
    make_psf_matched: bool = True  # write deepCoadd_psfMatchedWarp (DM makePsfMatched)
    model_psf_fwhm_arcsec: float = 1.3  # Gaussian model PSF of the PSF-matched warps, FWHM arcsec (demo seeing <= 1.1")
    matching_grid: int = 3  # matching kernels on matching_grid x matching_grid nodes of the covered area
    max_matching_residual: float = 0.02  # max|P * K - model| / max(model) allowed; worse -> no psfMatchedWarp
    min_good_pixels: int = 1  # a patch with fewer covered pixels gets no warp


@dataclass
class PatchWarp:
    patch: int
    direct: Exposure
    psf_matched: Exposure | None
    psf_matched_reason: str = ""  # why there is no PSF-matched warp


@dataclass
class Result:
    warps: list[PatchWarp]
    metadata: dict
    timings: dict = field(default_factory=dict)


def _warp_metadata(calexp: Exposure, visit: int, detector: int, tract: int, patch: int, psf_fwhm_px: float,
                   njy_per_electron: float) -> dict:
    meta = {k: v for k, v in calexp.metadata.items() if isinstance(v, (int, float, str))}
    meta.pop("psf_fwhm_px", None)
    meta.update({"visit": visit, "detector": detector, "band": calexp.visit_info.band, "tract": tract,
                 "patch": patch, "psf_fwhm_px": float(psf_fwhm_px), "njy_per_electron": float(njy_per_electron),
                 "calexp_psf_fwhm_px": float(calexp.metadata.get("psf_fwhm_px", float("nan")))})
    return meta


def run(calexp: Exposure, sky_map: SkyMap, config: Config | None = None, data_id: dict | None = None) -> Result:
    """Warp one calexp onto every patch it overlaps; return the direct and PSF-matched warps with metadata."""
    config = config or Config()
    t_cpu, timings = time.process_time(), {}
    info = calexp.visit_info
    visit = int((data_id or {}).get("visit", info.visit if info else -1))
    detector = int((data_id or {}).get("detector", info.detector if info else 0))
    where = f"visit {visit} detector {detector}"
    if info is None:
        raise ProcessingError(f"{where}: the calexp has no visit information; re-run process_eimage")
    if not wcs_is_celestial(calexp.wcs):
        raise ProcessingError(f"{where}: the calexp has no celestial WCS; re-run process_eimage")
    if calexp.photo_calib is None or not calexp.photo_calib.njy_per_electron > 0:
        raise ProcessingError(f"{where}: the calexp has no photometric calibration (NJYPERE); re-run "
                              "process_eimage")
    if calexp.psf is None:
        raise ProcessingError(f"{where}: the calexp has no PSF model; re-run process_eimage")
    njy = float(calexp.photo_calib.njy_per_electron)
    model_fwhm_px = config.model_psf_fwhm_arcsec / sky_map.pixel_scale_arcsec
    model = GaussianPSF(model_fwhm_px)

    t0 = time.perf_counter()
    patches = sky_map.patches_overlapping(calexp.wcs, calexp.shape)
    fmask = footprint_or(calexp.mask)  # once for all patches
    timings["setup"] = time.perf_counter() - t0
    warps, skipped, no_match = [], [], {}
    t_warp = t_match = 0.0
    for patch in patches:
        t0 = time.perf_counter()
        pwcs, pshape = sky_map.patch_wcs(patch), sky_map.patch_shape(patch)
        pmap = pixel_mapping(calexp.wcs, calexp.shape, pwcs, pshape, config.grid_step_px)
        if pmap is None:
            skipped.append(patch)
            continue
        direct = warp_exposure(calexp, pwcs, pshape, config.kernel, pixel_map=pmap, psf_grid=config.psf_grid,
                               footprint_mask=fmask)
        t_warp += time.perf_counter() - t0
        if direct.metadata["n_good_pixels"] < config.min_good_pixels:
            skipped.append(patch)
            continue
        bx0, by0, bx1, by1 = pmap.bbox  # the PSF's FWHM at the centre of the covered part of the patch
        psf_fwhm = float(direct.psf.fwhm((bx0 + bx1 - 1) / 2.0, (by0 + by1 - 1) / 2.0))
        direct.metadata = dict(_warp_metadata(calexp, visit, detector, sky_map.tract, patch, psf_fwhm, njy),
                               n_good_pixels=direct.metadata["n_good_pixels"], bbox=direct.metadata["bbox"])
        matched, reason = None, ""
        if config.make_psf_matched:
            t0 = time.perf_counter()
            matched, reason = _psf_matched(direct, model, pmap.bbox, config)
            t_match += time.perf_counter() - t0
            if matched is None:
                no_match[patch] = reason
                log.warning("%s patch %d: no PSF-matched warp: %s", where, patch, reason)
        warps.append(PatchWarp(patch, direct, matched, reason))
    timings["warp"], timings["psf_match"] = t_warp, t_match
    timings["cpu_s"] = time.process_time() - t_cpu
    meta = {"visit": visit, "detector": detector, "band": info.band, "tract": sky_map.tract,
            "patches": [w.patch for w in warps], "patches_without_pixels": skipped,
            "psf_matched_patches": [w.patch for w in warps if w.psf_matched is not None],
            "no_psf_matched_warp": {str(k): v for k, v in no_match.items()},
            "model_psf_fwhm_arcsec": config.model_psf_fwhm_arcsec,
            "psf_fwhm_px": {str(w.patch): w.direct.metadata["psf_fwhm_px"] for w in warps}}
    return Result(warps, meta, timings)


def _psf_matched(direct: Exposure, model: GaussianPSF, bbox, config: Config) -> tuple[Exposure | None, str]:
    """The PSF-matched warp, or None and the reason (a PSF broader than the model, or a poor match)."""
    x0, y0, x1, y1 = bbox
    xs = np.linspace(x0, x1 - 1, max(config.matching_grid, 2))
    ys = np.linspace(y0, y1 - 1, max(config.matching_grid, 2))
    worst = max(float(direct.psf.fwhm(float(x), float(y))) for x in xs for y in ys)
    if worst >= model.fwhm_pix:
        return None, (f"PSF FWHM {worst:.2f} px (patch frame) is broader than the model's {model.fwhm_pix:.2f} px "
                      f"(model_psf_fwhm_arcsec={config.model_psf_fwhm_arcsec}); raise "
                      "--config warp.model_psf_fwhm_arcsec to include this visit")
    res = match_to_model(direct.image, direct.variance, direct.mask, direct.psf, model, bbox,
                         n_grid=config.matching_grid)
    if not res.max_residual <= config.max_matching_residual:
        return None, (f"the matching kernel leaves a residual of {res.max_residual:.3f} of the model's peak "
                      f"(> max_matching_residual={config.max_matching_residual})")
    meta = dict(direct.metadata, psf_fwhm_px=float(model.fwhm_pix), matching_residual=res.max_residual,
                matching_kernel_px=res.kernel_size, input_psf_fwhm_px=float(direct.metadata["psf_fwhm_px"]))
    return Exposure(res.image, res.mask, res.variance, direct.wcs, model, PhotoCalib(1.0), direct.visit_info,
                    meta), ""


def run_quantum(butler, data_id: dict, config: Config) -> dict:
    """Read the calexp and the sky map, warp, write a direct (and PSF-matched) warp per overlapped patch."""
    did = {"visit": data_id["visit"], "detector": data_id.get("detector", 0)}
    calexp = butler.get("calexp", did)
    sky_map = SkyMap.from_dict(butler.get("skyMap", {}))
    result = run(calexp, sky_map, config, did)
    for w in result.warps:
        wid = {"tract": sky_map.tract, "patch": w.patch, "visit": did["visit"]}
        if config.make_direct:
            butler.put(w.direct, "deepCoadd_directWarp", wid)
        if w.psf_matched is not None:
            butler.put(w.psf_matched, "deepCoadd_psfMatchedWarp", wid)
    return dict(result.metadata, timings_s={k: v for k, v in result.timings.items() if k != "cpu_s"},
                cpu_s=result.timings.get("cpu_s"))
