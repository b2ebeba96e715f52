"""The coadd algorithms and CoaddPsf on small synthetic arrays (twinkles.algorithms.coadd, twinkles.psf)."""

import numpy as np
import pytest
from astropy.io import fits

from twinkles.algorithms.coadd import (CoaddAccumulator, coverage_polygon, filter_artifacts, max_outlier_epochs,
                                       outlier_footprints, points_in_polygon, row_spans, static_sky_model,
                                       warp_weight)
from twinkles.image import Exposure, MASK_PLANES, mask_bit
from twinkles.psf import CoaddPsf, GaussianPSF, ImageGridPSF, psf_from_hdus

from coadd_synthetic import gauss_stamps


def test_inexact_psf_plane_has_the_next_free_bit():
    assert MASK_PLANES["INEXACT_PSF"] == max(b for n, b in MASK_PLANES.items() if n != "INEXACT_PSF") + 1


def test_max_outlier_epochs_is_dms_broken_line():
    # int(min(0.4 N, 2 + 0.03 N))
    assert list(max_outlier_epochs([1, 2, 3, 5, 9, 34, 100, 200])) == [0, 0, 1, 2, 2, 3, 5, 8]


def test_warp_weight_is_inverse_mean_variance_of_good_pixels():
    var = np.full((10, 10), 4.0)
    var[:, :5] = 1e9
    good = np.zeros((10, 10), bool)
    good[:, 5:] = True
    assert warp_weight(var, good) == pytest.approx(0.25)
    assert warp_weight(var, np.zeros_like(good)) == 0.0


def test_coverage_polygon_holds_the_valid_pixels():
    yy, xx = np.mgrid[0:120, 0:100]
    valid = (xx < 60 + 0.2 * yy) & (yy > 10)
    poly = coverage_polygon(valid)
    assert 3 <= len(poly) <= 40  # compact
    inside = points_in_polygon(poly, xx.ravel(), yy.ravel()).reshape(valid.shape)
    assert np.all(inside[valid])  # every pixel with data is inside
    # outside the data, only pixels within a pixel of its edge (the staircase's hull)
    dist = np.abs(xx - (60 + 0.2 * yy)) / np.hypot(1, 0.2)
    assert np.all(dist[inside & ~valid] < 1.5)
    first, last = row_spans(valid)
    assert first[0] == -1 and first[20] == 0 and last[20] == int(np.ceil(60 + 4)) - 1


def test_outlier_footprints_find_both_signs_and_ignore_noise():
    rng = np.random.default_rng(3)
    diff = rng.standard_normal((200, 200)).astype(np.float32)
    var = np.ones_like(diff)
    diff[50:54, 50:54] += 20.0
    diff[150:153, 120:124] -= 20.0
    diff[100, 100] += 50.0  # one pixel: below min_pixels
    fps = outlier_footprints(diff, var, np.ones(diff.shape, bool), threshold=5.0, min_pixels=4, grow_px=1)
    assert len(fps) == 2
    cy = sorted(int(np.unravel_index(f, diff.shape)[0].mean()) for f in fps)
    assert cy == [51, 151]


def test_filter_artifacts_keeps_persistent_and_contained_candidates():
    shape = (50, 50)
    cand = np.ravel_multi_index(np.mgrid[10:14, 10:14].reshape(2, -1), shape)
    n_epochs = np.full(shape, 20, np.uint16)
    ec = np.zeros(shape, np.uint16)
    ec.ravel()[cand] = 1  # in one epoch of 20: an artifact
    assert len(filter_artifacts([cand], ec, n_epochs)) == 1
    ec.ravel()[cand] = 8  # in 8 of 20 (> int(min(8, 2.6)) = 2): persistent, real
    assert len(filter_artifacts([cand], ec, n_epochs)) == 0
    ec.ravel()[cand] = 1
    labels = np.zeros(shape, np.int32)
    labels[5:20, 5:20] = 3  # wholly inside a source of the model: kept
    assert len(filter_artifacts([cand], ec, n_epochs, labels)) == 0
    labels[12:, :] = 4  # across two sources: clipped
    assert len(filter_artifacts([cand], ec, n_epochs, labels)) == 1


def test_static_sky_model_ignores_a_one_epoch_outlier():
    rng = np.random.default_rng(5)
    sky = np.zeros((60, 60))
    sky[30, 30] = 50.0
    warps = []
    for i in range(7):
        img = sky + rng.standard_normal(sky.shape)
        if i == 2:
            img[10:20, 10:20] += 100.0
        warps.append(Exposure(img, None, np.ones(sky.shape)))
    model = static_sky_model(warps)
    assert np.abs(model.image[10:20, 10:20]).max() < 5 * np.sqrt(1 / 6)  # the outlier is clipped
    assert model.image[30, 30] == pytest.approx(50.0, abs=5 * np.sqrt(1 / 7))  # the source is kept
    assert np.all(model.n[10:20, 10:20] <= 6)  # the outlying epoch never enters ...
    assert np.mean(model.n[10:20, 10:20] == 6) > 0.95  # ... and a 3-sigma clip drops few good values


