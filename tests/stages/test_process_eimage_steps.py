"""The steps of process_eimage on their own: source IDs that cannot collide, the variance made for an eimage
without one, and the background re-estimate's error handling (only "every pixel masked" is tolerated)."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.wcs import WCS

from twinkles.algorithms.background import NoUsablePixelsError, estimate_background, move_residual_background
from twinkles.image import Exposure, VisitInfo
from twinkles.stages.process_eimage import MAX_VISIT, Config, prepare_frame, source_id


def test_source_ids_are_unique_and_refuse_numbers_that_do_not_fit():
    ids = source_id(840, 3, np.arange(5))
    assert ids.dtype == np.int64 and list(ids) == [840_003_000_000 + i for i in range(5)]
    largest = (MAX_VISIT * 1000 + 999) * 1_000_000 + 999_999  # Python int: exact
    assert largest <= np.iinfo(np.int64).max and int(source_id(MAX_VISIT, 999, [999_999])[0]) == largest
    with pytest.raises(ValueError, match="source index 1000000 outside"):
        source_id(840, 0, np.arange(1_000_001))
    with pytest.raises(ValueError, match="detector 1000 outside"):
        source_id(840, 1000, [0])
    with pytest.raises(ValueError, match="would overflow int64"):
        source_id(MAX_VISIT + 1, 0, [0])


def _wcs(shape):
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [53.0, -27.4]
    w.wcs.crpix = [shape[1] / 2, shape[0] / 2]
    w.wcs.cd = [[-0.2 / 3600, 0], [0, 0.2 / 3600]]
    return w


def test_an_eimage_without_variance_gets_poisson_plus_read_noise_in_electrons():
    rng = np.random.default_rng(3)
    image = rng.normal(1000.0, 30.0, (64, 64)).astype(np.float32)  # electrons
    # a gain in the metadata must not rescale it: the eimage is already in electrons
    exposure = Exposure(image, variance=np.ones_like(image), wcs=_wcs(image.shape),
                        visit_info=VisitInfo(1, "r", 60000.0), metadata={"gain": 2.0, "read_noise_e": 4.0})
    frame = prepare_frame(exposure, Config(), "visit 1 detector 0", reuse_planes=False)
    assert frame.variance_from_image
    np.testing.assert_allclose(frame.variance, np.clip(image, 0, None) + 16.0, rtol=1e-6)


def test_background_reestimate_tolerates_only_an_all_masked_image():
    image = np.ones((64, 64), np.float32)
    with pytest.raises(NoUsablePixelsError):
        estimate_background(image, np.ones(image.shape, bool))
    assert issubclass(NoUsablePixelsError, ValueError)  # callers catching ValueError still do
    # a wrong dtype is a ValueError but not "every pixel masked": the stage must not swallow it
    with pytest.raises(ValueError) as info:
        move_residual_background(image.astype(np.float64), image.copy(), None)
    assert not isinstance(info.value, NoUsablePixelsError)
