"""The PSF interface used everywhere: a normalised PSF image at any (x, y) and its FWHM.

Three implementations:

* :class:`GaussianPSF` -- a circular Gaussian (tests, and the model PSF of PSF-matched templates);
* :class:`ImageGridPSF` -- PSF images sampled on a grid of positions, bilinearly interpolated in position
  (what a pixel-basis PSF model or a simulator's per-visit PSF zones give);
* :class:`PiffPSF` -- a Piff PSF model (DESC's PSF code, as Rubin uses), serialised inside the exposure's FITS.

Conventions: pixel coordinates are 0-based, ``image[y, x]``. ``kernel_image(x, y)`` returns an odd-sized stamp with
the PSF centroid on the central pixel, summing to 1. ``image_at(x, y, size)`` returns a stamp whose centroid is at
the sub-pixel position of (x, y) relative to the stamp's central pixel ``round(x), round(y)``.
"""

from __future__ import annotations

import math
import os
import tempfile
from abc import ABC, abstractmethod

import numpy as np
from astropy.io import fits
from scipy import ndimage

from .interpolation import bilinear

__all__ = ["PSF", "GaussianPSF", "ImageGridPSF", "PiffPSF", "psf_from_hdus", "measure_fwhm",
           "SIGMA_TO_FWHM"]

SIGMA_TO_FWHM = 2.0 * math.sqrt(2.0 * math.log(2.0))


def measure_fwhm(stamp: np.ndarray) -> float:
    """FWHM (pixels) of a centred, well-sampled PSF stamp, from the area above half maximum.

    The area A of the region brighter than half the peak gives FWHM = 2 sqrt(A / pi) for a round profile; the
    peak and the area are both measured on a 4x-upsampled (cubic spline) stamp so that the pixel grid does not
    quantise the result (exact to < 0.5% for Gaussian and Kolmogorov profiles with FWHM >= 2 px).
    """
    stamp = np.asarray(stamp, dtype=float)
    up = 4
    fine = ndimage.zoom(stamp, up, order=3, grid_mode=True, mode="grid-constant")
    half = fine.max() / 2.0
    area = np.count_nonzero(fine >= half) / up**2
    return 2.0 * math.sqrt(area / math.pi)


class PSF(ABC):
    """A PSF model: normalised images at any position on the detector."""

    @abstractmethod
    def kernel_image(self, x: float, y: float, size: int | None = None) -> np.ndarray:
        """Odd-sized stamp, centroid on the central pixel, sum 1."""

    def image_at(self, x: float, y: float, size: int | None = None) -> np.ndarray:
        """Stamp centred on pixel (round(x), round(y)) with the PSF centroid at (x, y) (sum 1)."""
        kernel = self.kernel_image(x, y, size)
        dx, dy = x - np.round(x), y - np.round(y)
        if dx == 0 and dy == 0:
            return kernel
        shifted = ndimage.shift(kernel, (dy, dx), order=3, mode="constant")
        return shifted / shifted.sum()

    def fwhm(self, x: float | None = None, y: float | None = None) -> float:
        """FWHM in pixels at (x, y) (the centre of the model when not given)."""
        if x is None or y is None:
            x, y = self.center
        return measure_fwhm(self.kernel_image(x, y))

    @property
    def center(self) -> tuple[float, float]:
        return (0.0, 0.0)

    @abstractmethod
    def to_hdus(self) -> list[fits.ImageHDU | fits.BinTableHDU]:
        """FITS HDUs that :func:`psf_from_hdus` turns back into this PSF (the first is named PSF)."""


