"""Alard-Lupton kernel fit and the decorrelation on synthetic images with a known answer."""

import math

import numpy as np
import pytest
from scipy import ndimage, signal

from twinkles.algorithms.alard_lupton import AlardLuptonConfig, MatchingError, fit_kernel, gaussian_basis
from twinkles.algorithms.decorrelation import decorrelate, decorrelation_kernel


def _gauss(size, sigma):
    h = size // 2
    y, x = np.mgrid[-h:h + 1, -h:h + 1]
    g = np.exp(-0.5 * (x * x + y * y) / sigma ** 2)
    return g / g.sum()


def _scene(seed, n=300, shape=(300, 300)):
    rng = np.random.default_rng(seed)
    img = np.zeros(shape)
    xs = rng.uniform(30, shape[1] - 30, 40)
    ys = rng.uniform(30, shape[0] - 30, 40)
    img[ys.astype(int), xs.astype(int)] = rng.uniform(2e4, 1e5, 40)
    return img, np.column_stack([xs.astype(int), ys.astype(int)]), rng


def test_basis_is_normalised():
    b = gaussian_basis(23, [0.8, 1.6, 3.2], [4, 2, 2])
    assert b.shape == (15 + 6 + 6, 23, 23)
    assert abs(b[0].sum() - 1) < 1e-12
    assert np.all(np.abs(b[1:].sum(axis=(1, 2))) < 1e-10)


def test_fit_recovers_a_known_kernel_scaling_and_background():
    truth, xy, rng = _scene(3)
    s_ref, s_tgt = 1.5, 2.3
    ref = ndimage.convolve(truth, _gauss(31, s_ref), mode="constant")
    tgt = 0.9 * ndimage.convolve(truth, _gauss(31, s_tgt), mode="constant") + 5.0 + 0.01 * np.arange(300)[None, :]
    sigma_r, sigma_t = 1.0, 3.0
    ref_n = ref + rng.normal(0, sigma_r, ref.shape)
    tgt_n = tgt + rng.normal(0, sigma_t, tgt.shape)
    var = np.full(ref.shape, sigma_r ** 2 + sigma_t ** 2)
    sol, cb = fit_kernel(ref_n, tgt_n, var, np.ones(ref.shape, bool), xy, 2.3548 * s_ref, 2.3548 * s_tgt,
                         AlardLuptonConfig(min_stamps=5))
    k = sol.kernel(150, 150)
    true_k = 0.9 * _gauss(k.shape[0], math.sqrt(s_tgt ** 2 - s_ref ** 2))
    assert abs(sol.kernel_sum() - 0.9) < 0.005
    assert np.abs(k - true_k).max() < 0.05 * true_k.max()
    resid = tgt_n - sol.convolve(ref_n, cb) - sol.background()
    inner = (slice(40, 260), slice(40, 260))
    # the residual is noise: sigma_t^2 plus the convolved reference noise
    expect = math.sqrt(sigma_t ** 2 + sigma_r ** 2 * (k ** 2).sum())
    assert abs(resid[inner].std() / expect - 1) < 0.03
    assert abs(sol.background()[150, 150] - (5.0 + 1.5)) < 0.2


def test_too_few_stamps_fail_clearly():
    truth, xy, rng = _scene(4)
    with pytest.raises(MatchingError, match="usable kernel stamps"):
        fit_kernel(truth, truth, np.ones(truth.shape), np.ones(truth.shape, bool), xy[:3], 3.0, 4.0)


def test_decorrelation_whitens_the_difference_noise():
    rng = np.random.default_rng(5)
    shape = (512, 512)
    s_t, s_r = 1.0, 0.6
    kappa = _gauss(21, 1.6)
    d = rng.normal(0, s_t, shape) - signal.fftconvolve(rng.normal(0, s_r, shape), kappa, mode="same")
    phi = decorrelation_kernel(kappa, s_t ** 2, s_r ** 2)
    assert abs(phi.sum() - 1) < 1e-9
    out = decorrelate(d, phi, np.ones(shape, bool))[40:-40, 40:-40]
    expect = math.sqrt(s_t ** 2 + s_r ** 2)
    n = out.size
    assert abs(out.std() / expect - 1) < 5 / math.sqrt(2 * n) + 0.005
    # neighbouring pixels uncorrelated (they were before), and sums over a PSF-sized box have the right noise
    r1 = np.corrcoef(out[:, :-1].ravel(), out[:, 1:].ravel())[0, 1]
    assert abs(r1) < 0.02
    box = ndimage.uniform_filter(out, 7)[::7, ::7] * 49
    assert abs(box.std() / (7 * expect) - 1) < 0.06
    # before: box sums noisier than the pixels' variance says (the correlation the decorrelation removes)
    raw = ndimage.uniform_filter(d[40:-40, 40:-40], 7)[::7, ::7] * 49
    assert raw.std() / (7 * d.std()) > 1.06
