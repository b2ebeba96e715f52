"""Measurement algorithms on GalSim images with a known PSF: errors are checked with pulls."""

import math

import galsim
import numpy as np
import pytest

from twinkles.image import mask_bit
from twinkles.measure import (PsfStamps, adaptive_moments, aperture_column, aperture_fluxes, extendedness,
                              forced_psf_flux, measure_sources, psf_flux, windowed_centroid)
from twinkles.measure.flags import pixel_flags
from twinkles.psf import GaussianPSF, ImageGridPSF

FWHM = 3.5  # pixels
SKY_VAR = 900.0


def _field(n=400, size=600, seed=0, flux_range=(2e3, 2e5), noise=True):
    """Stars on a grid (no overlaps) with a Gaussian PSF, sky-subtracted, with Poisson + sky noise."""
    rng = np.random.default_rng(seed)
    img = galsim.ImageD(size, size, scale=1.0)
    side = int(math.sqrt(n))
    step = (size - 40) / side
    xs = 20 + step * (np.arange(side)[None, :] + 0.5) + rng.uniform(-0.5, 0.5, (side, side))
    ys = 20 + step * (np.arange(side)[:, None] + 0.5) + rng.uniform(-0.5, 0.5, (side, side))
    xs, ys = xs.ravel(), ys.ravel()
    flux = np.exp(rng.uniform(*np.log(flux_range), len(xs)))
    psf = galsim.Gaussian(fwhm=FWHM)
    for x, y, f in zip(xs, ys, flux):
        psf.withFlux(f).drawImage(img, add_to_image=True, center=galsim.PositionD(x + 1, y + 1))
    model = img.array.copy()
    var = model + SKY_VAR
    data = model + (rng.normal(0, np.sqrt(var)) if noise else 0)
    return data, var, xs, ys, flux


@pytest.fixture(scope="module")
def field():
    return _field()


def test_psf_flux_unbiased_with_correct_errors(field):
    data, var, xs, ys, flux = field
    psf = GaussianPSF(FWHM)
    stamps = PsfStamps(psf, data.shape, n_grid=1, model_size=31)
    f, e, flag = psf_flux(data, var, stamps, xs, ys)
    assert not flag.any()
    pull = (f - flux) / e
    se = 1 / math.sqrt(2 * len(pull))
    assert abs(np.mean(pull)) < 4 / math.sqrt(len(pull))
    assert abs(np.std(pull) - 1) < 4 * se
    # the error is the optimal one for sky-limited sources: sqrt(4 pi sigma^2 V) for a Gaussian PSF
    sigma = FWHM / 2.3548
    faint = flux < 5e3
    expected = np.sqrt(4 * math.pi * sigma ** 2 * var.min())
    assert np.median(e[faint]) / expected == pytest.approx(1.0, abs=0.1)


def test_forced_psf_flux_and_masked_pixels(field):
    data, var, xs, ys, flux = field
    mask = np.zeros(data.shape, np.int32)
    f, e, flag = forced_psf_flux(data, var, mask, GaussianPSF(FWHM), xs, ys)
    assert np.allclose(f, psf_flux(data, var, PsfStamps(GaussianPSF(FWHM), data.shape, 1), xs, ys)[0])
    # a saturated core removes most of the PSF weight: flagged
    mask[int(round(ys[0])) - 2:int(round(ys[0])) + 3, int(round(xs[0])) - 2:int(round(xs[0])) + 3] = mask_bit("SAT")
    f2, e2, flag2 = forced_psf_flux(data, var, mask, GaussianPSF(FWHM), xs, ys)
    assert flag2[0] and not flag2[1:].any()


