"""detectCoaddSources (DM pipe_tasks ``DetectCoaddSourcesTask``; the DRP step ``detectCoaddPeaks`` in newer
pipelines): per (tract, patch, band), the background re-estimated and sources detected on the deepCoadd with
its CoaddPsf -- footprints above 5 sigma of the PSF-smoothed image (DM ``thresholdValue`` 5) and their peaks.

Steps: ``subtract_background`` (:func:`twinkles.stages.coadd_common.subtract_background`), ``detect``
(:func:`twinkles.algorithms.detection.detect_sources`: footprints and peaks on the image smoothed by a
Gaussian of 0.7 times the coadd PSF's width -- DM smooths by the PSF itself, which merges a galaxy 1.5-2 FWHM
from a brighter one into it; saturated cores, empty in the coadd, make one peak each), ``peak_table``
(deepCoadd_det: one row per peak with its footprint, S/N and sky position).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from astropy.table import Table

from scipy import ndimage

from ..algorithms.background import grow_mask
from ..algorithms.detection import detect_sources
from ..image import MASK_PLANES, mask_bit
from ..psf import SIGMA_TO_FWHM
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
    min_prominence_frac: float = 0.0  # ... and by this fraction of its own S/N (bright galaxies' structure)
    smoothing_factor: float = 0.7  # the peak-finding filter's Gaussian sigma in units of the coadd PSF's
    # (DM 1: the full PSF; 0.7 loses ~6% S/N on point sources but finds galaxies 1.5-2 FWHM from brighter ones)
    fine_smoothing_factor: float = 0.3  # second peak search on a finer filter (0: none), for close faint pairs
    fine_min_separation_fwhm: float = 1.0  # ... its peaks kept this far (PSF FWHMs) from the first search's
    hole_grow_fwhm: float = 2.5  # saturated cores (NO_DATA holes): peaks within this many FWHM merge into one
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
        sigma = psf_sigma(coadd)
        holes = saturated_holes(coadd, int(round(config.hole_grow_fwhm * sigma * SIGMA_TO_FWHM)))
        det = detect_sources(image, var, config.smoothing_factor * sigma, threshold=config.threshold, ignore=bad,
                             min_pixels=config.min_pixels, min_prominence=config.min_prominence,
                             min_prominence_frac=config.min_prominence_frac, saturated=holes)
        if config.fine_smoothing_factor > 0:
            fine = detect_sources(image, var, config.fine_smoothing_factor * sigma, threshold=config.threshold,
                                  ignore=bad, min_pixels=config.min_pixels, min_prominence=config.min_prominence,
                                  min_prominence_frac=config.min_prominence_frac, saturated=holes)
            det.sources = add_fine_peaks(det, fine.sources, config.fine_min_separation_fwhm * sigma * SIGMA_TO_FWHM)
    with timer("peak_table"):
        peaks = peak_table(det.sources, coadd.wcs, band)
    meta = {"band": band, "n_peaks": len(peaks), "n_footprints": int(len(np.unique(peaks["footprint"]))),
            "background_rms": rms, "timing": timer.timings()}
    return Result(peaks, meta)


def add_fine_peaks(det, fine, min_sep_px: float):
    """The first search's peaks plus those of the finer search that lie in its footprints and farther than
    ``min_sep_px`` from all of its peaks (a faint neighbour 1.5-2 FWHM from a brighter source is a local
    maximum only on a finely smoothed image); ids renumbered, blend counts updated."""
    src = det.sources
    if not len(fine) or not len(src):
        return src
    lab = det.footprints[fine["y_peak"], fine["x_peak"]]
    d = np.hypot(fine["x"][:, None] - src["x"][None, :], fine["y"][:, None] - src["y"][None, :]).min(axis=1)
    new = fine[(lab > 0) & (d > min_sep_px)].copy()
    new["parent_id"] = det.footprints[new["y_peak"], new["x_peak"]]
    new["npix"] = 0
    out = np.concatenate([src, new])
    out["id"] = np.arange(1, len(out) + 1)
    counts = np.bincount(out["parent_id"], minlength=int(out["parent_id"].max()) + 1)
    out["n_child"] = np.where(counts[out["parent_id"]] > 1, counts[out["parent_id"]], 0)
    return out


def saturated_holes(coadd, grow_px: int) -> np.ndarray:
    """The coadd's saturated cores: NO_DATA (or SAT) regions enclosed by data (every input saturated there, so
    assemble_coadd left them empty), grown by ``grow_px``; detect_sources merges every peak on one into a single
    source at its centre (else the ring of light around the hole becomes a ring of false peaks)."""
    no_data = (coadd.mask & mask_bit("NO_DATA")) != 0
    lab, n = ndimage.label(no_data)
    edge = np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
    inner = no_data & ~np.isin(lab, edge)
    if "SAT" in MASK_PLANES:
        inner |= (coadd.mask & mask_bit("SAT")) != 0
    return grow_mask(inner, grow_px) if inner.any() and grow_px > 0 else inner


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
