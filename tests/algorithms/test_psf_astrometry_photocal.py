"""PSF star selection and model, astrometric matching and TAN-SIP fitting, zero point and aperture correction."""

import math

import numpy as np
import pytest
from pe_synthetic import make_field, tan_wcs

from twinkles.algorithms.astrometry import AstrometryError, fit_astrometry, fit_tan_sip
from twinkles.algorithms.photocal import (PhotoCalError, aperture_correction, fit_zero_point,
                                          reference_magnitudes, stellar_locus_offset)
from twinkles.algorithms.psf_model import PsfFitError, fit_pixel_psf, select_psf_stars
from twinkles.measure import adaptive_moments
from twinkles.measure.moments import moments_from_stamps, moments_to_fwhm


@pytest.fixture(scope="module")
def field():
    return make_field(n_stars=200, n_galaxies=60, seed=11, mag_range=(17, 24), fwhm_gradient=0.08)


def _snr(f):
    p = f.psf_at(256, 256).drawImage(nx=41, ny=41, scale=0.2).array
    return np.asarray(f.truth["flux_e"]) / np.sqrt((800 + 64) / (p ** 2).sum())


def test_star_selection_uses_size_locus_not_truth(field):
    t = field.truth
    img = field.exposure.image - 800.0
    mom = adaptive_moments(img, t["x"], t["y"], guess_sigma=1.6)
    sel = select_psf_stars(_snr(field), mom["ixx"], mom["iyy"], mom["ixy"], ~mom["flag"], min_snr=50)
    chosen = np.asarray(t["type"])[sel.selected]
    assert len(chosen) >= 20
    # galaxies are larger than the PSF: at most a few compact ones slip in
    assert (chosen == "galaxy").mean() < 0.1


def test_pixel_psf_matches_true_psf(field):
    t = field.truth
    img = field.exposure.image - 800.0
    bright = (t["type"] == "star") & (_snr(field) > 50)
    psf, used, info = fit_pixel_psf(img, field.exposure.variance, np.ones(img.shape, bool), t["x"][bright],
                                    t["y"][bright], order=1)
    assert info["n_stars"] >= 20
    assert 0.7 < info["median_chi2"] < 1.5
    for x, y in [(100, 100), (256, 256), (410, 120), (120, 410), (410, 410)]:
        m = moments_from_stamps(np.array([psf.kernel_image(x, y, 31),
                                          field.psf_at(x, y).drawImage(nx=31, ny=31, scale=0.2).array]), None, 1.6)
        fw = moments_to_fwhm(m["ixx"], m["iyy"], m["ixy"])
        assert abs(fw[0] / fw[1] - 1) < 0.02
        tr = m["ixx"] + m["iyy"]
        e1, e2 = (m["ixx"] - m["iyy"]) / tr, 2 * m["ixy"] / tr
        assert math.hypot(e1[0] - e1[1], e2[0] - e2[1]) < 0.01


def test_pixel_psf_needs_stars(field):
    with pytest.raises(PsfFitError, match="usable PSF stars"):
        fit_pixel_psf(field.exposure.image - 800, field.exposure.variance, np.ones((512, 512), bool),
                      [100.0, 200.0], [100.0, 200.0])


@pytest.mark.parametrize("offset,rot", [((0.0, 0.0), 0.0), ((5.0, -4.0), 0.1), ((-3.0, 5.0), -0.2)])
def test_astrometry_from_perturbed_header(offset, rot):
    f = make_field(n_stars=150, n_galaxies=30, seed=12, wcs_offset_arcsec=offset, wcs_rot_deg=rot)
    t = f.truth
    rng = np.random.default_rng(0)
    x = t["x"] + rng.normal(0, 0.01, len(t))
    y = t["y"] + rng.normal(0, 0.01, len(t))
    res = fit_astrometry(x, y, np.argsort(-t["flux_e"]), f.ref_cat["coord_ra"], f.ref_cat["coord_dec"],
                         np.argsort(-f.ref_cat["r_flux"]), f.exposure.wcs, (512, 512),
                         x_err=np.full(len(t), 0.01), y_err=np.full(len(t), 0.01),
                         ref_ra_err=f.ref_cat["coord_raErr"], ref_dec_err=f.ref_cat["coord_decErr"])
    assert res.n_matches > 100
    pr, pd = res.wcs.all_pix2world(t["x"], t["y"], 0)
    off = np.hypot((pr - t["ra"]) * np.cos(np.radians(t["dec"])), pd - t["dec"]) * 3.6e6
    # 150 reference stars with 5 mas errors: the WCS is good to ~1 mas
    assert np.median(off) < 3.0
    assert np.sqrt(np.mean(off ** 2)) < 5.0


def test_astrometry_fails_clearly_without_matches():
    f = make_field(n_stars=60, n_galaxies=0, seed=13)
    t = f.truth
    far = f.ref_cat.copy()
    far["coord_ra"] = far["coord_ra"] + 0.01  # 32" away: beyond max_offset_arcsec
    with pytest.raises(AstrometryError, match="reference matches"):
        fit_astrometry(t["x"], t["y"], np.argsort(-t["flux_e"]), far["coord_ra"], far["coord_dec"],
                       np.argsort(-far["r_flux"]), f.exposure.wcs, (512, 512), max_offset_arcsec=10.0)


