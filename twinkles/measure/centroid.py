"""Centroids: Gaussian-windowed first moments, iterated (SExtractor's XWIN_IMAGE, Bertin 2008), compiled (numba).

Iteration: ``x <- x + 2 sum(w (x_i - x) I) / sum(w I)`` with ``w = exp(-r^2 / 2 s^2)`` and ``s`` the PSF's
Gaussian sigma; the factor 2 makes the step exact for a Gaussian profile of that width. The error is the
linearised propagation of the pixel variances through the fixed point ``sum(w (x_i - x) I) = 0``:
``var(x) = sum(w^2 (x_i - x)^2 V) / (sum(w I (1 - (x_i - x)^2 / s^2)))^2`` -- for a Gaussian source of width
``s`` the denominator is ``sum(w I) / 2`` (the classic ``4 sum(w^2 dx^2 V) / (sum w I)^2``), for a real PSF with
wings (Kolmogorov) it is smaller and the error larger.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

__all__ = ["windowed_centroid"]


def windowed_centroid(image: np.ndarray, variance: np.ndarray, x0, y0, sigma_px: float, good=None,
                      n_iter: int = 12, tol_px: float = 1e-4, max_shift_px: float = 2.0):
    """Windowed centroids of sources starting at (x0, y0) (0-based pixels).

    ``good``: optional bool image of usable pixels. Returns ``(x, y, x_err, y_err, flag)``; ``flag`` is True
    where the iteration failed (non-positive windowed flux, or the centroid moved more than ``max_shift_px``
    from the start) -- there x, y are the starting position. The window is the (2 ceil(4 sigma) + 1)-pixel
    square around the rounded current position; one compiled loop over the sources.
    """
    x0 = np.ascontiguousarray(np.atleast_1d(np.asarray(x0, float)))
    y0 = np.ascontiguousarray(np.atleast_1d(np.asarray(y0, float)))
    image = np.asarray(image)
    if image.dtype not in (np.float32, np.float64):
        image = image.astype(np.float64)
    variance = np.asarray(variance)
    if variance.dtype not in (np.float32, np.float64):
        variance = variance.astype(np.float64)
    has_good = good is not None
    good_arr = np.asarray(good, bool) if has_good else np.ones((1, 1), bool)
    half = int(np.ceil(4.0 * sigma_px))
    return _windowed_centroid_all(image, variance, good_arr, has_good, x0, y0, float(sigma_px), half, int(n_iter),
                                  float(tol_px), float(max_shift_px))


@njit(cache=True, nogil=True)
def _window_sums(image, variance, good, has_good, x, y, s2, half, with_errors):  # pragma: no cover - jit
    """sum(w I), sum(w I dx), sum(w I dy) (and sum(w^2 dx^2 V), sum(w^2 dy^2 V)) over the window at round(x, y)."""
    ny, nx = image.shape
    xc, yc = int(np.rint(x)), int(np.rint(y))
    sw = swx = swy = vx = vy = jx = jy = 0.0
    for j in range(-half, half + 1):
        yy = yc + j
        if yy < 0 or yy >= ny:
            continue
        dy = yy - y
        wy = math.exp(-dy * dy / s2)
        for i in range(-half, half + 1):
            xx = xc + i
            if xx < 0 or xx >= nx or (has_good and not good[yy, xx]):
                continue
            dx = xx - x
            w = wy * math.exp(-dx * dx / s2)
            wi = w * image[yy, xx]
            sw += wi
            swx += wi * dx
            swy += wi * dy
            if with_errors:
                v = w * w * variance[yy, xx]
                vx += v * dx * dx
                vy += v * dy * dy
                jx += wi * dx * dx
                jy += wi * dy * dy
    return sw, swx, swy, vx, vy, jx, jy


@njit(cache=True, nogil=True)
def _windowed_centroid_all(image, variance, good, has_good, x0, y0, sigma, half, n_iter, tol,
                           max_shift):  # pragma: no cover - jit
    n = len(x0)
    s2 = 2.0 * sigma * sigma
    x, y = x0.copy(), y0.copy()
    x_err = np.full(n, np.nan)
    y_err = np.full(n, np.nan)
    flag = np.zeros(n, np.bool_)
    for k in range(n):
        for _ in range(n_iter):
            sw, swx, swy, _, _, _, _ = _window_sums(image, variance, good, has_good, x[k], y[k], s2, half, False)
            ok = sw > 0
            stepx = min(1.0, max(-1.0, 2.0 * swx / sw)) if ok else 0.0
            stepy = min(1.0, max(-1.0, 2.0 * swy / sw)) if ok else 0.0
            x[k] += stepx
            y[k] += stepy
            if not ok or math.hypot(x[k] - x0[k], y[k] - y0[k]) > max_shift:
                flag[k] = True
                x[k], y[k] = x0[k], y0[k]
                break
            if math.hypot(stepx, stepy) < tol:
                break
        # errors at the final position
        sw, _, _, vx, vy, jx, jy = _window_sums(image, variance, good, has_good, x[k], y[k], s2, half, True)
        # d/dx of sum(w (x_i - x) I) at the fixed point: -(sum(w I) - sum(w I dx^2) / sigma^2)
        dx_ = sw - 2.0 * jx / s2
        dy_ = sw - 2.0 * jy / s2
        if sw > 0 and dx_ > 0 and dy_ > 0:
            x_err[k] = math.sqrt(vx) / dx_
            y_err[k] = math.sqrt(vy) / dy_
        else:
            flag[k] = True
    return x, y, x_err, y_err, flag
