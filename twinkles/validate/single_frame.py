"""Validation of process_eimage outputs (calexp metadata and src) against the simulator's truth.

Per visit: astrometric offsets and photometric pulls of bright isolated stars, zero point and PSF FWHM against the
visit's truth, detection completeness of point sources by predicted S/N and the fraction of spurious detections;
over visits: photometric repeatability PA1 per band.
"""

from __future__ import annotations

import math

import numpy as np
from astropy.table import Table

from .match import match_sky
from .metrics import astrometric_offsets, astrometry_summary, pa1, photometric_pulls

__all__ = ["isolated", "validate_visit", "repeatability", "STATIC_POINT_TYPES"]

STATIC_POINT_TYPES = ("star",)
POINT_TYPES = ("star", "variable_star", "sn", "agn", "lensed_qso_image")


def isolated(truth: Table, band: str, radius_arcsec: float = 2.0, flux_ratio: float = 0.01) -> np.ndarray:
    """True for truth objects with no other object within ``radius_arcsec`` brighter than ``flux_ratio`` times
    their own flux in ``band``."""
    from .match import unit_vectors
    from scipy.spatial import cKDTree
    v = unit_vectors(truth["ra"], truth["dec"])
    tree = cKDTree(v)
    chord = 2.0 * math.sin(math.radians(radius_arcsec / 3600.0) / 2.0)
    pairs = tree.query_pairs(chord, output_type="ndarray")
    f = np.asarray(truth[f"{band}_flux"], float)
    iso = np.ones(len(truth), bool)
    if len(pairs):
        a, b = pairs[:, 0], pairs[:, 1]
        iso[a[f[b] > flux_ratio * f[a]]] = False
        iso[b[f[a] > flux_ratio * f[b]]] = False
    return iso


def _clean(src: Table) -> np.ndarray:
    ok = np.ones(len(src), bool)
    for c in ("pixelFlags_saturated", "pixelFlags_cr", "pixelFlags_edge", "blended", "centroid_flag",
              "psfFlux_flag", "pixelFlags_interpolated"):
        if c in src.colnames:
            ok &= ~np.asarray(src[c], bool)
    return ok


