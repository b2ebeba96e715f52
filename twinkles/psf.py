"""The PSF interface used everywhere: a normalised PSF image at any (x, y) and its FWHM.

Four implementations:

* :class:`GaussianPSF` -- a circular Gaussian (tests, and the model PSF of PSF-matched templates);
* :class:`ImageGridPSF` -- PSF images sampled on a grid of positions, bilinearly interpolated in position
  (what a pixel-basis PSF model or a simulator's per-visit PSF zones give);
* :class:`PiffPSF` -- a Piff PSF model (DESC's PSF code, as Rubin uses), serialised inside the exposure's FITS;
* :class:`CoaddPsf` -- the PSF of a coadd: the weighted sum of its inputs' PSFs where they cover (DM's CoaddPsf).

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

__all__ = ["PSF", "GaussianPSF", "ImageGridPSF", "PiffPSF", "CoaddPsf", "psf_from_hdus", "measure_fwhm",
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


class CoaddPsf(PSF):
    """The PSF of a coadd (DM's ``CoaddPsf``): at (x, y), ``P(x, y) = sum_i w_i P_i(x, y) / sum_i w_i`` over the
    inputs i whose coverage polygon contains (x, y), with the coadd's weights ``w_i`` and each input's PSF
    ``P_i`` already in the coadd's pixel frame (a warp carries its calexp PSF transformed by the local Jacobian
    of the pixel mapping).

    ``psfs``: the inputs' PSFs; ``weights``: their coadd weights; ``polygons``: each input's coverage, a convex
    polygon (K, 2) of (x, y) vertices counter-clockwise in coadd pixels (DM's ValidPolygon; see
    :func:`twinkles.algorithms.coadd.coverage_polygon`); ``shape``: (ny, nx) of the coadd; ``ids``: each input's
    visit. Where no input covers (NO_DATA pixels) the weighted sum of all inputs is returned, so that samplers
    on a grid over the whole patch work. Pixels where an input covering them was left out (artifact, masked
    pixel) carry the coadd's INEXACT_PSF mask plane: there the sum is not the PSF of the pixel's data.

    Stored as: ``PSF`` (every input's PSF sampled on its own grid of patch positions, stamps padded to one
    size), ``PSF_COADD_INPUTS`` (per input: id, weight, grid and polygon offsets), ``PSF_COADD_GRID`` (grid
    positions) and ``PSF_COADD_POLY`` (polygon vertices); non-grid input PSFs are sampled on a 3 x 3 grid.
    """

    def __init__(self, psfs, weights, polygons, shape, ids=None):
        if not (len(psfs) == len(weights) == len(polygons)):
            raise ValueError(f"CoaddPsf: {len(psfs)} PSFs, {len(weights)} weights and {len(polygons)} polygons; "
                             "give one of each per input")
        if not psfs:
            raise ValueError("CoaddPsf needs at least one input PSF")
        self.psfs = list(psfs)
        self.weights = np.asarray(weights, dtype=float)
        if not np.all(np.isfinite(self.weights)) or np.any(self.weights < 0) or not self.weights.sum() > 0:
            raise ValueError(f"CoaddPsf: weights must be finite, non-negative and not all 0, got {self.weights}")
        self.polygons = [np.asarray(p, dtype=float).reshape(-1, 2) for p in polygons]
        self.shape = (int(shape[0]), int(shape[1]))
        self.ids = np.arange(len(psfs)) if ids is None else np.asarray(ids, dtype=np.int64)
        self.size = max(_native_size(p, self.shape) for p in self.psfs)

    @property
    def center(self):
        return ((self.shape[1] - 1) / 2.0, (self.shape[0] - 1) / 2.0)

    def covering(self, x: float, y: float) -> np.ndarray:
        """Bool per input: its coverage polygon contains (x, y) (and its weight is positive)."""
        inside = np.array([_in_convex_polygon(p, x, y) for p in self.polygons], bool)
        return inside & (self.weights > 0)

    def n_inputs(self, x: float, y: float) -> int:
        return int(self.covering(x, y).sum())

    def kernel_image(self, x, y, size=None):
        sel = self.covering(x, y)
        if not sel.any():
            sel = self.weights > 0
        total = np.zeros((self.size, self.size))
        for i in np.flatnonzero(sel):
            k = np.asarray(self.psfs[i].kernel_image(x, y), dtype=float)
            total += self.weights[i] * _resize(k / k.sum(), self.size)
        total = _resize(total, size)
        return total / total.sum()

    def kernels_at(self, x, y, size: int | None = None) -> np.ndarray:
        """Centred kernels (N, size, size), each summing to 1, at many positions at once (vectorised over the
        positions; exact, where sampling on a grid and interpolating would blur the coadd PSF's jumps at the
        inputs' edges). :class:`~twinkles.stamps.PsfStamps` uses this when a PSF has it."""
        x = np.atleast_1d(np.asarray(x, float))
        y = np.atleast_1d(np.asarray(y, float))
        n = len(x)
        cover = np.stack([_in_convex_polygon_many(p, x, y) for p in self.polygons]) & (self.weights > 0)[:, None]
        none = ~cover.any(axis=0)
        cover[:, none] = (self.weights > 0)[:, None]
        total = np.zeros((n, self.size, self.size))
        for i in range(len(self.psfs)):
            sel = np.flatnonzero(cover[i])
            if sel.size == 0:
                continue
            k = _grid_kernels(self.psfs[i], x[sel], y[sel], self.size)
            total[sel] += self.weights[i] * k
        if size is not None:
            total = np.stack([_resize(t, size) for t in total]) if n else np.zeros((0, size, size))
        return total / total.sum(axis=(1, 2), keepdims=True)

    def to_hdus(self):
        stamps, xs_all, ys_all, rows = [], [], [], []
        poly_x, poly_y = [], []
        n_stamp = n_x = n_y = n_poly = 0
        for i, p in enumerate(self.psfs):
            images, xs, ys = _as_grid(p, self.shape)
            ny, nx = images.shape[:2]
            stamps.append(np.stack([_resize(images[j, k], self.size) for j in range(ny) for k in range(nx)]))
            poly = self.polygons[i]
            rows.append((self.ids[i], self.weights[i], nx, ny, n_stamp, n_x, n_y, n_poly, len(poly)))
            xs_all.append(xs)
            ys_all.append(ys)
            poly_x.append(poly[:, 0])
            poly_y.append(poly[:, 1])
            n_stamp += nx * ny
            n_x += nx
            n_y += ny
            n_poly += len(poly)
        hdu = fits.ImageHDU(np.concatenate(stamps).astype(np.float32), name="PSF")
        hdu.header["PSFTYPE"] = "COADD"
        hdu.header["NINPUT"] = len(self.psfs)
        hdu.header["SHAPEY"], hdu.header["SHAPEX"] = self.shape
        r = list(zip(*rows))
        inputs = fits.BinTableHDU.from_columns([
            fits.Column(name="id", format="K", array=np.asarray(r[0], np.int64)),
            fits.Column(name="weight", format="D", array=np.asarray(r[1], float)),
            fits.Column(name="nx", format="J", array=np.asarray(r[2])),
            fits.Column(name="ny", format="J", array=np.asarray(r[3])),
            fits.Column(name="stamp0", format="J", array=np.asarray(r[4])),
            fits.Column(name="x0", format="J", array=np.asarray(r[5])),
            fits.Column(name="y0", format="J", array=np.asarray(r[6])),
            fits.Column(name="poly0", format="J", array=np.asarray(r[7])),
            fits.Column(name="npoly", format="J", array=np.asarray(r[8]))], name="PSF_COADD_INPUTS")
        xs_all, ys_all = np.concatenate(xs_all), np.concatenate(ys_all)
        grid = fits.BinTableHDU.from_columns([
            fits.Column(name="x", format="D", array=np.pad(xs_all, (0, max(0, len(ys_all) - len(xs_all))))),
            fits.Column(name="y", format="D", array=np.pad(ys_all, (0, max(0, len(xs_all) - len(ys_all)))))],
            name="PSF_COADD_GRID")
        polys = fits.BinTableHDU.from_columns([
            fits.Column(name="x", format="D", array=np.concatenate(poly_x) if poly_x else np.zeros(0)),
            fits.Column(name="y", format="D", array=np.concatenate(poly_y) if poly_y else np.zeros(0))],
            name="PSF_COADD_POLY")
        return [hdu, inputs, grid, polys]

    @classmethod
    def from_hdus(cls, hdul: fits.HDUList) -> CoaddPsf:
        stamps = np.asarray(hdul["PSF"].data, dtype=np.float64)
        shape = (int(hdul["PSF"].header["SHAPEY"]), int(hdul["PSF"].header["SHAPEX"]))
        t = hdul["PSF_COADD_INPUTS"].data
        gx, gy = np.asarray(hdul["PSF_COADD_GRID"].data["x"]), np.asarray(hdul["PSF_COADD_GRID"].data["y"])
        px, py = np.asarray(hdul["PSF_COADD_POLY"].data["x"]), np.asarray(hdul["PSF_COADD_POLY"].data["y"])
        psfs, polygons = [], []
        for row in t:
            nx, ny, s0 = int(row["nx"]), int(row["ny"]), int(row["stamp0"])
            images = stamps[s0:s0 + nx * ny].reshape(ny, nx, stamps.shape[1], stamps.shape[2])
            psfs.append(ImageGridPSF(images, gx[row["x0"]:row["x0"] + nx], gy[row["y0"]:row["y0"] + ny]))
            p0, n = int(row["poly0"]), int(row["npoly"])
            polygons.append(np.column_stack([px[p0:p0 + n], py[p0:p0 + n]]))
        return cls(psfs, np.asarray(t["weight"], float), polygons, shape, np.asarray(t["id"], np.int64))

    def __repr__(self):
        return f"CoaddPsf(n_inputs={len(self.psfs)}, shape={self.shape})"


def _in_convex_polygon(poly: np.ndarray, x: float, y: float) -> bool:
    if len(poly) < 3:
        return False
    x1, y1 = poly[:, 0], poly[:, 1]
    x2, y2 = np.roll(x1, -1), np.roll(y1, -1)
    return bool(np.all((x2 - x1) * (y - y1) - (y2 - y1) * (x - x1) >= -1e-9))


def _in_convex_polygon_many(poly: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    inside = np.ones(x.shape, bool)
    if len(poly) < 3:
        return ~inside
    for k in range(len(poly)):
        x1, y1 = poly[k]
        x2, y2 = poly[(k + 1) % len(poly)]
        inside &= (x2 - x1) * (y - y1) - (y2 - y1) * (x - x1) >= -1e-9
    return inside


def _grid_kernels(psf: PSF, x: np.ndarray, y: np.ndarray, size: int) -> np.ndarray:
    """(N, size, size) centred kernels of one PSF, each summing to 1 (vectorised for an ImageGridPSF)."""
    if isinstance(psf, ImageGridPSF):
        k = bilinear(psf.images, psf.xs, psf.ys, x, y)
        if k.shape[-1] != size:
            k = np.stack([_resize(a, size) for a in k])
    else:
        k = np.stack([_resize(np.asarray(psf.kernel_image(float(a), float(b)), float), size)
                      for a, b in zip(x, y)])
    return k / k.sum(axis=(1, 2), keepdims=True)


def _native_size(psf: PSF, shape) -> int:
    if isinstance(psf, ImageGridPSF):
        return psf.size
    if isinstance(psf, CoaddPsf):
        return psf.size
    return int(psf.kernel_image((shape[1] - 1) / 2.0, (shape[0] - 1) / 2.0).shape[0])


def _as_grid(psf: PSF, shape) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images (ny, nx, S, S), xs, ys) of a PSF: its own grid for an ImageGridPSF, else a 3 x 3 grid."""
    if isinstance(psf, ImageGridPSF):
        return psf.images, psf.xs, psf.ys
    if isinstance(psf, GaussianPSF):
        xs, ys = np.array([(shape[1] - 1) / 2.0]), np.array([(shape[0] - 1) / 2.0])
    else:
        xs = np.linspace(0, shape[1] - 1, 3)
        ys = np.linspace(0, shape[0] - 1, 3)
    images = np.stack([np.stack([np.asarray(psf.kernel_image(float(x), float(y)), float) for x in xs])
                       for y in ys])
    return images, xs, ys


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
    if kind == "COADD":
        return CoaddPsf.from_hdus(hdul)
    raise ValueError(f"unknown PSF type {kind!r} in FITS extension PSF")
