"""PSF matching of an image to a model PSF (DM's ModelPsfMatchTask, used by makePsfMatchedWarp).

The matching kernel K turns the image's PSF P into the model M: ``P * K = M``. It is computed in Fourier space,
``K^ = M^ conj(P^) / (|P^|^2 + (eps max|P^|)^2)`` (a Wiener-regularised division, ``eps`` = 1e-4: the model is
broader than the PSF, so ``M^ / P^`` is well-behaved wherever ``M^`` is not negligible), cropped to a stamp and
normalised to sum 1 (flux is conserved). A PSF that varies over the image gets one kernel per node of a coarse
grid of positions; the image convolved with each is blended with bilinear (hat) weights, so the effective
kernel varies linearly between the nodes (as DM's spatially varying kernels, of low order).

The variance is convolved with ``K^2`` (the variance of a weighted sum of independent pixels); each mask plane is
grown by the kernel's half-width (a pixel near a masked one gets some of its light), and ``NO_DATA`` too, so a
matched pixel is valid only where its whole kernel footprint had data.

Pure functions of arrays and PSF objects.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage, signal

from ..image import mask_bit
from ..psf import PSF

__all__ = ["model_matching_kernel", "match_to_model", "MatchResult", "hat_weights"]


def model_matching_kernel(psf_image: np.ndarray, model_image: np.ndarray, size: int, eps: float = 1e-4
                          ) -> tuple[np.ndarray, float]:
    """The kernel (``size`` x ``size``, odd, sum 1) with ``psf_image * K ~ model_image``; and the match's residual.

    Both stamps are centred (centroid on the central pixel), odd-sized, summing to 1. The residual is
    ``max |P * K - M| / max M`` over the model stamp (a few 1e-3 for a good match).
    """
    size = int(size) + (1 - int(size) % 2)
    n = max(psf_image.shape[0], model_image.shape[0], size)
    big = 1 << int(math.ceil(math.log2(2 * n)))

    def padded(stamp):
        out = np.zeros((big, big))
        s = stamp.shape[0]
        o = big // 2 - s // 2
        out[o:o + s, o:o + s] = stamp / stamp.sum()
        return np.fft.ifftshift(out)  # centre pixel at [0, 0]

    P = np.fft.rfft2(padded(psf_image))
    M = np.fft.rfft2(padded(model_image))
    reg = (eps * np.abs(P).max()) ** 2
    K = M * np.conj(P) / (np.abs(P) ** 2 + reg)
    k = np.fft.fftshift(np.fft.irfft2(K, s=(big, big)))
    c = big // 2
    h = size // 2
    kernel = k[c - h:c + h + 1, c - h:c + h + 1]
    kernel = kernel / kernel.sum()
    # the residual of the cropped, normalised kernel
    conv = signal.fftconvolve(psf_image / psf_image.sum(), kernel, mode="full")
    cc = conv.shape[0] // 2
    hm = model_image.shape[0] // 2
    model = model_image / model_image.sum()
    resid = conv[cc - hm:cc + hm + 1, cc - hm:cc + hm + 1] - model
    return kernel, float(np.abs(resid).max() / model.max())


def hat_weights(positions: np.ndarray, nodes: np.ndarray) -> np.ndarray:
    """(len(nodes), len(positions)) bilinear-interpolation (hat) weights; they sum to 1 at every position."""
    positions = np.asarray(positions, float)
    nodes = np.asarray(nodes, float)
    if len(nodes) == 1:
        return np.ones((1, len(positions)))
    eye = np.eye(len(nodes))
    return np.array([np.interp(positions, nodes, eye[k]) for k in range(len(nodes))])


@dataclass
class MatchResult:
    image: np.ndarray
    variance: np.ndarray
    mask: np.ndarray
    kernel_size: int
    max_residual: float  # worst max|P * K - M| / max M over the kernel nodes


def match_to_model(image: np.ndarray, variance: np.ndarray, mask: np.ndarray, psf: PSF, model: PSF,
                   bbox: tuple[int, int, int, int] | None = None, n_grid: int = 3, kernel_size: int | None = None,
                   ) -> MatchResult:
    """Convolve (image, variance, mask) with the spatially varying kernel that turns ``psf`` into ``model``.

    ``bbox`` (x0, y0, x1, y1): the part of the image with data (the rest stays as it is: NaN / NO_DATA); the
    kernels are computed on ``n_grid`` x ``n_grid`` nodes over it. NaN pixels count as 0 in the convolution and
    the NO_DATA plane is grown by the kernel's half-width, so they never leak into valid pixels.
    """
    ny, nx = image.shape
    x0, y0, x1, y1 = bbox if bbox is not None else (0, 0, nx, ny)
    model_fwhm = float(model.fwhm())
    if kernel_size is None:
        kernel_size = 2 * int(math.ceil(2.0 * model_fwhm)) + 1
    stamp = max(kernel_size, 2 * int(math.ceil(2.5 * model_fwhm)) + 1)
    xs = np.linspace(x0, x1 - 1, n_grid) if n_grid > 1 else np.array([(x0 + x1 - 1) / 2.0])
    ys = np.linspace(y0, y1 - 1, n_grid) if n_grid > 1 else np.array([(y0 + y1 - 1) / 2.0])
    model_stamp = model.kernel_image(0.0, 0.0, stamp)
    sub = np.array(image[y0:y1, x0:x1], np.float64)
    subv = np.array(variance[y0:y1, x0:x1], np.float64)
    bad = ~np.isfinite(sub) | ~np.isfinite(subv)
    sub[bad] = 0.0
    subv[bad] = 0.0
    wx = hat_weights(np.arange(x0, x1), xs)
    wy = hat_weights(np.arange(y0, y1), ys)
    out = np.zeros_like(sub)
    outv = np.zeros_like(subv)
    worst = 0.0
    half = kernel_size // 2
    for j, y in enumerate(ys):
        # a node's hat weight is non-zero only between its neighbours: convolve that part (+ the kernel's reach)
        rows = np.nonzero(wy[j] > 0)[0]
        r0, r1 = rows[0], rows[-1] + 1
        p0, p1 = max(0, r0 - half), min(sub.shape[0], r1 + half)
        for i, x in enumerate(xs):
            cols = np.nonzero(wx[i] > 0)[0]
            c0, c1 = cols[0], cols[-1] + 1
            q0, q1 = max(0, c0 - half), min(sub.shape[1], c1 + half)
            p = psf.kernel_image(float(x), float(y), stamp)
            k, resid = model_matching_kernel(p, model_stamp, kernel_size)
            worst = max(worst, resid)
            w = wy[j][r0:r1, None] * wx[i][None, c0:c1]
            inner = (slice(r0 - p0, r1 - p0), slice(c0 - q0, c1 - q0))
            out[r0:r1, c0:c1] += w * signal.oaconvolve(sub[p0:p1, q0:q1], k, mode="same")[inner]
            outv[r0:r1, c0:c1] += w * signal.oaconvolve(subv[p0:p1, q0:q1], k * k, mode="same")[inner]
    img_out = np.array(image, np.float32, copy=True)
    var_out = np.array(variance, np.float32, copy=True)
    img_out[y0:y1, x0:x1] = out
    var_out[y0:y1, x0:x1] = outv
    grown = _grow_planes(np.asarray(mask, np.int32), half)
    nodata = (grown & mask_bit("NO_DATA")) != 0
    img_out[nodata] = np.nan
    var_out[nodata] = np.nan
    return MatchResult(img_out, var_out, grown, kernel_size, worst)


def _grow_planes(mask: np.ndarray, radius: int) -> np.ndarray:
    """Each mask plane grown by ``radius`` pixels (a square: OR over the kernel footprint)."""
    out = mask.copy()
    if radius <= 0:
        return out
    present = int(np.bitwise_or.reduce(mask, axis=None))
    for bit in range(31):
        b = 1 << bit
        if present & b:
            grown = ndimage.maximum_filter((mask & b).astype(bool).view(np.uint8), size=2 * radius + 1) > 0
            out[grown] |= np.int32(b)
    return out