class GaussianPSF(PSF):
    """A circular Gaussian PSF of the given FWHM (pixels)."""

    def __init__(self, fwhm_pix: float, default_size: int | None = None):
        if not fwhm_pix > 0:
            raise ValueError(f"GaussianPSF needs a positive FWHM, got {fwhm_pix}")
        self.fwhm_pix = float(fwhm_pix)
        self.sigma_pix = self.fwhm_pix / SIGMA_TO_FWHM
        self.default_size = default_size or (2 * int(math.ceil(4 * self.sigma_pix)) + 1)

    def _draw(self, dx: float, dy: float, size: int | None) -> np.ndarray:
        size = size or self.default_size
        if size % 2 == 0:
            size += 1
        r = np.arange(size) - size // 2
        # integrate the Gaussian over each pixel (error functions) so the stamp is exact at any FWHM
        from scipy.special import erf
        s = self.sigma_pix * math.sqrt(2.0)
        ex = erf((r + 0.5 - dx) / s) - erf((r - 0.5 - dx) / s)
        ey = erf((r + 0.5 - dy) / s) - erf((r - 0.5 - dy) / s)
        img = np.outer(ey, ex)
        return img / img.sum()

    def kernel_image(self, x, y, size=None):
        return self._draw(0.0, 0.0, size)

    def image_at(self, x, y, size=None):
        return self._draw(x - np.round(x), y - np.round(y), size)

    def fwhm(self, x=None, y=None):
        return self.fwhm_pix

    def to_hdus(self):
        hdu = fits.ImageHDU(self.kernel_image(0, 0).astype(np.float32), name="PSF")
        hdu.header["PSFTYPE"] = "GAUSSIAN"
        hdu.header["FWHMPIX"] = self.fwhm_pix
        hdu.header["STAMPSZ"] = self.default_size
        return [hdu]

    def __repr__(self):
        return f"GaussianPSF(fwhm_pix={self.fwhm_pix:.3f})"


class ImageGridPSF(PSF):
    """PSF stamps on a regular grid of detector positions, bilinearly interpolated in position.

    ``images`` has shape (ny, nx, size, size); ``xs`` (nx,) and ``ys`` (ny,) are the grid's pixel positions.
    Outside the grid the nearest edge stamps are used. Interpolated stamps are renormalised to sum 1.
    """

    def __init__(self, images: np.ndarray, xs: np.ndarray, ys: np.ndarray):
        images = np.asarray(images, dtype=np.float64)
        if images.ndim == 2:
            images = images[None, None]
        if images.ndim != 4 or images.shape[2] != images.shape[3] or images.shape[2] % 2 == 0:
            raise ValueError(f"ImageGridPSF needs (ny, nx, size, size) stamps with odd size, got {images.shape}")
        self.xs = np.atleast_1d(np.asarray(xs, dtype=float))
        self.ys = np.atleast_1d(np.asarray(ys, dtype=float))
        if images.shape[:2] != (len(self.ys), len(self.xs)):
            raise ValueError(f"ImageGridPSF: stamps grid {images.shape[:2]} != (len(ys), len(xs)) = "
                             f"{(len(self.ys), len(self.xs))}")
        self.images = images / images.sum(axis=(2, 3), keepdims=True)
        self.size = images.shape[2]

    @property
    def center(self):
        return (float(self.xs.mean()), float(self.ys.mean()))

    def kernel_image(self, x, y, size=None):
        im = _resize(bilinear(self.images, self.xs, self.ys, float(x), float(y)), size)
        return im / im.sum()

    def to_hdus(self):
        hdu = fits.ImageHDU(self.images.astype(np.float32), name="PSF")
        hdu.header["PSFTYPE"] = "IMAGEGRID"
        cols = fits.BinTableHDU.from_columns(
            [fits.Column(name="x", format="D", array=self.xs)], name="PSF_XS")
        rows = fits.BinTableHDU.from_columns(
            [fits.Column(name="y", format="D", array=self.ys)], name="PSF_YS")
        return [hdu, cols, rows]

    def __repr__(self):
        return f"ImageGridPSF(grid={len(self.ys)}x{len(self.xs)}, size={self.size})"