def test_fit_tan_sip_recovers_distortion():
    rng = np.random.default_rng(2)
    w0 = tan_wcs(2048, 2048)
    x, y = rng.uniform(0, 2047, 400), rng.uniform(0, 2047, 400)
    u, v = x - 1023.5, y - 1023.5
    # a SIP-like distortion of up to ~2 pixels at the corners
    xd = x + 2e-7 * u * u - 1e-7 * u * v
    yd = y + 1.5e-7 * v * v + 0.5e-7 * u * u
    ra, dec = w0.all_pix2world(xd, yd, 0)
    w = fit_tan_sip(x, y, ra, dec, sip_degree=2, crpix=(1023.5, 1023.5))
    pr, pd = w.all_pix2world(x, y, 0)
    resid = np.hypot((pr - ra) * np.cos(np.radians(dec)), pd - dec) * 3.6e6
    assert resid.max() < 0.5  # mas
    xb, yb = w.all_world2pix(ra, dec, 0)
    assert np.max(np.hypot(xb - x, yb - y)) < 1e-3
    # the fitted header is standard TAN-SIP, readable back by astropy
    from astropy.wcs import WCS
    h = w.to_header(relax=True)
    assert h["CTYPE1"] == "RA---TAN-SIP" and "A_2_0" in h
    w2 = WCS(h)
    assert np.allclose(w2.all_pix2world(x[:5], y[:5], 0), w.all_pix2world(x[:5], y[:5], 0))


def test_zero_point_and_colour_term():
    rng = np.random.default_rng(3)
    n = 60
    colour = rng.uniform(0.0, 1.5, n)
    ref_mag = rng.uniform(17, 21, n)
    zp, ct = 31.7, 0.12
    err = 0.01
    inst_mag = ref_mag - zp + ct * colour + rng.normal(0, err, n)
    inst_mag[:3] += 0.5  # outliers
    flux = 10 ** (-0.4 * inst_mag)
    flux_err = flux * err / 1.0857
    res = fit_zero_point(flux, flux_err, ref_mag, np.zeros(n), colour, fit_colour_term=True, floor_mag=0.0)
    assert abs(res.zero_point - zp) < 4 * res.zero_point_err
    assert abs(res.colour_term - ct) < 0.03
    assert res.n_stars == n - 3
    fixed = fit_zero_point(flux, flux_err, ref_mag, np.zeros(n), colour, colour_term=ct, floor_mag=0.0)
    assert abs(fixed.zero_point - zp) < 4 * fixed.zero_point_err
    with pytest.raises(PhotoCalError, match="need >= 5"):
        fit_zero_point(flux[:3], flux_err[:3], ref_mag[:3], np.zeros(3))


def test_reference_band_mapping():
    from astropy.table import Table
    ref = Table({"g_flux": [1000.0], "g_fluxErr": [10.0], "r_flux": [2000.0], "r_fluxErr": [20.0],
                 "i_flux": [3000.0], "i_fluxErr": [30.0]})
    for band, src in (("u", "g"), ("g", "g"), ("r", "r"), ("i", "i"), ("z", "i"), ("y", "i")):
        mag, _, _ = reference_magnitudes(ref, band, transform="none")
        assert mag[0] == pytest.approx(31.4 - 2.5 * math.log10(float(ref[f"{src}_flux"][0])))
    # stellar-locus transformation: a g - r = 0.75 star has u - g ~ 1.8 (Covey et al. 2007)
    gr = 2.5 * math.log10(2000.0 / 1000.0)
    mag_u, _, _ = reference_magnitudes(ref, "u")
    assert mag_u[0] - (31.4 - 2.5 * math.log10(1000.0)) == pytest.approx(stellar_locus_offset("u", gr))
    assert 1.6 < stellar_locus_offset("u", gr) < 2.0
    mag_g, _, _ = reference_magnitudes(ref, "g")
    assert mag_g[0] == pytest.approx(31.4 - 2.5 * math.log10(1000.0))


def test_aperture_correction_with_kolmogorov_tail():
    import galsim
    prof = galsim.Kolmogorov(fwhm=0.75)
    img = prof.drawImage(nx=401, ny=401, scale=0.2).array
    yy, xx = np.mgrid[:401, :401] - 200
    r = np.hypot(xx, yy)
    psf_box = img[200 - 15:200 + 16, 200 - 15:200 + 16].sum()  # what a 31-px PSF model measures
    f12, f18 = img[r <= 12].sum(), img[r <= 18].sum()
    n = 10
    ac = aperture_correction(np.full(n, psf_box), np.full(n, f12), np.full(n, f18), 12.0, 18.0,
                             np.full(n, 1e-4))
    # total / psf-box flux recovered to better than 0.3% (without the tail it would be off by ~0.8%)
    assert abs(ac.factor * psf_box / img.sum() - 1) < 0.003
    assert 0.003 < ac.tail_fraction < 0.02
    # the same with the tail from Kolmogorov theory and the PSF's FWHM (pixels)
    ac2 = aperture_correction(np.full(n, psf_box), np.full(n, f12), np.full(n, f18), 12.0, 18.0,
                              np.full(n, 1e-4), fwhm_px=0.75 / 0.2)
    assert abs(ac2.factor * psf_box / img.sum() - 1) < 0.003
