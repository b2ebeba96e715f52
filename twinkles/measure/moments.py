"""Adaptive second moments (GalSim HSM, Bernstein & Jarvis 2002; Hirata & Seljak 2003).

HSM returns the adaptive Gaussian width sigma and the distortion e = (e1, e2); the moment matrix is
``M = sigma^2 / sqrt(1 - e^2) [[1 + e1, e2], [e2, 1 - e1]]`` (det M = sigma^4), i.e. ixx, iyy, ixy in pixels^2.
"""

from __future__ import annotations

import galsim
import numpy as np

from .stamps import extract_stamps

__all__ = ["adaptive_moments", "moments_from_stamps", "moments_to_fwhm"]


def _hsm_one(stamp: np.ndarray, weight: np.ndarray | None, guess_sigma: float):
    img = galsim.Image(np.ascontiguousarray(stamp, dtype=np.float64), scale=1.0)
    w = None if weight is None else galsim.Image(np.ascontiguousarray(weight, dtype=np.int32), scale=1.0)
    res = galsim.hsm.FindAdaptiveMom(img, weight=w, guess_sig=guess_sigma, strict=False)
    if res.moments_status != 0 or not res.moments_sigma > 0:
        return np.nan, np.nan, np.nan, np.nan, np.nan, True
    s2 = res.moments_sigma ** 2
    e1, e2 = res.observed_shape.e1, res.observed_shape.e2
    norm = s2 / np.sqrt(max(1e-12, 1.0 - e1 * e1 - e2 * e2))
    cx = res.moments_centroid.x - img.true_center.x
    cy = res.moments_centroid.y - img.true_center.y
    return norm * (1 + e1), norm * (1 - e1), norm * e2, cx, cy, False


def moments_from_stamps(stamps: np.ndarray, weights: np.ndarray | None = None, guess_sigma: float = 2.0):
    """HSM adaptive moments of (N, S, S) stamps; returns a structured array (ixx, iyy, ixy, flag)."""
    n = len(stamps)
    out = np.zeros(n, dtype=[("ixx", "f8"), ("iyy", "f8"), ("ixy", "f8"), ("flag", "?")])
    for i in range(n):
        ixx, iyy, ixy, _, _, fl = _hsm_one(stamps[i], None if weights is None else weights[i], guess_sigma)
        out[i] = (ixx, iyy, ixy, fl)
    return out


def adaptive_moments(image: np.ndarray, x, y, good=None, guess_sigma: float = 2.0, size: int | None = None):
    """Adaptive moments of sources at (x, y) on ``image`` (background-subtracted); ``good``: usable pixels.

    Returns a structured array with ixx, iyy, ixy (pixels^2) and flag (True where HSM failed).
    """
    x = np.atleast_1d(np.asarray(x, float))
    y = np.atleast_1d(np.asarray(y, float))
    if size is None:
        size = 2 * int(np.ceil(5.0 * guess_sigma)) + 1
    stamps, inside = extract_stamps(np.asarray(image), x, y, size)
    stamps = stamps.astype(np.float64)
    if good is not None:
        g, _ = extract_stamps(good, x, y, size, fill=False)
        inside = inside & g
    return moments_from_stamps(stamps, inside.astype(np.int32), guess_sigma)


def moments_to_fwhm(ixx, iyy, ixy):
    """FWHM (pixels) of a Gaussian with the same determinant radius: 2.3548 * (ixx iyy - ixy^2)^(1/4)."""
    det = np.asarray(ixx) * np.asarray(iyy) - np.asarray(ixy) ** 2
    return 2.0 * np.sqrt(2.0 * np.log(2.0)) * np.power(np.clip(det, 0, None), 0.25)
