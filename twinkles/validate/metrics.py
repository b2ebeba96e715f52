"""Validation metrics: astrometric offsets, photometric residuals and pulls, repeatability (PA1), completeness
and purity. Pure functions of arrays; units in the names (mas, mmag, mag)."""

from __future__ import annotations

import math

import numpy as np
from astropy.stats import mad_std

__all__ = ["robust_sigma", "astrometric_offsets", "astrometry_summary", "photometric_pulls", "pa1",
           "completeness_purity"]


def robust_sigma(x) -> float:
    """The standard deviation for a Gaussian from the median absolute deviation (``astropy.stats.mad_std``, robust
    to outliers), over the finite values."""
    x = np.asarray(x, float)
    x = x[np.isfinite(x)]
    if not len(x):
        return float("nan")
    return float(mad_std(x))


def astrometric_offsets(ra_deg, dec_deg, ra_true_deg, dec_true_deg):
    """Offsets (measured - true) in milliarcseconds: (dra cos(dec), ddec)."""
    dec_true = np.asarray(dec_true_deg, float)
    dra = (np.asarray(ra_deg, float) - np.asarray(ra_true_deg, float) + 180.0) % 360.0 - 180.0
    return dra * np.cos(np.radians(dec_true)) * 3.6e6, (np.asarray(dec_deg, float) - dec_true) * 3.6e6


def astrometry_summary(dra_mas, ddec_mas) -> dict:
    """Median and RMS of the total offset, the mean offset per axis (systematic) and the count."""
    r = np.hypot(dra_mas, ddec_mas)
    ok = np.isfinite(r)
    if not ok.any():
        return {"n": 0, "median_offset_mas": float("nan"), "rms_offset_mas": float("nan"),
                "mean_dra_mas": float("nan"), "mean_ddec_mas": float("nan")}
    return {"n": int(ok.sum()), "median_offset_mas": float(np.median(r[ok])),
            "rms_offset_mas": float(np.sqrt(np.mean(r[ok] ** 2))),
            "mean_dra_mas": float(np.mean(np.asarray(dra_mas)[ok])),
            "mean_ddec_mas": float(np.mean(np.asarray(ddec_mas)[ok]))}


def photometric_pulls(flux_njy, flux_err_njy, true_flux_njy, calib_err_frac: float = 0.0) -> dict:
    """Residuals (mmag, measured - true) and pulls ((flux - true) / err) with their median and spreads.

    ``pull_with_calib`` also counts the calibration's fractional error ``calib_err_frac`` (common to all the
    sources of an image: the zero point's error) in each source's error."""
    f = np.asarray(flux_njy, float)
    e = np.asarray(flux_err_njy, float)
    t = np.asarray(true_flux_njy, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        dmag = -2.5 * np.log10(f / t) * 1000.0
        pull = (f - t) / e
        pull_calib = (f - t) / np.hypot(e, calib_err_frac * f)
    ok = np.isfinite(dmag) & np.isfinite(pull)
    return {"dmag_mmag": dmag, "pull": pull, "pull_with_calib": pull_calib, "n": int(ok.sum()),
            "median_dmag_mmag": float(np.median(dmag[ok])) if ok.any() else float("nan"),
            "pull_median": float(np.median(pull[ok])) if ok.any() else float("nan"),
            "pull_sd": float(np.std(pull[ok])) if ok.any() else float("nan"),
            "pull_robust_sd": robust_sigma(pull[ok])}


def pa1(object_id, mag, mag_err=None, min_visits: int = 2) -> dict:
    """Photometric repeatability (LSST SRD PA1): RMS of each object's magnitudes about its own mean over visits,
    pooled over objects with >= ``min_visits`` measurements: ``sqrt(sum r^2 / sum (n - 1))`` in mmag. With
    ``mag_err``, also the part not explained by the measurement errors (``pa1_excess_mmag``)."""
    oid = np.asarray(object_id)
    m = np.asarray(mag, float)
    ok = np.isfinite(m)
    oid, m = oid[ok], m[ok]
    me = None if mag_err is None else np.asarray(mag_err, float)[ok]
    uniq, inv, counts = np.unique(oid, return_inverse=True, return_counts=True)
    sums = np.bincount(inv, weights=m)
    mean = sums / counts
    r = m - mean[inv]
    use = counts[inv] >= min_visits
    dof = float(np.sum((counts - 1)[counts >= min_visits]))
    if dof <= 0:
        return {"pa1_mmag": float("nan"), "n_objects": 0, "pa1_excess_mmag": float("nan"), "residuals_mmag": r}
    val = math.sqrt(float(np.sum(r[use] ** 2)) / dof) * 1000.0
    out = {"pa1_mmag": val, "n_objects": int(np.sum(counts >= min_visits)), "residuals_mmag": r * 1000.0}
    out["pa1_robust_mmag"] = robust_sigma(r[use]) * 1000.0 * math.sqrt(np.mean(counts[inv][use] /
                                                                            (counts[inv][use] - 1)))
    if me is not None:
        noise = math.sqrt(float(np.mean(me[use] ** 2))) * 1000.0
        out["noise_mmag"] = noise
        out["pa1_excess_mmag"] = math.sqrt(max(0.0, val ** 2 - noise ** 2))
    return out


def completeness_purity(true_mag, true_detected, det_mag, det_matched, bins) -> dict:
    """Completeness (fraction of true objects detected) and purity (fraction of detections matched to a true
    object) in magnitude bins. Returns bin centres and the two fractions (NaN in empty bins)."""
    bins = np.asarray(bins, float)
    centres = 0.5 * (bins[1:] + bins[:-1])
    tm = np.asarray(true_mag, float)
    td = np.asarray(true_detected, bool)
    dm = np.asarray(det_mag, float)
    dd = np.asarray(det_matched, bool)
    ti = np.digitize(tm, bins) - 1
    di = np.digitize(dm, bins) - 1
    nb = len(centres)
    comp = np.full(nb, np.nan)
    pur = np.full(nb, np.nan)
    n_true = np.zeros(nb, int)
    n_det = np.zeros(nb, int)
    for k in range(nb):
        s = ti == k
        n_true[k] = s.sum()
        if s.any():
            comp[k] = td[s].mean()
        s = di == k
        n_det[k] = s.sum()
        if s.any():
            pur[k] = dd[s].mean()
    return {"mag": centres, "completeness": comp, "purity": pur, "n_true": n_true, "n_det": n_det}
