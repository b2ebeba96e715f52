"""The compiled pixel loops against the numpy/scipy formulations they replace (same results, not just close)."""

import math

import numpy as np
import pytest
from scipy import ndimage

from twinkles.algorithms import pixel_kernels as pk
from twinkles.algorithms.background import grow_mask
from twinkles.algorithms.cosmic_rays import find_cosmic_rays
from twinkles.algorithms.detection import significance_image


@pytest.mark.parametrize("density", [0.002, 0.3])
@pytest.mark.parametrize("radius", [1, 2, 3, 6])
def test_grow_mask_equals_scipy_dilation(density, radius):
    mask = np.random.default_rng(radius).random((97, 131)) < density
    if radius <= 2:
        y, x = np.ogrid[-radius:radius + 1, -radius:radius + 1]
        expected = ndimage.binary_dilation(mask, structure=(x * x + y * y) <= radius * radius)
    else:
        expected = ndimage.maximum_filter(mask.view(np.uint8), size=2 * radius + 1, mode="constant").astype(bool)
    assert np.array_equal(grow_mask(mask, radius), expected)
    assert np.array_equal(pk.dilate_cross(mask), grow_mask(mask, 1))


def test_matched_filter_equals_scipy_gaussian_filters():
    """S/N = (G * (I/V)) / sqrt(1 / (4 pi s^2 V)) with scipy's Gaussian filter (float32 rounding apart); bad,
    non-finite and zero-variance pixels weigh nothing."""
    rng = np.random.default_rng(1)
    image = rng.normal(0, 30, (150, 170)).astype(np.float32)
    image[40:43, 50:53] += 2000
    var = np.full(image.shape, 900, np.float32) + rng.uniform(0, 50, image.shape).astype(np.float32)
    bad = np.zeros(image.shape, bool)
    bad[:, 100:104] = True
    image[5, 6] = np.nan
    var[9, 9] = 0
    sigma = 1.7
    snr = significance_image(image, var, sigma, bad)
    inv = np.zeros(image.shape)
    np.divide(1.0, var, out=inv, where=(var > 0) & ~bad & np.isfinite(image))
    weighted = np.where(inv > 0, image * inv, 0.0)
    num = ndimage.gaussian_filter(weighted, sigma, mode="constant", truncate=3.0)
    den = inv / (4 * math.pi * sigma ** 2)
    expected = np.where(den > 0, num / np.sqrt(np.where(den > 0, den, 1)), 0.0)
    assert np.allclose(snr, expected, rtol=1e-5, atol=1e-5)
    assert snr[5, 6] == 0 and snr[9, 9] == 0 and not snr[:, 100:104].any()
    # tiny images (fewer rows than the kernel) too
    small = significance_image(image[:4], var[:4], sigma, bad[:4])
    num = ndimage.gaussian_filter(weighted[:4], sigma, mode="constant", truncate=3.0)
    assert np.allclose(small, np.where(den[:4] > 0, num / np.sqrt(np.where(den[:4] > 0, den[:4], 1)), 0), atol=1e-5)


def test_footprint_maxima_and_binning():
    rng = np.random.default_rng(2)
    snr = rng.normal(0, 1, (60, 70)).astype(np.float32)
    labels = (rng.random(snr.shape) < 0.5).astype(np.int32)
    ys, xs = pk.footprint_maxima(snr, labels)
    padded = np.pad(snr, 1, constant_values=-np.inf)
    neighbours = np.stack([padded[1 + dy:61 + dy, 1 + dx:71 + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1)
                           if dy or dx])
    expected = np.nonzero((labels > 0) & (snr >= neighbours.max(axis=0)))
    assert np.array_equal(ys, expected[0]) and np.array_equal(xs, expected[1])
    a = rng.normal(0, 1, (61, 70)).astype(np.float32)
    assert np.allclose(pk.bin2x2(a), a[:60].reshape(30, 2, 35, 2).sum(axis=(1, 3)), atol=1e-5)
    m = rng.random((61, 70)) < 0.1
    assert np.array_equal(pk.bin2x2_any(m), m[:60].reshape(30, 2, 35, 2).any(axis=(1, 3)))


def test_cr_interpolation_uses_only_unaffected_neighbours():
    """A cosmic ray on a flat sky with a gradient is replaced by the mean of the unmasked pixels around it."""
    rng = np.random.default_rng(4)
    ny, nx = 200, 220
    yy, xx = np.mgrid[:ny, :nx]
    sky = (800.0 + 0.2 * xx).astype(np.float32)
    img = rng.normal(0, 28.0, (ny, nx)).astype(np.float32)
    img[100, 60:66] += 3000.0  # a short track
    var = np.full((ny, nx), 800.0, np.float32)
    res = find_cosmic_rays(img, sky, var, read_noise=5.0, niter=1)
    assert res.mask[100, 60:66].all()
    ys, xs = np.nonzero(res.mask)
    assert len(ys) < 40  # the track and its 1-pixel ring
    box = (slice(96, 105), slice(55, 71))
    assert abs(float(np.mean(res.cleaned[ys, xs]))) < 3 * 28.0 / math.sqrt(5)
    assert np.array_equal(res.cleaned[~res.mask], img[~res.mask])
    assert np.abs(res.cleaned[box]).max() < 5 * 28.0
