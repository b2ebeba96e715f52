"""measureCoaddSources (DM pipe_tasks ``MeasureMergedCoaddSourcesTask``; newer pipelines
``measureObjectUnforced``): every isolated object, blend parent and deblended child of a patch measured in one
band -- deepCoadd_meas.

Steps: ``subtract_background`` (as detect_coadd), ``deblend`` (the deblend stage's, rebuilt from the patch's
coadds and merged peaks: deterministic, so the children see the same share of the pixels), ``measure``: the
shared :func:`twinkles.measure.measure_sources` (windowed centroid, PSF flux with the CoaddPsf, aperture fluxes,
adaptive moments, pixel flags) on the coadd for parents and isolated objects and on each child's deblend layer
for children, plus a Kron flux (the galaxy flux: no CModel fit here) and ``extendedness`` (PSF flux against the
aperture-corrected 6-pixel (1.2") aperture flux, DM's 0.985 ratio). PSF- and Kron-flux errors are multiplied by the
coadd's ``psf_flux_noise_factor`` (resampling-correlated noise).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from astropy.table import Table

from .coadd_common import (BackgroundConfig, build_deblend, measure_objects, read_patch_coadds,
                           subtract_background)
from .timing import StepTimer

__all__ = ["Config", "QUANTUM", "INPUTS", "OUTPUTS", "Result", "run", "run_quantum"]

QUANTUM = ("tract", "patch", "band")
INPUTS = ["deepCoadd_deblendedFlux", "deepCoadd_mergeDet", "deepCoadd", "skyMap"]
OUTPUTS = ["deepCoadd_meas"]


@dataclass
class Config:
    threshold: float = 5.0  # sigma: the deblend footprints' threshold (must equal deblend.threshold)
    max_children: int = 50  # as deblend.max_children
    background: BackgroundConfig = field(default_factory=BackgroundConfig)


@dataclass
class Result:
    table: Table
    metadata: dict


def run(coadds: dict, band: str, peaks: Table, rows: Table, config: Config | None = None) -> Result:
    config = config or Config()
    timer = StepTimer()
    with timer("subtract_background"):
        images = {b: subtract_background(c, config.background)[0] for b, c in coadds.items()}
    with timer("deblend"):
        deb = build_deblend(coadds, images, peaks["x"], peaks["y"], config.threshold, config.max_children)
    with timer("measure"):
        exp = coadds[band]
        meas = measure_objects(exp, images[band], deb, rows, rows["x"], rows["y"])
    t = rows.copy()
    for c in meas.colnames:
        if c not in ("x", "y"):
            t[c] = meas[c]
    t["centroid_x"], t["centroid_y"] = meas["x"], meas["y"]
    ra, dec = exp.wcs.all_pix2world(t["centroid_x"], t["centroid_y"], 0) if len(t) else ([], [])
    t["coord_ra"], t["coord_dec"] = np.asarray(ra, float), np.asarray(dec, float)
    t["coord_ra"].unit = t["coord_dec"].unit = "deg"
    for c in ("psfFlux", "psfFluxErr", "kronFlux", "kronFluxErr"):
        t[c].unit = "nJy"
    meta = {"band": band, "n_objects": len(t), "timing": timer.timings()}
    return Result(t, meta)


def run_quantum(butler, data_id: dict, config: Config) -> dict:
    tract, patch, band = data_id["tract"], data_id["patch"], data_id["band"]
    coadds = read_patch_coadds(butler, tract, patch)
    peaks = butler.get("deepCoadd_mergeDet", {"tract": tract, "patch": patch})
    rows = butler.get("deepCoadd_deblendedFlux", data_id)
    result = run(coadds, band, peaks, rows, config)
    butler.put(result.table, "deepCoadd_meas", data_id)
    return result.metadata