def test_accumulator_is_the_weighted_mean_with_propagated_variance():
    shape = (5, 5)
    a = Exposure(np.full(shape, 1.0), None, np.full(shape, 1.0))
    b = Exposure(np.full(shape, 4.0), None, np.full(shape, 4.0))
    acc = CoaddAccumulator(shape)
    good_b = np.ones(shape, bool)
    good_b[0, 0] = False
    acc.add(a, np.ones(shape, bool), 1.0)
    acc.add(b, good_b, 0.25, inexact=~good_b)
    image, var, mask, n = acc.finish()
    assert image[2, 2] == pytest.approx((1 + 0.25 * 4) / 1.25)
    assert var[2, 2] == pytest.approx((1 + 0.25**2 * 4) / 1.25**2)
    assert image[0, 0] == pytest.approx(1.0) and n[0, 0] == 1 and n[2, 2] == 2
    assert mask[0, 0] & mask_bit("INEXACT_PSF") and not mask[2, 2] & mask_bit("INEXACT_PSF")
    empty = CoaddAccumulator(shape).finish()
    assert np.all(empty[2] & mask_bit("NO_DATA")) and np.all(empty[3] == 0)


def _two_input_psf():
    k1 = gauss_stamps(21, [0.0], [0.0], 1.5, 0.05, 0.0)[0]
    k2 = gauss_stamps(21, [0.0], [0.0], 2.2, -0.03, 0.04)[0]
    p1 = ImageGridPSF(k1, [50.0], [50.0])
    p2 = ImageGridPSF(np.stack([np.stack([k2, k2])] * 2), [0.0, 99.0], [0.0, 99.0])
    left = np.array([[-0.5, -0.5], [60.5, -0.5], [60.5, 99.5], [-0.5, 99.5]])
    full = np.array([[-0.5, -0.5], [99.5, -0.5], [99.5, 99.5], [-0.5, 99.5]])
    return CoaddPsf([p1, p2], [2.0, 1.0], [left, full], (100, 100), [11, 12]), k1, k2


def test_coadd_psf_is_the_weighted_sum_of_the_covering_inputs():
    psf, k1, k2 = _two_input_psf()
    both = psf.kernel_image(20.0, 30.0)
    expected = (2.0 * k1 / k1.sum() + k2 / k2.sum()) / 3.0
    np.testing.assert_allclose(both, expected / expected.sum(), atol=1e-12)
    np.testing.assert_allclose(psf.kernel_image(80.0, 30.0), k2 / k2.sum(), atol=1e-12)
    assert psf.n_inputs(20, 30) == 2 and psf.n_inputs(80, 30) == 1
    assert psf.fwhm(20, 30) < psf.fwhm(80, 30)
    many = psf.kernels_at(np.array([20.0, 80.0]), np.array([30.0, 30.0]))
    np.testing.assert_allclose(many[0], both, atol=1e-12)
    np.testing.assert_allclose(many[1], psf.kernel_image(80.0, 30.0), atol=1e-12)
    # image_at puts the centroid at the sub-pixel position
    st = psf.image_at(20.3, 30.0)
    xs = np.arange(st.shape[1]) - st.shape[1] // 2
    assert (st.sum(axis=0) * xs).sum() == pytest.approx(0.3, abs=0.01)


def test_coadd_psf_round_trips_through_fits():
    psf, _, _ = _two_input_psf()
    back = psf_from_hdus(fits.HDUList([fits.PrimaryHDU()] + psf.to_hdus()))
    assert isinstance(back, CoaddPsf) and list(back.ids) == [11, 12]
    for x, y in [(20.0, 30.0), (80.0, 70.0)]:
        np.testing.assert_allclose(back.kernel_image(x, y), psf.kernel_image(x, y), atol=1e-6)
    # with an Exposure, and with a non-grid input PSF
    psf2 = CoaddPsf([GaussianPSF(3.0), GaussianPSF(4.0)], [1.0, 1.0],
                    [np.array([[-1, -1], [200, -1], [200, 200], [-1, 200]])] * 2, (64, 64))
    exp = Exposure(np.zeros((64, 64)), psf=psf2)
    again = Exposure.from_hdulist(exp.to_hdulist())
    assert again.psf.fwhm() == pytest.approx(psf2.fwhm(), rel=1e-4)


def test_coadd_psf_rejects_bad_inputs():
    with pytest.raises(ValueError, match="one of each"):
        CoaddPsf([GaussianPSF(3.0)], [1.0, 2.0], [np.zeros((0, 2))], (10, 10))
    with pytest.raises(ValueError, match="weights"):
        CoaddPsf([GaussianPSF(3.0)], [0.0], [np.zeros((0, 2))], (10, 10))
