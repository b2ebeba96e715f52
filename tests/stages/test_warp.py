"""make_skymap and warp on a simulated tiny field, against the calexps and the simulator's truth.

One tiny field (512 x 512, 6 visits in r and i, seed 1) is simulated, processed, sky-mapped (2 x 2 patches of
400 + 2 x 50 px) and warped once per session with the ``twinkles stage`` commands; the tests compare the warps
with the calexps they come from (same photons: flux and position differences are the resampling's) and with the
truth (star positions), with tolerances from the noise.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from twinkles.algorithms.resample import lanczos_noise_factors
from twinkles.algorithms.skymap import SkyMap
from twinkles.cli import main as cli_main
from twinkles.image import mask_bit
from twinkles.measure.centroid import windowed_centroid
from twinkles.measure.moments import adaptive_moments, moments_from_stamps, moments_to_fwhm
from twinkles.repo import Repository
from twinkles.stages import warp as warp_stage
from twinkles.stages.make_skymap import Config as SkyConfig
from twinkles.validate.single_frame import isolated

RUN = "runs/l2"
APER_ARCSEC = 3.0


@pytest.fixture(scope="session")
def warp_repo(tmp_path_factory):
    from twinkles.sim.simulate import simulate_field
    root = tmp_path_factory.mktemp("warp") / "tiny"
    simulate_field(root, preset="tiny", seed=1)
    for args in (["stage", "process_eimage", str(root), "--run", RUN],
                 ["stage", "make_skymap", str(root), "--run", RUN],
                 ["stage", "warp", str(root), "--run", RUN]):
        assert cli_main(args) == 0, args
    return Repository(root)


@pytest.fixture(scope="session")
def field(warp_repo):
    truth = warp_repo.get("truth_catalog", runs=["truth"])
    visits = warp_repo.get("visit_table", runs=["truth"])
    sky = SkyMap.from_dict(warp_repo.get("skyMap", runs=[RUN]))
    return truth, visits, sky


def _bright_isolated_stars(truth, band, lo=3e4, hi=1.5e6):
    f = np.asarray(truth[f"{band}_flux"], float)
    sel = (np.asarray(truth["type"]) == "star") & isolated(truth, band, radius_arcsec=6.0, flux_ratio=0.005)
    return truth[sel & (f > lo) & (f < hi)]  # 21.0 > mag > 16.0 (nJy): unsaturated, S/N >~ 100


def _pairs(warp_repo, field):
    """(calexp, warp, patch) for every direct warp."""
    out = []
    for ref in warp_repo.query("deepCoadd_directWarp", runs=[RUN]):
        w = warp_repo.read(ref)
        c = warp_repo.get("calexp", {"visit": ref.data_id["visit"], "detector": 0}, runs=[RUN])
        out.append((c, w, ref.data_id["patch"]))
    return out


@pytest.fixture(scope="session")
def pairs(warp_repo, field):
    return _pairs(warp_repo, field)


def _aperture(image, x, y, r):
    iy0, iy1 = int(math.floor(y - r)) - 1, int(math.ceil(y + r)) + 2
    ix0, ix1 = int(math.floor(x - r)) - 1, int(math.ceil(x + r)) + 2
    if iy0 < 0 or ix0 < 0 or iy1 > image.shape[0] or ix1 > image.shape[1]:
        return np.nan
    yy, xx = np.mgrid[iy0:iy1, ix0:ix1]
    sel = np.hypot(xx - x, yy - y) < r
    return float(image[iy0:iy1, ix0:ix1][sel].sum())


def _star_measurements(pairs, field):
    """Per star and warp: calexp and warp aperture fluxes (nJy), centroids on the sky from both."""
    truth, _, sky = field
    rows = []
    for calexp, warp, patch in pairs:
        band = calexp.visit_info.band
        stars = _bright_isolated_stars(truth, band)
        njy = calexp.photo_calib.njy_per_electron
        cscale = float(np.sqrt(abs(np.linalg.det(calexp.wcs.pixel_scale_matrix))) * 3600)
        xc, yc = calexp.wcs.all_world2pix(np.asarray(stars["ra"]), np.asarray(stars["dec"]), 0)
        xw, yw = warp.wcs.all_world2pix(np.asarray(stars["ra"]), np.asarray(stars["dec"]), 0)
        bad_c = (calexp.mask & mask_bit("SAT", "NO_DATA", "CR", "EDGE")) != 0
        bad_w = (warp.mask & mask_bit("SAT", "NO_DATA", "CR", "EDGE")) != 0
        x0, y0, x1, y1 = sky.inner_bbox(patch)
        for i in range(len(stars)):
            if not (x0 <= xw[i] < x1 and y0 <= yw[i] < y1):
                continue  # each star once per visit: in the inner region of its patch
            rc, rw = APER_ARCSEC / cscale, APER_ARCSEC / sky.pixel_scale_arcsec
            if _aperture(bad_c.astype(float), xc[i], yc[i], rc + 3) != 0 or \
                    _aperture(bad_w.astype(float), xw[i], yw[i], rw + 3) != 0:
                continue
            fc = _aperture(calexp.image, xc[i], yc[i], rc) * njy
            fw = _aperture(warp.image, xw[i], yw[i], rw)
            s_c = calexp.metadata["psf_fwhm_px"] / 2.3548
            s_w = warp.metadata["psf_fwhm_px"] / 2.3548
            cx, cy, *_, flc = windowed_centroid(calexp.image, calexp.variance, [xc[i]], [yc[i]], s_c)
            wx, wy, *_, flw = windowed_centroid(warp.image, warp.variance, [xw[i]], [yw[i]], s_w)
            if flc[0] or flw[0]:
                continue
            rc_, dc_ = calexp.wcs.all_pix2world(cx, cy, 0)
            rw_, dw_ = warp.wcs.all_pix2world(wx, wy, 0)
            cosd = math.cos(math.radians(float(stars["dec"][i])))
            d_cw = 3.6e6 * np.array([(rw_[0] - rc_[0]) * cosd, dw_[0] - dc_[0]])
            d_wt = 3.6e6 * np.array([(rw_[0] - float(stars["ra"][i])) * cosd, dw_[0] - float(stars["dec"][i])])
            d_ct = 3.6e6 * np.array([(rc_[0] - float(stars["ra"][i])) * cosd, dc_[0] - float(stars["dec"][i])])
            rows.append((fc, fw, d_cw[0], d_cw[1], d_wt[0], d_wt[1], d_ct[0], d_ct[1]))
    return np.array(rows)


@pytest.fixture(scope="session")
def star_rows(pairs, field):
    return _star_measurements(pairs, field)


# ------------------------------------------------------------------------------------------ outputs
def test_skymap_and_warp_outputs(warp_repo, field, pairs):
    truth, visits, sky = field
    assert sky.n_patches_x == sky.n_patches_y == 2 and sky.patch_inner_px == SkyConfig().patch_inner_px
    # every visit covers all four patches of the tiny field (the tract centre is the field centre)
    refs = warp_repo.query("deepCoadd_directWarp", runs=[RUN])
    assert len(refs) == 4 * len(visits)
    pm = warp_repo.query("deepCoadd_psfMatchedWarp", runs=[RUN])
    assert len(pm) == len(refs)  # tiny seeing <= 0.92" < the 1.3" model
    # tract/patch data IDs query
    assert len(warp_repo.query("deepCoadd_directWarp", {"tract": 0, "patch": [1, 2]}, runs=[RUN])) == \
        2 * len(visits)
    calexp, w, patch = pairs[0]
    assert w.shape == sky.patch_shape(patch)
    assert np.allclose(w.wcs.wcs.crpix, sky.patch_wcs(patch).wcs.crpix)
    assert w.photo_calib.njy_per_electron == 1.0
    for key in ("visit", "detector", "band", "tract", "patch", "psf_fwhm_px", "njy_per_electron"):
        assert key in w.metadata, key
    assert w.metadata["njy_per_electron"] == pytest.approx(calexp.photo_calib.njy_per_electron)
    assert w.visit_info.visit == calexp.visit_info.visit
    nodata = (w.mask & mask_bit("NO_DATA")) != 0
    assert nodata.any() and (~nodata).any()
    assert np.isnan(w.image[nodata]).all() and np.isfinite(w.image[~nodata]).all()
    # the mask planes of the calexp travel (DETECTED at least)
    assert ((w.mask & mask_bit("DETECTED")) != 0).any()


# ------------------------------------------------------------------------------------------ flux, positions
def test_warp_preserves_flux(star_rows):
    """Isolated stars' aperture fluxes (3", nJy) on warp and calexp agree within 0.2% (mean) and each star
    within 0.2% plus its share of the resampled aperture-edge noise."""
    fc, fw = star_rows[:, 0], star_rows[:, 1]
    ratio = fw / fc
    n = len(ratio)
    assert n >= 20
    se = np.std(ratio) / math.sqrt(n)
    assert abs(np.mean(ratio) - 1) < 0.002
    assert abs(np.mean(ratio) - 1) < 0.0005 + 4 * se
    assert abs(np.median(ratio) - 1) < 0.002


def test_warp_preserves_positions(star_rows):
    """Centroids measured on the warp and on the calexp map to the same sky position (< 5 mas on average, the
    per-star scatter from the resampled noise); both scatter about the truth alike."""
    d_cw = star_rows[:, 2:4]
    n = len(d_cw)
    mean = np.abs(d_cw.mean(axis=0))
    se = d_cw.std(axis=0) / math.sqrt(n)
    assert (mean < 5.0).all() and (mean < 1.0 + 4 * se).all()
    assert np.median(np.hypot(d_cw[:, 0], d_cw[:, 1])) < 5.0
    # against the truth: the warp is no worse than the calexp (same WCS fit, same photons)
    rms_w = np.sqrt(np.mean(star_rows[:, 4:6] ** 2))
    rms_c = np.sqrt(np.mean(star_rows[:, 6:8] ** 2))
    assert rms_w < rms_c * 1.1 + 1.0


# ------------------------------------------------------------------------------------------ variance
def _empty_pixel_ratio(image, variance, mask):
    free = (mask == 0) & np.isfinite(image)
    pix = image[free]
    mad = np.median(np.abs(pix - np.median(pix))) * 1.482602
    return mad ** 2 / float(np.median(variance[free])), int(free.sum())


def test_warp_variance_matches_pixel_noise(pairs):
    """In empty regions (no mask plane set, so no detected source within the kernel footprint) the warp's pixel
    variance equals its propagated per-pixel variance plane within 5%, as the calexp's does.

    The comparison is per pixel: the variance plane is Var(I'(x, y)) = sum w^2 V of each pixel on its own, so
    the robust variance of the pixel values (their MAD, squared) is compared with the plane's median. The warp's
    pixels are correlated (neighbours share source pixels): a sum over N warp pixels has a variance larger than
    the sum of their N plane values by ~1.25 (Lanczos-3, ``lanczos_noise_factors``), which per-pixel variance
    does not see; it is checked on 8 x 8 boxes below.
    """
    ratios_w, ratios_c = [], []
    for calexp, w, _ in pairs:
        rw, nw = _empty_pixel_ratio(w.image, w.variance, w.mask)
        rc, _ = _empty_pixel_ratio(calexp.image, calexp.variance, calexp.mask)
        assert nw > 20000
        ratios_w.append(rw)
        ratios_c.append(rc)
    ratios_w, ratios_c = np.array(ratios_w), np.array(ratios_c)
    assert np.all(np.abs(ratios_w - 1) < 0.05), ratios_w
    # the resampling adds nothing of its own: the warp's ratio follows its calexp's (MAD of ~30000 pixels: +-1%)
    assert np.all(np.abs(ratios_w / ratios_c - 1) < 0.03), ratios_w / ratios_c
    # correlated noise: 8 x 8 box sums of empty areas vs the sum of the plane over the box
    _, sum_ratio = lanczos_noise_factors()
    calexp, w, _ = pairs[0]
    box = 8
    ny, nx = (w.shape[0] // box) * box, (w.shape[1] // box) * box
    free = ((w.mask == 0) & np.isfinite(w.image))[:ny, :nx].reshape(ny // box, box, nx // box, box).all(axis=(1, 3))
    sums = np.nan_to_num(w.image[:ny, :nx]).reshape(ny // box, box, nx // box, box).sum(axis=(1, 3))[free]
    vs = np.nan_to_num(w.variance[:ny, :nx]).reshape(ny // box, box, nx // box, box).sum(axis=(1, 3))[free]
    n = free.sum()
    assert n > 100
    mad = np.median(np.abs(sums - np.median(sums))) * 1.482602
    measured = mad ** 2 / np.median(vs)
    # box sums see the correlation (its 8 x 8 share is ~sum_ratio, a bit less); the MAD's error ~ 1.1 / sqrt(n)
    assert 1.05 < measured < sum_ratio * 1.0 + 4 * 1.2 / math.sqrt(n) + 0.05


# ------------------------------------------------------------------------------------------ PSF
def _star_stamps(exposure, stars, size=25):
    x, y = exposure.wcs.all_world2pix(np.asarray(stars["ra"]), np.asarray(stars["dec"]), 0)
    bad = (exposure.mask & mask_bit("SAT", "NO_DATA", "CR", "EDGE")) != 0
    keep = []
    h = size // 2
    for i in range(len(x)):
        ix, iy = int(round(x[i])), int(round(y[i]))
        if h <= ix < exposure.width - h and h <= iy < exposure.height - h and \
                not bad[iy - h:iy + h + 1, ix - h:ix + h + 1].any():
            keep.append(i)
    return x[keep], y[keep]


def _fwhm_and_e(ixx, iyy, ixy):
    return moments_to_fwhm(ixx, iyy, ixy), (ixx - iyy) / (ixx + iyy), 2 * ixy / (ixx + iyy)


def _psf_vs_stars(exposures, field, fwhm_key):
    truth, _, _ = field
    out = []
    for e in exposures:
        stars = _bright_isolated_stars(truth, e.visit_info.band, lo=1e5)
        x, y = _star_stamps(e, stars)
        if len(x) == 0:
            continue
        sig = e.metadata[fwhm_key] / 2.3548
        m = adaptive_moments(np.nan_to_num(e.image), x, y, guess_sigma=sig, size=25)
        models = np.array([e.psf.image_at(xi, yi, 25) for xi, yi in zip(x, y)])
        mm = moments_from_stamps(models, None, sig)
        ok = ~m["flag"] & ~mm["flag"]
        fs, e1s, e2s = _fwhm_and_e(m["ixx"][ok], m["iyy"][ok], m["ixy"][ok])
        fm, e1m, e2m = _fwhm_and_e(mm["ixx"][ok], mm["iyy"][ok], mm["ixy"][ok])
        out.extend(zip(fs / fm, e1s - e1m, e2s - e2m))
    return np.array(out)


def test_warp_psf_matches_stars(pairs, field):
    """The transformed PSF (calexp PSF through the local Jacobian) has the FWHM and ellipticity of the stars
    measured on the warp: mean FWHM ratio within 2%, mean e1, e2 differences within 0.01."""
    d = _psf_vs_stars([w for _, w, _ in pairs], field, "psf_fwhm_px")
    n = len(d)
    assert n >= 20
    se = d.std(axis=0) / math.sqrt(n)
    assert abs(np.mean(d[:, 0]) - 1) < 0.02 and abs(np.mean(d[:, 0]) - 1) < 0.005 + 4 * se[0]
    assert abs(np.mean(d[:, 1])) < 0.01 and abs(np.mean(d[:, 2])) < 0.01


def test_psf_matched_warp_stars_match_model(warp_repo, field):
    """Stars on the PSF-matched warps have the model PSF: FWHM within 2% of the model's, round (|e| < 0.01)."""
    exps = [warp_repo.read(r) for r in warp_repo.query("deepCoadd_psfMatchedWarp", runs=[RUN])]
    model_px = warp_stage.Config().model_psf_fwhm_arcsec / 0.2
    for e in exps:
        assert e.psf.fwhm() == pytest.approx(model_px)
        assert e.metadata["matching_residual"] < warp_stage.Config().max_matching_residual
    d = _psf_vs_stars(exps, field, "psf_fwhm_px")
    n = len(d)
    assert n >= 20
    se = d.std(axis=0) / math.sqrt(n)
    assert abs(np.mean(d[:, 0]) - 1) < 0.02 and abs(np.mean(d[:, 0]) - 1) < 0.005 + 4 * se[0]
    assert abs(np.mean(d[:, 1])) < 0.01 and abs(np.mean(d[:, 2])) < 0.01


def test_visit_broader_than_model_gets_no_psf_matched_warp(warp_repo, field):
    _, _, sky = field
    calexp = warp_repo.get("calexp", {"visit": 840, "detector": 0}, runs=[RUN])
    res = warp_stage.run(calexp, sky, warp_stage.Config(model_psf_fwhm_arcsec=0.6))
    assert res.warps and all(w.psf_matched is None for w in res.warps)
    assert res.metadata["psf_matched_patches"] == []
    reasons = res.metadata["no_psf_matched_warp"]
    assert set(reasons) == {str(w.patch) for w in res.warps}
    assert all("broader than the model" in r for r in reasons.values())
