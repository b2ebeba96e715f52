"""process_eimage's science figures against the simulator's truth, each with its expected value and its standard
error from the data, on several seeds (conftest: three fields in ``make test``, ten in ``make test-all``).

Each test says how its tolerance is derived. The errors of one field are not independent: the reference
catalogue is one realisation (its flux errors, 1% per star, shift every visit's zero point alike; its position
errors, ~5 mas per star, shift every visit's WCS alike), and the same stars recur in every visit. So:

* calibrated fluxes are compared with the truth *plus the reference catalogue's own error over the calibration
  stars* (:func:`twinkles.validate.science.reference_offset_mmag`), which a correct calibration inherits;
* means over stars are means of per-star means (:func:`~twinkles.validate.stats.grouped_mean_and_error`), with
  the WCS fit's error (common to the field) added in quadrature.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from twinkles.image import mask_bit
from twinkles.measure.photometry import forced_psf_flux
from twinkles.validate import stats
from twinkles.validate.science import field_measurements
from twinkles.validate.single_frame import validate_visit

NSIGMA = 4.0  # allowed deviation in standard errors (two-sided p = 6e-5 per figure for Gaussian errors)
BRIGHT_SNR = 50.0  # astrometry and calibrated-flux stars
PULL_SNR = (5.0, 100.0)  # flux-error calibration: sky-dominated stars (PSF-model errors < 1% of their error)


def _measurements(field):
    if not hasattr(field, "_m"):
        field._m = field_measurements(field.srcs, field.metas, field.visits, field.truth, field.ref_cat)
    return field._m


# ------------------------------------------------------------------------------------------------- astrometry
def _astrometry(field):
    """Per axis: mean offset of bright isolated stars, its standard error, the number of stars, and the centroid
    pulls' robust sigma about 0.

    The error of the mean: scatter of the per-star means / sqrt(stars) (+) the WCS fits' error averaged over the
    visits, median(astrom_rms / sqrt(2 n_matches)) / sqrt(visits) (+) the part every visit shares, the reference
    positions' error 1 / sqrt(sum 1 / coord_raErr^2) over the reference stars in the field.

    The pulls test the centroid errors (xErr, yErr) on samples that are independent: each offset minus its star's
    mean over the visits and its visit's mean over the stars (what the WCS fit and the reference positions share),
    over the centroid error, times sqrt(n / (n - 1)) for the star's n visits. (Pulls against the truth with the
    WCS error in quadrature share that error within a visit and a field, so their spread varies from field to
    field far more than 1.166 / sqrt(n) says.)"""
    m = _measurements(field)
    b = m.snr > BRIGHT_SNR
    ref = field.ref_cat
    in_field = np.isin(np.asarray(ref["id"]), m.star_id)
    ref_err = np.asarray(ref["coord_raErr"], float)[in_field] * 3.6e6
    shared = 1.0 / math.sqrt(np.sum(1.0 / ref_err ** 2))
    per_visit = float(np.median(m.visits["wcs_err_mas"])) / math.sqrt(len(m.visits))
    common = stats.combine(shared, per_visit)
    row = np.searchsorted(np.asarray(m.visits["visit"]), m.visit)
    wcs_row = np.asarray(m.visits["wcs_err_mas"])[row]
    wcs_noise = np.asarray(m.visits["wcs_noise_mas"])[row]
    out = {}
    for axis, d, e in (("ra", m.dra_mas, m.err_ra_mas), ("dec", m.ddec_mas, m.err_dec_mas)):
        mean, err, n_stars = stats.grouped_mean_and_error(d[b], m.star_id[b])
        out[axis] = (mean, stats.combine(err, common), n_stars)
        centroid_err = np.sqrt(np.maximum(e[b] ** 2 - wcs_row[b] ** 2, 0.0) + wcs_noise[b] ** 2)
        resid, keep = _two_way_residuals(d[b], m.star_id[b], m.visit[b])
        out[axis + "_pull"] = stats.robust_sigma_and_error(resid / centroid_err[keep], centre=0.0)
    return out


def _two_way_residuals(values, stars, visits):
    """``values`` minus each star's mean and each visit's mean (two passes), times sqrt(n / (n - 1)) for the
    star's n values; returns them and the mask of the values kept (stars seen once are dropped)."""
    v = np.asarray(values, float).copy()
    _, si, sn = np.unique(stars, return_inverse=True, return_counts=True)
    _, vi = np.unique(visits, return_inverse=True)
    for _ in range(2):
        v -= (np.bincount(si, weights=v) / np.bincount(si))[si]
        v -= (np.bincount(vi, weights=v) / np.bincount(vi))[vi]
    keep = sn[si] > 1
    return v[keep] * np.sqrt(sn[si][keep] / (sn[si][keep] - 1.0)), keep


