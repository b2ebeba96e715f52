"""mergeCoaddMeasurements (DM pipe_tasks ``MergeMeasurementsTask``) and forced coadd photometry
(``ForcedPhotCoaddTask``; newer pipelines ``measureObjectForced``), then the Object table (``writeObjectTable``/
``transformObjectTable``): per (tract, patch) -- deepCoadd_ref and objectTable.

Steps: ``reference_band`` -- per object, the first band of DM's priority list (i, r, z, y, g, u) in which its
unforced PSF flux has S/N >= ``min_snr`` (5), else its highest-S/N band; the reference position is that band's
centroid, the reference shape its moments and Kron radius. ``forced`` -- every band measured again with
:func:`twinkles.measure.measure_sources` at the reference position (no recentroiding) with the Kron ellipse of
the reference band, children on their deblend layers. ``object_table`` -- DP1 columns (``objectId`` =
(tract * 1000 + patch) * 10^7 + index, ``parentObjectId``, ``coord_ra``, ``coord_dec``, ``x``, ``y``,
``refBand``, ``refExtendedness``, ``detect_isPrimary``, ``deblend_nChild``, ``tract``, ``patch`` and per band
``<b>_psfFlux``, ``<b>_psfFluxErr``, ``<b>_kronFlux``, ``<b>_kronFluxErr``, ``<b>_kronRad``, ``<b>_ixx`` ...,
``<b>_extendedness``), fluxes nJy. Only objects whose reference position lies in the patch's inner region are
kept (each object belongs to exactly one patch); ``detect_isPrimary`` is True for them unless they are the
parent of a blend.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from astropy.table import Table

from ..algorithms.skymap import SkyMap
from .coadd_common import (BAND_PRIORITY, BackgroundConfig, build_deblend, measure_objects, read_patch_coadds,
                           subtract_background)
from .timing import StepTimer

__all__ = ["Config", "QUANTUM", "INPUTS", "OUTPUTS", "Result", "run", "run_quantum", "reference_band"]

QUANTUM = ("tract", "patch")
INPUTS = ["deepCoadd_meas", "deepCoadd_mergeDet", "deepCoadd", "skyMap"]
OUTPUTS = ["deepCoadd_ref", "objectTable"]

#: per-band Object columns from the forced measurement (ours -> DP1 suffix) and their units
FORCED_COLUMNS = {"psfFlux": "nJy", "psfFluxErr": "nJy", "psfFlux_flag": None, "kronFlux": "nJy",
                  "kronFluxErr": "nJy", "kronRad": None, "kronFlux_flag": None, "extendedness": None}
#: per-band Object columns from the unforced measurement
UNFORCED_COLUMNS = {"ixx": "pix2", "iyy": "pix2", "ixy": "pix2", "ixxPSF": "pix2", "iyyPSF": "pix2",
                    "ixyPSF": "pix2", "centroid_x": "pix", "centroid_y": "pix", "centroid_flag": None}


@dataclass
class Config:
    min_snr: float = 5.0  # reference band: PSF-flux S/N at least this (DM minSN 10 on the merged list; issue 5)
    priority: tuple = BAND_PRIORITY  # DM priorityList
    threshold: float = 5.0  # as deblend.threshold
    max_children: int = 50  # as deblend.max_children
    background: BackgroundConfig = field(default_factory=BackgroundConfig)


@dataclass
class Result:
    ref: Table
    objects: Table
    metadata: dict


def reference_band(meas: dict, priority=BAND_PRIORITY, min_snr: float = 5.0) -> np.ndarray:
    """Per row, the reference band (see the module docstring)."""
    bands = [b for b in priority if b in meas] + [b for b in meas if b not in priority]
    n = len(next(iter(meas.values())))
    snr = {}
    for b in bands:
        with np.errstate(divide="ignore", invalid="ignore"):
            s = np.asarray(meas[b]["psfFlux"], float) / np.asarray(meas[b]["psfFluxErr"], float)
        snr[b] = np.where(np.isfinite(s), s, -np.inf)
    ref = np.array([""] * n, dtype="U1")
    for b in reversed(bands):  # the first qualifying band in priority order wins
        ref[snr[b] >= min_snr] = b
    best = np.array(bands)[np.argmax(np.vstack([snr[b] for b in bands]), axis=0)] if n else ref
    return np.where(ref == "", best, ref)


def run(coadds: dict, meas: dict, peaks: Table, tract: int, patch: int, inner_bbox=None,
        config: Config | None = None) -> Result:
    config = config or Config()
    timer = StepTimer()
    bands = [b for b in coadds if b in meas]
    rows = meas[bands[0]]
    n = len(rows)
    with timer("reference_band"):
        ref = reference_band({b: meas[b] for b in bands}, config.priority, config.min_snr)
        xr, yr = np.asarray(rows["x"], float).copy(), np.asarray(rows["y"], float).copy()
        shapes = Table({c: np.full(n, np.nan) for c in ("ixx", "iyy", "ixy", "kronRad")})
        for b in bands:
            sel = ref == b
            cx, cy = np.asarray(meas[b]["centroid_x"], float), np.asarray(meas[b]["centroid_y"], float)
            ok = sel & np.isfinite(cx) & np.isfinite(cy)
            xr[ok], yr[ok] = cx[ok], cy[ok]
            for c in shapes.colnames:
                shapes[c][sel] = np.asarray(meas[b][c], float)[sel]
    with timer("forced"):
        images = {b: subtract_background(coadds[b], config.background)[0] for b in bands}
        deb = build_deblend(coadds, images, peaks["x"], peaks["y"], config.threshold, config.max_children)
        forced = {b: measure_objects(coadds[b], images[b], deb, rows, xr, yr, forced=True, shapes=shapes)
                  for b in bands}
    with timer("object_table"):
        wcs = coadds[bands[0]].wcs
        ra, dec = wcs.all_pix2world(xr, yr, 0) if n else ([], [])
        t = Table()
        ids = np.asarray(rows["id"], np.int64)
        base = (int(tract) * 1000 + int(patch)) * 10 ** 7
        t["objectId"] = base + ids
        pid = np.asarray(rows["parent_id"], np.int64)
        t["parentObjectId"] = np.where(pid > 0, base + pid, 0).astype(np.int64)
        t["coord_ra"], t["coord_dec"] = np.asarray(ra, float), np.asarray(dec, float)
        t["coord_ra"].unit = t["coord_dec"].unit = "deg"
        t["x"], t["y"] = xr, yr
        t["x"].unit = t["y"].unit = "pix"
        t["refBand"] = ref
        ext = np.full(n, np.nan)
        for b in bands:
            sel = ref == b
            ext[sel] = np.asarray(forced[b]["extendedness"], float)[sel]
        t["refExtendedness"] = ext
        if inner_bbox is not None:
            x0, y0, x1, y1 = inner_bbox
            inner = (np.rint(xr) >= x0) & (np.rint(xr) < x1) & (np.rint(yr) >= y0) & (np.rint(yr) < y1)
        else:
            inner = np.ones(n, bool)
        nchild = np.asarray(rows["deblend_nChild"], np.int32)
        t["detect_isPatchInner"] = inner
        t["detect_isPrimary"] = inner & (nchild == 0)
        t["deblend_nChild"] = nchild
        t["tract"] = np.full(n, int(tract), np.int64)
        t["patch"] = np.full(n, int(patch), np.int64)
        for b in bands:
            for c, unit in FORCED_COLUMNS.items():
                t[f"{b}_{c}"] = np.asarray(forced[b][c])
                t[f"{b}_{c}"].unit = unit
            for c, unit in UNFORCED_COLUMNS.items():
                t[f"{b}_{c}"] = np.asarray(meas[b][c])
                t[f"{b}_{c}"].unit = unit
            for c in forced[b].colnames:
                if c.startswith("pixelFlags_"):
                    t[f"{b}_{c}"] = np.asarray(forced[b][c], bool)
    refcat = t.copy()
    refcat["id"] = ids
    refcat["parent_id"] = pid
    objects = t[inner]
    meta = {"n_objects": int(len(objects)), "n_primary": int(np.sum(objects["detect_isPrimary"])),
            "n_rows_patch": n, "ref_band_counts": {b: int(np.sum(ref == b)) for b in bands},
            "timing": timer.timings()}
    return Result(refcat, objects, meta)


def run_quantum(butler, data_id: dict, config: Config) -> dict:
    tract, patch = data_id["tract"], data_id["patch"]
    coadds = read_patch_coadds(butler, tract, patch)
    meas = {}
    for ref in butler.query("deepCoadd_meas", {"tract": tract, "patch": patch}):
        meas[ref.data_id["band"]] = butler.read(ref)
    peaks = butler.get("deepCoadd_mergeDet", {"tract": tract, "patch": patch})
    sky = SkyMap.from_dict(butler.get("skyMap"))
    result = run(coadds, meas, peaks, tract, patch, sky.inner_bbox(patch), config)
    did = {"tract": tract, "patch": patch}
    butler.put(result.ref, "deepCoadd_ref", did)
    butler.put(result.objects, "objectTable", did)
    return result.metadata
