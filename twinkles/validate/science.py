"""Per-source comparisons of a field's process_eimage outputs with the truth, for noise-derived checks.

:func:`field_measurements` matches every visit's ``src`` to the truth and returns flat arrays, one row per
(visit, matched isolated static star): astrometric offsets and their expected errors, flux residuals against the
true flux with the errors, and the reference catalogue's own error over the visit's calibration stars (the
offset of a correct calibration from the truth, the same in every visit of a band). Tests and reports compute
their figures and standard errors from these with :mod:`twinkles.validate.stats`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from astropy.table import Table

from .match import match_sky
from .metrics import astrometric_offsets
from .single_frame import STATIC_POINT_TYPES, _clean, isolated

__all__ = ["StarMeasurements", "field_measurements", "reference_offset_mmag", "wcs_noise_mas"]

AB_NJY = 31.4


@dataclass
class StarMeasurements:
    """One row per (visit, matched clean isolated static star); per-visit figures in ``visits``."""

    visit: np.ndarray
    band: np.ndarray
    star_id: np.ndarray
    snr: np.ndarray
    dra_mas: np.ndarray  # measured - true, RA cos(Dec)
    ddec_mas: np.ndarray
    err_ra_mas: np.ndarray  # centroid error (+) the WCS fit's error per axis
    err_dec_mas: np.ndarray
    flux_njy: np.ndarray
    flux_err_njy: np.ndarray
    true_flux_njy: np.ndarray
    visits: Table = field(default_factory=Table)  # visit, band, zp_offset_mmag, zp_err_mmag, ref_offset_mmag, ...

    @property
    def dmag_mmag(self) -> np.ndarray:
        """Calibrated minus true magnitude (mmag): positive when the measured flux is too faint."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return -2.5 * np.log10(self.flux_njy / self.true_flux_njy) * 1000.0

    def select(self, mask) -> "StarMeasurements":
        m = np.asarray(mask, bool)
        return StarMeasurements(*(getattr(self, k)[m] for k in (
            "visit", "band", "star_id", "snr", "dra_mas", "ddec_mas", "err_ra_mas", "err_dec_mas", "flux_njy",
            "flux_err_njy", "true_flux_njy")), visits=self.visits)


def reference_offset_mmag(src: Table, ref_cat: Table, truth: Table, band: str, match_radius_arcsec: float = 0.5,
                          floor_mag: float = 0.003) -> tuple[float, int]:
    """The reference catalogue's error, ``ref - true`` (mmag), averaged over the sources the calibration used
    (``calib_photometry_used``) with the zero-point fit's weights ``1 / (ref_err^2 + meas_err^2 + floor^2)``.

    A correct zero-point fit is off the truth by this much (it calibrates to the reference catalogue), the same
    in every visit that used the same stars. For the bands without a reference of their own (u, z, y) the
    reference magnitude is the stellar-locus transformation's (as the calibration's), so the offset includes that
    transformation's error. Returns ``(offset, number of stars)``."""
    from ..algorithms.photocal import reference_magnitudes
    used = np.nonzero(np.asarray(src["calib_photometry_used"], bool))[0]
    if not len(used):
        return float("nan"), 0
    i_u, i_r, _ = match_sky(np.asarray(src["ra"])[used], np.asarray(src["dec"])[used], ref_cat["coord_ra"],
                            ref_cat["coord_dec"], match_radius_arcsec)
    rid = np.asarray(ref_cat["id"])[i_r]
    tid = np.asarray(truth["id"])
    order = np.argsort(tid)
    pos = order[np.clip(np.searchsorted(tid, rid, sorter=order), 0, len(tid) - 1)]
    ok = tid[pos] == rid
    ref_mag, ref_err, _ = reference_magnitudes(ref_cat, band)
    true_mag = AB_NJY - 2.5 * np.log10(np.asarray(truth[f"{band}_flux"], float)[pos])
    snr = np.asarray(src["snr"], float)[used[i_u]]
    w = 1.0 / (ref_err[i_r] ** 2 + (2.5 / math.log(10) / snr) ** 2 + floor_mag ** 2)
    d = (ref_mag[i_r] - true_mag) * 1000.0
    ok &= np.isfinite(d) & np.isfinite(w)
    if not ok.any():
        return float("nan"), 0
    return float(np.sum(w[ok] * d[ok]) / np.sum(w[ok])), int(ok.sum())