def test_psf_stamps_subpixel_shift_and_grid_interpolation():
    # a spatially varying PSF: FWHM 3 px on the left, 4 px on the right
    xs = np.array([0.0, 200.0])
    grid = np.array([[GaussianPSF(3.0).kernel_image(0, 0, 31), GaussianPSF(4.0).kernel_image(0, 0, 31)]])
    psf = ImageGridPSF(grid, xs, np.array([100.0]))
    st = PsfStamps(psf, (201, 201), n_grid=5, model_size=31)
    for x, dx in ((0.0, 0.3), (100.0, -0.4), (200.0, 0.25)):
        s = st.stamps(np.array([x + dx]), np.array([100.0 + dx]), 31)[0]
        yy, xx = np.mgrid[-15:16, -15:16]
        cx, cy = (s * xx).sum() / s.sum(), (s * yy).sum() / s.sum()
        assert cx == pytest.approx(dx, abs=0.01) and cy == pytest.approx(dx, abs=0.01)
        sig = math.sqrt(((xx - cx) ** 2 * s).sum() / s.sum())
        expect = (3.0 + (x + dx) / 200.0) / 2.3548
        assert sig == pytest.approx(math.sqrt(expect ** 2 + 1 / 12), rel=0.03)


def test_windowed_centroid_pulls(field):
    data, var, xs, ys, flux = field
    rng = np.random.default_rng(5)
    x0, y0 = xs + rng.uniform(-0.7, 0.7, len(xs)), ys + rng.uniform(-0.7, 0.7, len(xs))
    x, y, xe, ye, flag = windowed_centroid(data, var, x0, y0, FWHM / 2.3548)
    assert not flag.any()
    px, py = (x - xs) / xe, (y - ys) / ye
    se = 1 / math.sqrt(2 * len(px))
    assert abs(np.std(px) - 1) < 5 * se and abs(np.std(py) - 1) < 5 * se
    assert abs(np.mean(px)) < 4 / math.sqrt(len(px))
    # the centroid error of a bright star is sqrt(2) sigma / (S/N) (Fisher information of a Gaussian)
    sigma = FWHM / 2.3548
    f, e, _ = psf_flux(data, var, PsfStamps(GaussianPSF(FWHM), data.shape, 1), x, y)
    assert np.median(xe / (math.sqrt(2) * sigma * e / f)) == pytest.approx(1.0, abs=0.15)


def test_aperture_fluxes_and_errors(field):
    data, var, xs, ys, flux = field
    noiseless, *_ = _field(noise=False)
    aps = aperture_fluxes(data, var, xs, ys, radii=(3.0, 6.0, 12.0))
    exact = aperture_fluxes(noiseless, var, xs, ys, radii=(3.0, 6.0, 12.0))
    for r, (f, e, flag) in aps.items():
        pull = (f - exact[r][0]) / e
        se = 1 / math.sqrt(2 * len(pull))
        assert abs(np.std(pull) - 1) < 4 * se, r
        assert abs(np.mean(pull)) < 4 / math.sqrt(len(pull)), r
    # 12 px is 8 sigma of the PSF: the aperture holds all the flux
    assert np.allclose(exact[12.0][0] / flux, 1.0, atol=2e-3)
    assert aperture_column(4.5) == "apFlux_4_5" and aperture_column(12.0) == "apFlux_12_0"


def test_adaptive_moments_of_gaussian():
    data, var, xs, ys, flux = _field(n=100, noise=False)
    mom = adaptive_moments(data, xs, ys, guess_sigma=1.5)
    sigma = FWHM / 2.3548
    # pixelised Gaussian: sigma^2 + 1/12
    assert np.allclose(mom["ixx"], sigma ** 2 + 1 / 12, rtol=0.01)
    assert np.allclose(mom["iyy"], sigma ** 2 + 1 / 12, rtol=0.01)
    assert np.allclose(mom["ixy"], 0, atol=0.01)


