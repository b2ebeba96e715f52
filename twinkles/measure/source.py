"""Measure every source at once: centroid, PSF flux, aperture fluxes, adaptive moments, sky and pixel flags.

Used by process_eimage on calexps, and by the coadd and forced-photometry stages. Everything is in the image's
units (electrons for a calexp); calibration to nJy and aperture correction are applied by the caller
(:func:`apply_calibration`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from astropy.table import Table

from ..image import mask_bit
from ..psf import SIGMA_TO_FWHM
from .centroid import windowed_centroid
from .flags import mask_test, pixel_flags
from .moments import adaptive_moments, moments_from_stamps
from .photometry import APERTURE_RADII, _float_plane, aperture_column, aperture_fluxes, psf_flux
from ..interpolation import bilinear
from ..stamps import PsfStamps

__all__ = ["MeasurementConfig", "measure_sources", "extendedness", "apply_calibration", "FLUX_COLUMNS"]


@dataclass
class MeasurementConfig:
    aperture_radii: tuple = APERTURE_RADII  # pixels, DM's base_CircularApertureFlux radii
    psf_fit_size: int = 0  # PSF-fit stamp size (pixels, odd); 0 = the PSF model stamp
    psf_grid: int = 5  # the PSF model is sampled on psf_grid x psf_grid detector positions
    centroid_iterations: int = 12
    max_centroid_shift_px: float = 2.0  # a windowed centroid moving further than this is flagged
    extendedness_ratio: float = 0.985  # DM: psfFlux / modelFlux below this -> extended
    extendedness_nsigma: float = 2.0  # ... and by more than this many sigma of the ratio
    moments: bool = True  # adaptive moments with GalSim HSM


FLUX_COLUMNS = ["psfFlux"] + [aperture_column(r) for r in APERTURE_RADII]


def measure_sources(image: np.ndarray, variance: np.ndarray, mask: np.ndarray, psf, x, y,
                    background: np.ndarray | None = None, config: MeasurementConfig | None = None,
                    psf_stamps: PsfStamps | None = None, recentroid: bool = True) -> Table:
    """Measure sources at starting positions (x, y) on a background-subtracted image.

    Returns an astropy Table (one row per input position, same order) with x, y, xErr, yErr, centroid_flag,
    psfFlux, psfFluxErr, psfFlux_flag, apFlux_R (+Err, _flag), ixx, iyy, ixy, ixxPSF, iyyPSF, ixyPSF,
    shape_flag, sky and the pixelFlags_* columns; fluxes in the image's units. With ``recentroid=False`` the
    positions are kept (forced measurement).
    """
    config = config or MeasurementConfig()
    # no float64 copies of whole images: stamps are cut from the float32 planes and computed on in float64
    image = _float_plane(image)
    variance = _float_plane(variance)
    mask = np.asarray(mask)
    x = np.atleast_1d(np.asarray(x, float)).copy()
    y = np.atleast_1d(np.asarray(y, float)).copy()
    n = len(x)
    stamps = psf_stamps or PsfStamps(psf, image.shape, n_grid=config.psf_grid)
    fwhm = float(psf.fwhm())
    sigma = fwhm / SIGMA_TO_FWHM
    mask32 = np.ascontiguousarray(mask, dtype=np.int32)
    good = mask_test(mask32, mask_bit("NO_DATA", "BAD"), False)  # one pass, no integer temporary
    unusable = ~good
    t = Table()
    if recentroid and n:
        xc, yc, xe, ye, cflag = windowed_centroid(image, variance, x, y, sigma, good=good,
                                                  n_iter=config.centroid_iterations,
                                                  max_shift_px=config.max_centroid_shift_px)
    else:
        xc, yc = x, y
        xe = ye = np.full(n, np.nan)
        cflag = np.zeros(n, bool)
    t["x"], t["y"] = xc, yc
    t["xErr"], t["yErr"] = xe, ye
    t["centroid_flag"] = cflag
    fit_good = mask_test(mask32, mask_bit("NO_DATA", "BAD", "SAT"), False)
    pf, pe, pfl = psf_flux(image, variance, stamps, xc, yc, fit_good,
                           size=config.psf_fit_size or None)
    t["psfFlux"], t["psfFluxErr"], t["psfFlux_flag"] = pf, pe, pfl
    aps = aperture_fluxes(image, variance, xc, yc, config.aperture_radii, bad=unusable)
    for r, (f, e, fl) in aps.items():
        col = aperture_column(r)
        t[col], t[col + "Err"], t[col + "_flag"] = f, e, fl
    # adaptive moments of the source and of the PSF model at its position
    if config.moments and n:
        mom = adaptive_moments(image, xc, yc, good=good, guess_sigma=sigma)
        t["ixx"], t["iyy"], t["ixy"] = mom["ixx"], mom["iyy"], mom["ixy"]
        t["shape_flag"] = mom["flag"]
    else:
        for c in ("ixx", "iyy", "ixy"):
            t[c] = np.full(n, np.nan)
        t["shape_flag"] = np.ones(n, bool)
    gm = moments_from_stamps(stamps.grid.reshape(-1, stamps.model_size, stamps.model_size), None, sigma)
    for c in ("ixx", "iyy", "ixy"):
        grid_vals = gm[c].reshape(len(stamps.ys), len(stamps.xs))
        t[c + "PSF"] = bilinear(grid_vals, stamps.xs, stamps.ys, xc, yc)
    if background is not None and n:
        yi = np.clip(np.rint(yc).astype(int), 0, image.shape[0] - 1)
        xi = np.clip(np.rint(xc).astype(int), 0, image.shape[1] - 1)
        t["sky"] = np.asarray(background)[yi, xi].astype(np.float64)
    else:
        t["sky"] = np.zeros(n)
    edge_px = int(math.ceil(fwhm))
    for name, val in pixel_flags(mask, xc, yc, edge_px=edge_px).items():
        t[name] = val
    return t


def extendedness(psf_flux, psf_flux_err, model_flux, model_flux_err, ratio: float = 0.985,
                 nsigma: float = 2.0):
    """DM's classification: 1.0 where psfFlux / modelFlux < ``ratio`` (and by more than ``nsigma`` sigma of the
    ratio), else 0.0; NaN where either flux is not positive/finite. ``model_flux`` is an aperture-corrected
    large-aperture flux here (no CModel)."""
    pf = np.asarray(psf_flux, float)
    mf = np.asarray(model_flux, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = pf / mf
        sr = np.abs(r) * np.sqrt((np.asarray(psf_flux_err) / pf) ** 2 + (np.asarray(model_flux_err) / mf) ** 2)
        ext = ((r < ratio) & (ratio - r > nsigma * sr)).astype(float)
    ext[~(np.isfinite(r) & (mf > 0))] = np.nan
    return ext


def apply_calibration(table: Table, njy_per_electron: float, flux_columns=None) -> None:
    """Multiply flux columns (and their Err) by ``njy_per_electron`` in place; sets their unit to nJy."""
    for col in flux_columns or [c for c in FLUX_COLUMNS if c in table.colnames]:
        table[col] = np.asarray(table[col], float) * njy_per_electron
        table[col].unit = "nJy"
        if col + "Err" in table.colnames:
            table[col + "Err"] = np.asarray(table[col + "Err"], float) * njy_per_electron
            table[col + "Err"].unit = "nJy"