def test_astrometric_offsets_have_zero_mean_in_both_axes(field):
    """Mean offset (RA cos Dec and Dec) of bright isolated stars from their true positions: expected 0; standard
    error = scatter of the per-star means / sqrt(stars) (+) the WCS fit's per-axis error (common to the field)."""
    a = _astrometry(field)
    for axis in ("ra", "dec"):
        mean, err, n = a[axis]
        assert n >= 20, f"seed {field.seed}: only {n} bright isolated stars"
        stats.assert_within(mean, 0.0, err, NSIGMA, f"seed {field.seed}: mean {axis} offset (mas) of {n} stars")


def test_astrometric_offsets_have_zero_mean_three_fields(fast_fields):
    """The same, pooled over the three fields (their errors are independent): standard error / sqrt(3)."""
    for axis in ("ra", "dec"):
        vals = [_astrometry(f)[axis] for f in fast_fields]
        mean = float(np.mean([v[0] for v in vals]))
        err = stats.combine(*[v[1] for v in vals]) / len(vals)
        stats.assert_within(mean, 0.0, err, NSIGMA, f"mean {axis} offset (mas), three fields")


def test_astrometric_pulls_match_the_errors(field):
    """Centroid pulls per axis (offsets less what each star's visits and each visit's stars share, over the
    centroid error): robust sigma about zero expected 1, standard error 1.166 / sqrt(n)."""
    a = _astrometry(field)
    for axis in ("ra", "dec"):
        sd, err = a[axis + "_pull"]
        stats.assert_within(sd, 1.0, err, NSIGMA, f"seed {field.seed}: robust sd of {axis} pulls")


# ------------------------------------------------------------------------------------------------- photometry
def _blank_sky_excess(field, n_positions: int = 3000) -> dict:
    """Per visit: the variance of forced PSF fluxes at random undetected positions over their errors, minus 1
    (the noise the variance plane does not describe: undetected faint galaxies and stars, the background's
    error), and the median of those errors in nJy (the sky's share of a faint star's error)."""
    out = {}
    rng = np.random.default_rng(field.seed)
    for row, meta in zip(field.visits, field.metas):
        cal = field.calexp(int(row["visit"]))
        ny, nx = cal.image.shape
        x, y = rng.uniform(40, nx - 40, n_positions), rng.uniform(40, ny - 40, n_positions)
        free = (cal.mask[np.round(y).astype(int), np.round(x).astype(int)] & mask_bit("DETECTED")) == 0
        f, e, flag = forced_psf_flux(cal.image, cal.variance, cal.mask, cal.psf, x[free], y[free])
        p = (f / e)[~flag]
        p = p[np.abs(p) < 5]
        err_njy = float(np.median(e[~flag])) * meta["njy_per_electron"] * meta["aperture_correction"]
        out[int(row["visit"])] = (float(np.var(p) - 1.0), err_njy)
    return out


