"""PiffPSF: a Piff model behind the twinkles PSF interface, and its FITS round trip inside an Exposure."""

import galsim
import numpy as np
import piff
import pytest

from twinkles.image import Exposure
from twinkles.psf import PiffPSF, measure_fwhm

SCALE = 0.2


def _true_psf(x):
    return galsim.Gaussian(fwhm=0.7 + 0.2 * x / 256.0)


@pytest.fixture(scope="module")
def piff_psf():
    rng = np.random.default_rng(3)
    stars = []
    for _ in range(40):
        x, y = rng.uniform(20, 236, 2)  # 0-based pixel position of the star
        ix, iy = int(round(x)) + 1, int(round(y)) + 1  # GalSim's 1-based pixel
        img = galsim.ImageD(galsim.BoundsI(ix - 12, ix + 12, iy - 12, iy + 12), scale=SCALE)
        _true_psf(x).withFlux(2e5).drawImage(image=img, center=galsim.PositionD(x + 1, y + 1))
        img.array[:] += rng.normal(0, 5.0, img.array.shape)
        weight = galsim.ImageD(img.bounds, init_value=1 / 25.0, scale=SCALE)
        stars.append(piff.Star.makeTarget(x=x + 1, y=y + 1, image=img, weight=weight, scale=SCALE))
    psf = piff.SimplePSF(piff.GSObjectModel(galsim.Gaussian(sigma=1.0), fastfit=True), piff.Polynomial(1))
    psf.fit(stars, {0: galsim.PixelScale(SCALE)}, None)
    return PiffPSF(psf, center=(128.0, 128.0), default_size=25)


def test_piff_psf_follows_the_true_psf(piff_psf):
    for x in (30.0, 128.0, 220.0):
        true = _true_psf(x).drawImage(nx=25, ny=25, scale=SCALE).array
        k = piff_psf.kernel_image(x, 100.0)
        assert k.sum() == pytest.approx(1.0)
        assert measure_fwhm(k) == pytest.approx(measure_fwhm(true), rel=0.02)
        yy, xx = np.indices(k.shape)
        assert (k * xx).sum() == pytest.approx(12.0, abs=0.02)  # centred on the central pixel
    s = piff_psf.image_at(50.3, 60.0)
    yy, xx = np.indices(s.shape)
    assert (s * xx).sum() == pytest.approx(12.3, abs=0.03)


def test_piff_psf_fits_round_trip(piff_psf, tmp_path):
    exp = Exposure(np.zeros((256, 256)), psf=piff_psf)
    exp.write_fits(tmp_path / "x.fits")
    back = Exposure.read_fits(tmp_path / "x.fits").psf
    assert isinstance(back, PiffPSF)
    assert np.allclose(back.kernel_image(40.0, 200.0), piff_psf.kernel_image(40.0, 200.0), atol=1e-10)
    assert back.center == (128.0, 128.0)