class PiffPSF(PSF):
    """A Piff PSF model. Stored in FITS as the bytes of Piff's own file, so any Piff model round-trips."""

    def __init__(self, piff_psf, center: tuple[float, float] = (0.0, 0.0), default_size: int = 25):
        self.piff_psf = piff_psf
        self._center = center
        self.default_size = default_size

    @property
    def center(self):
        return self._center

    def _draw(self, x, y, size, center):
        size = size or self.default_size
        if size % 2 == 0:
            size += 1
        import galsim
        image = galsim.ImageD(size, size)
        # Piff positions use GalSim's 1-based image coordinates
        self.piff_psf.draw(x + 1.0, y + 1.0, image=image, center=center, flux=1.0)
        arr = image.array.copy()
        return arr / arr.sum()

    def kernel_image(self, x, y, size=None):
        size = size or self.default_size
        size += 1 - size % 2
        return self._draw(x, y, size, center=True)  # centred on the stamp (center=None would put it at (x, y))

    def image_at(self, x, y, size=None):
        size = size or self.default_size
        size += 1 - size % 2
        # put the centroid at (dx, dy) from the stamp's central pixel (GalSim true_center is the central pixel)
        dx, dy = x - np.round(x), y - np.round(y)
        import galsim
        image = galsim.ImageD(size, size)
        cen = image.true_center
        self.piff_psf.draw(x + 1.0, y + 1.0, image=image, center=(cen.x + dx, cen.y + dy), flux=1.0)
        arr = image.array.copy()
        return arr / arr.sum()

    def to_bytes(self) -> bytes:
        fd, tmp = tempfile.mkstemp(suffix=".piff")
        os.close(fd)
        try:
            self.piff_psf.write(tmp)
            with open(tmp, "rb") as f:
                return f.read()
        finally:
            os.unlink(tmp)

    @classmethod
    def from_bytes(cls, data: bytes, center=(0.0, 0.0), default_size=25) -> PiffPSF:
        import piff
        fd, tmp = tempfile.mkstemp(suffix=".piff")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            return cls(piff.PSF.read(tmp), center, default_size)
        finally:
            os.unlink(tmp)

    def to_hdus(self):
        hdu = fits.ImageHDU(np.frombuffer(self.to_bytes(), dtype=np.uint8), name="PSF")
        hdu.header["PSFTYPE"] = "PIFF"
        hdu.header["PSFCENX"] = self._center[0]
        hdu.header["PSFCENY"] = self._center[1]
        hdu.header["STAMPSZ"] = self.default_size
        return [hdu]

    def __repr__(self):
        return f"PiffPSF({type(self.piff_psf).__name__})"


def _resize(im: np.ndarray, size: int | None) -> np.ndarray:
    """Crop or zero-pad a centred odd stamp to ``size``."""
    if size is None or size == im.shape[0]:
        return im
    if size % 2 == 0:
        size += 1
    n = im.shape[0]
    if size < n:
        o = (n - size) // 2
        return im[o:o + size, o:o + size]
    out = np.zeros((size, size))
    o = (size - n) // 2
    out[o:o + n, o:o + n] = im
    return out


def psf_from_hdus(hdul: fits.HDUList) -> PSF | None:
    """Rebuild the PSF stored in an exposure's FITS file (None if it has none)."""
    names = [h.name for h in hdul]
    if "PSF" not in names:
        return None
    hdu = hdul["PSF"]
    kind = hdu.header.get("PSFTYPE")
    if kind == "GAUSSIAN":
        return GaussianPSF(hdu.header["FWHMPIX"], int(hdu.header.get("STAMPSZ", 0)) or None)
    if kind == "IMAGEGRID":
        return ImageGridPSF(np.array(hdu.data), np.array(hdul["PSF_XS"].data["x"]),
                            np.array(hdul["PSF_YS"].data["y"]))
    if kind == "PIFF":
        return PiffPSF.from_bytes(np.asarray(hdu.data, dtype=np.uint8).tobytes(),
                                  (hdu.header.get("PSFCENX", 0.0), hdu.header.get("PSFCENY", 0.0)),
                                  int(hdu.header.get("STAMPSZ", 25)))
    raise ValueError(f"unknown PSF type {kind!r} in FITS extension PSF")