def test_compiled_adaptive_moments_match_galsim_hsm():
    """Our compiled adaptive-moment iteration against GalSim's FindAdaptiveMom on noisy stars and sheared,
    off-centre galaxies (Sersic n = 1-4, some with masked pixels): the same moments to 1e-4 of ixx + iyy (the
    iteration stops at relative changes of 1e-6), and the same failures but for a rare faint one."""
    from twinkles.measure import moments_from_stamps
    rng = np.random.default_rng(5)
    stamps, weights = [], []
    for i in range(150):
        n = rng.choice([1.0, 2.5, 4.0])
        hlr = rng.uniform(0.8, 3.0)
        gal = galsim.Sersic(n, half_light_radius=hlr).shear(g1=rng.uniform(-0.4, 0.4), g2=rng.uniform(-0.4, 0.4))
        obj = galsim.Convolve(gal, galsim.Gaussian(fwhm=FWHM)).withFlux(rng.uniform(500, 5e4))
        im = obj.drawImage(nx=25, ny=25, scale=1.0, offset=rng.uniform(-1.5, 1.5, 2)).array
        im = im + rng.normal(0, math.sqrt(SKY_VAR), im.shape)
        w = np.ones(im.shape, np.int32)
        if i % 5 == 0:
            w[rng.integers(0, 25), :] = 0  # a masked row (a bleed trail, a bad column's neighbour)
        stamps.append(im)
        weights.append(w)
    stamps, weights = np.array(stamps), np.array(weights)
    ours = moments_from_stamps(stamps, weights, FWHM / 2.3548)
    hsm = moments_from_stamps(stamps, weights, FWHM / 2.3548, method="hsm")
    assert (ours["flag"] != hsm["flag"]).sum() <= 2
    ok = ~ours["flag"] & ~hsm["flag"]
    assert ok.sum() > 120
    t = hsm["ixx"][ok] + hsm["iyy"][ok]
    for c in ("ixx", "iyy", "ixy"):
        assert np.max(np.abs(ours[c][ok] - hsm[c][ok]) / t) < 1e-4, c


def test_pixel_flags():
    mask = np.zeros((50, 50), np.int32)
    mask[10, 10] = mask_bit("SAT")
    mask[30, 30] = mask_bit("CR", "INTRP")
    mask[:3, :] |= mask_bit("EDGE")
    fl = pixel_flags(mask, np.array([10.0, 12.0, 30.0, 25.0, 20.0]), np.array([10.0, 10.0, 31.0, 1.0, 20.0]))
    assert list(fl["pixelFlags_saturatedCenter"]) == [True, False, False, False, False]
    assert list(fl["pixelFlags_saturated"]) == [True, True, False, False, False]
    assert list(fl["pixelFlags_cr"]) == [False, False, True, False, False]
    assert list(fl["pixelFlags_interpolated"]) == [False, False, True, False, False]
    assert list(fl["pixelFlags_edge"]) == [False, False, False, True, False]


def test_measure_sources_and_extendedness():
    data, var, xs, ys, flux = _field(n=100, seed=3, flux_range=(5e4, 2e5))
    # add extended galaxies between the stars
    img = galsim.ImageD(data.shape[1], data.shape[0], scale=1.0)
    gx, gy = xs[:20] + 20, ys[:20] + 20
    gal = galsim.Convolve(galsim.Exponential(half_light_radius=3.0), galsim.Gaussian(fwhm=FWHM)).withFlux(1e5)
    for x, y in zip(gx, gy):
        gal.drawImage(img, add_to_image=True, center=galsim.PositionD(x + 1, y + 1))
    data = data + img.array + np.random.default_rng(9).normal(0, np.sqrt(img.array.clip(0)))
    var = var + img.array
    mask = np.zeros(data.shape, np.int32)
    psf = GaussianPSF(FWHM)
    t = measure_sources(data, var, mask, psf, np.r_[xs, gx], np.r_[ys, gy])
    n = len(xs)
    assert len(t) == n + 20
    assert not t["centroid_flag"].any()
    ratio = np.asarray(t["psfFlux"]) / np.asarray(t["apFlux_12_0"])
    c = np.median(ratio[:n])
    ext = extendedness(t["psfFlux"], t["psfFluxErr"], np.asarray(t["apFlux_12_0"]) * c,
                       np.asarray(t["apFlux_12_0Err"]) * c)
    assert ext[:n].mean() < 0.05  # stars are point-like
    assert ext[n:].mean() > 0.9  # galaxies with r_half = 3 px are extended
    # the PSF moments at each source are the PSF's
    sigma = FWHM / 2.3548
    assert np.allclose(t["ixxPSF"], sigma ** 2 + 1 / 12, rtol=0.02)


def test_measurement_is_vectorised(field):
    """Thousands of sources per second is measured by benchmarks/; here: one call handles many sources."""
    data, var, xs, ys, flux = field
    t = measure_sources(data, var, np.zeros(data.shape, np.int32), GaussianPSF(FWHM), xs, ys)
    assert len(t) == len(xs)
    assert np.isfinite(t["psfFlux"]).all()
