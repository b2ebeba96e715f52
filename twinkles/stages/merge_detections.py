"""mergeCoaddDetections (DM pipe_tasks ``MergeDetectionsTask``): the peaks of every band's deepCoadd_det merged
into one list per (tract, patch) -- deepCoadd_mergeDet.

Steps: ``merge_peaks`` -- bands in DM's priority order (i, r, z, y, g, u), peaks in decreasing S/N; a peak within
``max_same_peak_arcsec`` (DM maxSamePeak 0.3") of a kept peak is the same object (its band is added to the kept
peak's ``merge_peak_<band>`` flags), one farther than that but within ``min_new_peak_arcsec`` (DM minNewPeak 1")
is dropped as the same source displaced by the band's PSF or noise, others become new peaks. ``inner`` -- each
peak marked whether it lies in the patch's inner region (``detect_isPatchInner``): the inner region decides which
patch owns an object (the Object table keeps only inner objects, so an object in an overlap appears once).
The footprints are the deblend stage's (the union over bands of the detection maps).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from astropy.table import Table

from ..algorithms.skymap import SkyMap
from .coadd_common import BAND_PRIORITY

__all__ = ["Config", "QUANTUM", "INPUTS", "OUTPUTS", "Result", "run", "run_quantum", "merge_peaks"]

QUANTUM = ("tract", "patch")
INPUTS = ["deepCoadd_det", "skyMap"]
OUTPUTS = ["deepCoadd_mergeDet"]


@dataclass
class Config:
    max_same_peak_arcsec: float = 0.3  # peaks closer than this are one (DM maxSamePeak 0.3)
    min_new_peak_arcsec: float = 1.0  # a new peak must be this far from the kept ones (DM minNewPeak 1)
    pixel_scale_arcsec: float = 0.2  # used when no sky map is given


@dataclass
class Result:
    peaks: Table
    metadata: dict


def merge_peaks(dets: dict, same_px: float, new_px: float) -> Table:
    """One peak list from ``{band: deepCoadd_det table}`` (see the module docstring)."""
    bands = [b for b in BAND_PRIORITY if b in dets] + sorted(b for b in dets if b not in BAND_PRIORITY)
    kx, ky, ksig, kband = [], [], [], []
    flags = {b: [] for b in bands}
    for b in bands:
        t = dets[b]
        order = np.argsort(-np.asarray(t["significance"], float), kind="stable")
        for i in order:
            x, y, s = float(t["x"][i]), float(t["y"][i]), float(t["significance"][i])
            if kx:
                d = np.hypot(np.asarray(kx) - x, np.asarray(ky) - y)
                j = int(np.argmin(d))
                if d[j] < same_px:
                    flags[b][j] = True
                    if s > ksig[j]:
                        ksig[j] = s
                    continue
                if d[j] < new_px:
                    continue
            kx.append(x)
            ky.append(y)
            ksig.append(s)
            kband.append(b)
            for bb in bands:
                flags[bb].append(bb == b)
    out = Table()
    out["id"] = np.arange(1, len(kx) + 1, dtype=np.int64)
    out["x"], out["y"] = np.array(kx, float), np.array(ky, float)
    out["x"].unit = out["y"].unit = "pix"
    out["significance"] = np.array(ksig, float)
    out["first_band"] = np.array(kband, dtype="U1")
    for b in bands:
        out[f"merge_peak_{b}"] = np.array(flags[b], bool)
    return out


def run(dets: dict, wcs=None, inner_bbox=None, config: Config | None = None,
        pixel_scale_arcsec: float | None = None) -> Result:
    config = config or Config()
    scale = pixel_scale_arcsec or config.pixel_scale_arcsec
    peaks = merge_peaks(dets, config.max_same_peak_arcsec / scale, config.min_new_peak_arcsec / scale)
    if wcs is not None and len(peaks):
        ra, dec = wcs.all_pix2world(peaks["x"], peaks["y"], 0)
    else:
        ra = dec = np.full(len(peaks), np.nan)
    peaks["coord_ra"], peaks["coord_dec"] = np.asarray(ra, float), np.asarray(dec, float)
    peaks["coord_ra"].unit = peaks["coord_dec"].unit = "deg"
    if inner_bbox is not None:
        x0, y0, x1, y1 = inner_bbox
        xr, yr = np.rint(peaks["x"]), np.rint(peaks["y"])
        peaks["detect_isPatchInner"] = (xr >= x0) & (xr < x1) & (yr >= y0) & (yr < y1)
    meta = {"n_peaks": len(peaks), "bands": list(dets),
            "n_peaks_per_band": {b: int(len(t)) for b, t in dets.items()}}
    return Result(peaks, meta)


def run_quantum(butler, data_id: dict, config: Config) -> dict:
    tract, patch = data_id["tract"], data_id["patch"]
    dets = {}
    for ref in butler.query("deepCoadd_det", {"tract": tract, "patch": patch}):
        dets[ref.data_id["band"]] = butler.read(ref)
    sky = SkyMap.from_dict(butler.get("skyMap"))
    result = run(dets, sky.patch_wcs(patch), sky.inner_bbox(patch), config, sky.pixel_scale_arcsec)
    butler.put(result.peaks, "deepCoadd_mergeDet", {"tract": tract, "patch": patch})
    return result.metadata
