"""Vectorised postage stamps: pixel cut-outs around many positions at once, and PSF model stamps.

Shared by ``measure/`` and ``algorithms/`` (both may use image/psf-level modules only, so this lives beside them).

``extract_stamps`` gathers (N, S, S) cut-outs with fancy indexing (pixels off the image get ``fill``);
:class:`PsfStamps` samples any :class:`~twinkles.psf.PSF` on a coarse grid of detector positions once, then makes
the PSF stamp of each source by bilinear interpolation between grid kernels and a sub-pixel shift with the
Fourier shift theorem, all as array operations (thousands of stamps in milliseconds).
"""

from __future__ import annotations

import math

import numpy as np

from .interpolation import bilinear

__all__ = ["extract_stamps", "stamp_offsets", "fourier_shift", "PsfStamps"]


def stamp_offsets(size: int) -> np.ndarray:
    h = size // 2
    return np.arange(-h, h + 1)


def extract_stamps(array: np.ndarray, x: np.ndarray, y: np.ndarray, size: int, fill=0.0):
    """Cut-outs of ``size`` x ``size`` (odd) centred on pixels (round(x), round(y)).

    Returns ``(stamps, inside)``: stamps (N, size, size) of ``array``'s dtype, ``inside`` (N, size, size) bool
    (False where the stamp runs off the image; those pixels hold ``fill``).
    """
    if size % 2 == 0:
        size += 1
    ny, nx = array.shape
    h = size // 2
    xc = np.rint(np.asarray(x, float)).astype(np.int64)
    yc = np.rint(np.asarray(y, float)).astype(np.int64)
    n = len(xc)
    interior = (xc >= h) & (xc < nx - h) & (yc >= h) & (yc < ny - h)
    stamps = np.empty((n, size, size), dtype=array.dtype)
    inside = np.ones((n, size, size), bool)
    if interior.any() and ny >= size and nx >= size:
        # whole stamps: a gather of (size, size) windows of a strided view (no index arrays, no clipping)
        windows = np.lib.stride_tricks.sliding_window_view(array, (size, size))
        stamps[interior] = windows[yc[interior] - h, xc[interior] - h]
    else:
        interior[:] = False
    if not interior.all():
        edge = ~interior
        off = stamp_offsets(size)
        xx = xc[edge][:, None, None] + off[None, None, :]
        yy = yc[edge][:, None, None] + off[None, :, None]
        ins = (xx >= 0) & (xx < nx) & (yy >= 0) & (yy < ny)
        st = array[np.clip(yy, 0, ny - 1), np.clip(xx, 0, nx - 1)]
        stamps[edge] = np.where(ins, st, np.asarray(fill, dtype=array.dtype))
        inside[edge] = ins
    return stamps, inside


def fourier_shift(kernels: np.ndarray, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """Shift (N, S, S) centred kernels by (dx, dy) pixels (band-limited interpolation, real FFTs)."""
    from scipy import fft as sfft
    size = kernels.shape[-1]
    fy = np.fft.fftfreq(size)
    fx = np.fft.rfftfreq(size)
    phase_x = np.exp(-2j * np.pi * fx[None, :] * np.asarray(dx, float)[:, None])
    phase_y = np.exp(-2j * np.pi * fy[None, :] * np.asarray(dy, float)[:, None])
    # one thread: a job runs per core, and threads on a busy machine cost CPU (~25% more here) for little wall
    ft = sfft.rfft2(np.fft.ifftshift(kernels, axes=(-2, -1)), workers=1)
    ft *= phase_y[:, :, None] * phase_x[:, None, :]
    out = sfft.irfft2(ft, s=(size, size), workers=1)
    return np.fft.fftshift(out, axes=(-2, -1))


class PsfStamps:
    """PSF stamps at many positions from a PSF model sampled on a ``n_grid`` x ``n_grid`` grid.

    ``shape``: (height, width) of the image; ``model_size``: odd size of the sampled kernels (the normalisation
    region: each kernel sums to 1 over it). ``stamps(x, y, size)`` returns (N, size, size) stamps whose centroid
    is at (x, y) relative to the central pixel (round(x), round(y)), cropped from the normalised model stamp
    (not renormalised, so a linear fit with them measures the flux inside ``model_size``).
    """

    def __init__(self, psf, shape: tuple[int, int], n_grid: int = 5, model_size: int | None = None):
        self.psf = psf
        ny, nx = shape
        n_grid = max(1, int(n_grid))
        if model_size is None:
            fwhm = psf.fwhm()
            model_size = 2 * int(math.ceil(3.0 * fwhm)) + 1
        model_size += 1 - model_size % 2
        self.model_size = model_size
        self.xs = np.linspace(0, nx - 1, n_grid) if n_grid > 1 else np.array([(nx - 1) / 2])
        self.ys = np.linspace(0, ny - 1, n_grid) if n_grid > 1 else np.array([(ny - 1) / 2])
        grid = np.empty((len(self.ys), len(self.xs), model_size, model_size))
        for j, yv in enumerate(self.ys):
            for i, xv in enumerate(self.xs):
                k = np.asarray(psf.kernel_image(float(xv), float(yv), model_size), dtype=float)
                grid[j, i] = k / k.sum()
        self.grid = grid

    def kernels(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Centred (unshifted) kernels (N, model_size, model_size) at each position, summing to 1.

        A PSF with a ``kernels_at(x, y, size)`` method (a coadd's PSF, which jumps at its inputs' edges) gives
        them exactly at each position instead of by interpolation between grid kernels."""
        x = np.asarray(x, float)
        y = np.asarray(y, float)
        if hasattr(self.psf, "kernels_at"):
            return self.psf.kernels_at(np.atleast_1d(x), np.atleast_1d(y), self.model_size)
        k = bilinear(self.grid, self.xs, self.ys, x, y)
        return k / k.sum(axis=(1, 2), keepdims=True)

    def stamps(self, x: np.ndarray, y: np.ndarray, size: int | None = None) -> np.ndarray:
        x = np.asarray(x, float)
        y = np.asarray(y, float)
        k = self.kernels(x, y)
        dx, dy = x - np.rint(x), y - np.rint(y)
        shifted = fourier_shift(k, dx, dy)
        shifted /= shifted.sum(axis=(1, 2), keepdims=True)
        size = self.model_size if size is None else size + (1 - size % 2)
        if size < self.model_size:
            o = (self.model_size - size) // 2
            shifted = shifted[:, o:o + size, o:o + size]
        elif size > self.model_size:
            o = (size - self.model_size) // 2
            out = np.zeros((len(x), size, size))
            out[:, o:o + self.model_size, o:o + self.model_size] = shifted
            shifted = out
        return shifted
