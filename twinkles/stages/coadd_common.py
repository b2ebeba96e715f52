"""Steps shared by the coadd measurement stages (detect_coadd ... merge_measurements); not a stage itself.

* :func:`subtract_background`: the coadd's background re-estimate (DM ``detectCoaddSources`` re-estimates
  the background before detection: sources masked by a first detection pass, a sep mesh, subtracted); every
  later stage calls the same function on the same coadd, so they all see the same pixels;
* :func:`build_deblend`: the multi-band footprints and templates from a patch's coadds and its merged peaks
  (:mod:`twinkles.algorithms.deblend`); ``deblend`` writes the parents and children it finds, and
  ``measure_coadd`` / ``merge_measurements`` rebuild the same deblend (deterministic) to measure children on
  their own share of the pixels -- the apportioned ("heavy") footprints are not stored;
* :func:`measure_objects`: every parent, isolated object and child with :func:`twinkles.measure.measure_sources`
  plus a Kron flux and extendedness, free (recentroided) or forced at given positions and shapes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from astropy.table import Table, vstack

from ..algorithms.background import estimate_background, grow_mask
from ..algorithms.deblend import Deblend, deblend, detection_image, footprint_labels
from ..algorithms.detection import detect_sources, significance_image
from ..image import mask_bit
from ..measure import extendedness, kron_flux, measure_sources
from ..psf import SIGMA_TO_FWHM

__all__ = ["BAND_PRIORITY", "BackgroundConfig", "subtract_background", "psf_sigma", "bad_pixels",
           "read_patch_coadds", "build_deblend", "measure_objects", "psf_enclosed_fraction"]

#: extendedness compares the PSF flux with this aperture's flux corrected to total by the PSF's curve of growth
#: (1.2" radius: large enough to see a galaxy's extent, small enough to keep most neighbours' light out)
EXTENDEDNESS_RADIUS_PX = 6.0
EXTENDEDNESS_APERTURE = "apFlux_6_0"

#: the reference-band order of DM's mergeCoaddMeasurements (priorityList)
BAND_PRIORITY = ("i", "r", "z", "y", "g", "u")


@dataclass
class BackgroundConfig:
    mesh_px: int = 128  # background cell, pixels (DM's coadd re-estimate is a much coarser mesh; our patches are small)
    mask_threshold: float = 3.0  # sigma: sources masked before the estimate
    mask_grow_px: int = 6  # the source mask grown by this many pixels


def psf_sigma(exp) -> float:
    """Gaussian sigma (pixels) of the coadd PSF at the patch centre."""
    cy, cx = (np.array(exp.shape) - 1) / 2.0
    return float(exp.psf.fwhm(cx, cy)) / SIGMA_TO_FWHM


def bad_pixels(exp) -> np.ndarray:
    return ((exp.mask & mask_bit("NO_DATA", "BAD")) != 0) | ~np.isfinite(exp.image) | ~np.isfinite(exp.variance)


def subtract_background(exp, config: BackgroundConfig | None = None) -> tuple[np.ndarray, np.ndarray, float]:
    """(background-subtracted image (float32, 0 on bad pixels), background, residual rms)."""
    config = config or BackgroundConfig()
    bad = bad_pixels(exp)
    image = np.where(bad, 0.0, exp.image).astype(np.float32)
    var = np.where(bad, 0.0, exp.variance).astype(np.float32)
    det = detect_sources(image, var, psf_sigma(exp), threshold=config.mask_threshold, ignore=bad,
                         find_peaks=False, grow_sigma=0.0)
    srcmask = grow_mask(det.detected, config.mask_grow_px) | bad
    if srcmask.all():
        return image, np.zeros_like(image), 0.0
    bkg = estimate_background(image, srcmask, mesh_px=config.mesh_px)
    out = (image - bkg.image).astype(np.float32)
    out[bad] = 0.0
    return out, bkg.image, bkg.global_rms


def read_patch_coadds(butler, tract: int, patch: int) -> dict:
    """band -> deepCoadd of the patch (every band that has one), in BAND_PRIORITY order then the rest."""
    out = {}
    for ref in butler.query("deepCoadd", {"tract": tract, "patch": patch}):
        out[ref.data_id["band"]] = butler.read(ref)
    order = [b for b in BAND_PRIORITY if b in out] + sorted(b for b in out if b not in BAND_PRIORITY)
    return {b: out[b] for b in order}


def build_deblend(coadds: dict, images: dict, x, y, threshold: float = 5.0, max_children: int = 50) -> Deblend:
    """Footprints (any band's S/N above ``threshold``), the peaks (x, y) assigned, templates per blend."""
    bands = list(coadds)
    snrs = [significance_image(images[b], np.where(bad_pixels(coadds[b]), 0.0, coadds[b].variance),
                               psf_sigma(coadds[b]), bad_pixels(coadds[b])) for b in bands]
    labels, _ = footprint_labels(snrs, threshold)
    det = detection_image([images[b] for b in bands], [coadds[b].variance for b in bands])
    sigma = max(psf_sigma(coadds[b]) for b in bands)
    return deblend(det, labels, x, y, sigma, max_children=max_children)


def psf_enclosed_fraction(exp, radius: float = 12.0) -> float:
    """The fraction of the coadd PSF's flux inside a circle of ``radius`` pixels (at the patch centre)."""
    import sep
    cy, cx = (np.array(exp.shape) - 1) / 2.0
    k = np.ascontiguousarray(exp.psf.kernel_image(cx, cy), dtype=np.float64)
    c = (k.shape[0] - 1) / 2.0
    f, _, _ = sep.sum_circle(k, np.array([c]), np.array([c]), radius, subpix=5)
    return float(f[0] / k.sum())


def measure_objects(exp, image: np.ndarray, deb: Deblend, rows: Table, x, y, forced: bool = False,
                    shapes: Table | None = None) -> Table:
    """Measure every row of a deblend catalog (``peak`` index -1 for blend parents, ``parent_id`` != 0 for
    children) on the band's background-subtracted ``image``: parents and isolated objects on the image,
    children on their deblend layer. ``forced``: positions kept; ``shapes`` (ixx, iyy, ixy, kronRad per row)
    then fix the Kron ellipse. Returns a Table in row order (fluxes in the image's units, nJy on a coadd)."""
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    n = len(rows)
    is_child = np.asarray(rows["parent_id"]) != 0
    peak = np.asarray(rows["peak"])
    var = np.where(bad_pixels(exp), np.inf, exp.variance).astype(np.float32)
    var_meas = np.where(np.isfinite(var), var, 0.0).astype(np.float32)
    bad = bad_pixels(exp)
    parts = []
    order = []
    base = np.flatnonzero(~is_child)
    layers = [(image, base)]
    row_of_peak = {int(p): i for i, p in enumerate(peak) if is_child[i]}
    for layer, shown in deb.layers(image):
        idx = np.array([row_of_peak[int(p)] for p in shown if int(p) in row_of_peak], int)
        layers.append((layer, idx))
    for img, idx in layers:
        if not len(idx):
            continue
        t = measure_sources(img, var_meas, exp.mask, exp.psf, x[idx], y[idx], recentroid=not forced)
        if shapes is None:
            sx, sy, sxy, kr = t["ixx"], t["iyy"], t["ixy"], None
        else:
            sx, sy, sxy = shapes["ixx"][idx], shapes["iyy"][idx], shapes["ixy"][idx]
            kr = shapes["kronRad"][idx]
        kf, ke, krad, kfl = kron_flux(img, var_meas, t["x"], t["y"], sx, sy, sxy, bad=bad, kron_radius=kr)
        t["kronFlux"], t["kronFluxErr"], t["kronRad"], t["kronFlux_flag"] = kf, ke, krad, kfl
        parts.append(t)
        order.append(idx)
    if not parts:
        return Table()
    t = vstack(parts, metadata_conflicts="silent")
    t = t[np.argsort(np.concatenate(order), kind="stable")]
    assert len(t) == n
    factor = float(exp.metadata.get("psf_flux_noise_factor", 1.0))
    for c in ("psfFluxErr", "kronFluxErr"):
        t[c] = np.asarray(t[c], float) * factor
    apc = psf_enclosed_fraction(exp, EXTENDEDNESS_RADIUS_PX)
    model = np.asarray(t[EXTENDEDNESS_APERTURE], float) / apc
    model_err = np.asarray(t[EXTENDEDNESS_APERTURE + "Err"], float) * factor / apc
    t["extendedness"] = extendedness(t["psfFlux"], t["psfFluxErr"], model, model_err)
    return t
