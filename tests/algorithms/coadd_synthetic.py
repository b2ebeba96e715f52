"""Synthetic warps of one patch for the coadd tests: Exposures as the warp contract describes them.

``make_warps`` draws N visits of a grid of stars (known fluxes, a 1% calibration scatter per visit), each visit
with its own elliptical Gaussian PSF and Gaussian sky noise of known variance, some visits covering only part of
the patch; visit 0 has a satellite trail, visits 1 and 2 a moving transient (one position each), visit 4
unmasked cosmic rays; one star is very bright and one varies by +-60%. The PSF-matched warps are the direct ones
convolved to a round Gaussian (a kernel 1% off in width per visit, as real PSF matching leaves residuals), their
variance scaled by the kernel's sum of squares. Only tests use this module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from astropy.wcs import WCS
from scipy.signal import fftconvolve
from scipy.special import erf

from twinkles.image import Exposure, PhotoCalib, VisitInfo, mask_bit
from twinkles.psf import ImageGridPSF, GaussianPSF

STAMP = 25


def patch_wcs(nx: int, ny: int) -> WCS:
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [53.0091, -27.4389]
    w.wcs.crpix = [(nx - 1) / 2 + 1, (ny - 1) / 2 + 1]
    d = 0.2 / 3600.0
    w.wcs.cd = np.array([[-d, 0.0], [0.0, d]])
    return w


def gauss_stamps(size: int, dx, dy, sigma: float, e1: float = 0.0, e2: float = 0.0, oversample: int = 5):
    """(N, size, size) pixel-integrated (by oversampling) elliptical Gaussians of unit flux, centred at
    (dx, dy) from the central pixel; moments ixx = s^2 (1 + e1), iyy = s^2 (1 - e1), ixy = s^2 e2."""
    dx = np.atleast_1d(np.asarray(dx, float))
    dy = np.atleast_1d(np.asarray(dy, float))
    h = size // 2
    sub = (np.arange(oversample) + 0.5) / oversample - 0.5
    r = (np.arange(-h, h + 1)[:, None] + sub[None, :]).ravel()  # fine coordinates
    ixx, iyy, ixy = sigma**2 * (1 + e1), sigma**2 * (1 - e1), sigma**2 * e2
    det = ixx * iyy - ixy**2
    X = r[None, None, :] - dx[:, None, None]
    Y = r[None, :, None] - dy[:, None, None]
    q = (iyy * X * X - 2 * ixy * X * Y + ixx * Y * Y) / det
    fine = np.exp(-0.5 * q) / (2 * math.pi * math.sqrt(det))
    n = len(dx)
    fine = fine.reshape(n, size, oversample, size, oversample).mean(axis=(2, 4))
    return fine


@dataclass
class Visit:
    visit: int
    sigma_px: float
    e1: float
    e2: float
    noise: float  # nJy per pixel (sky)
    scale: float  # calibration factor applied to every star
    valid: np.ndarray = field(repr=False, default=None)  # the direct warp has data
    used: np.ndarray = field(repr=False, default=None)  # ... and so has the PSF-matched one (what a coadd uses)


@dataclass
class SyntheticPatch:
    direct: list
    psf_matched: list
    visits: list
    stars: dict  # x, y, flux (true static flux, nJy), kind
    truth_image: np.ndarray  # noiseless coadd of the stars (weights 1/noise^2 over the visits' ``used`` pixels)
    shape: tuple
    model_fwhm: float
    trail: dict
    transient: list
    weights: np.ndarray


def _draw(shape, x, y, flux, sigma, e1, e2):
    img = np.zeros(shape)
    xi, yi = np.rint(x).astype(int), np.rint(y).astype(int)
    st = gauss_stamps(STAMP, x - xi, y - yi, sigma, e1, e2) * np.asarray(flux)[:, None, None]
    h = STAMP // 2
    for k in range(len(x)):
        y0, y1 = yi[k] - h, yi[k] + h + 1
        x0, x1 = xi[k] - h, xi[k] + h + 1
        sy0, sx0 = max(0, -y0), max(0, -x0)
        sy1 = STAMP - max(0, y1 - shape[0])
        sx1 = STAMP - max(0, x1 - shape[1])
        img[max(0, y0):min(shape[0], y1), max(0, x0):min(shape[1], x1)] += st[k, sy0:sy1, sx0:sx1]
    return img


def _trail(shape, x0, y0, angle_deg, peak, sigma):
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    a = math.radians(angle_deg)
    d = -(xx - x0) * math.sin(a) + (yy - y0) * math.cos(a)  # distance from the line
    return peak * np.exp(-0.5 * (d / sigma) ** 2), d


def make_warps(seed: int = 1, n_visits: int = 9, size: int = 400, n_grid: int = 14, model_fwhm: float = 5.6,
               trail_peak_snr: float = 12.0, empty: bool = False):
    """The synthetic patch; ``empty``: the same visits (PSFs, noise, coverage, artifacts) without stars."""
    rng = np.random.default_rng(seed)
    shape = (size, size)
    wcs = patch_wcs(size, size)
    # stars on a jittered grid, S/N ~ 15 - 600 in one visit
    g = np.linspace(18, size - 19, n_grid)
    gx, gy = np.meshgrid(g, g)
    x = gx.ravel() + rng.uniform(-2, 2, gx.size)
    y = gy.ravel() + rng.uniform(-2, 2, gy.size)
    flux = 10 ** rng.uniform(math.log10(100), math.log10(2500), x.size)
    kind = np.array(["star"] * x.size, dtype=object)
    ibright = int(np.argmin(np.hypot(x - size * 0.3, y - size * 0.3)))
    flux[ibright] = 2.0e5
    kind[ibright] = "bright"
    ivar = int(np.argmin(np.hypot(x - size * 0.7, y - size * 0.3)))
    flux[ivar] = 8000.0
    kind[ivar] = "variable"
    if empty:
        flux[:] = 0.0
    visits = []
    yy, xx = np.mgrid[0:size, 0:size]
    for i in range(n_visits):
        fwhm = rng.uniform(3.0, 4.4)
        valid = np.ones(shape, bool)
        if i == 3:
            valid = xx < 0.68 * size + 0.1 * (yy - size / 2)
        if i == 5:
            valid = yy >= 0.2 * size
        visits.append(Visit(1000 + i, fwhm / 2.3548, rng.uniform(-0.06, 0.06), rng.uniform(-0.06, 0.06),
                            rng.uniform(1.0, 1.6), 1.0 + 0.01 * rng.standard_normal(), valid))
    var_flux = np.array([8000.0 * (1 + 0.6 * math.sin(2 * math.pi * i / n_visits + 0.3)) for i in range(n_visits)])
    var_flux *= 0.0 if empty else 1.0
    model_sigma = model_fwhm / 2.3548
    trail = {"visit": 1000, "x0": size * 0.5, "y0": size * 0.55, "angle": 23.0}
    mid = (g[:-1] + g[1:]) / 2  # between the stars
    m = len(mid)
    transient = [{"visit": 1001, "x": mid[m // 3], "y": mid[-2], "flux": 3000.0},  # moving: 1.5"/visit
                 {"visit": 1002, "x": mid[m // 3] + 7.5, "y": mid[-2] - 1.0, "flux": 3000.0}]
    direct, matched, truth_num, truth_den = [], [], np.zeros(shape), np.zeros(shape)
    weights = []
    for i, v in enumerate(visits):
        f = flux * v.scale
        f[ivar] = var_flux[i] * v.scale
        clean = _draw(shape, x, y, f, v.sigma_px, v.e1, v.e2)
        w = 1.0 / v.noise**2
        weights.append(w)
        img = clean + v.noise * rng.standard_normal(shape)
        if v.visit == trail["visit"]:
            t, _ = _trail(shape, trail["x0"], trail["y0"], trail["angle"], trail_peak_snr * v.noise, v.sigma_px)
            img += t
        for tr in transient:
            if tr["visit"] == v.visit:
                img += _draw(shape, np.array([tr["x"]]), np.array([tr["y"]]), np.array([tr["flux"]]),
                             v.sigma_px, v.e1, v.e2)
        if i == 4:  # unmasked cosmic rays: single bright pixels and a short track
            for (cx, cy) in [(mid[m // 5], mid[(3 * m) // 5]), (mid[-1 - m // 5], mid[m // 2])]:
                img[int(cy), int(cx)] += 60 * v.noise
            img[int(mid[-1]), int(mid[m // 4]) - 3:int(mid[m // 4]) + 3] += 30 * v.noise
        mask = np.where(v.valid, 0, mask_bit("NO_DATA")).astype(np.int32)
        img = np.where(v.valid, img, 0.0)
        var = np.where(v.valid, v.noise**2, np.inf)
        psf = ImageGridPSF(gauss_stamps(STAMP, [0.0], [0.0], v.sigma_px, v.e1, v.e2)[0], [size / 2], [size / 2])
        info = VisitInfo(v.visit, "r", 60000.0 + i)
        meta = {"visit": v.visit, "detector": 0, "band": "r", "tract": 0, "patch": 0,
                "psf_fwhm_px": v.sigma_px * 2.3548, "njy_per_electron": 1.0}
        direct.append(Exposure(img, mask, var, wcs, psf, PhotoCalib(1.0), info, meta))
        # PSF-matched: convolve to the model with a kernel 1% off in width (imperfect matching)
        s2 = model_sigma**2 * (1 + 0.01 * rng.standard_normal())
        kx = s2 - v.sigma_px**2 * (1 + v.e1)
        ky = s2 - v.sigma_px**2 * (1 - v.e1)
        kxy = -v.sigma_px**2 * v.e2
        sk = math.sqrt((kx + ky) / 2)
        kern = gauss_stamps(21, [0.0], [0.0], sk, (kx - ky) / (kx + ky), 2 * kxy / (kx + ky))[0]
        kern /= kern.sum()
        pm = fftconvolve(img, kern, mode="same")
        pvalid = fftconvolve(v.valid.astype(float), np.ones_like(kern), mode="same") > kern.size - 0.5
        v.used = pvalid
        truth_num += np.where(pvalid, w * clean, 0)
        truth_den += np.where(pvalid, w, 0)
        pmask = np.where(pvalid, 0, mask_bit("NO_DATA")).astype(np.int32)
        pvar = np.where(pvalid, v.noise**2 * float((kern**2).sum()), np.inf)
        pmeta = dict(meta, psf_fwhm_px=model_fwhm)
        matched.append(Exposure(np.where(pvalid, pm, 0.0), pmask, pvar, wcs, GaussianPSF(model_fwhm),
                                PhotoCalib(1.0), info, pmeta))
    truth = np.where(truth_den > 0, truth_num / np.maximum(truth_den, 1e-30), 0.0)
    stars = {"x": x, "y": y, "flux": flux, "kind": kind, "variable_flux": var_flux, "ivar": ivar,
             "ibright": ibright}
    return SyntheticPatch(direct, matched, visits, stars, truth, shape, model_fwhm, trail, transient,
                          np.array(weights))


def expected_star_flux(patch: SyntheticPatch, k: int) -> float:
    """The weighted mean over the visits covering star k of its true flux in each (calibration scale included)."""
    xs, ys = patch.stars["x"][k], patch.stars["y"][k]
    num = den = 0.0
    for i, v in enumerate(patch.visits):
        if not v.used[int(round(ys)), int(round(xs))]:
            continue
        f = patch.stars["variable_flux"][i] if k == patch.stars["ivar"] else patch.stars["flux"][k]
        num += patch.weights[i] * f * v.scale
        den += patch.weights[i]
    return num / den
