"""Sky background: a mesh-based estimate with sources masked (sep, i.e. SExtractor's algorithm).

Each ``mesh_px`` x ``mesh_px`` cell gets a sigma-clipped mode estimate (2.5 median - 1.5 mean, or the median when
the distribution is skewed), the cell values are median-filtered over ``filter_size`` cells and interpolated with a
bicubic spline to every pixel (Bertin & Arnouts 1996). Masked pixels (detected sources grown, saturated, bad, no
data) do not enter the estimate; cells with too few unmasked pixels are filled from their neighbours by sep.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import sep

__all__ = ["BackgroundResult", "NoUsablePixelsError", "estimate_background", "move_residual_background",
           "grow_mask"]


class NoUsablePixelsError(ValueError):
    """Every pixel is masked or non-finite: there is nothing to estimate a background from."""


@dataclass
class BackgroundResult:
    image: np.ndarray  # background at every pixel (same units as the input image), float32
    level: float  # global background level (mean over the mesh)
    global_rms: float  # global background RMS


def grow_mask(mask: np.ndarray, radius_px: int) -> np.ndarray:
    """Dilate a boolean mask by ``radius_px`` pixels: a disc for small radii, a square (separable, fast on large
    images) beyond 2 pixels. Compiled single passes (:mod:`~twinkles.algorithms.pixel_kernels`)."""
    from .pixel_kernels import dilate_disc, dilate_square
    mask = np.asarray(mask, bool)
    if radius_px <= 0 or not mask.any():
        return mask
    r = int(radius_px)
    if r <= 2:
        return dilate_disc(np.ascontiguousarray(mask), r)
    return dilate_square(mask, r)


def _sep_background(image: np.ndarray, mask: np.ndarray | None, mesh_px: int, filter_size: int, fthresh: float):
    """sep's background model of ``image`` (float32, C-contiguous) with ``mask`` True and non-finite pixels
    excluded."""
    data = np.ascontiguousarray(image, dtype=np.float32)
    finite = np.isfinite(data)
    bad = None if mask is None else np.ascontiguousarray(mask, dtype=bool)
    if not finite.all():
        # sep's statistics skip masked pixels whatever their values; only non-finite values need replacing
        bad = ~finite if bad is None else bad | ~finite
        data = np.where(finite, data, np.float32(0.0))
    if bad is not None and bad.all():
        raise NoUsablePixelsError("background: every pixel is masked or non-finite; nothing to estimate from")
    ny, nx = data.shape
    mesh = int(max(8, min(mesh_px, ny, nx)))
    return sep.Background(data, mask=bad, bw=mesh, bh=mesh, fw=filter_size, fh=filter_size, fthresh=fthresh)


def estimate_background(image: np.ndarray, mask: np.ndarray | None = None, mesh_px: int = 128,
                        filter_size: int = 3, fthresh: float = 0.0) -> BackgroundResult:
    """Estimate the sky background of ``image`` with sources (``mask`` True) excluded.

    Parameters: ``mesh_px`` -- cell size (pixels; DM's binSize is 128); ``filter_size`` -- median filter over cells.
    Non-finite pixels are excluded automatically.
    """
    bkg = _sep_background(image, mask, mesh_px, filter_size, fthresh)
    return BackgroundResult(bkg.back(dtype=np.float32), float(bkg.globalback), float(bkg.globalrms))


def move_residual_background(subtracted: np.ndarray, total: np.ndarray, mask: np.ndarray | None = None,
                             mesh_px: int = 128, filter_size: int = 3,
                             fthresh: float = 0.0) -> tuple[float, float]:
    """Re-estimate the background left in a background-subtracted image (sources ``mask``-ed) and move it, in place,
    from ``subtracted`` to ``total`` (the background subtracted so far): ``subtracted -= residual``,
    ``total += residual``, without a full-size image of the residual. Both arrays float32, C-contiguous and of
    the same shape. Returns the residual's global level and RMS; raises NoUsablePixelsError if every pixel is
    masked (ValueError for arrays of the wrong type or shape).
    """
    for name, a in (("subtracted", subtracted), ("total", total)):
        if a.dtype != np.float32 or not a.flags.c_contiguous or a.shape != subtracted.shape:
            raise ValueError(f"move_residual_background: {name} must be a C-contiguous float32 array of the "
                             f"image's shape, got {a.dtype} {a.shape}")
    bkg = _sep_background(subtracted, mask, mesh_px, filter_size, fthresh)
    bkg.subfrom(subtracted)
    np.negative(total, out=total)  # total + residual = -((-total) - residual): sep only subtracts
    bkg.subfrom(total)
    np.negative(total, out=total)
    return float(bkg.globalback), float(bkg.globalrms)