def wcs_noise_mas(src: Table, meta: dict, ref_cat: Table, pixel_scale_mas: float = 200.0,
                  match_radius_arcsec: float = 0.5) -> float:
    """The per-axis error of a visit's fitted WCS at a star's position due to the matched stars' centroid noise
    (the part that differs from visit to visit; the reference positions' errors are the same in every visit).

    For a weighted least-squares fit with ``p`` parameters per axis the prediction variance averaged over the
    fit points is ``p`` times that of a weighted mean: ``p sum(w^2 c^2) / (sum w)^2``, ``c`` the centroid errors,
    ``w = 1 / (c^2 + r^2)`` (``r`` the reference errors), ``p = (d + 1)(d + 2) / 2`` for SIP degree ``d``."""
    used = np.nonzero(np.asarray(src["calib_astrometry_used"], bool))[0]
    if len(used) < 2:
        return float("nan")
    i_u, i_r, _ = match_sky(np.asarray(src["ra"])[used], np.asarray(src["dec"])[used], ref_cat["coord_ra"],
                            ref_cat["coord_dec"], match_radius_arcsec)
    c = np.hypot(np.asarray(src["xErr"], float), np.asarray(src["yErr"], float))[used[i_u]] / math.sqrt(2.0)
    c = c * pixel_scale_mas
    r = np.asarray(ref_cat["coord_decErr"], float)[i_r] * 3.6e6 if "coord_decErr" in ref_cat.colnames else 0.0 * c
    w = 1.0 / (c ** 2 + r ** 2)
    d = int(meta.get("astrom_sip_degree", 1) or 1)
    p = (d + 1) * (d + 2) / 2
    return float(math.sqrt(p * np.sum(w ** 2 * c ** 2) / np.sum(w) ** 2))


def field_measurements(srcs: list[Table], metas: list[dict], visit_rows: Table, truth: Table, ref_cat: Table,
                       match_radius_arcsec: float = 0.5, pixel_scale_mas: float = 200.0) -> StarMeasurements:
    """Match each visit's ``src`` to the truth and collect the clean, unblended, isolated static stars.

    ``srcs``, ``metas`` and ``visit_rows`` are in the same order. The astrometric error of a star is its
    centroid error (``xErr``, ``yErr`` x the pixel scale) in quadrature with the WCS fit's own error per axis,
    ``astrom_rms_mas / sqrt(2 astrom_n_matches)``."""
    ttype = np.asarray(truth["type"]).astype(str)
    cols: dict[str, list] = {k: [] for k in ("visit", "band", "star_id", "snr", "dra_mas", "ddec_mas",
                                             "err_ra_mas", "err_dec_mas", "flux_njy", "flux_err_njy",
                                             "true_flux_njy")}
    vis = {k: [] for k in ("visit", "band", "zp_offset_mmag", "zp_err_mmag", "ref_offset_mmag", "n_ref",
                           "wcs_err_mas", "wcs_noise_mas")}
    iso_cache: dict[str, np.ndarray] = {}
    for src, meta, row in zip(srcs, metas, visit_rows):
        band = str(row["band"])
        if band not in iso_cache:
            iso_cache[band] = isolated(truth, band)
        i_s, i_t, _ = match_sky(src["ra"], src["dec"], truth["ra"], truth["dec"], match_radius_arcsec)
        ok = np.isin(ttype[i_t], STATIC_POINT_TYPES) & iso_cache[band][i_t] & _clean(src)[i_s]
        i_s, i_t = i_s[ok], i_t[ok]
        n = len(i_s)
        dra, ddec = astrometric_offsets(np.asarray(src["ra"])[i_s], np.asarray(src["dec"])[i_s],
                                        np.asarray(truth["ra"])[i_t], np.asarray(truth["dec"])[i_t])
        wcs_err = float(meta["astrom_rms_mas"]) / math.sqrt(2.0 * float(meta["astrom_n_matches"]))
        cols["visit"].append(np.full(n, int(row["visit"])))
        cols["band"].append(np.full(n, band))
        cols["star_id"].append(np.asarray(truth["id"])[i_t])
        cols["snr"].append(np.asarray(src["psfFlux"], float)[i_s] / np.asarray(src["psfFluxErr"], float)[i_s])
        cols["dra_mas"].append(dra)
        cols["ddec_mas"].append(ddec)
        cols["err_ra_mas"].append(np.hypot(np.asarray(src["xErr"], float)[i_s] * pixel_scale_mas, wcs_err))
        cols["err_dec_mas"].append(np.hypot(np.asarray(src["yErr"], float)[i_s] * pixel_scale_mas, wcs_err))
        cols["flux_njy"].append(np.asarray(src["psfFlux"], float)[i_s])
        cols["flux_err_njy"].append(np.asarray(src["psfFluxErr"], float)[i_s])
        cols["true_flux_njy"].append(np.asarray(truth[f"{band}_flux"], float)[i_t])
        ref_off, n_ref = reference_offset_mmag(src, ref_cat, truth, band, match_radius_arcsec)
        vis["visit"].append(int(row["visit"]))
        vis["band"].append(band)
        vis["zp_offset_mmag"].append((float(meta["zero_point"]) - float(row["zeroPoint"])) * 1000.0)
        vis["zp_err_mmag"].append(float(meta["zero_point_err"]) * 1000.0)
        vis["ref_offset_mmag"].append(ref_off)
        vis["n_ref"].append(n_ref)
        vis["wcs_err_mas"].append(wcs_err)
        vis["wcs_noise_mas"].append(wcs_noise_mas(src, meta, ref_cat, pixel_scale_mas, match_radius_arcsec))
    out = {k: np.concatenate(v) if v else np.zeros(0) for k, v in cols.items()}
    return StarMeasurements(**out, visits=Table(vis))
