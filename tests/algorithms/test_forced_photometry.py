"""The forced-photometry group solver: against numpy's dense least squares, and on synthetic images whose true
fluxes are known (a Gaussian PSF, Gaussian noise of known variance): close pairs fitted together are unbiased
where independent fits are biased; errors match the scatter."""

from __future__ import annotations

import numpy as np
import pytest

from twinkles.algorithms.forced_photometry import forced_psf_fluxes
from twinkles.psf import GaussianPSF
from twinkles.stamps import PsfStamps
from twinkles.validate.stats import assert_within, mean_and_error, sd_and_error

FWHM = 3.5


def _render(shape, psf_stamps, x, y, flux):
    img = np.zeros(shape)
    st = psf_stamps.stamps(x, y)
    h = st.shape[1] // 2
    ny, nx = shape
    for k in range(len(x)):
        xc, yc = int(round(x[k])), int(round(y[k]))
        y0, y1, x0, x1 = max(0, yc - h), min(ny, yc + h + 1), max(0, xc - h), min(nx, xc + h + 1)
        img[y0:y1, x0:x1] += flux[k] * st[k][y0 - yc + h:y1 - yc + h, x0 - xc + h:x1 - xc + h]
    return img


def _design(shape, psf_stamps, x, y, good):
    """The explicit (pixels x sources) design matrix of good pixels."""
    cols = [_render(shape, psf_stamps, x[k:k + 1], y[k:k + 1], np.ones(1))[good] for k in range(len(x))]
    return np.column_stack(cols)


def test_group_solver_matches_dense_lstsq():
    rng = np.random.default_rng(3)
    shape = (64, 64)
    ps = PsfStamps(GaussianPSF(FWHM), shape, model_size=21)
    # a chain of overlapping sources, a close pair, isolated ones, one near the edge
    x = np.array([10.2, 13.9, 17.1, 40.0, 41.8, 55.3, 25.0, 1.2])
    y = np.array([10.7, 11.4, 14.0, 40.2, 43.0, 12.0, 50.3, 30.0])
    flux = np.array([1e4, 3e3, 5e4, 2e3, 8e3, 1e3, 4e3, 6e3])
    var = rng.uniform(50, 150, shape)
    img = _render(shape, ps, x, y, flux) + rng.normal(0, np.sqrt(var))
    good = np.ones(shape, bool)
    good[12:14, 14:16] = False  # masked pixels inside a group
    fit = forced_psf_fluxes(img, var, good, ps, x, y, coupling_tolerance=0.0, min_overlap=-1.0)
    X = _design(shape, ps, x, y, good)
    ref, *_ = np.linalg.lstsq(X, img[good], rcond=None)
    # (the PSF stamps are stored in float32: agreement to ~1e-7)
    np.testing.assert_allclose(fit.flux, ref, rtol=1e-6)
    # covariance of the equal-weight fit: (X'X)^-1 X' V X (X'X)^-1
    inv = np.linalg.inv(X.T @ X)
    cov = inv @ (X.T * var[good]) @ X @ inv
    # groups are solved separately: across groups the covariance vanishes exactly, so the diagonals agree
    np.testing.assert_allclose(fit.flux_err, np.sqrt(np.diag(cov)), rtol=1e-6)
    # every stamp overlap linked: the far source 5 alone, the others in two groups
    assert fit.group_size[5] == 1 and len(np.unique(fit.group)) == 3
    assert fit.edge.tolist() == [False] * 5 + [True, False, True]  # stamps running off the image
    # groups larger than max_dense: sparse LU, the same fluxes; errors from each source's block with its direct
    # neighbours (exact here where a source overlaps every other one of its group)
    sp = forced_psf_fluxes(img, var, good, ps, x, y, coupling_tolerance=0.0, min_overlap=-1.0, max_dense=1)
    np.testing.assert_allclose(sp.flux, ref, rtol=1e-6)
    np.testing.assert_allclose(sp.flux_err, np.sqrt(np.diag(cov)), rtol=0.05)
    # a single isolated source: exactly the independent (measure.photometry.psf_flux) fit
    from twinkles.measure.photometry import psf_flux
    f1, e1, _ = psf_flux(img, var, ps, x[5:6], y[5:6], good)
    np.testing.assert_allclose([fit.flux[5], fit.flux_err[5]], [f1[0], e1[0]], rtol=1e-6)


def test_default_linking_bias_below_tolerance():
    """With the default linking (a pair is left unlinked when it biases either flux by < 0.05 sigma), the noiseless
    fluxes of a dense random field are within a few times 0.05 sigma of truth (several neglected neighbours add)."""
    rng = np.random.default_rng(4)
    shape = (256, 256)
    ps = PsfStamps(GaussianPSF(FWHM), shape)
    n = 300
    x, y = rng.uniform(3, 252, n), rng.uniform(3, 252, n)
    flux = 10 ** rng.uniform(2, 5, n)
    img = _render(shape, ps, x, y, flux)
    var = np.full(shape, 100.0)
    fit = forced_psf_fluxes(img, var, None, ps, x, y)
    assert (fit.group_size > 1).sum() > 30
    dev = np.abs(fit.flux - flux) / fit.flux_err
    assert np.nanmax(dev) < 0.15, np.nanmax(dev)
    assert np.median(dev) < 0.01, np.median(dev)
    # the same with every overlapping pair linked: exact
    full = forced_psf_fluxes(img, var, None, ps, x, y, coupling_tolerance=0.0, min_overlap=-1.0)
    assert np.max(np.abs(full.flux - flux) / full.flux_err) < 1e-3  # float32 stamps