def _relative_flux_pulls(m, snr_range, blank=None):
    """(flux - k_v true) / error of the stars in ``snr_range``, k_v the visit's median flux ratio (S/N > 50):
    the visit's calibration error is taken out, so the pulls test the per-source errors alone. With ``blank``
    (from :func:`_blank_sky_excess`) also each pull's expected variance ``1 + excess (sky error / error)^2``."""
    pulls, expected = [], []
    for v in np.unique(m.visit):
        s = m.visit == v
        k = np.median((m.flux_njy / m.true_flux_njy)[s & (m.snr > BRIGHT_SNR)])
        q = s & (m.snr > snr_range[0]) & (m.snr < snr_range[1])
        pulls.append((m.flux_njy[q] - k * m.true_flux_njy[q]) / m.flux_err_njy[q])
        if blank is not None:
            excess, sky_err = blank[int(v)]
            expected.append(1.0 + excess * np.minimum(1.0, (sky_err / m.flux_err_njy[q]) ** 2))
    return np.concatenate(pulls), (np.concatenate(expected) if expected else None)


def _flux_error_figures(fields):
    """Pooled over ``fields``: sd of the relative flux pulls of sky-dominated stars, clipped at 5, and the sd
    expected from the blank-sky excess on the sky's share of each star's variance."""
    pulls, expected = [], []
    for f in fields:
        p, e = _relative_flux_pulls(_measurements(f), PULL_SNR, _blank_sky_excess(f))
        pulls.append(p)
        expected.append(e)
    p, e = np.concatenate(pulls), np.concatenate(expected)
    keep = np.abs(p) < 5  # stars with a neighbour the isolation cut missed
    sd, err = stats.sd_and_error(p[keep])
    return sd, err, math.sqrt(float(np.mean(e[keep]))), int(keep.sum())


def test_flux_errors_match_the_scatter_three_fields(fast_fields):
    """Flux-error calibration of faint stars (S/N 5-100), pooled over the three fields: sd of the pulls expected
    sqrt(mean(1 + excess (sky error / error)^2)), the excess measured by forced photometry at ~3000 random
    undetected positions per visit; standard error sd / sqrt(2 (n - 1)) (n ~ 440: 0.036, so errors wrong by 15%
    fail here and by 10% in the ten-field test)."""
    sd, err, expected, n = _flux_error_figures(fast_fields)
    assert n >= 300, n
    stats.assert_within(sd, expected, err, NSIGMA, f"sd of {n} flux pulls (three fields)")


@pytest.mark.slow
def test_flux_errors_match_the_scatter_ten_fields(ten_fields):
    sd, err, expected, n = _flux_error_figures(ten_fields)
    stats.assert_within(sd, expected, err, NSIGMA, f"sd of {n} flux pulls (ten fields)")


def _bright_star_pulls(fields):
    """Relative flux pulls of bright stars (S/N > 200), their errors widened by the per-source floor the
    zero-point fit assumes (``fit_zero_point(floor_mag=0.003)``: the PSF model's error)."""
    floor = 0.003 * math.log(10) / 2.5
    out = []
    for f in fields:
        m = _measurements(f)
        for v in np.unique(m.visit):
            s = (m.visit == v) & (m.snr > 200)
            k = np.median((m.flux_njy / m.true_flux_njy)[s])
            err = np.hypot(m.flux_err_njy[s], floor * m.flux_njy[s])
            out.append((m.flux_njy[s] - k * m.true_flux_njy[s]) / err)
    return np.concatenate(out)


def test_bright_star_flux_scatter_three_fields(fast_fields):
    """Bright stars' fluxes scatter as their errors plus the 3 mmag floor: robust sigma of the pulls about 0
    expected 1, standard error 1.166 / sqrt(n) (robust: a few stars with unresolved neighbours sit in the tail);
    extra scatter per source (a wrong PSF model, flat field, aperture correction varying across the sensor)
    fails here."""
    p = _bright_star_pulls(fast_fields)
    sd, err = stats.robust_sigma_and_error(p, 0.0)
    stats.assert_within(sd, 1.0, err, NSIGMA, f"sd of {len(p)} bright-star pulls (three fields)")


