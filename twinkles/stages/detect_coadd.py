"""detectCoaddSources (DM pipe_tasks ``DetectCoaddSourcesTask``; the DRP step ``detectCoaddPeaks`` in newer
pipelines): per (tract, patch, band), the background re-estimated and sources detected on the deepCoadd with
its CoaddPsf -- footprints above 5 sigma of the PSF-smoothed image (DM ``thresholdValue`` 5) and their peaks.

Steps: ``subtract_background`` (:func:`twinkles.stages.coadd_common.subtract_background`), ``detect``
(:func:`twinkles.algorithms.detection.detect_sources`, matched filter with the coadd PSF's width), ``peak_table``
(deepCoadd_det: one row per peak with its footprint, S/N and sky position).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from astropy.table import Table

from ..algorithms.detection import detect_sources
from .coadd_common import BackgroundConfig, bad_pixels, psf_sigma, subtract_background
from .timing import StepTimer

__all__ = ["Config", "QUANTUM", "INPUTS", "OUTPUTS", "Result", "run", "run_quantum"]

QUANTUM = ("tract", "patch", "band")
INPUTS = ["deepCoadd"]
OUTPUTS = ["deepCoadd_det"]


@dataclass
class Config:
    threshold: float = 5.0  # sigma of the PSF-smoothed image (DM thresholdValue 5)
    min_pixels: int = 3  # smallest footprint, pixels (DM minPixels 1)
    min_prominence: float = 3.0  # sigma: a secondary peak must rise this far above the saddle
    background: BackgroundConfig = field(default_factory=BackgroundConfig)


@dataclass
class Result:
    peaks: Table
    metadata: dict


def run(coadd, config: Config | None = None, band: str = "") -> Result:
    config = config or Config()
    timer = StepTimer()
    with timer("subtract_background"):
        image, _, rms = subtract_background(coadd, config.background)
    with timer("detect"):
        bad = bad_pixels(coadd)
        var = np.where(bad, 0.0, coadd.variance).astype(np.float32)
        det = detect_sources(image, var, psf_sigma(coadd), threshold=config.threshold, ignore=bad,
                             min_pixels=config.min_pixels, min_prominence=config.min_prominence)
    with timer("peak_table"):
        peaks = peak_table(det.sources, coadd.wcs, band)
    meta = {"band": band, "n_peaks": len(peaks), "n_footprints": int(len(np.unique(peaks["footprint"]))),
            "background_rms": rms, "timing": timer.timings()}
    return Result(peaks, meta)


def peak_table(src, wcs, band: str) -> Table:
    t = Table()
    t["id"] = np.asarray(src["id"], np.int64)
    t["x"], t["y"] = np.asarray(src["x"], float), np.asarray(src["y"], float)
    t["x"].unit = t["y"].unit = "pix"
    t["x_peak"], t["y_peak"] = src["x_peak"], src["y_peak"]
    t["significance"] = np.asarray(src["significance"], float)
    t["footprint"] = np.asarray(src["parent_id"], np.int64)
    t["npix"] = src["npix"]
    ra, dec = wcs.all_pix2world(t["x"], t["y"], 0) if len(t) else (np.zeros(0), np.zeros(0))
    t["coord_ra"], t["coord_dec"] = np.asarray(ra, float), np.asarray(dec, float)
    t["coord_ra"].unit = t["coord_dec"].unit = "deg"
    t["band"] = np.array([band] * len(t), dtype="U1")
    return t


def run_quantum(butler, data_id: dict, config: Config) -> dict:
    coadd = butler.get("deepCoadd", data_id)
    result = run(coadd, config, data_id["band"])
    butler.put(result.peaks, "deepCoadd_det", data_id)
    return result.metadata
