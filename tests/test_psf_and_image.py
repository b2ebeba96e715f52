"""The PSF interface and Exposure basics."""

import math

import galsim
import numpy as np
import pytest

from twinkles.image import Exposure, PhotoCalib, mask_bit, mask_planes_set
from twinkles.psf import GaussianPSF, ImageGridPSF, measure_fwhm


def _centroid(img):
    y, x = np.indices(img.shape)
    return (img * x).sum() / img.sum(), (img * y).sum() / img.sum()


def test_gaussian_psf_is_normalised_and_centred():
    psf = GaussianPSF(3.5)
    k = psf.kernel_image(10, 20)
    assert k.shape[0] % 2 == 1 and k.sum() == pytest.approx(1.0)
    c = k.shape[0] // 2
    assert _centroid(k) == pytest.approx((c, c), abs=1e-9)
    s = psf.image_at(10.3, 19.8)
    assert _centroid(s) == pytest.approx((c + 0.3, c - 0.2), abs=1e-3)


@pytest.mark.parametrize("fwhm_arcsec", [0.5, 0.7, 1.0, 1.4])
def test_measure_fwhm_on_kolmogorov(fwhm_arcsec):
    """measure_fwhm recovers the FWHM of a pixel-free Kolmogorov profile to 1% at 0.2"/pixel."""
    img = galsim.Kolmogorov(fwhm=fwhm_arcsec).drawImage(nx=61, ny=61, scale=0.2, method="no_pixel").array
    assert measure_fwhm(img) * 0.2 == pytest.approx(fwhm_arcsec, rel=0.01)


def test_image_grid_psf_interpolates_between_stamps():
    stamps = np.array([[GaussianPSF(3.0).kernel_image(0, 0, 25), GaussianPSF(4.0).kernel_image(0, 0, 25)]])
    psf = ImageGridPSF(stamps, xs=[0.0, 100.0], ys=[50.0])
    assert psf.fwhm(0, 50) == pytest.approx(measure_fwhm(stamps[0, 0]))
    mid = psf.fwhm(50, 50)
    assert measure_fwhm(stamps[0, 0]) < mid < measure_fwhm(stamps[0, 1])
    assert psf.kernel_image(200, 0).sum() == pytest.approx(1.0)  # clamps outside the grid
    with pytest.raises(ValueError):
        ImageGridPSF(np.ones((1, 2, 24, 24)), [0, 1], [0])


def test_photo_calib_zero_point():
    pc = PhotoCalib.from_zero_point(28.0)
    # 1 electron at zp 28 is mag 28, i.e. 10**(-0.4*(28-31.4)) nJy
    assert pc.njy_per_electron == pytest.approx(10 ** (-0.4 * (28.0 - 31.4)))
    assert pc.zero_point == pytest.approx(28.0)
    flux, err = pc.to_njy(np.array([100.0]), np.array([10.0]))
    assert flux[0] == pytest.approx(100 * pc.njy_per_electron) and err[0] == pytest.approx(10 * pc.njy_per_electron)
    assert 31.4 - 2.5 * math.log10(flux[0]) == pytest.approx(28.0 - 2.5 * math.log10(100.0))


def test_mask_planes():
    assert mask_planes_set(mask_bit("SAT", "CR")) == ["SAT", "CR"]
    with pytest.raises(KeyError, match="unknown mask plane"):
        mask_bit("NOPE")


def test_exposure_shape_checks():
    with pytest.raises(ValueError, match="variance shape"):
        Exposure(np.zeros((4, 4)), variance=np.zeros((3, 4)))