@pytest.mark.slow
def test_bright_star_flux_scatter_ten_fields(ten_fields):
    p = _bright_star_pulls(ten_fields)
    sd, err = stats.robust_sigma_and_error(p, 0.0)
    stats.assert_within(sd, 1.0, err, NSIGMA, f"sd of {len(p)} bright-star pulls (ten fields)")


def _zero_point_residuals(field):
    """Per visit: fitted - true zero point - the reference catalogue's error over the calibration stars (mmag),
    and the visit's zero-point error (which also counts the reference errors: a conservative standard error)."""
    v = _measurements(field).visits
    return np.asarray(v["zp_offset_mmag"] - v["ref_offset_mmag"]), np.asarray(v["zp_err_mmag"])


def _pooled_zero_point(fields):
    d, e = zip(*(_zero_point_residuals(f) for f in fields))
    d, e = np.concatenate(d), np.concatenate(e)
    return float(np.mean(d)), float(np.sqrt(np.sum(e ** 2)) / len(e)), len(d)


def test_zero_points_against_truth(field):
    """Fitted zero points minus the true ones, minus the reference catalogue's own error (the same in every visit
    of a band): mean over the visits expected 0, standard error sqrt(sum zero_point_err^2) / n_visits (the
    aperture correction's noise dominates); every visit within NSIGMA of its own error."""
    d, e = _zero_point_residuals(field)
    mean, err, n = _pooled_zero_point([field])
    stats.assert_within(mean, 0.0, err, NSIGMA, f"seed {field.seed}: mean zero-point offset (mmag) of {n} visits")
    for k in range(len(d)):
        stats.assert_within(d[k], 0.0, e[k], NSIGMA, f"seed {field.seed}: visit {field.visits['visit'][k]} "
                            "zero-point offset (mmag)")


def test_zero_points_against_truth_three_fields(fast_fields):
    mean, err, n = _pooled_zero_point(fast_fields)
    stats.assert_within(mean, 0.0, err, NSIGMA, f"mean zero-point offset (mmag) of {n} visits (three fields)")


def _calibrated_offsets(field):
    """Per visit: median calibrated - true magnitude (mmag) of bright isolated stars minus the reference
    catalogue's error over the calibration stars; standard error of the median (the stars' own noise; the
    calibration's noise is common to the visit and counted by taking the visits as the samples)."""
    m = _measurements(field)
    rows = []
    for vrow in m.visits:
        s = (m.visit == vrow["visit"]) & (m.snr > BRIGHT_SNR)
        med, err = stats.median_and_error(m.dmag_mmag[s])
        rows.append((str(vrow["band"]), med - vrow["ref_offset_mmag"], err))
    return rows


def _calibration_bias(fields, band):
    """Mean over visits of ``band`` (all fields) of the calibrated offset, with its standard error from the
    scatter of the visits (each visit's calibration is an independent draw of the aperture-correction and
    calibration-star noise)."""
    vals = [d for f in fields for b, d, _ in _calibrated_offsets(f) if b == band]
    return stats.mean_and_error(vals) + (len(vals),)


def test_calibrated_fluxes_against_truth(field):
    """Calibrated PSF fluxes of bright isolated stars against the truth (+ the reference catalogue's error):
    each band's mean over its visits within NSIGMA standard errors (their scatter / sqrt(visits)) of the SRD's
    5 mmag single-visit requirement (one field's residual bias from calibration stars with unresolved neighbours
    reaches 2.5 mmag; over ten fields it is < 1 mmag: test_calibration_bias_below_1_mmag_over_ten_fields)."""
    for band in np.unique(field.visits["band"]):
        mean, err, n = _calibration_bias([field], str(band))
        stats.assert_within(mean, 0.0, err, NSIGMA, f"seed {field.seed} band {band}: calibrated - true (mmag), "
                            f"{n} visits", slack=5.0)


