"""Resampling an exposure onto another WCS (Lanczos-3), and its PSF with it.

What DM's ``afw.math.warpExposure`` (used by makeCoaddTempExp / MakeWarpTask / makeDirectWarp) does:

* **pixel mapping**: each destination pixel's position in the source image, ``(u, v) = src^-1(dest(x, y))``
  through the two celestial WCSs (TAN or TAN-SIP either way), is computed exactly (astropy) only on a coarse grid
  of destination positions (``grid_step_px``, default 32 px) and interpolated in between (Catmull-Rom cubic, which
  reproduces quadratics exactly: the error is < 1e-4 px for SIP distortions; DM's ``interpLength`` does the same
  with a linear interpolation every 10 px);
* **image**: ``I'(x, y) = |J| * sum_ij w_i(u) w_j(v) I(u_i, v_j)`` with the separable Lanczos-3 kernel
  ``L(t) = sinc(t) sinc(t / 3)`` (|t| < 3) over the 6 x 6 source pixels around ``(u, v)``, each axis' 6 weights
  normalised to sum 1 (so a flat image stays flat, as DM's and SWarp's kernels), times the Jacobian determinant
  ``|J| = |d(u, v) / d(x, y)|`` (source pixels per destination pixel) so that the *flux* of a source is
  conserved, not its surface brightness;
* **variance**: ``V'(x, y) = |J|^2 * sum_ij w_i^2 w_j^2 V(u_i, v_j)`` -- the variance of the weighted sum of
  independent pixels. It is the per-pixel variance; neighbouring warp pixels are correlated (they share source
  pixels), so the variance of a *sum* over warp pixels is larger than the sum of their variances (see
  :func:`lanczos_noise_factors`);
* **mask**: the OR of the mask planes of the 6 x 6 source pixels; destination pixels whose kernel footprint is not
  entirely inside the source image get ``NO_DATA`` (image and variance NaN, as DM's edge pixel).

The kernel is one compiled (numba) pass over the destination pixels: per pixel 2 sines and 2 cosines for the 12
Lanczos weights (the other ones follow by the angle-addition formulae), 36 multiply-adds for the image, 36 for the
variance and 36 ORs for the mask.

:func:`transform_psf` gives the PSF on the destination grid: the source PSF at the mapped position resampled
through the local affine approximation (Jacobian) of the pixel mapping (DM's WarpedPsf), sampled on a grid of
destination positions as an :class:`~twinkles.psf.ImageGridPSF`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from astropy.wcs import WCS
from numba import njit

from ..image import Exposure, PhotoCalib, mask_bit
from ..psf import PSF, ImageGridPSF

__all__ = ["PixelMap", "pixel_mapping", "warp_exposure", "warp_arrays", "transform_psf", "lanczos3",
           "lanczos_sample", "lanczos_noise_factors", "footprint_or", "ResampleError", "LANCZOS_ORDER"]

LANCZOS_ORDER = 3  # Lanczos-3: 6 taps per axis


class ResampleError(ValueError):
    """The inputs cannot be resampled (no celestial WCS, unknown kernel)."""


# --------------------------------------------------------------------------------------------- the kernel
def lanczos3(t) -> np.ndarray:
    """The Lanczos-3 kernel ``sinc(t) sinc(t / 3)`` for |t| < 3, else 0 (numpy, for tests and references)."""
    t = np.asarray(t, float)
    return np.where(np.abs(t) < 3, np.sinc(t) * np.sinc(t / 3.0), 0.0)


@njit(cache=True, nogil=True, inline="always")
def _lanczos3_weights(f, w):  # pragma: no cover - compiled
    """Normalised Lanczos-3 weights of the taps at offsets -2..3 from floor(u), for f = u - floor(u) in [0, 1)."""
    # sin(pi (f - k)) = (-1)^k sin(pi f);  sin(pi (f - k) / 3) = sin(a) cos(k pi / 3) - cos(a) sin(k pi / 3)
    if f < 1e-9:
        for k in range(6):
            w[k] = 0.0
        w[2] = 1.0
        return
    pi = math.pi
    s = math.sin(pi * f)
    a = pi * f / 3.0
    sa = math.sin(a)
    ca = math.cos(a)
    h = 0.8660254037844386  # sin(pi / 3)
    # cos(k pi/3), sin(k pi/3) for k = -2, -1, 0, 1, 2, 3
    ck = (-0.5, 0.5, 1.0, 0.5, -0.5, -1.0)
    sk = (-h, -h, 0.0, h, h, 0.0)
    total = 0.0
    for i in range(6):
        k = i - 2
        t = f - k
        spt = s if (k % 2) == 0 else -s
        if abs(t) < 1e-9:
            val = 1.0
        else:
            val = 3.0 * spt * (sa * ck[i] - ca * sk[i]) / (pi * pi * t * t)
        w[i] = val
        total += val
    for i in range(6):
        w[i] /= total


@njit(cache=True, nogil=True, inline="always")
def _catmull_rom(t, c):  # pragma: no cover - compiled
    t2 = t * t
    t3 = t2 * t
    c[0] = 0.5 * (-t + 2.0 * t2 - t3)
    c[1] = 0.5 * (2.0 - 5.0 * t2 + 3.0 * t3)
    c[2] = 0.5 * (t + 4.0 * t2 - 3.0 * t3)
    c[3] = 0.5 * (-t2 + t3)


#: the normalised Lanczos-3 weights tabulated at ``_TABLE_N`` sub-pixel phases (linearly interpolated in between:
#: error < 1e-7 of the weights, 6x faster than evaluating the sines per pixel; SWarp tabulates its kernel too)
_TABLE_N = 1024


def _weight_table(n: int = _TABLE_N) -> np.ndarray:
    table = np.empty((n + 1, 6))
    for k in range(n + 1):
        _lanczos3_weights(min(k / n, 1.0 - 1e-12) if k < n else 1.0 - 1e-12, table[k])
    # the phase f = 1 is the phase 0 one tap later: make the last row exact
    table[n] = 0.0
    table[n, 3] = 1.0
    return table


@njit(cache=True, nogil=True, inline="always")
def _table_weights(table, f, w, w2):  # pragma: no cover - compiled
    n = table.shape[0] - 1
    p = f * n
    k = int(p)
    if k >= n:
        k = n - 1
    a = p - k
    b = 1.0 - a
    for i in range(6):
        val = b * table[k, i] + a * table[k + 1, i]
        w[i] = val
        w2[i] = val * val


@njit(cache=True, nogil=True, inline="always")
def _cr_coefficients(p, m, out):  # pragma: no cover - compiled
    """Coefficients c0..c3 of the Catmull-Rom cubic c0 + c1 t + c2 t^2 + c3 t^3 between nodes m and m + 1."""
    p0, p1, p2, p3 = p[m - 1], p[m], p[m + 1], p[m + 2]
    out[m, 0] = p1
    out[m, 1] = 0.5 * (p2 - p0)
    out[m, 2] = p0 - 2.5 * p1 + 2.0 * p2 - 0.5 * p3
    out[m, 3] = 0.5 * (p3 - p0) + 1.5 * (p1 - p2)


@njit(cache=True, nogil=True, fastmath={"contract"})  # FMA only: no reassociation, re-runs are byte-identical
def _warp_kernel(img, var, msk, gu, gv, gj, gx0, gy0, step, bx0, by0, bx1, by1, scale, nodata, table,
                 out_img, out_var, out_msk):  # pragma: no cover - compiled
    """Lanczos-3 resampling of (img, var, msk) into the destination box [bx0, bx1) x [by0, by1).

    ``msk`` is the source mask already OR-ed over each pixel's kernel footprint (:func:`_footprint_or`): the
    destination pixel whose footprint starts at source pixel (iu - 2, iv - 2) takes ``msk[iv, iu]``.

    (gu, gv, gj): source x, y and Jacobian determinant on the coarse grid whose node (n, m) is the destination
    pixel (gx0 + m * step, gy0 + n * step).
    """
    ny_s, nx_s = img.shape
    kx = gu.shape[1]
    rowu = np.empty(kx)
    rowv = np.empty(kx)
    rowj = np.empty(kx)
    cu = np.zeros((kx, 4))
    cv = np.zeros((kx, 4))
    cj = np.zeros((kx, 4))
    inv_step = 1.0 / step
    cy = np.empty(4)
    wx = np.empty(6)
    wy = np.empty(6)
    wx2 = np.empty(6)
    wy2 = np.empty(6)
    umax = nx_s - 3.0
    vmax = ny_s - 3.0
    nan = np.float32(np.nan)
    n_good = 0
    for y in range(by0, by1):
        gy = (y - gy0) / step
        j = int(math.floor(gy))
        _catmull_rom(gy - j, cy)
        for m in range(kx):
            rowu[m] = cy[0] * gu[j - 1, m] + cy[1] * gu[j, m] + cy[2] * gu[j + 1, m] + cy[3] * gu[j + 2, m]
            rowv[m] = cy[0] * gv[j - 1, m] + cy[1] * gv[j, m] + cy[2] * gv[j + 1, m] + cy[3] * gv[j + 2, m]
            rowj[m] = cy[0] * gj[j - 1, m] + cy[1] * gj[j, m] + cy[2] * gj[j + 1, m] + cy[3] * gj[j + 2, m]
        # Catmull-Rom in x as one cubic per grid interval (Horner per pixel: 9 multiply-adds for u, v, |J|)
        for m in range(1, kx - 2):
            _cr_coefficients(rowu, m, cu)
            _cr_coefficients(rowv, m, cv)
            _cr_coefficients(rowj, m, cj)
        for x in range(bx0, bx1):
            gx = (x - gx0) * inv_step
            i = int(gx)
            t = gx - i
            u = ((cu[i, 3] * t + cu[i, 2]) * t + cu[i, 1]) * t + cu[i, 0]
            v = ((cv[i, 3] * t + cv[i, 2]) * t + cv[i, 1]) * t + cv[i, 0]
            if not (u >= 2.0 and u < umax and v >= 2.0 and v < vmax):
                out_img[y, x] = nan
                out_var[y, x] = nan
                out_msk[y, x] = nodata
                continue
            jac = ((cj[i, 3] * t + cj[i, 2]) * t + cj[i, 1]) * t + cj[i, 0]
            iu = int(u)
            iv = int(v)
            _table_weights(table, u - iu, wx, wx2)
            _table_weights(table, v - iv, wy, wy2)
            # the 6 taps of a row summed as a tree (independent products, short dependency chains: ~15% faster
            # than a running sum)
            c = iu - 2
            w0, w1, w2, w3, w4, w5 = wx[0], wx[1], wx[2], wx[3], wx[4], wx[5]
            q0, q1, q2, q3, q4, q5 = wx2[0], wx2[1], wx2[2], wx2[3], wx2[4], wx2[5]
            acc = 0.0
            accv = 0.0
            for jj in range(6):
                r = iv - 2 + jj
                sx = ((w0 * img[r, c] + w1 * img[r, c + 1]) + (w2 * img[r, c + 2] + w3 * img[r, c + 3])
                      + (w4 * img[r, c + 4] + w5 * img[r, c + 5]))
                sv = ((q0 * var[r, c] + q1 * var[r, c + 1]) + (q2 * var[r, c + 2] + q3 * var[r, c + 3])
                      + (q4 * var[r, c + 4] + q5 * var[r, c + 5]))
                acc += wy[jj] * sx
                accv += wy2[jj] * sv
            f = jac * scale
            out_img[y, x] = acc * f
            out_var[y, x] = accv * f * f
            out_msk[y, x] = msk[iv, iu]
            n_good += 1
    return n_good


@njit(cache=True, nogil=True)
def _sample_kernel(img, us, vs, out):  # pragma: no cover - compiled
    """Lanczos-3 values of ``img`` at points (us, vs); 0 where the kernel footprint leaves the image."""
    ny, nx = img.shape
    wx = np.empty(6)
    wy = np.empty(6)
    for p in range(us.size):
        u = us[p]
        v = vs[p]
        if not (u >= 2.0 and u < nx - 3.0 and v >= 2.0 and v < ny - 3.0):
            out[p] = 0.0
            continue
        iu = int(math.floor(u))
        iv = int(math.floor(v))
        _lanczos3_weights(u - iu, wx)
        _lanczos3_weights(v - iv, wy)
        acc = 0.0
        for jj in range(6):
            sx = 0.0
            for ii in range(6):
                sx += wx[ii] * img[iv - 2 + jj, iu - 2 + ii]
            acc += wy[jj] * sx
        out[p] = acc


def lanczos_sample(image: np.ndarray, u, v) -> np.ndarray:
    """Lanczos-3 interpolation of ``image`` at source pixel positions (u, v) (any shape; 0 near the edges)."""
    u = np.asarray(u, float)
    v = np.asarray(v, float)
    out = np.empty(u.size)
    _sample_kernel(np.ascontiguousarray(image, dtype=np.float64), u.ravel(), v.ravel(), out)
    return out.reshape(u.shape)


def lanczos_noise_factors(n_phase: int = 64) -> tuple[float, float]:
    """How Lanczos-3 resampling changes white noise, averaged over sub-pixel phases.

    Returns ``(var_ratio, sum_ratio)``: ``var_ratio`` = mean over phases of sum(w^2) (the per-pixel variance of
    the resampled noise relative to the input's: what the propagated variance plane says, pixel by pixel), and
    ``sum_ratio`` = the variance of a large sum of resampled pixels relative to the sum of their propagated
    variances (1 / var_ratio for a normalised kernel: resampling moves noise between pixels, it does not remove
    it, so large-aperture errors computed from the variance plane alone are too small by this factor; DM's
    coadds carry it as a "noise correlation" correction). Per axis, squared for two.
    """
    f = (np.arange(n_phase) + 0.5) / n_phase
    taps = np.arange(-2, 4)
    w = lanczos3(f[:, None] - taps[None, :])
    w /= w.sum(axis=1, keepdims=True)
    var_ratio_1d = float(np.mean(np.sum(w ** 2, axis=1)))
    return var_ratio_1d ** 2, 1.0 / var_ratio_1d ** 2


# --------------------------------------------------------------------------------------------- pixel mapping
@dataclass
class PixelMap:
    """Destination pixel -> source pixel, exact on a coarse grid and Catmull-Rom interpolated in between.

    Node (n, m) of ``u``, ``v``, ``jac`` is destination pixel ``(gx0 + m * step, gy0 + n * step)``; the grid has
    one node before and two after the box ``bbox = (x0, y0, x1, y1)`` (half-open destination pixels) that it
    serves, so every pixel of the box has its 4 x 4 interpolation nodes.
    """

    u: np.ndarray
    v: np.ndarray
    jac: np.ndarray  # |d(u, v) / d(x, y)|: source pixels per destination pixel
    gx0: float
    gy0: float
    step: float
    bbox: tuple[int, int, int, int]
    src_shape: tuple[int, int]

    def _interp(self, grid: np.ndarray, x, y) -> np.ndarray:
        x = np.asarray(x, float)
        y = np.asarray(y, float)
        gx = (x - self.gx0) / self.step
        gy = (y - self.gy0) / self.step
        i = np.clip(np.floor(gx).astype(int), 1, grid.shape[1] - 3)
        j = np.clip(np.floor(gy).astype(int), 1, grid.shape[0] - 3)
        tx, ty = gx - i, gy - j

        def cr(t):
            t2, t3 = t * t, t * t * t
            return [0.5 * (-t + 2 * t2 - t3), 0.5 * (2 - 5 * t2 + 3 * t3), 0.5 * (t + 4 * t2 - 3 * t3),
                    0.5 * (-t2 + t3)]
        wx, wy = cr(tx), cr(ty)
        out = np.zeros(np.broadcast(x, y).shape)
        for a in range(4):
            for b in range(4):
                out += wy[a] * wx[b] * grid[j - 1 + a, i - 1 + b]
        return out

    def __call__(self, x, y) -> tuple[np.ndarray, np.ndarray]:
        """Source pixel (u, v) of destination pixel (x, y) (vectorised; the interpolant the warp uses)."""
        return self._interp(self.u, x, y), self._interp(self.v, x, y)

    def jacobian(self, x: float, y: float, h: float = 0.5) -> np.ndarray:
        """2 x 2 matrix d(u, v)/d(x, y) at a destination position (central differences of the interpolant)."""
        u1, v1 = self(np.array([x + h, x - h, x, x]), np.array([y, y, y + h, y - h]))
        return np.array([[(u1[0] - u1[1]) / (2 * h), (u1[2] - u1[3]) / (2 * h)],
                         [(v1[0] - v1[1]) / (2 * h), (v1[2] - v1[3]) / (2 * h)]])


def _celestial(wcs, what: str) -> WCS:
    if wcs is None or not wcs.has_celestial:
        raise ResampleError(f"{what} has no celestial WCS; cannot resample it")
    return wcs


def _dest_to_src(src_wcs: WCS, dest_wcs: WCS, x, y):
    ra, dec = dest_wcs.all_pix2world(x, y, 0)
    u, v = src_wcs.all_world2pix(ra, dec, 0, tolerance=1e-7, maxiter=50, quiet=True)
    return np.asarray(u, float), np.asarray(v, float)


def pixel_mapping(src_wcs: WCS, src_shape: tuple[int, int], dest_wcs: WCS, dest_shape: tuple[int, int],
                  grid_step_px: int = 32, margin_px: int = 2) -> PixelMap | None:
    """The mapping from destination to source pixels over the part of the destination the source covers.

    The source's border (SIP included) is projected into the destination; its bounding box, grown by
    ``margin_px`` and clipped to ``dest_shape``, is the box the map serves (None if it is empty). The exact
    mapping (astropy ``all_pix2world`` then ``all_world2pix``) is evaluated on a grid of step ``grid_step_px``
    over the box, and the Jacobian determinant by central differences (+-0.5 px) of the exact mapping.
    """
    src_wcs = _celestial(src_wcs, "the source")
    dest_wcs = _celestial(dest_wcs, "the destination")
    from .skymap import footprint_radec
    ra, dec = footprint_radec(src_wcs, src_shape, step_px=32)
    bx, by = dest_wcs.all_world2pix(ra, dec, 0, tolerance=1e-6, maxiter=50, quiet=True)
    ok = np.isfinite(bx) & np.isfinite(by)
    if not ok.any():
        return None
    ny, nx = dest_shape
    x0 = max(0, int(math.floor(np.min(bx[ok]))) - margin_px)
    y0 = max(0, int(math.floor(np.min(by[ok]))) - margin_px)
    x1 = min(nx, int(math.ceil(np.max(bx[ok]))) + margin_px + 1)
    y1 = min(ny, int(math.ceil(np.max(by[ok]))) + margin_px + 1)
    if x1 <= x0 or y1 <= y0:
        return None
    step = float(grid_step_px)
    kx = int(math.ceil(max(x1 - 1 - x0, 1) / step)) + 4
    ky = int(math.ceil(max(y1 - 1 - y0, 1) / step)) + 4
    gx0, gy0 = x0 - step, y0 - step
    gx = gx0 + step * np.arange(kx)
    gy = gy0 + step * np.arange(ky)
    X, Y = np.meshgrid(gx, gy)
    h = 0.5
    xs = np.concatenate([X.ravel(), (X + h).ravel(), (X - h).ravel(), X.ravel(), X.ravel()])
    ys = np.concatenate([Y.ravel(), Y.ravel(), Y.ravel(), (Y + h).ravel(), (Y - h).ravel()])
    u, v = _dest_to_src(src_wcs, dest_wcs, xs, ys)
    u, v = u.reshape(5, ky, kx), v.reshape(5, ky, kx)
    dudx, dvdx = (u[1] - u[2]) / (2 * h), (v[1] - v[2]) / (2 * h)
    dudy, dvdy = (u[3] - u[4]) / (2 * h), (v[3] - v[4]) / (2 * h)
    jac = np.abs(dudx * dvdy - dudy * dvdx)
    return PixelMap(np.ascontiguousarray(u[0]), np.ascontiguousarray(v[0]), np.ascontiguousarray(jac), gx0, gy0,
                    step, (x0, y0, x1, y1), tuple(src_shape))


# --------------------------------------------------------------------------------------------- warping
@njit(cache=True, nogil=True, inline="always")
def _or_row(row, t):  # pragma: no cover - compiled
    nx = row.shape[0]
    for c in range(2, nx - 3):
        t[c] = row[c - 2] | row[c - 1] | row[c] | row[c + 1] | row[c + 2] | row[c + 3]
    for c in range(0, nx):
        if 2 <= c < nx - 3:
            continue
        m = 0
        for k in range(max(0, c - 2), min(nx, c + 4)):
            m |= row[k]
        t[c] = m


@njit(cache=True, nogil=True)
def _footprint_or(msk, out):  # pragma: no cover - compiled
    """``out[r, c]`` = OR of ``msk`` over rows r-2..r+3 and columns c-2..c+3 (the Lanczos-3 footprint).

    Each row's six shifted ORs (branch-free in the interior, so it vectorises) go to a ring of 6 rows, and each
    output row ORs the six it needs: one pass, no full-size temporary (~30 ms on a 4k image).
    """
    ny, nx = msk.shape
    ring = np.zeros((6, nx), np.int32)
    done = 0  # rows of msk already in the ring
    for r in range(ny):
        hi = min(ny, r + 4)
        while done < hi:
            _or_row(msk[done], ring[done % 6])
            done += 1
        o = out[r]
        lo = max(0, r - 2)
        if hi - lo == 6:
            a, b, c_, d, e, f = ring[lo % 6], ring[(lo + 1) % 6], ring[(lo + 2) % 6], ring[(lo + 3) % 6], \
                ring[(lo + 4) % 6], ring[(lo + 5) % 6]
            for c in range(nx):
                o[c] = a[c] | b[c] | c_[c] | d[c] | e[c] | f[c]
        else:
            for c in range(nx):
                o[c] = 0
            for k in range(lo, hi):
                rk = ring[k % 6]
                for c in range(nx):
                    o[c] |= rk[c]
    return out


_TABLE_CACHE: list = []


def _table() -> np.ndarray:
    if not _TABLE_CACHE:
        _TABLE_CACHE.append(_weight_table())
    return _TABLE_CACHE[0]


def footprint_or(mask: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """The mask OR-ed over every pixel's Lanczos-3 footprint (compute it once when warping onto many grids).

    ``out``: an int32 array of the mask's shape to write into (reused buffers save page faults on 4k images).
    """
    mask = np.ascontiguousarray(mask, dtype=np.int32)
    if out is None:
        out = np.empty(mask.shape, np.int32)
    return _footprint_or(mask, out)


def warp_arrays(image: np.ndarray, variance: np.ndarray, mask: np.ndarray, pixel_map: PixelMap | None,
                dest_shape: tuple[int, int], scale: float = 1.0, mask_is_footprint_or: bool = False,
                count_good: bool = False, out: tuple | None = None) -> tuple:
    """Lanczos-3 resampling of (image, variance, mask) through ``pixel_map`` onto a ``dest_shape`` grid.

    ``scale`` multiplies the image (and its square the variance), e.g. nJy per electron. Pixels outside the
    map's box or whose kernel footprint leaves the source are NaN with ``NO_DATA``. Returns float32 image and
    variance and an int32 mask. ``mask_is_footprint_or``: ``mask`` is already :func:`footprint_or` of the mask.
    With ``count_good`` also the number of pixels with data (a fourth element). ``out``: (image, variance, mask)
    arrays of ``dest_shape`` (float32, float32, int32) to write into, e.g. reused from one warp to the next.
    """
    ny, nx = dest_shape
    nodata = np.int32(mask_bit("NO_DATA"))
    if pixel_map is None:
        planes = (np.full((ny, nx), np.nan, np.float32), np.full((ny, nx), np.nan, np.float32),
                  np.full((ny, nx), nodata, np.int32))
        return (*planes, 0) if count_good else planes
    x0, y0, x1, y1 = pixel_map.bbox
    # the kernel writes every pixel of the box: only the rest is filled here
    if out is not None:
        out_img, out_var, out_msk = out
        if any(a.shape != (ny, nx) for a in out) or (out_img.dtype, out_var.dtype, out_msk.dtype) != (
                np.float32, np.float32, np.int32):
            raise ResampleError(f"warp_arrays: out must be float32, float32, int32 arrays of shape {(ny, nx)}")
    else:
        out_img = np.empty((ny, nx), np.float32)
        out_var = np.empty((ny, nx), np.float32)
        out_msk = np.empty((ny, nx), np.int32)
    for plane, fill in ((out_img, np.nan), (out_var, np.nan), (out_msk, nodata)):
        plane[:y0] = fill
        plane[y1:] = fill
        plane[y0:y1, :x0] = fill
        plane[y0:y1, x1:] = fill
    n_good = _warp_kernel(np.ascontiguousarray(image, dtype=np.float32),
                          np.ascontiguousarray(variance, dtype=np.float32),
                          np.ascontiguousarray(mask, np.int32) if mask_is_footprint_or else footprint_or(mask),
                          pixel_map.u, pixel_map.v, pixel_map.jac, float(pixel_map.gx0), float(pixel_map.gy0),
                          float(pixel_map.step), int(x0), int(y0), int(x1), int(y1), float(scale), nodata, _table(),
                          out_img, out_var, out_msk)
    return (out_img, out_var, out_msk, int(n_good)) if count_good else (out_img, out_var, out_msk)


def warp_exposure(exposure: Exposure, dest_wcs: WCS, dest_shape: tuple[int, int], kernel: str = "lanczos3",
                  grid_step_px: int = 32, to_njy: bool = True, psf_grid: int = 5, psf_size: int | None = None,
                  pixel_map: PixelMap | None = None, footprint_mask: np.ndarray | None = None,
                  out: tuple | None = None) -> Exposure:
    """Resample an exposure onto ``dest_wcs`` / ``dest_shape`` (Lanczos-3; variance and mask propagated).

    With ``to_njy`` (and a ``photo_calib``) the result is in nJy (``photo_calib = PhotoCalib(1.0)``), else in the
    input's units. The result's PSF is the input PSF transformed to the destination frame
    (:func:`transform_psf`, ``psf_grid`` x ``psf_grid`` positions over the covered box) when the input has one.
    Its metadata: the input's, plus ``n_good_pixels`` (pixels not NO_DATA) and ``bbox`` of the covered box.
    Works for any two celestial WCSs (TAN or TAN-SIP each way), e.g. a template onto a visit for DIA.
    ``footprint_mask``: :func:`footprint_or` of the exposure's mask, when warping one exposure onto many grids.
    ``out``: (image, variance, mask) buffers for the result's planes (see :func:`warp_arrays`).
    """
    if kernel.lower() != "lanczos3":
        raise ResampleError(f"resampling kernel {kernel!r} is not available; use lanczos3")
    src_wcs = _celestial(exposure.wcs, "the exposure")
    dest_shape = (int(dest_shape[0]), int(dest_shape[1]))
    if pixel_map is None:
        pixel_map = pixel_mapping(src_wcs, exposure.shape, dest_wcs, dest_shape, grid_step_px)
    scale, calib = 1.0, exposure.photo_calib
    if to_njy and exposure.photo_calib is not None:
        scale, calib = float(exposure.photo_calib.njy_per_electron), PhotoCalib(1.0)
    mask = exposure.mask if footprint_mask is None else footprint_mask
    img, var, msk, n_good = warp_arrays(exposure.image, exposure.variance, mask, pixel_map, dest_shape, scale,
                                        mask_is_footprint_or=footprint_mask is not None, count_good=True, out=out)
    psf = None
    if exposure.psf is not None and pixel_map is not None:
        psf = transform_psf(exposure.psf, pixel_map, n_grid=psf_grid, size=psf_size)
    meta = dict(exposure.metadata)
    meta["n_good_pixels"] = n_good
    if pixel_map is not None:
        meta["bbox"] = " ".join(str(v) for v in pixel_map.bbox)
    return Exposure(img, msk, var, dest_wcs.deepcopy(), psf, calib, exposure.visit_info, meta)


# --------------------------------------------------------------------------------------------- PSF
def transform_psf(psf: PSF, pixel_map: PixelMap, n_grid: int = 5, size: int | None = None,
                  positions: tuple[np.ndarray, np.ndarray] | None = None) -> ImageGridPSF:
    """The PSF in the destination frame, as an :class:`ImageGridPSF` on ``n_grid`` x ``n_grid`` positions.

    At each destination position (x, y) (a regular grid over the map's box, or ``positions`` = (xs, ys) axes) the
    source PSF at (u, v) = map(x, y) is resampled through the local affine map ``J = d(u, v)/d(x, y)``:
    ``P'(d) = |J| P(J d)`` for offsets d from the stamp centre (Lanczos-3 interpolation of the source stamp, as
    DM's WarpedPsf), normalised to sum 1. ``size``: stamp side (odd; default the source stamp's).
    """
    x0, y0, x1, y1 = pixel_map.bbox
    if positions is None:
        xs = np.linspace(x0, x1 - 1, n_grid) if n_grid > 1 else np.array([(x0 + x1 - 1) / 2.0])
        ys = np.linspace(y0, y1 - 1, n_grid) if n_grid > 1 else np.array([(y0 + y1 - 1) / 2.0])
    else:
        xs, ys = (np.atleast_1d(np.asarray(p, float)) for p in positions)
    uy, ux = pixel_map.src_shape
    stamps = None
    for j, y in enumerate(ys):
        for i, x in enumerate(xs):
            u, v = pixel_map(np.array([x]), np.array([y]))
            # the PSF is defined on the source: clamp the position to it (the warp has no pixels beyond)
            uc, vc = float(np.clip(u[0], 0, ux - 1)), float(np.clip(v[0], 0, uy - 1))
            src = psf.kernel_image(uc, vc)
            n = src.shape[0] if size is None else int(size) + (1 - int(size) % 2)
            if stamps is None:
                stamps = np.zeros((len(ys), len(xs), n, n))
            jm = pixel_map.jacobian(x, y)
            c = n // 2
            dy, dx = np.mgrid[0:n, 0:n] - c
            su = jm[0, 0] * dx + jm[0, 1] * dy
            sv = jm[1, 0] * dx + jm[1, 1] * dy
            cs = src.shape[0] // 2
            # pad the source stamp so the kernel footprint never leaves it (zeros beyond the model)
            pad = 4
            padded = np.pad(src, pad)
            vals = lanczos_sample(padded, su + cs + pad, sv + cs + pad)
            stamps[j, i] = vals / vals.sum()
    return ImageGridPSF(stamps, xs, ys)
