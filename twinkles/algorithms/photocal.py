"""Photometric calibration: aperture correction of PSF fluxes and the zero point from reference stars.

Aperture correction: the PSF flux measures the flux inside the PSF model stamp; bright PSF stars give the ratio of
a large circular aperture flux to it. Beyond the largest aperture an atmospheric (Kolmogorov) PSF still holds
~1% of the light, with encircled-energy deficit ``1 - EE(R) = A R^-5/3``; ``A`` is solved from the curve of
growth between two radii R1 < R2 and the corrected total is ``F(R2) / (1 - A R2^-5/3)``.

Zero point: instrumental magnitudes (aperture-corrected PSF fluxes, electrons) of matched, unsaturated, unblended
stars against reference magnitudes (nJy -> AB) in the reference band mapped from the observed band (Twinkles'
mapping u,g -> g; r -> r; i,z,y -> i); where the band has no reference of its own, the reference magnitude is
transformed with the stellar-locus colours at the star's g - r and/or a linear colour term is fitted jointly;
sigma-clipped, inverse-variance weighted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from astropy.stats import mad_std
from scipy.stats import norm

from ..image import AB_ZERO_POINT_NJY

#: a Gaussian's sigma per unit of median absolute deviation, 1 / Phi^-1(3/4) = 1.4826 (as astropy.stats.mad_std)
MAD_TO_SIGMA = 1.0 / norm.ppf(0.75)

__all__ = ["REFERENCE_BAND", "COLOUR_BANDS", "STELLAR_LOCUS", "stellar_locus_offset", "ApertureCorrection",
           "aperture_correction", "PhotoCalResult",
           "PhotoCalError", "fit_zero_point", "reference_magnitudes"]

#: observed band -> reference band (Twinkles Run 1's mapping)
REFERENCE_BAND = {"u": "g", "g": "g", "r": "r", "i": "i", "z": "i", "y": "i"}
#: observed band -> (blue, red) reference bands of the colour used in the colour term
COLOUR_BANDS = {"u": ("g", "r"), "g": ("g", "r"), "r": ("g", "r"), "i": ("r", "i"), "z": ("r", "i"),
                "y": ("r", "i")}
KOLMOGOROV_EE_SLOPE = 5.0 / 3.0
#: 1 - EE(R) = KOLMOGOROV_TAIL_COEFF (FWHM / R)^(5/3) for a Kolmogorov PSF at R >~ 3 FWHM (fitted to GalSim's
#: Kolmogorov profile: 0.0145 at R = 3.2 FWHM, 0.0057 at 5.3 FWHM, 0.0028 at 8 FWHM)
KOLMOGOROV_TAIL_COEFF = 0.10


#: median stellar-locus colours vs g - r (SDSS; after Covey et al. 2007, AJ 134, 2398): the colour
#: transformation from the reference bands (g, r, i) to the bands without reference magnitudes (u, z, y)
STELLAR_LOCUS_GR = np.array([-0.2, 0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 1.4, 1.6])
STELLAR_LOCUS = {
    "ug": np.array([0.6, 0.85, 1.05, 1.4, 1.9, 2.3, 2.5, 2.55, 2.6]),
    "ri": np.array([-0.15, 0.05, 0.13, 0.2, 0.3, 0.42, 0.62, 1.0, 1.5]),
    "iz": np.array([-0.1, 0.0, 0.05, 0.1, 0.15, 0.22, 0.32, 0.5, 0.8]),
    "zy": np.array([-0.05, 0.0, 0.02, 0.05, 0.08, 0.1, 0.15, 0.25, 0.4]),
}


def stellar_locus_offset(band: str, g_minus_r) -> np.ndarray:
    """``m_band - m_ref`` for a star on the stellar locus (ref = REFERENCE_BAND[band]); 0 for g, r, i."""
    gr = np.asarray(g_minus_r, float)

    def loc(name):
        return np.interp(gr, STELLAR_LOCUS_GR, STELLAR_LOCUS[name])
    if band == "u":
        return loc("ug")
    if band == "z":
        return -loc("iz")
    if band == "y":
        return -loc("iz") - loc("zy")
    return np.zeros_like(gr)


class PhotoCalError(RuntimeError):
    """Too few usable reference stars to calibrate."""


@dataclass
class ApertureCorrection:
    factor: float  # multiply PSF fluxes by this to get total fluxes
    factor_err: float
    ratio_r1: float  # median F(R1) / psfFlux
    ratio_r2: float  # median F(R2) / psfFlux
    tail_fraction: float  # estimated light beyond R2
    n_stars: int


def aperture_correction(psf_flux, ap_flux_r1, ap_flux_r2, r1: float, r2: float, ap_flux_r2_err=None,
                        extrapolate: bool = True, min_stars: int = 3, clip_nsigma: float = 3.0,
                        local_background=None, annulus=None, estimator: str = "median",
                        fwhm_px: float | None = None) -> ApertureCorrection:
    """Aperture correction from PSF stars' PSF fluxes and aperture fluxes at radii r1 < r2 (pixels).

    The ratios F(R)/psfFlux are clipped at ``clip_nsigma`` (errors from ``ap_flux_r2_err``) and averaged: by their
    median (``estimator="median"``, robust to stars whose large aperture holds undetected neighbours) or with
    inverse-variance weights (``"wmean"``). With ``local_background``
    (per star, per pixel, e.g. the median of an ``annulus=(r_in, r_out)``), the residual local background is
    removed from both apertures after subtracting the star's own Kolmogorov wing light in the annulus
    (``F_tot A (r_in^-p - r_out^-p) / (pi (r_out^2 - r_in^2))``), iterated with the tail amplitude A.

    The light beyond r2: with ``fwhm_px`` given, from Kolmogorov theory, ``A = 0.10 FWHM^(5/3)``; otherwise fitted
    from the curve of growth between r1 and r2 (noisier: it rests on the small difference F(r2) - F(r1)).
    """
    pf = np.asarray(psf_flux, float)
    f1_raw = np.asarray(ap_flux_r1, float)
    f2_raw = np.asarray(ap_flux_r2, float)
    if local_background is not None:
        lb = np.nan_to_num(np.asarray(local_background, float))
        p = KOLMOGOROV_EE_SLOPE
        a_in, a_out = annulus
        amp = 0.0
        for _ in range(4):
            tot = f2_raw / max(1e-6, 1.0 - amp * r2 ** -p)
            own = tot * amp * (a_in ** -p - a_out ** -p) / (math.pi * (a_out ** 2 - a_in ** 2))
            b = lb - own
            f1 = f1_raw - math.pi * r1 ** 2 * b
            f2 = f2_raw - math.pi * r2 ** 2 * b
            res = aperture_correction(pf, f1, f2, r1, r2, ap_flux_r2_err, extrapolate, min_stars, clip_nsigma,
                                      estimator=estimator, fwhm_px=fwhm_px)
            m1, m2 = res.ratio_r1, res.ratio_r2
            if fwhm_px:
                amp = KOLMOGOROV_TAIL_COEFF * fwhm_px ** p
            else:
                amp = (m2 - m1) / (m2 * r1 ** -p - m1 * r2 ** -p) if m2 > m1 > 0 else 0.0
        return res
    f1, f2 = f1_raw, f2_raw
    e2 = np.ones(len(pf)) if ap_flux_r2_err is None else np.asarray(ap_flux_r2_err, float)
    ok = np.isfinite(pf) & np.isfinite(f1) & np.isfinite(f2) & (pf > 0) & np.isfinite(e2) & (e2 > 0)
    if ok.sum() < min_stars:
        raise PhotoCalError(f"{int(ok.sum())} stars for the aperture correction (need >= {min_stars})")
    q1 = f1[ok] / pf[ok]
    q2 = f2[ok] / pf[ok]
    sig = e2[ok] / pf[ok]
    w = 1.0 / sig ** 2
    use = np.ones(len(q2), bool)
    for _ in range(5):
        m2 = float(np.sum(w[use] * q2[use]) / np.sum(w[use]))
        new = np.abs(q2 - m2) < clip_nsigma * sig
        if new.sum() < min_stars or (new == use).all():
            break
        use = new
    if estimator == "median":
        m1, m2 = float(np.median(q1[use])), float(np.median(q2[use]))
        err = float(math.sqrt(math.pi / 2) * mad_std(q2[use]) / math.sqrt(use.sum()))  # a median's error
    else:
        m1 = float(np.sum(w[use] * q1[use]) / np.sum(w[use]))
        m2 = float(np.sum(w[use] * q2[use]) / np.sum(w[use]))
        err = float(1.0 / math.sqrt(np.sum(w[use])))
    tail = 0.0
    p = KOLMOGOROV_EE_SLOPE
    if extrapolate and fwhm_px:
        tail = float(KOLMOGOROV_TAIL_COEFF * (fwhm_px / r2) ** p)
    elif extrapolate and m2 > m1 > 0:
        a = (m2 - m1) / (m2 * r1 ** -p - m1 * r2 ** -p)
        tail = float(np.clip(a * r2 ** -p, 0.0, 0.05))
    factor = m2 / (1.0 - tail)
    return ApertureCorrection(factor, err, m1, m2, tail, int(use.sum()))


@dataclass
class PhotoCalResult:
    zero_point: float  # AB magnitude of 1 electron
    zero_point_err: float
    colour_term: float
    n_stars: int
    rms_mag: float
    used: np.ndarray  # bool over the input stars

    @property
    def njy_per_electron(self) -> float:
        return 10.0 ** (-0.4 * (self.zero_point - AB_ZERO_POINT_NJY))


def reference_magnitudes(ref, band: str, transform: str = "stellar_locus"):
    """Reference AB magnitude and error for ``band``, and the colour (blue - red) for a colour term.

    ``ref``: table with ``<b>_flux``, ``<b>_fluxErr`` (nJy). The magnitude is that of the reference band mapped
    from ``band`` (u,g -> g; r -> r; i,z,y -> i); with ``transform="stellar_locus"`` the bands without their own
    reference (u, z, y) get the stellar-locus colour offset at the star's g - r (stars off the locus are then
    clipped by the zero-point fit); with ``"none"`` they do not (a fitted colour term must absorb it)."""
    rb = REFERENCE_BAND[band]
    f = np.asarray(ref[f"{rb}_flux"], float)
    fe = np.asarray(ref[f"{rb}_fluxErr"], float)
    with np.errstate(divide="ignore", invalid="ignore"):
        mag = AB_ZERO_POINT_NJY - 2.5 * np.log10(f)
        mag_err = 2.5 / math.log(10) * fe / f
        blue, red = COLOUR_BANDS[band]
        colour = -2.5 * np.log10(np.asarray(ref[f"{blue}_flux"], float) / np.asarray(ref[f"{red}_flux"], float))
        if transform == "stellar_locus" and band in ("u", "z", "y"):
            gr = -2.5 * np.log10(np.asarray(ref["g_flux"], float) / np.asarray(ref["r_flux"], float))
            mag = mag + stellar_locus_offset(band, gr)
            # the locus has an intrinsic width of a few hundredths of a magnitude
            mag_err = np.hypot(mag_err, 0.03)
    return mag, mag_err, colour


def fit_zero_point(inst_flux, inst_flux_err, ref_mag, ref_mag_err, colour=None, colour_term: float = 0.0,
                   fit_colour_term: bool = False, min_stars: int = 5, min_stars_colour_fit: int = 20,
                   clip_nsigma: float = 3.0, n_iter: int = 5, floor_mag: float = 0.003) -> PhotoCalResult:
    """Zero point (AB mag of 1 electron) from instrumental fluxes (electrons) and reference magnitudes.

    Model: ``ref_mag = zp - 2.5 log10(inst_flux) - colour_term * colour``. With ``fit_colour_term`` and at least
    ``min_stars_colour_fit`` stars, the colour term is fitted jointly; otherwise ``colour_term`` is used.
    ``floor_mag`` is added in quadrature to each star's error (PSF-model and flat-field floor).
    """
    f = np.asarray(inst_flux, float)
    fe = np.asarray(inst_flux_err, float)
    rm = np.asarray(ref_mag, float)
    rme = np.asarray(ref_mag_err, float)
    col = np.zeros(len(f)) if colour is None else np.asarray(colour, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        inst = -2.5 * np.log10(f)
        inst_err = 2.5 / math.log(10) * fe / f
    good = np.isfinite(inst) & np.isfinite(inst_err) & np.isfinite(rm) & (f > 0)
    good &= np.isfinite(rme) | (rme != rme)
    rme = np.where(np.isfinite(rme), rme, 0.0)
    do_colour = fit_colour_term and np.isfinite(col[good]).sum() >= min_stars_colour_fit
    if do_colour:
        good &= np.isfinite(col)
    col = np.where(np.isfinite(col), col, 0.0)
    if good.sum() < min_stars:
        raise PhotoCalError(f"{int(good.sum())} usable reference stars for the zero point (need >= {min_stars})")
    sig = np.sqrt(inst_err ** 2 + rme ** 2 + floor_mag ** 2)
    used = good.copy()
    zp, zp_err, ct = float("nan"), float("nan"), colour_term
    for _ in range(n_iter):
        w = 1.0 / sig[used] ** 2
        y = rm[used] - inst[used]
        if do_colour:
            a = np.c_[np.ones(used.sum()), -col[used]]
            cov = np.linalg.inv(a.T @ (a * w[:, None]))
            sol = cov @ (a.T @ (w * y))
            zp, ct = float(sol[0]), float(sol[1])
            zp_err = float(math.sqrt(cov[0, 0]))
        else:
            y = y + colour_term * col[used]
            zp = float(np.sum(w * y) / np.sum(w))
            zp_err = float(1.0 / math.sqrt(np.sum(w)))
        resid = rm - inst - zp + ct * col
        rob = MAD_TO_SIGMA * np.median(np.abs(resid[used]))  # about the fitted zero point, not the median
        limit = clip_nsigma * np.maximum(sig, rob)
        new = good & (np.abs(resid) < limit)
        if new.sum() < min_stars or (new == used).all():
            break
        used = new
    resid = rm - inst - zp + ct * col
    rms = float(np.sqrt(np.mean(resid[used] ** 2)))
    # inflate the formal error by the excess scatter
    chi2 = float(np.mean((resid[used] / sig[used]) ** 2))
    zp_err *= math.sqrt(max(1.0, chi2))
    return PhotoCalResult(zp, zp_err, ct, int(used.sum()), rms, used)