def test_u_z_y_visits_calibrated_against_truth(uzy_field):
    """u, z, y: zero point and calibrated fluxes against the truth (+ the reference error, which here includes
    the stellar-locus transformation's: 0.03 mag of intrinsic locus width per star and the reference colours'
    noise), each visit within NSIGMA of its zero-point error; the PSF FWHM within 2% of the true one."""
    f = uzy_field
    assert set(f.visits["band"]) == {"u", "z", "y"}
    d, e = _zero_point_residuals(f)
    for k in range(len(d)):
        stats.assert_within(d[k], 0.0, e[k], NSIGMA, f"{f.visits['band'][k]} visit {f.visits['visit'][k]} "
                            "zero-point offset (mmag)")
    for (band, off, _), err in zip(_calibrated_offsets(f), e):
        stats.assert_within(off, 0.0, err, NSIGMA, f"band {band}: calibrated - true (mmag)")
    for meta, row in zip(f.metas, f.visits):
        assert abs(meta["seeing_arcsec"] / row["seeing"] - 1) < 0.02, (row["band"], meta["seeing_arcsec"])


@pytest.mark.slow
def test_calibration_bias_below_1_mmag_over_ten_fields(ten_fields):
    """The issue's requirement: over ten fields, the mean offset of calibrated isolated-star fluxes from the
    truth (+ reference error) within 1 mmag in every band, and within NSIGMA of 0."""
    for band in ("r", "i"):
        mean, err, n = _calibration_bias(ten_fields, band)
        assert abs(mean) < 1.0, (band, mean, err, n)
        stats.assert_within(mean, 0.0, err, NSIGMA, f"band {band}: calibrated - true (mmag), {n} visits")


# ------------------------------------------------------------------------------------------------- detection
def _detection(field):
    vals = [validate_visit(s, field.truth, r, m) for s, r, m in zip(field.srcs, field.visits, field.metas)]
    n = sum(v["n_point_sources_snr10"] for v in vals)
    found = sum(round(v["completeness_snr10"] * v["n_point_sources_snr10"]) for v in vals)
    n_src = sum(round(v["spurious_fraction"] * v["n_sources"]) for v in vals)
    n_all = sum(v["n_sources"] for v in vals)
    return found, n, n_src, n_all


def test_completeness_of_snr10_point_sources(field):
    """Isolated static stars with predicted S/N >= 10: completeness >= 99% (requirement), binomial standard error
    sqrt(0.99 x 0.01 / n) (n ~ 500 over 6 visits: 0.45%, so a 3% loss fails)."""
    found, n, _, _ = _detection(field)
    assert n >= 200, n
    req = 0.99
    stats.assert_within(min(found / n, req), req, math.sqrt(req * (1 - req) / n), NSIGMA,
                        f"seed {field.seed}: completeness of {n} S/N >= 10 point sources")


def test_spurious_fraction(field):
    """Detections with no truth object within 1" (or inside a galaxy): <= 2% (requirement), binomial standard
    error sqrt(0.02 x 0.98 / n)."""
    _, _, spurious, n = _detection(field)
    req = 0.02
    stats.assert_within(max(spurious / n, req), req, math.sqrt(req * (1 - req) / n), NSIGMA,
                        f"seed {field.seed}: spurious fraction of {n} detections")


# ------------------------------------------------------------------------------------------------- PSF
def _psf_size_ratios(field, min_snr: float = 100.0):
    """Per bright isolated clean star: trace of its adaptive moments measured on the image over that of the PSF
    model at its position (ixx + iyy) / (ixxPSF + iyyPSF), one value per star (median over its visits)."""
    from twinkles.validate.match import match_sky
    from twinkles.validate.single_frame import STATIC_POINT_TYPES, _clean, isolated
    ttype = np.asarray(field.truth["type"]).astype(str)
    ids, ratios = [], []
    for src, row in zip(field.srcs, field.visits):
        i_s, i_t, _ = match_sky(src["ra"], src["dec"], field.truth["ra"], field.truth["dec"], 0.5)
        ok = (np.isin(ttype[i_t], STATIC_POINT_TYPES) & isolated(field.truth, str(row["band"]))[i_t]
              & _clean(src)[i_s] & (np.asarray(src["snr"])[i_s] > min_snr))
        i_s, i_t = i_s[ok], i_t[ok]
        t = np.asarray(src["ixx"], float)[i_s] + np.asarray(src["iyy"], float)[i_s]
        tp = np.asarray(src["ixxPSF"], float)[i_s] + np.asarray(src["iyyPSF"], float)[i_s]
        ids.append(np.asarray(field.truth["id"])[i_t])
        ratios.append(t / tp)
    return np.concatenate(ids), np.concatenate(ratios)