@pytest.fixture(scope="module")
def pairs():
    """Many realisations of close pairs (separation 1-2 FWHM, flux ratio 1-10), each alone on its image."""
    rng = np.random.default_rng(5)
    shape = (48, 48)
    ps = PsfStamps(GaussianPSF(FWHM), shape)
    rows = []
    for _ in range(300):
        sep = rng.uniform(1.0, 2.0) * FWHM
        ang = rng.uniform(0, 2 * np.pi)
        x = 24.0 + rng.uniform(-0.5, 0.5) + np.array([0.0, sep * np.cos(ang)])
        y = 24.0 + rng.uniform(-0.5, 0.5) + np.array([0.0, sep * np.sin(ang)])
        flux = np.array([2000.0, 2000.0 * rng.uniform(1, 10)])
        var = np.full(shape, 400.0)
        img = _render(shape, ps, x, y, flux) + rng.normal(0, 20.0, shape)
        fit = forced_psf_fluxes(img, var, None, ps, x, y)
        rows.append((fit.flux[0], fit.flux_err[0], fit.flux_independent[0], fit.flux_independent_err[0],
                     flux[0], fit.group_size[0]))
    return np.array(rows)


def test_close_pairs_unbiased_when_fitted_together(pairs):
    f, e, f0, e0, true, gsize = pairs.T
    assert (gsize == 2).all()
    pull = (f - true) / e
    m, se = mean_and_error(pull)
    assert_within(m, 0.0, se, 4.0, "mean pull of the fainter star of a close pair, fitted together")
    sd, sd_se = sd_and_error(pull)
    assert_within(sd, 1.0, sd_se, 4.0, "sd of its pull (errors from the group covariance)")
    # fitted alone, its neighbour's light biases it high, by many sigma
    pull0 = (f0 - true) / e0
    m0, se0 = mean_and_error(pull0)
    print(f"close pairs: joint mean pull {m:+.3f} +- {se:.3f}, sd {sd:.3f}; independent mean pull {m0:+.2f} +- {se0:.2f}")
    assert m0 > 10 * se0 and m0 > 3.0, (m0, se0)


def test_isolated_pulls_and_fully_masked_source():
    rng = np.random.default_rng(6)
    shape = (200, 200)
    ps = PsfStamps(GaussianPSF(FWHM), shape)
    gx, gy = np.meshgrid(np.arange(20, 190, 25.0), np.arange(20, 190, 25.0))
    x, y = gx.ravel() + rng.uniform(-0.5, 0.5, gx.size), gy.ravel() + rng.uniform(-0.5, 0.5, gx.size)
    flux = 10 ** rng.uniform(2.5, 4.5, x.size)
    img0 = _render(shape, ps, x, y, flux)
    var = 100.0 + img0  # sky + source Poisson noise
    pulls = []
    for _ in range(20):
        img = img0 + rng.normal(0, np.sqrt(var))
        good = np.ones(shape, bool)
        good[int(y[0]) - 12:int(y[0]) + 13, int(x[0]) - 12:int(x[0]) + 13] = False
        fit = forced_psf_fluxes(img, var, good, ps, x, y)
        assert fit.flag[0] and fit.no_good_pixels[0] and np.isnan(fit.flux[0])
        assert not fit.flag[1:].any()
        pulls.append(((fit.flux - flux) / fit.flux_err)[1:])
    sd, se = sd_and_error(np.concatenate(pulls))
    assert_within(sd, 1.0, se, 4.0, "sd of isolated-source pulls")


def test_phase_table_matches_fourier_shifted_stamps():
    """The table look-up (nearest of 17 x 17 sub-pixel shifts) against a Fourier shift per source: stamps within
    2e-3 of the peak (the bilinear interpolation between 9 x 9 sub-pixel shifts), noiseless fluxes of isolated sources within 1.2e-3 and of all within 0.3 of their error; errors within 1e-3."""
    from twinkles.algorithms.forced_photometry import PhaseTable
    from twinkles.psf import ImageGridPSF
    rng = np.random.default_rng(7)
    shape = (300, 300)
    # a PSF whose width and ellipticity change across the image
    xs = ys = np.array([0.0, 150.0, 299.0])
    yy, xx = np.mgrid[-15:16, -15:16]
    imgs = np.empty((3, 3, 31, 31))
    for j in range(3):
        for i in range(3):
            sx, sy = 1.3 + 0.2 * i, 1.5 + 0.15 * j
            imgs[j, i] = np.exp(-0.5 * ((xx / sx) ** 2 + (yy / sy) ** 2))
    psf = ImageGridPSF(imgs, xs, ys)
    ps = PsfStamps(psf, shape, n_grid=3, model_size=31)
    tab = PhaseTable(ps)
    n = 150
    x, y = rng.uniform(10, 290, n), rng.uniform(10, 290, n)
    a, b = ps.stamps(x, y, 19), tab.stamps(x, y, 19)
    assert np.abs(a - b).max() < 2e-3 * a.max()
    flux = 10 ** rng.uniform(3, 5, n)
    img = _render(shape, ps, x, y, flux)
    var = np.full(shape, 100.0) + img
    exact = forced_psf_fluxes(img, var, None, ps, x, y, size=19)
    fast = forced_psf_fluxes(img, var, None, tab, x, y, size=19)
    dev = np.abs(fast.flux - exact.flux) / exact.flux_err
    print("max |fast - exact| / err", dev.max())
    iso = fast.group_size == 1
    # ~0.5 mmag (the calexp's own PSF model errs by ~3 mmag)
    assert np.max(np.abs(fast.flux / exact.flux - 1)[iso]) < 1.2e-3
    assert dev.max() < 0.3  # in a close pair the joint fit amplifies the model difference, still << its error
    assert np.max(np.abs(fast.flux_err / exact.flux_err - 1)) < 1e-3