def validate_visit(src: Table, truth: Table, visit_row, metadata: dict | None = None,
                   match_radius_arcsec: float = 0.5, bright_snr: float = 50.0,
                   pull_snr_range=(20.0, 300.0), spurious_radius_arcsec: float = 1.0) -> dict:
    """Metrics of one visit's src against the truth. ``visit_row``: the visit's row of visit_table.

    Astrometry: bright (S/N > ``bright_snr``), isolated, clean static stars matched within
    ``match_radius_arcsec``; photometry: the same in ``pull_snr_range``; completeness: isolated static stars
    with a predicted S/N >= 10 (from the visit's 5-sigma depth) inside the catalog's area; spurious fraction:
    sources not flagged edge with no truth object within ``spurious_radius_arcsec`` (or 1.5 half-light radii
    of a galaxy)."""
    band = str(visit_row["band"])
    out: dict = {"visit": int(visit_row["visit"]), "band": band}
    i_s, i_t, _ = match_sky(src["ra"], src["dec"], truth["ra"], truth["dec"], match_radius_arcsec)
    ttype = np.asarray(truth["type"]).astype(str)
    iso = isolated(truth, band)
    clean = _clean(src)
    snr = np.asarray(src["psfFlux"], float) / np.asarray(src["psfFluxErr"], float)
    star = np.isin(ttype[i_t], STATIC_POINT_TYPES) & iso[i_t] & clean[i_s]
    # astrometry: bright isolated stars
    b = star & (snr[i_s] > bright_snr)
    dra, ddec = astrometric_offsets(np.asarray(src["ra"])[i_s[b]], np.asarray(src["dec"])[i_s[b]],
                                    np.asarray(truth["ra"])[i_t[b]], np.asarray(truth["dec"])[i_t[b]])
    out["astrometry"] = astrometry_summary(dra, ddec)
    out["astrometry_offsets_mas"] = (dra, ddec)
    # photometry: isolated stars in an S/N range (flux pulls against the true flux)
    lo, hi = pull_snr_range
    p = star & (snr[i_s] >= lo) & (snr[i_s] <= hi)
    tf = np.asarray(truth[f"{band}_flux"], float)[i_t[p]]
    zp_frac = float(metadata.get("zero_point_err", 0.0)) * math.log(10) / 2.5 if metadata else 0.0
    ph = photometric_pulls(np.asarray(src["psfFlux"])[i_s[p]], np.asarray(src["psfFluxErr"])[i_s[p]], tf, zp_frac)
    ph["true_mag"] = 31.4 - 2.5 * np.log10(tf)
    out["photometry"] = ph
    # zero point and PSF against the visit's truth
    if metadata:
        out["zero_point_offset_mmag"] = (float(metadata["zero_point"]) - float(visit_row["zeroPoint"])) * 1000.0
        out["psf_fwhm_ratio"] = float(metadata["seeing_arcsec"]) / float(visit_row["seeing"])
        out["astrom_rms_fit_mas"] = float(metadata.get("astrom_rms_mas", float("nan")))
    # detection: completeness of static point sources by predicted S/N, spurious detections
    m5 = float(visit_row["fiveSigmaDepth"])
    with np.errstate(divide="ignore", invalid="ignore"):
        true_mag = 31.4 - 2.5 * np.log10(np.asarray(truth[f"{band}_flux"], float))
    pred_snr = 5.0 * 10 ** (-0.4 * (true_mag - m5))
    i_s2, i_t2, _ = match_sky(src["ra"], src["dec"], truth["ra"], truth["dec"], spurious_radius_arcsec,
                              mutual=False)
    detected = np.zeros(len(truth), bool)
    detected[i_t2] = True
    matched_src = np.zeros(len(src), bool)
    matched_src[i_s2] = True
    # a detection inside an extended galaxy (within 1.5 half-light radii of its centre) is not spurious
    hlr = np.zeros(len(truth))
    for c in ("diskHlr", "bulgeHlr"):
        if c in truth.colnames:
            hlr = np.maximum(hlr, np.nan_to_num(np.asarray(truth[c], float)))
    if hlr.max() * 1.5 > spurious_radius_arcsec:
        un = np.nonzero(~matched_src)[0]
        j_s, j_t, sep = match_sky(np.asarray(src["ra"])[un], np.asarray(src["dec"])[un], truth["ra"], truth["dec"],
                                  float(hlr.max() * 1.5), mutual=False)
        ok = sep < 1.5 * hlr[j_t]
        matched_src[un[j_s[ok]]] = True
    pts = np.isin(ttype, STATIC_POINT_TYPES) & iso
    inside = _inside(src, truth)
    sel = pts & inside & (pred_snr >= 10)
    out["completeness_snr10"] = float(detected[sel].mean()) if sel.any() else float("nan")
    out["n_point_sources_snr10"] = int(sel.sum())
    # purity of the sources away from the border (edge-flagged ones are truncated objects, as in DM analyses)
    interior = ~np.asarray(src["pixelFlags_edge"], bool) if "pixelFlags_edge" in src.colnames else \
        np.ones(len(src), bool)
    out["spurious_fraction"] = float(1.0 - matched_src[interior].mean()) if interior.any() else float("nan")
    out["n_sources"] = len(src)
    out["completeness_arrays"] = {"true_mag": true_mag[pts & inside], "detected": detected[pts & inside],
                                  "pred_snr": pred_snr[pts & inside]}
    return out


def _inside(src: Table, truth: Table) -> np.ndarray:
    """Truth objects inside the area covered by the source catalog (its ra/dec bounding box, shrunk by 2")."""
    m = 2.0 / 3600.0
    ra, dec = np.asarray(src["ra"]), np.asarray(src["dec"])
    cosd = math.cos(math.radians(float(np.median(dec)))) if len(dec) else 1.0
    tr, td = np.asarray(truth["ra"]), np.asarray(truth["dec"])
    return ((tr > ra.min() + m / cosd) & (tr < ra.max() - m / cosd) & (td > dec.min() + m) & (td < dec.max() - m))


def repeatability(srcs: list[Table], truth: Table, band: str, min_snr: float = 200.0,
                  match_radius_arcsec: float = 0.5) -> dict:
    """PA1 (mmag) of bright (S/N >= ``min_snr`` in every visit used) isolated static stars over the visits in
    ``srcs`` (all in ``band``)."""
    ids, mags, errs = [], [], []
    ttype = np.asarray(truth["type"]).astype(str)
    iso = isolated(truth, band)
    for src in srcs:
        i_s, i_t, _ = match_sky(src["ra"], src["dec"], truth["ra"], truth["dec"], match_radius_arcsec)
        snr = np.asarray(src["psfFlux"], float) / np.asarray(src["psfFluxErr"], float)
        ok = np.isin(ttype[i_t], STATIC_POINT_TYPES) & iso[i_t] & _clean(src)[i_s] & (snr[i_s] >= min_snr)
        f = np.asarray(src["psfFlux"], float)[i_s[ok]]
        ids.append(np.asarray(truth["id"])[i_t[ok]])
        mags.append(31.4 - 2.5 * np.log10(f))
        errs.append(2.5 / math.log(10) / snr[i_s[ok]])
    if not ids:
        return {"pa1_mmag": float("nan"), "n_objects": 0}
    return pa1(np.concatenate(ids), np.concatenate(mags), np.concatenate(errs))