def test_psf_model_size_matches_the_stars_on_the_image(field):
    """The PSF model against the image itself (not against the true PSF through the same function): the bright
    isolated stars' measured moment traces over the model's at their positions, averaged per star over the
    visits: mean expected 1, standard error from the scatter of the per-star means (each star's noise and its
    position's model error)."""
    ids, r = _psf_size_ratios(field)
    mean, err, n = stats.grouped_mean_and_error(r, ids)
    assert n >= 15, n
    stats.assert_within(mean, 1.0, err, NSIGMA, f"seed {field.seed}: star / PSF-model moment trace, {n} stars")


# ------------------------------------------------------------------------------------------------- ingest
def test_ingested_tan_sip_fits_processed_against_truth(fast_fields, tmp_path):
    """An external FITS file (image in ADU, no variance plane: ingest makes one from the counts, a TAN-SIP header
    2" off) ingested with
    `twinkles ingest` and processed with `twinkles stage process_eimage`: its zero point (- the reference
    error) within NSIGMA of its error and its mean astrometric offsets within NSIGMA of theirs."""
    from astropy.io import fits
    from twinkles.cli import main as cli_main
    from twinkles.repo import Repository
    f = fast_fields[0]
    row = f.visits[0]
    visit = int(row["visit"])
    eimage = f.repo.get("eimage", {"visit": visit, "detector": 0})
    wcs = f.calexp(visit).wcs.deepcopy()
    if wcs.sip is None:
        pytest.skip("the fit kept no SIP terms on this field")
    wcs.wcs.crval = [wcs.wcs.crval[0] + 2.0 / 3600, wcs.wcs.crval[1]]
    hdr = wcs.to_header(relax=True)
    assert hdr["CTYPE1"] == "RA---TAN-SIP" and "A_2_0" in hdr
    hdr.update({"FILTER": str(row["band"]), "MJD-OBS": float(row["midpointMjdTai"]) - 15 / 86400,
                "EXPTIME": float(row["expTime"]), "VISIT": visit, "GAIN": 2.0, "SATURATE": 50000.0,
                "SEEING": float(row["seeingReported"])})
    path = tmp_path / "external.fits"
    fits.PrimaryHDU((eimage.image / 2.0).astype(np.float32), header=hdr).writeto(path)
    root = tmp_path / "ingested"
    assert cli_main(["ingest", str(root), str(path)]) == 0
    repo = Repository(root)
    repo.put(f.ref_cat, "ref_cat", {}, run="raw")
    assert cli_main(["stage", "process_eimage", str(root), "--run", "runs/l2"]) == 0
    did = {"visit": visit, "detector": 0}
    src, meta = repo.get("src", did, runs=["runs/l2"]), repo.get("process_eimage_metadata", did, runs=["runs/l2"])
    m = field_measurements([src], [meta], f.visits[:1], f.truth, f.ref_cat)
    d = float(m.visits["zp_offset_mmag"][0] - m.visits["ref_offset_mmag"][0])
    stats.assert_within(d, 0.0, float(m.visits["zp_err_mmag"][0]), NSIGMA, "ingested: zero-point offset (mmag)")
    b = m.snr > BRIGHT_SNR
    for axis, off in (("RA", m.dra_mas), ("Dec", m.ddec_mas)):
        mean, err = stats.mean_and_error(off[b])
        stats.assert_within(mean, 0.0, stats.combine(err, float(m.visits["wcs_err_mas"][0])), NSIGMA,
                            f"ingested: mean {axis} offset (mas)")
