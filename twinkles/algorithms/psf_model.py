"""PSF determination: star selection on the size-magnitude locus, and a spatially varying pixel-basis PSF model.

Star selection (no truth): among bright (S/N >= ``min_snr``), unsaturated, unblended sources with good adaptive
moments, stars are the tight, smallest clump in size ``T = ixx + iyy``: the densest window in ``ln T`` (width
``size_window``) is found, then members are kept within ``clip_nsigma`` robust sigmas of its median. Galaxies are
larger; cosmic rays were already removed. Objects of extreme ellipticity are dropped.

The model (:func:`fit_pixel_psf`): the PSF sampled on the native pixel grid, every pixel a polynomial of
detector position, as PSFEx's PIXEL basis (Bertin 2011) and Piff's PixelGrid x BasisPolynomial; stored with the
calexp as an :class:`~twinkles.psf.ImageGridPSF` sampled on a grid of positions.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
from astropy.stats import mad_std

from ..psf import ImageGridPSF, PiffPSF

__all__ = ["StarSelection", "select_psf_stars", "fit_pixel_psf", "fit_piff_psf", "PsfFitError"]

log = logging.getLogger(__name__)


class PsfFitError(RuntimeError):
    """Not enough usable stars to fit a PSF model."""


@dataclass
class StarSelection:
    selected: np.ndarray  # bool per candidate
    stellar_size: float  # median T = ixx + iyy of the stellar locus (pixels^2)
    n_candidates: int  # bright, clean candidates considered


def select_psf_stars(snr, ixx, iyy, ixy, usable, min_snr: float = 50.0, size_window: float = 0.15,
                     clip_nsigma: float = 3.0, max_ellipticity: float = 0.25, max_stars: int = 0,
                     x=None, y=None) -> StarSelection:
    """Select PSF stars on the size-magnitude locus.

    ``snr``: detection or PSF-flux S/N; ``ixx, iyy, ixy``: adaptive moments (pixels^2); ``usable``: bool, False
    for saturated, blended, edge, CR-touched or badly measured sources. With ``max_stars`` > 0, the brightest
    ``max_stars`` of the selection are kept, spread over the detector when ``x, y`` are given.
    """
    snr = np.asarray(snr, float)
    ixx, iyy, ixy = (np.asarray(a, float) for a in (ixx, iyy, ixy))
    t = ixx + iyy
    with np.errstate(invalid="ignore", divide="ignore"):
        e = np.hypot(ixx - iyy, 2 * ixy) / t
        cand = np.asarray(usable, bool) & (snr >= min_snr) & np.isfinite(t) & (t > 0) & (e < max_ellipticity)
    sel = np.zeros(len(snr), bool)
    if cand.sum() < 3:
        return StarSelection(sel, float("nan"), int(cand.sum()))
    lt = np.log(t[cand])
    srt = np.sort(lt)
    # densest window: for each candidate start, the count within [lt, lt + size_window]
    counts = np.searchsorted(srt, srt + size_window, side="right") - np.arange(len(srt))
    # prefer the smallest sizes among (near-)maximal windows: stars are the smallest clump
    best = int(np.argmax(counts >= counts.max() * 0.9))
    centre = float(np.median(srt[best:best + counts[best]]))
    members = np.abs(lt - centre) < size_window
    width = float(mad_std(lt[members])) if members.sum() > 2 else 0.02
    width = max(width, 0.01)
    centre = float(np.median(lt[members]))
    keep = np.abs(lt - centre) < clip_nsigma * width
    idx = np.nonzero(cand)[0][keep]
    if max_stars and len(idx) > max_stars:
        idx = _spread(idx, snr, x, y, max_stars)
    sel[idx] = True
    return StarSelection(sel, float(math.exp(centre)), int(cand.sum()))


def _spread(idx, snr, x, y, n):
    """Up to ``n`` of ``idx``: the brightest in each cell of a grid over the detector, then by S/N."""
    order = idx[np.argsort(-snr[idx])]
    if x is None or y is None:
        return order[:n]
    x, y = np.asarray(x), np.asarray(y)
    k = max(1, int(math.sqrt(n / 4)))
    xe = np.quantile(x[order], np.linspace(0, 1, k + 1)[1:-1]) if k > 1 else []
    ye = np.quantile(y[order], np.linspace(0, 1, k + 1)[1:-1]) if k > 1 else []
    cell = np.searchsorted(xe, x[order]) * k + np.searchsorted(ye, y[order])
    rank = np.zeros(len(order), int)
    for c in np.unique(cell):
        m = cell == c
        rank[m] = np.arange(m.sum())
    chosen = order[np.lexsort((-snr[order], rank))][:n]
    return chosen


def fit_pixel_psf(image: np.ndarray, variance: np.ndarray, weight_mask: np.ndarray, x, y,
                  stamp_size: int = 31, order: int = 2, min_stars: int = 5, n_iter: int = 3,
                  outlier_nsigma: float = 5.0, n_grid: int = 5, footprints: np.ndarray | None = None,
                  own_labels=None, core_radius_px: float = 3.0, min_stars_per_term: float = 10.0
                  ) -> tuple[ImageGridPSF, np.ndarray, dict]:
    """Fit a pixel-basis PSF whose pixel values are 2-d polynomials of detector position (PSFEx-like).

    Each star stamp is shifted so that its centroid (x, y) falls on the central pixel (Fourier shift theorem on
    a padded stamp; the PSF is well sampled) and divided by its flux; every model pixel p is then a polynomial
    ``sum_k c_pk u^a v^b`` (a + b <= ``order``, u, v the position scaled to [-1, 1]) fitted by weighted least
    squares over the stars with weights ``flux^2 / variance``. Fluxes are re-measured with the model (linear
    PSF fit) and stars whose reduced chi^2 is more than ``outlier_nsigma`` robust sigmas above the median are
    rejected, ``n_iter`` times. ``weight_mask``: usable pixels; ``footprints``/``own_labels``: pixels of other
    footprints in a stamp get zero weight; stars with a masked pixel within ``core_radius_px`` are skipped.
    The order is lowered until there are at least ``min_stars_per_term`` stars per polynomial term (order 2 has
    6 terms, order 1 has 3): a pixel model has many parameters and noise in them biases PSF fluxes.

    Returns ``(ImageGridPSF, used, info)``: the model evaluated on an ``n_grid`` x ``n_grid`` grid of detector
    positions (kernels normalised to 1 over ``stamp_size``), the stars kept, and fit statistics.
    """
    from ..stamps import extract_stamps, fourier_shift

    x = np.asarray(x, float)
    y = np.asarray(y, float)
    ny, nx = image.shape
    stamp_size += 1 - stamp_size % 2
    h = stamp_size // 2
    pad = 6
    big = stamp_size + 2 * pad
    xi, yi = np.rint(x).astype(int), np.rint(y).astype(int)
    inside = (xi - h >= 0) & (yi - h >= 0) & (xi + h < nx) & (yi + h < ny)
    idx = np.nonzero(inside)[0]
    im, ins = extract_stamps(np.asarray(image), x[idx], y[idx], big)  # cut from the plane as it is, then float64
    var, _ = extract_stamps(np.asarray(variance), x[idx], y[idx], big)
    im, var = im.astype(np.float64), var.astype(np.float64)
    good, _ = extract_stamps(np.asarray(weight_mask, bool), x[idx], y[idx], big, fill=False)
    good &= ins & np.isfinite(im) & np.isfinite(var) & (var > 0)
    if footprints is not None and own_labels is not None:
        fp, _ = extract_stamps(footprints, x[idx], y[idx], big)
        own = np.asarray(own_labels)[idx][:, None, None]
        good &= (fp == 0) | (fp == own)
    off = np.arange(big) - big // 2
    r2 = off[None, :] ** 2 + off[:, None] ** 2
    core_ok = ~((~good) & (r2 <= core_radius_px ** 2)[None]).any(axis=(1, 2))
    idx, im, var, good = idx[core_ok], im[core_ok], var[core_ok], good[core_ok]
    n = len(idx)
    if n < min_stars:
        raise PsfFitError(f"{n} usable PSF stars (need >= {min_stars})")
    while order > 0 and n < min_stars_per_term * (order + 1) * (order + 2) / 2:
        order -= 1
    # shift every star so that its centroid is on the central pixel
    dx, dy = x[idx] - xi[idx], y[idx] - yi[idx]
    data = fourier_shift(np.where(good, im, 0.0), -dx, -dy)
    # shifted weights: a masked pixel spoils its neighbours after shifting; use the nearest-pixel mask grown by 1
    from scipy import ndimage
    bad = ndimage.binary_dilation(~good, structure=np.ones((1, 3, 3), bool))
    crop = slice(pad, pad + stamp_size)
    data = data[:, crop, crop]
    var = var[:, crop, crop]
    wgood = ~bad[:, crop, crop]
    # polynomial basis of position
    cx, cy = (nx - 1) / 2.0, (ny - 1) / 2.0
    half = max(nx, ny) / 2.0
    u, v = (x[idx] - cx) / half, (y[idx] - cy) / half
    terms = [(a, b) for a in range(order + 1) for b in range(order + 1 - a)]
    basis = np.stack([u ** a * v ** b for a, b in terms], axis=1)  # (n, K)
    flux = np.where(wgood, data, 0.0).sum(axis=(1, 2))
    keep = flux > 0
    coeffs = None
    chi2 = np.full(n, np.nan)
    for it in range(n_iter + 1):
        w = np.where(wgood, flux[:, None, None] ** 2 / var, 0.0) * keep[:, None, None]  # (n, S, S)
        yv = np.where(keep, 1.0, 0.0)[:, None, None] * data / np.where(flux > 0, flux, 1.0)[:, None, None]
        wf = w.reshape(n, -1)
        A = np.einsum("np,nk,nl->pkl", wf, basis, basis)  # (P, K, K)
        b = np.einsum("np,nk->pk", wf * yv.reshape(n, -1), basis)
        A += np.eye(len(terms))[None] * 1e-12 * np.trace(A, axis1=1, axis2=2)[:, None, None].clip(1e-30)
        coeffs = np.linalg.solve(A, b[..., None])[..., 0]  # (P, K)
        model = (basis @ coeffs.T).reshape(n, stamp_size, stamp_size)
        model /= model.sum(axis=(1, 2), keepdims=True)
        # re-measure fluxes with the model (equal weights), then chi^2 per star
        mw = np.where(wgood, model, 0.0)
        flux = (mw * data).sum(axis=(1, 2)) / (mw * mw).sum(axis=(1, 2))
        resid = np.where(wgood, data - flux[:, None, None] * model, 0.0)
        dof = wgood.sum(axis=(1, 2)) - 1
        chi2 = (resid ** 2 / var).sum(axis=(1, 2)) / np.maximum(dof, 1)
        if it == n_iter or outlier_nsigma <= 0:
            break
        med = np.median(chi2[keep])
        mad = mad_std(chi2[keep])
        new_keep = keep & (chi2 < med + outlier_nsigma * max(mad, 1e-3 * med)) & (flux > 0)
        if new_keep.sum() < max(min_stars, len(terms) + 1):
            break
        if (new_keep == keep).all() and it > 0:
            break
        keep = new_keep
    xs = np.linspace(0, nx - 1, n_grid) if n_grid > 1 else np.array([cx])
    ys = np.linspace(0, ny - 1, n_grid) if n_grid > 1 else np.array([cy])
    gu, gv = np.meshgrid((xs - cx) / half, (ys - cy) / half)
    gb = np.stack([gu.ravel() ** a * gv.ravel() ** b for a, b in terms], axis=1)
    grid = (gb @ coeffs.T).reshape(len(ys), len(xs), stamp_size, stamp_size)
    grid /= grid.sum(axis=(2, 3), keepdims=True)
    used = np.zeros(len(x), bool)
    used[idx[keep]] = True
    info = {"n_stars": int(keep.sum()), "order": order, "median_chi2": float(np.median(chi2[keep]))}
    return ImageGridPSF(grid, xs, ys), used, info


def fit_piff_psf(image: np.ndarray, variance: np.ndarray, weight_mask: np.ndarray, x, y,
                 stamp_size: int = 25, model_size: int = 21, order: int = 2, min_stars: int = 5,
                 max_iter: int = 5, outlier_nsigma: float = 5.0, min_stars_per_term: float = 10.0,
                 footprints: np.ndarray | None = None, own_labels=None) -> tuple[PiffPSF, np.ndarray, dict]:
    """Fit a Piff ``PixelGrid`` x ``BasisPolynomial`` PSF (Piff's pixel basis, as Rubin's piffPsf uses) to the
    stars at (x, y) (0-based pixels); slower than :func:`fit_pixel_psf` (Piff solves star by star in Python).

    Piff's (u, v) are pixel offsets from the detector centre (an offset WCS of scale 1), so the model pixels are
    native pixels. ``weight_mask``: usable pixels; pixels of other footprints in a stamp get zero weight.
    Returns ``(PiffPSF, used, info)`` like :func:`fit_pixel_psf`.
    """
    import galsim
    import piff

    x = np.asarray(x, float)
    y = np.asarray(y, float)
    ny, nx = image.shape
    stamp_size += 1 - stamp_size % 2
    h = stamp_size // 2
    cx, cy = (nx - 1) / 2.0, (ny - 1) / 2.0
    wcs = galsim.OffsetWCS(1.0, origin=galsim.PositionD(cx + 1.0, cy + 1.0))
    stars, keep_idx = [], []
    for i in range(len(x)):
        xi, yi = int(round(x[i])), int(round(y[i]))
        if xi - h < 0 or yi - h < 0 or xi + h >= nx or yi + h >= ny:
            continue
        sl = (slice(yi - h, yi + h + 1), slice(xi - h, xi + h + 1))
        var = np.asarray(variance[sl], float)
        w = np.where(weight_mask[sl] & np.isfinite(var) & (var > 0), 1.0 / np.where(var > 0, var, 1.0), 0.0)
        if footprints is not None and own_labels is not None:
            fp = footprints[sl]
            w[(fp != 0) & (fp != own_labels[i])] = 0.0
        if (w[h - 2:h + 3, h - 2:h + 3] == 0).any():
            continue
        im = galsim.Image(np.ascontiguousarray(image[sl], dtype=float), xmin=xi - h + 1, ymin=yi - h + 1, wcs=wcs)
        wt = galsim.Image(np.ascontiguousarray(w), xmin=xi - h + 1, ymin=yi - h + 1, wcs=wcs)
        stars.append(piff.Star(piff.StarData(im, galsim.PositionD(x[i] + 1.0, y[i] + 1.0), weight=wt), None))
        keep_idx.append(i)
    n = len(stars)
    if n < min_stars:
        raise PsfFitError(f"{n} usable PSF stars (need >= {min_stars})")
    while order > 0 and n < min_stars_per_term * (order + 1) * (order + 2) / 2:
        order -= 1
    psf = piff.SimplePSF(piff.PixelGrid(scale=1.0, size=model_size), piff.BasisPolynomial(order=order),
                         outliers=[piff.ChisqOutliers(nsigma=outlier_nsigma, max_remove=0.05)]
                         if outlier_nsigma > 0 else None, max_iter=max_iter)
    psf.set_context({0: wcs})
    quiet = logging.getLogger("twinkles.piff")
    quiet.setLevel(logging.ERROR)
    psf.fit(stars, logger=quiet)
    used = np.zeros(len(x), bool)
    fitted = {(round(s.image_pos.x, 6), round(s.image_pos.y, 6)) for s in psf.stars if not s.is_flagged}
    for i in keep_idx:
        used[i] = (round(x[i] + 1.0, 6), round(y[i] + 1.0, 6)) in fitted
    info = {"n_stars": int(used.sum()), "order": order,
            "median_chi2": float(psf.chisq / max(psf.dof, 1))}
    return PiffPSF(psf, center=(cx, cy), default_size=stamp_size), used, info
