"""Adaptive second moments (Bernstein & Jarvis 2002, sec. 3; the HSM iteration of Hirata & Seljak 2003).

The adaptive moments of an image I are the moment matrix M and centroid r0 of the elliptical Gaussian weight
``w = exp(-rho^2 / 2)``, ``rho^2 = (r - r0)^T M^-1 (r - r0)``, that reproduce themselves:
``r0 = sum(w I r) / sum(w I)`` and ``M = 2 sum(w I (r - r0)(r - r0)^T) / sum(w I)`` (for a Gaussian image M is its
covariance matrix). ``ixx, iyy, ixy`` (pixels^2) are the elements of M.

:func:`moments_from_stamps` solves this with the iteration GalSim's HSM (``FindAdaptiveMom``) uses: from a round
weight of width ``guess_sigma`` at the stamp centre, each step moves r0 by ``2 B / A`` and M by
``4 (C / A - M / 2)`` (A, B, C the weighted zeroth, first and second moments; both steps in units of the weight's
minor axis and clipped to 0.25 of it) until the largest relative change is below 1e-6; it fails (flag) when M
exceeds 8000 pixels^2, r0 moves more than 15 pixels, or after 400 steps. Compiled (numba), all stamps in one call,
the weight along each row by recurrence (two products per pixel, no exponential). On the 4940 sources of a 4k x 4k
visit it agrees with GalSim's HSM to 5e-6 of ixx + iyy, 4x faster without the per-call overhead, and differs in
success on 4 faint, distorted ones (tests/measure compares the two). ``method="hsm"`` calls GalSim instead.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from ..stamps import extract_stamps

__all__ = ["adaptive_moments", "moments_from_stamps", "moments_to_fwhm"]


# fastmath "contract" only (fused multiply-adds): "reassoc" let LLVM vectorise the sums in an order that differed
# between a process that compiled the kernel and one that loaded numba's cache (moments differing by ~1e-14), so a
# re-run of a job did not write identical files; without it the speed is the same within the noise
@njit(cache=True, nogil=True, fastmath={"contract"})
def _weighted_sums(data, x0, y0, mxx, mxy, myy):  # pragma: no cover - jit
    """A, Bx, By, Cxx, Cxy, Cyy: sums of w I, w I dx, w I dy, w I dx^2, w I dx dy, w I dy^2 over the stamp."""
    ny, nx = data.shape
    det = mxx * myy - mxy * mxy
    ixx, ixy2, iyy = myy / det, -2.0 * mxy / det, mxx / det
    a = b_x = b_y = c_xx = c_xy = c_yy = 0.0
    ratio_step = math.exp(-ixx)  # the ratio w(x + 1) / w(x) changes by this factor per pixel along a row
    for y in range(ny):
        dy = y - y0
        lin = ixy2 * dy
        dx = -x0
        w = math.exp(-0.5 * (iyy * dy * dy + lin * dx + ixx * dx * dx))
        ratio = math.exp(-0.5 * (lin + ixx * (2.0 * dx + 1.0)))
        for x in range(nx):
            v = w * data[y, x]
            a += v
            b_x += v * dx
            b_y += v * dy
            c_xx += v * dx * dx
            c_xy += v * dx * dy
            c_yy += v * dy * dy
            w *= ratio
            ratio *= ratio_step
            dx += 1.0
    return a, b_x, b_y, c_xx, c_xy, c_yy


@njit(cache=True, nogil=True)
def _adaptive_moments_all(stamps, guess_sigma, tol, max_iter, bound, max_moment,
                          max_shift):  # pragma: no cover - jit
    n, ny, nx = stamps.shape
    out = np.full((n, 3), np.nan)
    flag = np.ones(n, np.bool_)
    for k in range(n):
        data = stamps[k]
        x0 = (nx - 1) / 2.0
        y0 = (ny - 1) / 2.0
        x00, y00 = x0, y0
        mxx = myy = guess_sigma * guess_sigma
        mxy = 0.0
        scale0 = 0.0
        it = 0
        ok = True
        change = 1.0
        while change > tol:
            if not (mxx * myy - mxy * mxy > 0.0 and mxx > 0.0 and myy > 0.0):
                ok = False
                break
            a, b_x, b_y, c_xx, c_xy, c_yy = _weighted_sums(data, x0, y0, mxx, mxy, myy)
            if a == 0.0 or not math.isfinite(a):
                ok = False
                break
            # the weight's minor axis sets the step scale
            two_psi = math.atan2(2.0 * mxy, mxx - myy)
            semi_a2 = 0.5 * ((mxx + myy) + (mxx - myy) * math.cos(two_psi)) + mxy * math.sin(two_psi)
            semi_b2 = mxx + myy - semi_a2
            if not semi_b2 > 0.0:
                ok = False
                break
            scale = math.sqrt(semi_b2)
            if it == 0:
                scale0 = scale
            dx = min(bound, max(-bound, 2.0 * b_x / (a * scale)))
            dy = min(bound, max(-bound, 2.0 * b_y / (a * scale)))
            dxx = min(bound, max(-bound, 4.0 * (c_xx / a - 0.5 * mxx) / semi_b2))
            dxy = min(bound, max(-bound, 4.0 * (c_xy / a - 0.5 * mxy) / semi_b2))
            dyy = min(bound, max(-bound, 4.0 * (c_yy / a - 0.5 * myy) / semi_b2))
            change = max(max(abs(dx), abs(dy)) ** 2, abs(dxx), abs(dxy), abs(dyy))
            if scale < scale0:
                change *= scale0 / scale
            x0 += dx * scale
            y0 += dy * scale
            mxx += dxx * semi_b2
            mxy += dxy * semi_b2
            myy += dyy * semi_b2
            it += 1
            if (abs(mxx) > max_moment or abs(mxy) > max_moment or abs(myy) > max_moment
                    or abs(x0 - x00) > max_shift or abs(y0 - y00) > max_shift or it > max_iter
                    or not (math.isfinite(change) and math.isfinite(mxx) and math.isfinite(myy)
                            and math.isfinite(mxy) and math.isfinite(x0) and math.isfinite(y0))):
                ok = False
                break
        if ok and mxx * myy - mxy * mxy > 0.0:
            out[k, 0], out[k, 1], out[k, 2] = mxx, myy, mxy
            flag[k] = False
    return out, flag


def _hsm_one(stamp: np.ndarray, weight: np.ndarray | None, guess_sigma: float):
    import galsim  # imported on first use (0.1 s)
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


def moments_from_stamps(stamps: np.ndarray, weights: np.ndarray | None = None, guess_sigma: float = 2.0,
                        method: str = "compiled"):
    """Adaptive moments of (N, S, S) stamps, the weight starting at the stamp centre with width ``guess_sigma``
    (pixels); ``weights``: 0 for pixels not to use. Returns a structured array (ixx, iyy, ixy, flag); flag True
    where the iteration failed. ``method``: "compiled" (ours, above) or "hsm" (GalSim, one call per stamp)."""
    stamps = np.asarray(stamps, dtype=np.float64)
    n = len(stamps)
    out = np.zeros(n, dtype=[("ixx", "f8"), ("iyy", "f8"), ("ixy", "f8"), ("flag", "?")])
    if method == "hsm":
        for i in range(n):
            ixx, iyy, ixy, _, _, fl = _hsm_one(stamps[i], None if weights is None else weights[i], guess_sigma)
            out[i] = (ixx, iyy, ixy, fl)
        return out
    if method != "compiled":
        raise ValueError(f"moments_from_stamps: method={method!r}; use compiled or hsm")
    if n == 0:
        return out
    data = stamps if weights is None else np.where(np.asarray(weights) != 0, stamps, 0.0)
    m, flag = _adaptive_moments_all(np.ascontiguousarray(data), float(guess_sigma), 1e-6, 400, 0.25, 8000.0, 15.0)
    out["ixx"], out["iyy"], out["ixy"], out["flag"] = m[:, 0], m[:, 1], m[:, 2], flag
    return out


def adaptive_moments(image: np.ndarray, x, y, good=None, guess_sigma: float = 2.0, size: int | None = None,
                     method: str = "compiled"):
    """Adaptive moments of sources at (x, y) on ``image`` (background-subtracted); ``good``: usable pixels.

    Returns a structured array with ixx, iyy, ixy (pixels^2) and flag (True where the iteration failed).
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
    return moments_from_stamps(stamps, inside.astype(np.int32), guess_sigma, method)


def moments_to_fwhm(ixx, iyy, ixy):
    """FWHM (pixels) of a Gaussian with the same determinant radius: 2.3548 * (ixx iyy - ixy^2)^(1/4)."""
    det = np.asarray(ixx) * np.asarray(iyy) - np.asarray(ixy) ** 2
    return 2.0 * np.sqrt(2.0 * np.log(2.0)) * np.power(np.clip(det, 0, None), 0.25)
